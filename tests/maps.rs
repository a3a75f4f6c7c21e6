//! Where it drifted, end to end: the real agent on the demo encoder (ONNX Runtime, CPU) builds a
//! baseline with reference maps, scores clean then noisy digits, and `/api/v1/maps` returns the
//! reference's and the window's mean embedding-aggregated maps and their difference. The test
//! computes the same means itself through the engine API (`Engine::embedding_maps`, one call on all
//! the samples) and compares; the landing page draws every map; `agent baseline --shard` partials
//! merge into the single-process reference maps.
//!
//! Tolerance: a relative 1e-5 of the map's largest value. The daemon maps samples in other engine
//! batches than the test, and ONNX Runtime's float32 kernels may round differently per batch shape;
//! the means themselves are float64 sums (`drift::maps`' unit tests check them against literals).

mod support;

use std::path::Path;
use std::time::Duration;

use agent::config::Config;
use agent::drift::Baseline;
use agent::engine::Engine;
use ndarray::{Array2, Array4, ArrayView4, Axis, s};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};
use rand::SeedableRng;
use rand_distr::{Distribution, Normal};
use serde_json::Value;
use support::*;

const TOKEN: &str = "maps-test-token";

fn api(port: u16, path: &str) -> Option<Response> {
    request(port, "GET", path, &[("Authorization", &format!("Bearer {TOKEN}"))], b"")
}

fn reference_digits(n: usize) -> Array4<f32> {
    let f = std::fs::File::open(repo_root().join("models/digits/reference.npy")).unwrap();
    Array4::<f32>::read_npy(f).unwrap().slice_axis(Axis(0), (0..n).into()).to_owned()
}

/// Per key, the float64 mean of the engine's maps of `x`.
fn mean_maps(engine: &mut Engine, x: ArrayView4<f32>) -> Vec<Array2<f64>> {
    let maps = engine.embedding_maps(x.into_dyn()).unwrap();
    let mut sums: Vec<Array2<f64>> = maps[0].iter().map(|m| Array2::zeros(m.dim())).collect();
    for per in &maps {
        for (s, m) in sums.iter_mut().zip(per) {
            *s += &m.mapv(f64::from);
        }
    }
    sums.into_iter().map(|s| s / maps.len() as f64).collect()
}

fn grid(v: &Value) -> Array2<f64> {
    let rows: Vec<Vec<f64>> = serde_json::from_value(v.clone()).expect("rows of numbers");
    let (h, w) = (rows.len(), rows[0].len());
    Array2::from_shape_vec((h, w), rows.into_iter().flatten().collect()).unwrap()
}

fn assert_close(got: &Array2<f64>, want: &Array2<f64>, what: &str) {
    assert_eq!(got.dim(), want.dim(), "{what}: shape");
    let scale = want.iter().fold(0.0f64, |a, v| a.max(v.abs())).max(1e-12);
    let worst = got.iter().zip(want).fold(0.0f64, |a, (x, y)| a.max((x - y).abs()));
    assert!(worst <= 1e-5 * scale, "{what}: off by {worst:e} (largest value {scale:e})");
}

fn mean_abs(a: &Array2<f64>) -> f64 {
    a.iter().map(|v| v.abs()).sum::<f64>() / a.len() as f64
}

#[test]
fn window_and_reference_maps_match_the_engine_and_are_drawn() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    let inbox = dir.join("inbox");
    std::fs::create_dir(&inbox).unwrap();
    let reference = reference_digits(16);
    reference.write_npy(std::fs::File::create(dir.join("reference.npy")).unwrap()).unwrap();
    let cfg = DemoConfig {
        model: "methods = [\"vanilla\", \"actgrad\"]\nsmoothing_points = 1".into(),
        engine: "providers = [\"cpu\"]\nbatch_size = 8\nmax_batch_delay_ms = 10".into(),
        baseline: format!(
            "path = \"{d}/baseline.json\"\nreference_dir = \"{d}/reference.npy\"",
            d = dir.display()
        ),
        window: "samples = 12".into(),
        rest: format!(
            "[maps]\nevery = 1\n\n[server]\nauth_token = \"{TOKEN}\"\n\n[[sources]]\ntype = \"dir\"\n\
             name = \"inbox\"\npath = \"{}\"\n\n[logging]\nlevel = \"info\"\n",
            inbox.display()
        ),
        ..DemoConfig::default()
    }
    .write(dir);
    let log = dir.join("agent.log");
    let _logs = LogsOnFailure(vec![log.clone()]);
    let daemon = Daemon::start(&cfg, &log);
    daemon.wait_ready();

    // The route is behind the bearer token, like /api/v1/status.
    assert_eq!(get(daemon.port, "/api/v1/maps").unwrap().code, 401);
    let empty = api(daemon.port, "/api/v1/maps").unwrap().json();
    assert_eq!(empty["input_shape"], serde_json::json!([1, 28, 28]));
    assert_eq!(empty["window_maps"], 0);
    assert_eq!(empty["reference_samples"], 16);
    assert!(empty["maps"][0]["window"].is_null() && empty["maps"][0]["reference"].is_array());

    // The baseline file holds the reference maps of all 16 samples (16 ≤ reference_samples).
    let base = Baseline::from_json(&std::fs::read_to_string(dir.join("baseline.json")).unwrap()).unwrap();
    let stored = base.maps.as_ref().expect("reference maps in the baseline");
    assert_eq!((stored.stride, stored.samples(), stored.maps.len()), (1, 16, 4));

    let config = Config::load(&cfg).unwrap();
    let mut engine = Engine::new(&config.to_engine_spec()).unwrap();
    let keys: Vec<(String, String)> =
        engine.keys().iter().map(|k| (k.layer.clone(), k.method.as_str().to_string())).collect();
    let reference_means = mean_maps(&mut engine, reference.view());

    let stream = digits();
    let clean = stream.slice(s![0..12, .., .., ..]).to_owned();
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(3);
    let noise = Normal::new(0.0f32, 1.0).unwrap();
    let noisy =
        stream.slice(s![12..24, .., .., ..]).mapv(|v| (v + 0.6 * noise.sample(&mut rng)).clamp(0.0, 1.0));

    let mut clean_change = Vec::new();
    for (phase, x) in [(1u64, &clean), (2, &noisy)] {
        let name = if phase == 1 { "clean" } else { "noisy" };
        let tmp = inbox.join(format!("{name}.tmp"));
        x.write_npy(std::fs::File::create(&tmp).unwrap()).unwrap();
        std::fs::rename(&tmp, inbox.join(format!("{name}.npy"))).unwrap();
        // The window then holds exactly this phase's 12 samples (window.samples = 12, every = 1).
        let v = wait_until(&format!("the {name} samples' maps"), Duration::from_secs(120), &log, || {
            api(daemon.port, "/api/v1/maps")
                .map(|r| r.json())
                .filter(|v| v["samples_seen"] == 12 * phase && v["window_maps"] == 12)
        });
        assert_eq!(v["every"], 1);
        assert!(v["error"].is_null(), "{}", v["error"]);
        assert!(v["reference_note"].is_null(), "{}", v["reference_note"]);
        let window_means = mean_maps(&mut engine, x.view());
        let maps = v["maps"].as_array().unwrap();
        assert_eq!(maps.len(), keys.len());
        let mut moved = false;
        for (i, ((layer, method), m)) in keys.iter().zip(maps).enumerate() {
            let what = format!("{name} {layer}/{method}");
            assert_eq!(m["layer"], layer.as_str());
            assert_eq!(m["method"], method.as_str());
            let (h, w) = window_means[i].dim();
            assert_eq!(m["shape"], serde_json::json!([h, w]), "{what}");
            assert_eq!((m["window_samples"].as_u64(), m["reference_samples"].as_u64()), (Some(12), Some(16)));
            let (window, reference) = (grid(&m["window"]), grid(&m["reference"]));
            let difference = grid(&m["difference"]);
            assert_close(&window, &window_means[i], &format!("{what}: window"));
            assert_close(&reference, &reference_means[i], &format!("{what}: reference"));
            let expected = &window_means[i] - &reference_means[i];
            assert_close(&difference, &expected, &format!("{what}: difference"));
            // How far the window's map is from the reference's, relative to the reference's size.
            let change = mean_abs(&difference) / mean_abs(&reference).max(1e-12);
            eprintln!("{what}: mean |window − reference| / mean |reference| = {change:.4}");
            if phase == 1 {
                clean_change.push(change);
            } else {
                moved |= change > 2.0 * clean_change[i] + 0.01;
            }
        }
        // Noisy digits move some map well beyond where clean digits leave it.
        assert!(phase == 1 || moved, "noise did not move any map (clean: {clean_change:?})");
    }

    // The landing page (no token needed, like its score table) draws three maps per pair, one
    // coloured cell per grid cell, with legends; it reloads itself.
    let page = get(daemon.port, "/").unwrap();
    assert_eq!(page.code, 200);
    assert!(page.body.contains("http-equiv=\"refresh\""));
    for (i, (layer, method)) in keys.iter().enumerate() {
        let (h, w) = reference_means[i].dim();
        for kind in ["reference", "window", "difference"] {
            let tag = format!(
                "data-layer=\"{layer}\" data-method=\"{method}\" data-kind=\"{kind}\" data-cells=\"{h}x{w}\""
            );
            let at = page.body.find(&tag).unwrap_or_else(|| panic!("no {kind} map of {layer}/{method}"));
            let svg = &page.body[at..at + page.body[at..].find("</svg>").unwrap()];
            assert_eq!(svg.matches("<rect ").count(), h * w, "{layer}/{method} {kind}");
        }
    }
    assert!(page.body.matches("class=\"legend\"").count() >= 2 * keys.len());
}

/// Three shards of 10 reference digits with at most 4 mapped (every third: 0, 3, 6, 9) merge into
/// the single process's reference maps; a baseline without maps still loads in the daemon's check.
#[test]
fn sharded_reference_maps_merge_into_the_single_process_ones() {
    let d = tempfile::tempdir().unwrap();
    let dir = d.path();
    reference_digits(10).write_npy(std::fs::File::create(dir.join("reference.npy")).unwrap()).unwrap();
    std::fs::create_dir(dir.join("inbox")).unwrap();
    let cfg = DemoConfig {
        model: "smoothing_points = 1".into(),
        baseline: format!("path = \"{}/baseline.json\"", dir.display()),
        rest: format!(
            "[maps]\nreference_samples = 4\n\n[[sources]]\ntype = \"dir\"\nname = \"inbox\"\npath = \"{}\"\n",
            dir.join("inbox").display()
        ),
        ..DemoConfig::default()
    }
    .write(dir);
    let (c, r) = (cfg.to_str().unwrap(), dir.join("reference.npy"));
    let r = r.to_str().unwrap();
    let whole = dir.join("whole.json");
    agent_ok(
        run_agent(&["baseline", "--config", c, "--reference", r, "--out", whole.to_str().unwrap()]),
        "whole",
    );
    let parts: Vec<String> = baseline_shards(c, r, dir, 3).into_iter().map(|(p, _)| p).collect();
    let merged = dir.join("merged.json");
    let mut args = vec!["baseline", "merge"];
    args.extend(parts.iter().map(|s| s.as_str()));
    args.extend(["--out", merged.to_str().unwrap()]);
    agent_ok(run_agent(&args), "merge");
    let (whole, merged) = (read_baseline(&whole), read_baseline(&merged));
    let (a, b) = (whole.maps.as_ref().unwrap(), merged.maps.as_ref().unwrap());
    assert_eq!((a.stride, a.samples()), (3, 4));
    assert_eq!((b.stride, b.samples()), (3, 4));
    for (x, y) in a.maps.iter().zip(&b.maps) {
        assert_eq!((&x.layer, x.method, x.shape), (&y.layer, y.method, y.shape));
        assert_close(&y.to_array(), &x.to_array(), &format!("{}/{}", x.layer, x.method.as_str()));
    }
    // Shard 1 owns 1, 4, 7 of which none is a multiple of 3; shard 0 owns 0, 3, 6, 9: all four.
    assert_eq!(read_baseline(Path::new(&parts[0])).maps.unwrap().samples(), 4);
    assert_eq!(read_baseline(Path::new(&parts[1])).maps.unwrap().samples(), 0);

    // Without maps (an older file): `agent check` still accepts the baseline.
    let mut old: Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("whole.json")).unwrap()).unwrap();
    old.as_object_mut().unwrap().remove("maps");
    std::fs::write(dir.join("baseline.json"), serde_json::to_string_pretty(&old).unwrap()).unwrap();
    agent_ok(run_agent(&["check", "--config", c]), "check with a baseline without maps");
}
