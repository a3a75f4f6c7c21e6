//! `agent report` on the demo's real digits: the real binary, the demo configuration, the held-out
//! reference digits against the disjoint stream digits, clean and drifted (`clip(x + 0.6ε, 0, 1)`, the
//! demo's middle step). Checks the JSON's shape, that clean data raises no alarm on the main signals
//! and drifted data does, and the self-contained HTML report.

mod common;

use std::process::Command;

use common::*;
use ndarray::ArrayD;
use rand_distr::{Distribution, StandardNormal};
use serde_json::Value;

/// Starts `agent report --json` on `current`; [`finish`] collects it. Two reports run side by side.
fn start(current: &std::path::Path, extra: &[&str]) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_agent"))
        .current_dir(repo_root())
        .args([
            "report",
            "--config",
            "config/demo.toml",
            "--reference",
            "models/digits/reference.npy",
            "--current",
        ])
        .arg(current)
        .args(["--json", "--permutations", "100", "--map-samples", "32"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap()
}

fn finish(child: std::process::Child) -> (Value, String) {
    let out = child.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "stderr: {stderr}");
    (serde_json::from_slice(&out.stdout).expect("one JSON object on stdout"), stderr)
}

fn find<'a>(doc: &'a Value, name: &str, layer: Option<&str>, method: Option<&str>) -> &'a Value {
    doc["detectors"]
        .as_array()
        .unwrap()
        .iter()
        .find(|d| {
            d["name"] == name
                && d.get("layer").and_then(Value::as_str) == layer
                && d.get("method").and_then(Value::as_str) == method
        })
        .unwrap_or_else(|| panic!("no {name} {layer:?} {method:?} in {doc}"))
}

#[test]
fn clean_and_drifted_digits() {
    let d = tempfile::tempdir().unwrap();
    let stream: ArrayD<f32> = ndarray_npy::read_npy(repo_root().join("models/digits/stream.npy")).unwrap();
    let mut rng = rng(12);
    let drifted = stream.mapv(|x| {
        let e: f32 = StandardNormal.sample(&mut rng);
        (x + 0.6 * e).clamp(0.0, 1.0)
    });
    let drifted_path = d.path().join("drifted.npy");
    ndarray_npy::write_npy(&drifted_path, &drifted).unwrap();
    let html = d.path().join("report.html");

    let clean = start(&repo_root().join("models/digits/stream.npy"), &[]);
    let drift = start(&drifted_path, &["--out", html.to_str().unwrap()]);
    let ((clean, _), (drift, stderr)) = (finish(clean), finish(drift));

    for doc in [&clean, &drift] {
        assert_eq!(doc["reference_samples"], 256);
        assert_eq!(doc["current_samples"], 256);
        let rows = doc["detectors"].as_array().unwrap();
        // 5 embedding rows + 2 layers × 2 methods × (NS, VS).
        assert_eq!(rows.len(), 5 + 8, "{doc}");
        for r in rows {
            for k in ["name", "statistic", "p_value", "threshold", "drift"] {
                assert!(r.get(k).is_some(), "{k} missing in {r}");
            }
            assert!(
                r["statistic"].as_f64().unwrap().is_finite() && r["threshold"].as_f64().unwrap().is_finite()
            );
            let name = r["name"].as_str().unwrap();
            if name.ends_with("_score_ks") {
                assert!(r["layer"].is_string() && r["method"].is_string(), "{r}");
                // ΔNS/ΔVS, absent only where the reference mean is 0 (block2's vanilla noise score: the
                // tail after block2 is linear, models/digits/README.md).
                let zero_reference =
                    name == "noise_score_ks" && r["layer"] == "block2" && r["method"] == "vanilla";
                assert_eq!(r["relative_drift"].is_number(), !zero_reference, "{r}");
                let (stat, thr, p) = (
                    r["statistic"].as_f64().unwrap(),
                    r["threshold"].as_f64().unwrap(),
                    r["p_value"].as_f64().unwrap(),
                );
                // The threshold is the KS critical value at α: beyond it exactly when p < α.
                assert_eq!(stat > thr, p < 0.05, "{r}");
                assert_eq!(r["drift"].as_bool().unwrap(), p < 0.05, "{r}");
            } else {
                assert!(name.starts_with("embedding_") && r.get("layer").is_none(), "{r}");
            }
        }
        assert!(find(doc, "embedding_pca", None, None)["p_value"].is_null());
    }

    // The main signals: quiet on clean digits, loud on drifted ones.
    for (name, layer, method) in [
        ("embedding_mmd", None, None),
        ("embedding_ks_share", None, None),
        ("embedding_centroid_euclidean", None, None),
        ("variance_score_ks", Some("block2"), Some("actgrad")),
        ("noise_score_ks", Some("block2"), Some("actgrad")),
    ] {
        let c = find(&clean, name, layer, method);
        let x = find(&drift, name, layer, method);
        assert_eq!(c["drift"], false, "clean: {c}");
        assert_eq!(x["drift"], true, "drifted: {x}");
        assert!(x["statistic"].as_f64().unwrap() > c["statistic"].as_f64().unwrap());
    }
    // MMD's permutation p-value: (1 + k)/(1 + 100), so never below 1/101.
    let p = find(&drift, "embedding_mmd", None, None)["p_value"].as_f64().unwrap();
    assert!((p - 1.0 / 101.0).abs() < 1e-12, "{p}");
    // ΔVS of the demo's strongest signal is negative under noise (README's table).
    assert!(
        find(&drift, "variance_score_ks", Some("block2"), Some("actgrad"))["relative_drift"]
            .as_f64()
            .unwrap()
            < -0.2
    );

    assert!(stderr.contains("wrote"), "{stderr}");
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(
        page.starts_with("<!DOCTYPE html>") && page.contains("embedding_mmd") && page.contains("conv2_in")
    );
    // Self-contained: pictures inline, nothing fetched.
    assert!(page.matches("src=\"data:image/png;base64,").count() >= 13 + 3 * 4, "too few inline pictures");
    for remote in ["http://", "https://", "src=\"/", "href="] {
        assert!(!page.contains(remote), "the report refers to {remote}");
    }
}

#[test]
fn a_bad_current_file_is_named() {
    let d = tempfile::tempdir().unwrap();
    let bad = d.path().join("wrong.npy");
    ndarray_npy::write_npy(&bad, &ndarray::Array3::<f32>::zeros((2, 28, 28))).unwrap();
    let out = start(&bad, &[]).wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("wrong.npy") && stderr.contains("shape"), "{stderr}");
}
