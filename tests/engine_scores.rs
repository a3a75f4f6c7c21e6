//! The engine's scores against the independent numpy reference (`tools/reference_scores.py`), which
//! computes them from raw Jacobians that ONNX Runtime produces through an uncompressed attribution
//! graph. Needs the project's Python tools (`scripts/install-onnxruntime.sh` makes `.venv`).

mod support;

use std::path::Path;
use std::process::Command;

use agent::compiler::{self, CompileOptions};
use agent::engine::{Engine, EngineSpec, LayerSpec, SmoothingReference};
use agent::onnx;
use agent::scores::{Aggregation, Method};
use ndarray::{ArrayD, Axis, IxDyn};
use support::*;

const LAYER: &str = "/block1/pool/MaxPool_output_0";

pub fn spec(model: &Path, layer: &str, methods: Vec<Method>) -> EngineSpec {
    let mut spec = EngineSpec {
        layers: vec![LayerSpec { name: "conv2_in".into(), tensor: layer.into(), ..Default::default() }],
        ..EngineSpec::new(model, "embedding")
    };
    spec.score.methods = Some(methods);
    spec.score.rows_per_run = Some(8);
    spec.noise.n_noise = Some(3);
    spec.runtime.threads = Some(1);
    spec
}

/// Raw Jacobian `[D, C, H, W]` and activation `[C, H, W]` of one sample at the layer.
fn raw(model: &onnx::proto::ModelProto, x: &ArrayD<f32>) -> (ArrayD<f32>, ArrayD<f32>) {
    let opts = CompileOptions {
        embedding: "embedding".into(),
        layers: vec![LAYER.into()],
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        layouts: vec![],
    };
    let g = compiler::compile(model, "t", &opts).unwrap();
    let d = g.embedding_dim;
    let eye = ArrayD::from_shape_fn(IxDyn(&[d, d]), |i| if i[0] == i[1] { 1.0f32 } else { 0.0 });
    let xb = x.clone().insert_axis(Axis(0));
    let jac =
        run(&g.to_bytes(), vec![("input", xb.clone()), (compiler::COTANGENT, eye)], &["attr/0/vanilla"])
            .remove(0);
    let h = run(&with_output(model, LAYER), vec![("input", xb)], &[LAYER]).remove(0);
    (jac.index_axis(Axis(0), 0).to_owned(), h.index_axis(Axis(0), 0).to_owned())
}

#[test]
fn scores_match_the_numpy_reference() {
    let entry = manifest().into_iter().find(|e| e.name == "mnist_encoder").unwrap();
    let model = onnx::decode(&std::fs::read(entry.path()).unwrap()).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let noise: Vec<ArrayD<f32>> = (0..3).map(|i| uniform(&[1, 28, 28], 100 + i)).collect();
    let mut noise_files = Vec::new();
    let mut noise_args = Vec::new();
    for (i, n) in noise.iter().enumerate() {
        let p = dir.path().join(format!("noise{i}.npy"));
        ndarray_npy::write_npy(&p, n).unwrap();
        noise_files.push(p);
        let (j, h) = raw(&model, n);
        let (jp, hp) = (dir.path().join(format!("njac{i}.npy")), dir.path().join(format!("nact{i}.npy")));
        ndarray_npy::write_npy(&jp, &j).unwrap();
        ndarray_npy::write_npy(&hp, &h).unwrap();
        noise_args.extend(["--noise-jac".to_string(), jp.display().to_string()]);
        noise_args.extend(["--noise-act".to_string(), hp.display().to_string()]);
    }
    let xs: Vec<ArrayD<f32>> = (0..2).map(|i| uniform(&[1, 28, 28], 200 + i)).collect();
    let mut sample_args = Vec::new();
    for (i, x) in xs.iter().enumerate() {
        let (j, h) = raw(&model, x);
        let (jp, hp) = (dir.path().join(format!("jac{i}.npy")), dir.path().join(format!("act{i}.npy")));
        ndarray_npy::write_npy(&jp, &j).unwrap();
        ndarray_npy::write_npy(&hp, &h).unwrap();
        sample_args.push((jp, hp));
    }
    let batch = ndarray::stack(Axis(0), &[xs[0].view(), xs[1].view()]).unwrap();
    let combos = [
        (Aggregation::Abs, Aggregation::Var, false, None),
        (Aggregation::Var, Aggregation::Abs, true, Some(0.5)),
        (Aggregation::Mean, Aggregation::Mean, false, None),
    ];
    let mut worst = 0.0f64;
    for (chan, emb, norm, bin) in combos {
        let mut s = spec(&entry.path(), LAYER, Method::ALL.to_vec());
        s.score.channel_agg = Some(chan);
        s.score.embedding_agg = Some(emb);
        s.score.normalize_dims = norm;
        s.score.binarize = bin;
        s.noise.inputs = noise_files.clone();
        s.score.rows_per_run = Some(7); // not a divisor of D = 32: exercises a short last chunk
        let mut engine = Engine::new(&s).unwrap();
        let scores = engine.score_batch(batch.view().into_dyn()).unwrap();
        for (ki, key) in engine.keys().iter().enumerate() {
            for (si, (jp, hp)) in sample_args.iter().enumerate() {
                let mut cmd = Command::new(python());
                cmd.arg(repo_root().join("tools/reference_scores.py"))
                    .args(["--jac", &jp.display().to_string(), "--act", &hp.display().to_string()])
                    .args(&noise_args)
                    .args([
                        "--method",
                        key.method.as_str(),
                        "--channel-agg",
                        chan.as_str(),
                        "--embedding-agg",
                        emb.as_str(),
                    ]);
                if norm {
                    cmd.arg("--normalize-dims");
                }
                if let Some(t) = bin {
                    cmd.args(["--binarize", &t.to_string()]);
                }
                let out = cmd.output().expect("running the numpy reference (is .venv installed?)");
                assert!(out.status.success(), "reference failed: {}", String::from_utf8_lossy(&out.stderr));
                let want: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
                let got = scores[si].scores[ki];
                let pairs = [
                    ("noise_score", got.noise_score, want["noise_score"].as_f64().unwrap()),
                    ("variance_score", got.variance_score, want["variance_score"].as_f64().unwrap()),
                    ("noise_benchmark", key.noise_benchmark, want["noise_benchmark"].as_f64().unwrap()),
                ];
                for (what, g, w) in pairs {
                    let err = (g - w).abs();
                    worst = worst.max(err);
                    assert!(
                        err <= 1e-5,
                        "{what} for {:?} {chan:?}/{emb:?} normalize_dims={norm} binarize={bin:?} sample {si}: agent {g}, numpy {w}",
                        key.method
                    );
                }
                assert!((0.0..=1.0).contains(&got.noise_score) && (0.0..=0.25).contains(&got.variance_score));
            }
        }
    }
    eprintln!("worst |agent − numpy| over all scores: {worst:.2e}");
}

/// docs/spec/scores.md#smoothed-attributions: `S = 1, σ = 0` is the plain gradient, exactly; and with the
/// interpolation collapsed (`x_ref = x`, reference "input", so `x̃ = x + t·σ·ε`) the smoothed scores converge
/// to the plain ones as `σ → 0`.
#[test]
fn smoothed_scores_converge_to_the_plain_ones() {
    let model = repo_root().join("models/digits/encoder.onnx");
    let layer = "/pool1/MaxPool_output_0";
    let x = uniform(&[1, 28, 28], 77);
    let batch = x.clone().insert_axis(Axis(0));
    let score = |samples: usize, sigma: f32, reference: SmoothingReference| {
        let mut s = spec(&model, layer, vec![Method::Vanilla, Method::ActGrad]);
        s.score.smoothing_points = Some(samples);
        s.score.smoothing = Some(sigma);
        s.score.smoothing_reference = Some(reference);
        let mut e = Engine::new(&s).unwrap();
        e.score_batch(batch.view().into_dyn()).unwrap().remove(0).scores
    };
    let plain = score(1, 0.0, SmoothingReference::Black);
    assert_eq!(score(1, 0.0, SmoothingReference::Input), plain, "S = 1, σ = 0 must be the plain gradient");
    let mut last = f64::MAX;
    for sigma in [0.3f32, 0.03, 0.003, 0.0003] {
        let smoothed = score(8, sigma, SmoothingReference::Input);
        let gap = pairs(&plain, &smoothed)
            .map(|(p, s)| {
                (p.noise_score - s.noise_score).abs().max((p.variance_score - s.variance_score).abs())
            })
            .fold(0.0, f64::max);
        eprintln!("σ = {sigma}: max |smoothed − plain| = {gap:.2e}");
        assert!(gap <= last * 1.5 + 1e-6, "no convergence at σ = {sigma}: {gap} after {last}");
        last = gap;
    }
    assert!(last < 2e-3, "smoothed scores at σ = 3e-4 still differ by {last}");
    // With the black reference (the default), draws interpolate towards zero: a different score.
    let black = score(8, 0.0003, SmoothingReference::Black);
    assert!(pairs(&black, &plain).any(|(b, p)| (b.noise_score - p.noise_score).abs() > 1e-3));
}

/// docs/spec/scores.md#cost cost options against the exact path on the digit encoder (D = 32): the one-pass
/// mean map is exact (up to float32 rounding); Hutchinson probes estimate the `var` map, and with many probes
/// the noise score comes close; an estimator that does not apply to the settings is refused.
#[test]
fn mean_map_is_exact_and_hutchinson_estimates() {
    use agent::engine::Estimator;
    let model = repo_root().join("models/digits/encoder.onnx");
    let layer = "/pool1/MaxPool_output_0";
    let batch = uniform(&[4, 1, 28, 28], 31);
    let run = |estimator: Estimator, embedding_agg: Aggregation, probes: usize| {
        let mut s = spec(&model, layer, vec![Method::Vanilla, Method::ActGrad]);
        s.score.channel_agg = Some(Aggregation::Mean);
        s.score.embedding_agg = Some(embedding_agg);
        s.score.estimator = Some(estimator);
        s.score.probes = Some(probes);
        let mut e = Engine::new(&s).unwrap();
        let bench: Vec<f64> = e.keys().iter().map(|k| k.noise_benchmark).collect();
        (e.score_batch(batch.view().into_dyn()).unwrap(), bench)
    };
    let (exact, exact_bench) = run(Estimator::Exact, Aggregation::Mean, 0);
    let (one_pass, one_pass_bench) = run(Estimator::MeanMap, Aggregation::Mean, 0);
    for (a, b) in pairs(&exact, &one_pass) {
        for (x, y) in pairs(&a.scores, &b.scores) {
            assert!((x.noise_score - y.noise_score).abs() < 1e-4, "{x:?} vs {y:?}");
            assert_eq!(x.variance_score, y.variance_score, "VS comes from the same component rows");
        }
    }
    for (x, y) in pairs(&exact_bench, &one_pass_bench) {
        assert!((x - y).abs() < 1e-4);
    }
    let (exact, _) = run(Estimator::Exact, Aggregation::Var, 0);
    let (hutch, _) = run(Estimator::Hutchinson, Aggregation::Var, 512);
    let mut worst = 0.0f64;
    for (a, b) in pairs(&exact, &hutch) {
        for (x, y) in pairs(&a.scores, &b.scores) {
            worst = worst.max((x.noise_score - y.noise_score).abs());
        }
    }
    eprintln!("Hutchinson (512 probes) vs exact noise score, D = 32: max abs error {worst:.4}");
    assert!(worst < 0.03, "Hutchinson error {worst}");
    let mut bad = spec(&model, layer, vec![Method::GradCam]);
    bad.score.estimator = Some(Estimator::MeanMap);
    let e = Engine::new(&bad).err().expect("mean_map with gradcam and abs must be refused").to_string();
    assert!(e.contains("mean_map") && e.contains("channel_agg"), "{e}");
}

/// Smoothing draws are seeded per sample from its content: a sample's smoothed score is the same
/// whatever its position in a batch or its neighbours, and two different samples get different draws.
#[test]
fn smoothed_scores_do_not_depend_on_batch_position() {
    let model = repo_root().join("models/digits/encoder.onnx");
    let mut s = spec(&model, "/pool1/MaxPool_output_0", vec![Method::Vanilla]);
    s.score.smoothing_points = Some(4);
    s.score.smoothing = Some(0.5);
    let mut e = Engine::new(&s).unwrap();
    let (x, y, z) = (uniform(&[1, 28, 28], 1), uniform(&[1, 28, 28], 2), uniform(&[1, 28, 28], 3));
    let alone = e.score_batch(x.clone().insert_axis(Axis(0)).view().into_dyn()).unwrap().remove(0);
    let batch = ndarray::stack(Axis(0), &[y.view(), z.view(), x.view()]).unwrap();
    let in_batch = e.score_batch(batch.view().into_dyn()).unwrap();
    for (a, b) in pairs(&alone.scores, &in_batch[2].scores) {
        assert!(
            (a.noise_score - b.noise_score).abs() < 1e-9
                && (a.variance_score - b.variance_score).abs() < 1e-9
        );
    }
    assert_ne!(in_batch[0].scores[0].noise_score, in_batch[1].scores[0].noise_score);
}

/// How the memory limit splits a batch into runs (samples per run, cotangent rows per run) changes no
/// score: one run for the whole batch, two samples per run with every row, and one sample and one
/// row per run give the same scores, and the same noise benchmark.
#[test]
fn run_sizes_chosen_from_the_memory_limit_change_no_score() {
    let model = repo_root().join("models/digits/encoder.onnx");
    let batch = ndarray::stack(
        Axis(0),
        &[uniform(&[1, 28, 28], 4).view(), uniform(&[1, 28, 28], 5).view(), uniform(&[1, 28, 28], 6).view()],
    )
    .unwrap();
    let run = |limit: u64, expect_samples: usize, expect_rows: usize| {
        let mut s = spec(&model, "/pool1/MaxPool_output_0", vec![Method::Vanilla, Method::ActGrad]);
        s.score.rows_per_run = None;
        s.score.smoothing_points = Some(2);
        s.runtime.memory_limit_bytes = Some(limit);
        let mut e = Engine::new(&s).unwrap();
        let plan = e.plan(3);
        assert_eq!((plan.samples_per_run, plan.rows_per_run), (expect_samples, expect_rows), "limit {limit}");
        let scores = e.score_batch(batch.view().into_dyn()).unwrap();
        (e.keys().to_vec(), scores)
    };
    // The digit encoder: D = 32; one (point, row) is estimated at 4 × 8·14·14 × 10 = 62720 bytes.
    let unit = 62720u64;
    let (keys, whole) = run(1 << 40, 3, 32);
    for (limit, samples, rows) in [(2 * 2 * 32 * unit, 2, 32), (1, 1, 1), (2 * 5 * unit, 1, 5)] {
        let (k, split) = run(limit, samples, rows);
        for (a, b) in pairs(&keys, &k) {
            assert!((a.noise_benchmark - b.noise_benchmark).abs() < 1e-6, "limit {limit}");
        }
        for (x, y) in pairs(&whole, &split) {
            for (a, b) in pairs(&x.scores, &y.scores) {
                assert!(
                    (a.noise_score - b.noise_score).abs() < 1e-6
                        && (a.variance_score - b.variance_score).abs() < 1e-6,
                    "limit {limit}: {a:?} vs {b:?}"
                );
            }
        }
    }
}

/// The IoBinding run path (on by default for CUDA sessions) gives the scores of the plain one, on the
/// CPU, with the rows chunked so that the bound points serve several runs.
#[test]
fn io_binding_runs_give_the_same_scores() {
    let model = repo_root().join("models/digits/encoder.onnx");
    let batch =
        ndarray::stack(Axis(0), &[uniform(&[1, 28, 28], 7).view(), uniform(&[1, 28, 28], 8).view()]).unwrap();
    let mut s = spec(&model, "/pool1/MaxPool_output_0", vec![Method::Vanilla, Method::ActGrad]);
    s.score.smoothing_points = Some(2);
    s.score.rows_per_run = Some(5);
    let mut e = Engine::new(&s).unwrap();
    let plain = e.score_batch(batch.view().into_dyn()).unwrap();
    e.set_io_binding(true);
    let bound = e.score_batch(batch.view().into_dyn()).unwrap();
    assert_eq!(plain.len(), 2);
    for (x, y) in pairs(&plain, &bound) {
        for (a, b) in pairs(&x.scores, &y.scores) {
            assert_eq!((a.noise_score, a.variance_score), (b.noise_score, b.variance_score));
        }
    }
}
