//! `agent score` on files: JSON lines per input sample, layer and method; every bad input named on
//! stderr with its problem after every good one was scored, and a non-zero exit.

mod support;

use std::process::Command;

use ndarray::{ArrayD, IxDyn};
use support::*;

#[test]
fn scores_good_inputs_and_names_every_bad_one() {
    let d = tempfile::tempdir().unwrap();
    let p = |n: &str| d.path().join(n);
    ndarray_npy::write_npy(p("one.npy"), &uniform(&[1, 28, 28], 1)).unwrap();
    ndarray_npy::write_npy(p("batch.npy"), &uniform(&[3, 1, 28, 28], 2)).unwrap();
    ndarray_npy::write_npy(p("wrong_shape.npy"), &uniform(&[2, 28, 28], 3)).unwrap();
    ndarray_npy::write_npy(p("wrong_dtype.npy"), &ArrayD::<i16>::zeros(IxDyn(&[1, 28, 28]))).unwrap();
    let mut nan = uniform(&[1, 28, 28], 4);
    nan[[0, 5, 5]] = f32::NAN;
    ndarray_npy::write_npy(p("nan.npy"), &nan).unwrap();
    let good = std::fs::read(p("one.npy")).unwrap();
    std::fs::write(p("truncated.npy"), &good[..good.len() / 3]).unwrap();
    std::fs::write(p("notes.txt"), "hello").unwrap();
    let bad = ["wrong_shape.npy", "wrong_dtype.npy", "nan.npy", "truncated.npy", "missing.npy", "notes.txt"];
    let mut args: Vec<String> = vec!["one.npy".into(), "batch.npy".into()];
    args.extend(bad.iter().map(|s| s.to_string()));
    args.insert(4, "one.npy".into()); // a good input after bad ones is still scored
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .current_dir(d.path())
        .args(["score", "--json", "--model"])
        .arg(repo_root().join("models/digits/encoder.onnx"))
        .args(["--embedding", "embedding", "--layer", "conv2_in=/pool1/MaxPool_output_0"])
        .args(["--method", "vanilla", "--method", "actgrad"])
        .args(&args)
        .output()
        .unwrap();
    let stdout = String::from_utf8(out.stdout).unwrap();
    let stderr = String::from_utf8(out.stderr).unwrap();
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    // (1 + 3 + 1) samples × 1 layer × 2 methods.
    assert_eq!(rows.len(), 10, "{stdout}");
    for r in &rows {
        for k in ["input", "layer", "method", "noise_score", "variance_score", "noise_benchmark"] {
            assert!(r.get(k).is_some(), "{k} missing in {r}");
        }
        let (ns, vs) = (r["noise_score"].as_f64().unwrap(), r["variance_score"].as_f64().unwrap());
        assert!((0.0..=1.0).contains(&ns) && (0.0..=0.25).contains(&vs), "{r}");
        assert_eq!(r["layer"], "conv2_in");
    }
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(errors.len(), bad.len(), "{stderr}");
    for (name, problem) in [
        ("wrong_shape.npy", "shape"),
        ("wrong_dtype.npy", "element type"),
        ("nan.npy", "NaN"),
        ("truncated.npy", "npy"),
        ("missing.npy", "No such file"),
        ("notes.txt", "unsupported"),
    ] {
        let line =
            errors.iter().find(|l| l.contains(name)).unwrap_or_else(|| panic!("{name} not named:\n{stderr}"));
        assert!(line.to_lowercase().contains(&problem.to_lowercase()), "{line} should say {problem}");
    }
}

#[test]
fn scores_from_a_configuration_file() {
    let d = tempfile::tempdir().unwrap();
    ndarray_npy::write_npy(d.path().join("x.npy"), &uniform(&[2, 1, 28, 28], 9)).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .current_dir(repo_root())
        .args(["score", "--config", "config/demo.toml", "--samples", "2", "--json"])
        .arg(d.path().join("x.npy"))
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let lines = String::from_utf8(out.stdout).unwrap();
    // 2 samples × 2 layers × 2 methods (config/demo.toml).
    assert_eq!(lines.lines().count(), 8, "{lines}");
    assert!(lines.contains("\"layer\":\"block2\"") && lines.contains("\"method\":\"actgrad\""));
}
