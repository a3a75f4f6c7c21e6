//! The daemon end to end: the real binary, the real model on ONNX Runtime (CPU), real files, /metrics.
//!
//! Uses the demo model `models/digits/encoder.onnx` (inputs `[N, 1, 28, 28]`, output `embedding`)
//! and ONNX Runtime (`ORT_DYLIB_PATH` or the project-local install). Every wait is bounded.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use ndarray::{Array4, ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use support::*;

fn sum_metric(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter_map(|l| l.rsplit_once(' ').and_then(|(_, v)| v.parse::<f64>().ok()))
        .sum()
}

/// A digit-like picture: a few bright strokes on black, deterministic per seed.
fn picture(seed: u64) -> Array4<f32> {
    let mut a = Array4::<f32>::zeros((1, 1, 28, 28));
    let s = seed as usize;
    for t in 0..18 {
        let (r, c) = (5 + (t + s) % 18, 6 + (t * (s % 5 + 1)) % 16);
        for dc in 0..3 {
            a[[0, 0, r, (c + dc).min(27)]] = 1.0;
        }
        a[[0, 0, (r + 1).min(27), c]] = 0.8;
    }
    a
}

fn drifted(x: &Array4<f32>, lambda: f32, rng: &mut rand_chacha::ChaCha8Rng) -> Array4<f32> {
    let n = Normal::new(0.0f32, 1.0).unwrap();
    x.mapv(|v| (v + lambda * n.sample(rng)).clamp(0.0, 1.0))
}

fn put(inbox: &Path, name: &str, a: &ArrayD<f32>) {
    let tmp = inbox.join(format!("{name}.tmp"));
    a.write_npy(std::fs::File::create(&tmp).unwrap()).unwrap();
    std::fs::rename(tmp, inbox.join(name)).unwrap();
}

fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|r| {
            r.filter_map(|e| e.ok())
                .filter(|e| e.path().is_file())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

fn model_path() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits/encoder.onnx")
}

#[test]
fn daemon_scores_rejects_drifts_and_survives_kill_9() {
    let model = model_path();
    assert!(model.is_file(), "{} is missing (committed with the models)", model.display());
    let d = tempfile::tempdir().unwrap();
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let reference: Vec<Array4<f32>> = (0..32).map(picture).collect();
    let refs: Vec<_> = reference.iter().map(|a| a.view()).collect();
    let batch = ndarray::concatenate(ndarray::Axis(0), &refs).unwrap();
    batch.write_npy(std::fs::File::create(d.path().join("reference.npy")).unwrap()).unwrap();
    let cfg = DemoConfig {
        model: "methods = [\"vanilla\", \"actgrad\"]\nsmoothing_points = 4".into(),
        engine: "providers = [\"cpu\"]\nbatch_size = 8\nmax_batch_delay_ms = 10\nqueue_capacity = 16".into(),
        baseline: format!(
            "path = \"{d}/baseline.json\"\nreference_dir = \"{d}/reference.npy\"",
            d = d.path().display()
        ),
        window: "samples = 32".into(),
        rest: format!(
            "[[sources]]\ntype = \"dir\"\nname = \"inbox\"\npath = \"{}\"\n\n[logging]\nlevel = \"info\"\n",
            inbox.display()
        ),
        ..DemoConfig::default()
    }
    .write(d.path());
    let log = d.path().join("agent.log");
    let daemon = Daemon::start(&cfg, &log);
    let port = daemon.port;
    wait_until("/healthz", Duration::from_secs(60), &log, || get(port, "/healthz").filter(|r| r.code == 200));
    daemon.wait_ready();
    assert!(d.path().join("baseline.json").is_file());
    let scrape = || daemon.metrics();
    let scored = |n: f64| {
        move || {
            Some(())
                .filter(|_| metric(&scrape(), "agent_samples_scored_total", &[("model", MODEL)]) == Some(n))
        }
    };

    // Reference-like inputs: scores in range, drift near zero.
    for (i, x) in (100..132).map(picture).enumerate() {
        put(&inbox, &format!("clean{i:03}.npy"), &x.into_dyn());
    }
    wait_until("32 clean samples", Duration::from_secs(300), &log, scored(32.0));
    let text = scrape();
    // After block2 the encoder is linear, so its vanilla gradient does not depend on the input and
    // its vanilla NS is 0 (ΔNS undefined, no series); actgrad is the method that sees that layer.
    let pairs = [("conv2_in", "vanilla"), ("block2", "actgrad")];
    let mut clean_drift = Vec::new();
    for (layer, method) in pairs {
        let l = [("model", MODEL), ("layer", layer), ("method", method)];
        let ns = metric(&text, "agent_noise_score", &l).expect("noise score");
        let vs = metric(&text, "agent_variance_score", &l).expect("variance score");
        assert!((0.0..=1.0).contains(&ns), "{layer} {method}: NS {ns}");
        assert!((0.0..=0.25).contains(&vs), "{layer} {method}: VS {vs}");
        assert!(metric(&text, "agent_noise_benchmark", &l).is_some());
        clean_drift.push(metric(&text, "agent_noise_score_drift", &l).expect("drift"));
    }
    assert_eq!(metric(&text, "agent_window_samples", &[("model", MODEL)]), Some(32.0));

    // Drifted inputs fill the window: the drift gauges move.
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
    for (i, x) in (100..132).map(picture).enumerate() {
        put(&inbox, &format!("drift{i:03}.npy"), &drifted(&x, 0.9, &mut rng).into_dyn());
    }
    wait_until("32 drifted samples", Duration::from_secs(300), &log, scored(64.0));
    let text = scrape();
    let moved = support::pairs(&pairs, &clean_drift).any(|((layer, method), before)| {
        let after =
            metric(&text, "agent_noise_score_drift", &[("layer", layer), ("method", method)]).unwrap();
        eprintln!("{layer} {method}: ΔNS clean {before:.4}, drifted {after:.4}");
        (after - before).abs() > 0.02
    });
    assert!(moved, "drift gauges did not move:\n{text}");

    // Bad inputs are rejected with reasons; the agent stays healthy.
    let good = picture(1).into_dyn();
    std::fs::write(inbox.join("garbage.npy"), b"definitely not numpy").unwrap();
    let mut bytes = Vec::new();
    good.write_npy(&mut bytes).unwrap();
    std::fs::write(inbox.join("truncated.npy"), &bytes[..bytes.len() / 2]).unwrap();
    put(&inbox, "shape.npy", &ArrayD::<f32>::zeros(IxDyn(&[1, 27, 28])));
    let mut nan = good.clone();
    nan[[0, 0, 3, 3]] = f32::NAN;
    put(&inbox, "nan.npy", &nan);
    std::fs::write(inbox.join("notes.txt"), "not an input").unwrap();
    let rejected = d.path().join("inbox/rejected");
    wait_until("5 rejections", Duration::from_secs(60), &log, || {
        Some(()).filter(|_| files(&rejected).len() == 10)
    });
    let text = scrape();
    for (reason, n) in [("decode", 2.0), ("shape", 1.0), ("non_finite", 1.0), ("unsupported", 1.0)] {
        assert_eq!(metric(&text, "agent_samples_rejected_total", &[("reason", reason)]), Some(n), "{reason}");
    }
    for f in ["garbage.npy", "truncated.npy", "shape.npy", "nan.npy", "notes.txt"] {
        let why = std::fs::read_to_string(rejected.join(format!("{f}.reason.txt"))).unwrap();
        assert!(why.contains(f), "{why}");
    }
    assert_eq!(get(port, "/healthz").map(|r| r.code), Some(200));
    let r = get(port, "/api/v1/status").unwrap();
    let (code, status) = (r.code, r.body);
    assert_eq!(code, 200);
    assert!(status.contains("\"model\":\"digits\""), "{status}");
    let r = get(port, "/").unwrap();
    let (code, page) = (r.code, r.body);
    assert!(code == 200 && page.contains("block2"));

    // kill -9 in the middle of a burst, restart, and every file is finished exactly once.
    for i in 0..200 {
        put(&inbox, &format!("burst{i:03}.npy"), &picture(i).into_dyn());
    }
    let done = d.path().join("inbox/done");
    wait_until("part of the burst", Duration::from_secs(300), &log, || {
        Some(()).filter(|_| files(&done).len() >= 64 + 20)
    });
    let mut daemon = daemon;
    daemon.kill9();
    drop(daemon);
    // The kill must land in the middle of the burst, or the restart proves nothing.
    let (left, finished) =
        (files(&inbox).len() + files(&d.path().join("inbox/.agent/processing")).len(), files(&done).len());
    eprintln!("killed with {finished} files done and {left} waiting or in flight");
    assert!(left > 0, "the burst was over before the kill");
    let mut daemon = Daemon::start(&cfg, &log);
    let port = daemon.port;
    let processing = d.path().join("inbox/.agent/processing");
    wait_until("the burst to finish after the restart", Duration::from_secs(600), &log, || {
        Some(()).filter(|_| {
            files(&inbox).is_empty() && files(&processing).is_empty() && files(&done).len() == 264
        })
    });
    let done_names = files(&done);
    for i in 0..200 {
        assert!(done_names.contains(&format!("burst{i:03}.npy")), "burst{i:03}.npy not in done/");
    }
    assert!(done_names.iter().all(|n| n.ends_with(".npy")), "a file was finished twice: {done_names:?}");
    let text = wait_until("the counters", Duration::from_secs(60), &log, || {
        let t = get(port, "/metrics")?.body;
        Some(t).filter(|t| metric(t, "agent_samples_scored_total", &[("model", MODEL)]) == Some(264.0))
    });
    assert_eq!(sum_metric(&text, "agent_samples_rejected_total"), 5.0);

    // SIGTERM drains and exits 0.
    let status = daemon.term();
    assert!(status.success(), "exit status {status}");
}
