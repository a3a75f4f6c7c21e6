//! The operator registry is the one place that says what the compiler supports; these tests hold
//! everything else to it: every registered operator is exercised by a committed model whose gradients
//! are checked against a reference (`tests/gradients.rs`: finite differences; `tests/architectures.rs`:
//! float64 autograd), and README's operator list is generated from it.

mod common;

use std::collections::BTreeSet;

use agent::compiler;
use agent::onnx;
use common::*;

/// (model file, layers, embedding) of every committed model whose gradients a test checks.
fn checked_models() -> Vec<(std::path::PathBuf, Vec<String>, String)> {
    let mut out: Vec<_> = manifest()
        .into_iter()
        .filter(|e| e.committed)
        .map(|e| (e.path(), e.layers.clone(), e.embedding.clone()))
        .collect();
    let arch = repo_root().join("tests/models/arch/manifest.json");
    let text = std::fs::read_to_string(&arch).unwrap_or_else(|e| panic!("{}: {e}", arch.display()));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    assert!(!entries.is_empty(), "no architecture fixtures");
    for e in entries {
        let file = e["file"].as_str().expect("file");
        let layers: Vec<String> = e["layers"]
            .as_array()
            .expect("layers")
            .iter()
            .map(|l| l["name"].as_str().expect("layer name").to_string())
            .collect();
        out.push((
            repo_root().join("tests/models/arch").join(file),
            layers,
            e["embedding"].as_str().expect("embedding").to_string(),
        ));
    }
    out
}

#[test]
fn every_registered_operator_is_exercised_by_a_checked_model() {
    let mut seen = BTreeSet::new();
    let models = checked_models();
    assert!(models.len() > 40, "expected the rule models and the architectures, got {}", models.len());
    for (path, layers, embedding) in &models {
        let model = onnx::load(path).unwrap();
        let ops = compiler::path_ops(model.graph.as_ref().unwrap(), layers, embedding)
            .unwrap_or_else(|e| panic!("{}: {e:#}", path.display()));
        seen.extend(ops);
    }
    let missing: Vec<&str> = compiler::supported_ops().into_iter().filter(|op| !seen.contains(*op)).collect();
    assert!(
        missing.is_empty(),
        "registered operators that no committed, gradient-checked model exercises: {missing:?} \
         (add a rule model to tests/models/build_models.py)"
    );
}

/// Replaces the text between `<!-- BEGIN name -->` and `<!-- END name -->` of a file, or checks it.
fn generated_section(file: &str, name: &str, content: &str) {
    let path = repo_root().join(file);
    let text = std::fs::read_to_string(&path).unwrap();
    let (begin, end) = (format!("<!-- BEGIN {name} -->\n"), format!("<!-- END {name} -->"));
    let a = text.find(&begin).unwrap_or_else(|| panic!("{file}: no {begin:?} marker")) + begin.len();
    let b = text[a..].find(&end).unwrap_or_else(|| panic!("{file}: no {end:?} marker")) + a;
    if text[a..b] == *content {
        return;
    }
    if std::env::var_os("AGENT_UPDATE_DOCS").is_some() {
        std::fs::write(&path, format!("{}{content}{}", &text[..a], &text[b..])).unwrap();
        return;
    }
    panic!(
        "{file}: the {name} section is out of date with the operator registry; rerun this test with \
         AGENT_UPDATE_DOCS=1 to regenerate it. Expected:\n{content}"
    );
}

#[test]
fn readme_operator_list_comes_from_the_registry() {
    let list = compiler::supported_ops().join(", ");
    generated_section("README.md", "supported-ops", &format!("{list}.\n"));
}

#[test]
fn spec_rule_table_comes_from_the_registry() {
    generated_section("docs/spec/attribution-graph.md", "rule-table", &compiler::rule_table());
}
