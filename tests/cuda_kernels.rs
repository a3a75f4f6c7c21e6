//! GPU readiness without a GPU: every node of every compiled test graph must have a kernel in ONNX
//! Runtime's CUDA execution provider at the opset the graph is emitted at. A node without one runs on
//! the CPU, with a device-to-host copy before it and a copy back after, per run — silently, since the
//! session still loads. The kernel table is ONNX Runtime's own, committed as data
//! (`tests/data/ort_cuda_kernels.txt`, source in its header).

mod common;

use std::collections::{BTreeMap, BTreeSet};

use agent::compiler::{self, CompileOptions};
use agent::onnx::{self, proto::GraphProto};
use agent::scores::{Aggregation, Method};
use common::*;

/// Opset ranges `(first, last)` per operator; `last = i64::MAX` for "N+".
fn kernel_table() -> BTreeMap<String, Vec<(i64, i64)>> {
    let path = repo_root().join("tests/data/ort_cuda_kernels.txt");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut table = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let mut words = line.split_whitespace();
        let op = words.next().unwrap().to_string();
        let ranges: Vec<(i64, i64)> = words
            .map(|w| {
                let bad = || panic!("{}:{}: bad opset range {w:?}", path.display(), i + 1);
                if let Some(n) = w.strip_suffix('+') {
                    (n.parse().unwrap_or_else(|_| bad()), i64::MAX)
                } else if let Some((a, b)) = w.split_once('-') {
                    (a.parse().unwrap_or_else(|_| bad()), b.parse().unwrap_or_else(|_| bad()))
                } else {
                    let n = w.parse().unwrap_or_else(|_| bad());
                    (n, n)
                }
            })
            .collect();
        assert!(!ranges.is_empty(), "{}:{}: {op} has no opset range", path.display(), i + 1);
        assert!(table.insert(op.clone(), ranges).is_none(), "{op} listed twice");
    }
    table
}

/// Every (op, domain) of a graph and its subgraphs.
fn ops(g: &GraphProto, out: &mut BTreeSet<(String, String)>) {
    for n in &g.node {
        out.insert((n.op_type.clone(), n.domain.clone()));
        for a in &n.attribute {
            if let Some(sub) = &a.g {
                ops(sub, out);
            }
            for sub in &a.graphs {
                ops(sub, out);
            }
        }
    }
}

/// (model file, layers, embedding) of the rule models and the architecture fixtures.
fn test_models() -> Vec<(std::path::PathBuf, Vec<String>, String)> {
    let mut out: Vec<_> = manifest()
        .into_iter()
        .filter(|e| e.path().is_file())
        .map(|e| (e.path(), e.layers.clone(), e.embedding.clone()))
        .collect();
    let arch = repo_root().join("tests/models/arch/manifest.json");
    let text = std::fs::read_to_string(&arch).unwrap_or_else(|e| panic!("{}: {e}", arch.display()));
    let entries: Vec<serde_json::Value> = serde_json::from_str(&text).unwrap();
    for e in entries {
        let layers = e["layers"].as_array().expect("layers").iter();
        out.push((
            repo_root().join("tests/models/arch").join(e["file"].as_str().expect("file")),
            layers.map(|l| l["name"].as_str().expect("layer name").to_string()).collect(),
            e["embedding"].as_str().expect("embedding").to_string(),
        ));
    }
    out
}

/// Operators that ONNX Runtime replaces while loading a graph, before kernels are assigned:
/// `Constant` nodes become initializers, and `CastLike` (emitted by the Cast, Pow and Where rules so
/// that they keep the input's float type) is an ONNX function that ONNX Runtime inlines as `Cast`
/// when no kernel claims it: neither the CPU nor the CUDA provider registers a CastLike kernel
/// (OperatorKernels.md), and the CPU provider runs these graphs.
const EXPANDED_AT_LOAD: &[&str] = &["Constant", "CastLike"];

#[test]
fn every_compiled_node_has_a_cuda_kernel_at_the_graphs_opset() {
    let table = kernel_table();
    let models = test_models();
    assert!(models.len() > 40, "expected the rule models and the architectures, got {}", models.len());
    // Each model with every method, plain and smoothed, and two channel aggregations: the rules emit
    // different nodes for these. Smoothed `vanilla` alone too: its mean is taken early, by other nodes
    // (compiler/hoist.rs: averaged masks, the mean fused into a max pool's scatter).
    let all = vec![Method::Vanilla, Method::ActGrad, Method::GradCam];
    let settings = [
        (Aggregation::Abs, 1, all.clone()),
        (Aggregation::Var, 2, all),
        (Aggregation::Abs, 2, vec![Method::Vanilla]),
    ];
    let mut missing: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut model_ops_without_kernel: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    let mut compiled = 0;
    for (path, layers, embedding) in &models {
        let bytes = std::fs::read(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
        let source = onnx::decode(&bytes).unwrap();
        // The model's own nodes (the forward pass, copied into the compiled graph) by (op, name).
        let own: BTreeSet<(String, String)> =
            source.graph.as_ref().unwrap().node.iter().map(|n| (n.op_type.clone(), n.name.clone())).collect();
        for (agg, s, methods) in &settings {
            let (agg, s) = (*agg, *s);
            let opts = CompileOptions {
                embedding: embedding.clone(),
                layers: layers.clone(),
                methods: methods.clone(),
                channel_agg: Some(agg),
                smoothing_samples: s,
                layouts: vec![],
            };
            let graph = compiler::compile_bytes(&bytes, &opts)
                .unwrap_or_else(|e| panic!("{}: compiling ({agg:?}, S = {s}): {e:#}", path.display()));
            compiled += 1;
            let opset = onnx::default_opset(&graph.model).expect("compiled graphs import ai.onnx");
            let mut found = BTreeSet::new();
            ops(graph.model.graph.as_ref().unwrap(), &mut found);
            let nodes = &graph.model.graph.as_ref().unwrap().node;
            for (op, domain) in found {
                let name = path.file_name().unwrap().to_string_lossy().into_owned();
                if !(domain.is_empty() || domain == "ai.onnx") {
                    missing.entry(format!("{domain}::{op}")).or_default().insert(name);
                    continue;
                }
                seen.insert(op.clone());
                if EXPANDED_AT_LOAD.contains(&op.as_str()) {
                    continue;
                }
                let covered = table
                    .get(&op)
                    .is_some_and(|ranges| ranges.iter().any(|&(a, b)| a <= opset && opset <= b));
                if covered {
                    continue;
                }
                // A node the model itself has runs where the model runs it: the model's own
                // concern, reported. A node the compiler emitted must have a kernel.
                let emitted = nodes
                    .iter()
                    .any(|n| n.op_type == op && !own.contains(&(n.op_type.clone(), n.name.clone())));
                let key = format!("{op} at opset {opset}");
                if emitted {
                    missing.entry(key).or_default().insert(name);
                } else {
                    model_ops_without_kernel.entry(key).or_default().insert(name);
                }
            }
        }
    }
    eprintln!("{compiled} graphs compiled; operators in them: {seen:?}");
    eprintln!("the models' own operators without a CUDA kernel (docs/gpu.md): {model_ops_without_kernel:#?}");
    assert!(
        missing.is_empty(),
        "nodes without a CUDA kernel in ONNX Runtime (tests/data/ort_cuda_kernels.txt): {missing:#?}"
    );
}

#[test]
fn the_kernel_table_reads_as_onnx_runtime_documents_it() {
    let table = kernel_table();
    // Spot checks against the documented table: a versioned range, an open one, a single version.
    assert_eq!(table["Relu"], vec![(14, i64::MAX), (13, 13), (6, 12)]);
    assert_eq!(table["Resize"][0], (19, i64::MAX));
    assert!(!table.contains_key("GroupNormalization"), "the CUDA EP has no ai.onnx GroupNormalization");
    assert!(table.len() > 140, "{} operators", table.len());
}
