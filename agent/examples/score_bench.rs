//! The side-by-side bench of issue 11: per-sample marginal time of [`Engine::score_batch`] on the
//! paper's MNIST-style encoder (D = 10), an AlexNet-like stack at 64×64 with overlapping pools
//! (D = 32) and a ResNet-18 at 64×64 with a layer3+4 tail (D = 512), vanilla maps at a middle layer,
//! S = 1 and S = 16, 2 threads — next to PyTorch's figures for the same graphs when they exist.
//!
//! ```text
//! ~/torch-env/bin/python tools/bench_torch.py --out target/bench     # models + PyTorch timings
//! cargo build --release -p agent --example score_bench
//! target/release/examples/score_bench target/bench [--threads 2] [--quick]
//! ```
//!
//! `tools/bench_torch.py` builds the architectures in PyTorch, exports them to ONNX (so both sides
//! time the same graphs) and writes `bench.json` with its timings; `--export-only` skips the timing.
//! Without that directory the bench falls back to the committed test models `mnist_encoder`
//! (D = 32) and `alexnet_small` (67×67, D = 64), and prints no ratios.
//!
//! Marginal time per sample is `(t(2b) − t(b)) / b`: start-up and per-call overheads drop out; the
//! amortised time `t(2b) / 2b` keeps them (for PyTorch's loop over a small model they are most of the
//! cost). Each cell is process CPU time (all threads, from /proc/self/stat): on a machine shared with
//! other work, wall time measures the other work. The wall-clock marginal is the last column.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::engine::{Engine, EngineSpec, LayerSpec, RuntimeSettings, ScoreSettings};
use agent::runtime::Provider;
use ndarray::ArrayD;
use rand::{Rng, SeedableRng};

#[path = "common/proc_stats.rs"]
mod proc_stats;
use proc_stats::{cpu_seconds, load_average};

struct Case {
    name: String,
    model: PathBuf,
    layer: String,
    input_shape: Vec<usize>,
    points: Vec<usize>,
    /// PyTorch's figures per S: ("loop" | "vjp") → (wall ms, CPU ms) per sample.
    torch: serde_json::Value,
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn cases(dir: &Path) -> Vec<Case> {
    let json = dir.join("bench.json");
    if let Ok(text) = std::fs::read_to_string(&json) {
        let v: serde_json::Value = serde_json::from_str(&text).expect("bench.json");
        let mut out = Vec::new();
        for name in ["encoder", "alexnet", "resnet18"] {
            let c = &v["cases"][name];
            if c.is_null() {
                continue;
            }
            out.push(Case {
                name: name.into(),
                model: PathBuf::from(c["model"].as_str().unwrap()),
                layer: c["layer"].as_str().unwrap().into(),
                input_shape: c["input_shape"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                points: c["points"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|d| d.as_u64().unwrap() as usize)
                    .collect(),
                torch: c["torch"].clone(),
            });
        }
        return out;
    }
    eprintln!(
        "{} not found: run tools/bench_torch.py (needs PyTorch) for the issue's architectures and the \
         PyTorch figures; timing the committed test models instead",
        json.display()
    );
    let models = repo().join("tests/models");
    vec![
        Case {
            name: "mnist_encoder (test model, D = 32)".into(),
            model: models.join("mnist_encoder.onnx"),
            layer: "/block1/pool/MaxPool_output_0".into(),
            input_shape: vec![1, 28, 28],
            points: vec![1, 16],
            torch: serde_json::Value::Null,
        },
        Case {
            name: "alexnet_small (test model, D = 64)".into(),
            model: models.join("alexnet_small.onnx"),
            layer: "pool1".into(),
            input_shape: vec![3, 67, 67],
            points: vec![1, 16],
            torch: serde_json::Value::Null,
        },
    ]
}

/// Mean (wall, CPU) seconds of one `score_batch` on `x`, repeated until `min_secs` have passed.
fn time_batch(engine: &mut Engine, x: &ArrayD<f32>, min_secs: f64) -> (f64, f64) {
    let (w0, c0) = (Instant::now(), cpu_seconds());
    let mut n = 0;
    while n < 2 || w0.elapsed().as_secs_f64() < min_secs {
        engine.score_batch(x.view()).expect("scoring");
        n += 1;
    }
    (w0.elapsed().as_secs_f64() / n as f64, (cpu_seconds() - c0) / n as f64)
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let dir =
        args.iter().find(|a| !a.starts_with("--")).map(PathBuf::from).unwrap_or(repo().join("target/bench"));
    let threads: usize = args
        .iter()
        .position(|a| a == "--threads")
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let min_secs = if args.iter().any(|a| a == "--quick") { 0.3 } else { 2.0 };
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(0);
    println!(
        "ONNX Runtime CPU, {threads} intra-op threads; CPU ms per sample, marginal (t(2b) − t(b)) / b and amortised t(2b) / 2b; load average at start: {}",
        load_average()
    );
    println!();
    println!(
        "| model | S | authors' loop | batched VJP | agent | VJP ÷ agent | loop ÷ agent | issue 11 target | agent runs per batch | wall marginal: loop / VJP / agent |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for case in cases(&dir) {
        for &s in &case.points {
            let mut spec = EngineSpec::new(&case.model, "embedding");
            spec.layers =
                vec![LayerSpec { name: "mid".into(), tensor: case.layer.clone(), ..Default::default() }];
            spec.score = ScoreSettings { smoothing_points: Some(s), ..ScoreSettings::default() };
            spec.runtime = RuntimeSettings {
                providers: Some(vec![Provider::Cpu]),
                threads: Some(threads),
                ..RuntimeSettings::default()
            };
            let mut engine = Engine::new(&spec).unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
            let d = engine.embedding_dim();
            // The sizes of tools/bench_torch.py's `batch_size`.
            let b = if d >= 256 {
                1
            } else if s == 1 {
                32
            } else {
                4
            };
            let batch = |n: usize, rng: &mut rand_chacha::ChaCha8Rng| {
                let mut shape = vec![n];
                shape.extend(&case.input_shape);
                ArrayD::from_shape_fn(shape, |_| rng.random::<f32>())
            };
            let (x1, x2) = (batch(b, &mut rng), batch(2 * b, &mut rng));
            engine.score_batch(x2.view()).expect("warm-up");
            let (w1, c1) = time_batch(&mut engine, &x1, min_secs);
            let (w2, c2) = time_batch(&mut engine, &x2, min_secs);
            let wall = (w2 - w1).max(0.0) / b as f64 * 1e3;
            let cpu = (c2 - c1).max(0.0) / b as f64 * 1e3;
            let amortised = c2 / (2 * b) as f64 * 1e3;
            let plan = engine.plan(2 * b);
            let runs = (2 * b).div_ceil(plan.samples_per_run) * d.div_ceil(plan.rows_per_run);
            let t = &case.torch[s.to_string()];
            // (marginal CPU, amortised CPU, marginal wall) of one PyTorch way, when measured.
            let fig = |k: &str| -> Option<(f64, f64, f64)> {
                let v = &t[k];
                Some((v["cpu_ms"].as_f64()?, v["amortised_cpu_ms"].as_f64()?, v["wall_ms"].as_f64()?))
            };
            let cell = |f: Option<(f64, f64, f64)>| match f {
                Some((m, a, _)) => format!("{m:.2} / {a:.2}"),
                None => "—".into(),
            };
            let ratio = |f: Option<(f64, f64, f64)>| match f {
                Some((m, _, _)) if cpu > 0.0 && m > 0.0 => format!("{:.1}×", m / cpu),
                _ => "—".into(),
            };
            let wall_of =
                |f: Option<(f64, f64, f64)>| f.map(|(_, _, w)| format!("{w:.2}")).unwrap_or("—".into());
            let (lp, vjp) = (fig("loop"), fig("vjp"));
            // Issue 11: S = 16 at least 1.5× the batched VJP and 10× the loop; S = 1 at least 3× the VJP
            // (the ResNet-18 has no target).
            let target = match (vjp, lp) {
                _ if case.name.starts_with("resnet") || cpu <= 0.0 => "—".to_string(),
                (Some((v, _, _)), Some((l, _, _))) if s > 1 => {
                    let ok = v / cpu >= 1.5 && l / cpu >= 10.0;
                    format!("{} (≥ 1.5× VJP, ≥ 10× loop)", if ok { "met" } else { "not met" })
                }
                (Some((v, _, _)), _) if s == 1 => {
                    format!("{} (≥ 3× VJP)", if v / cpu >= 3.0 { "met" } else { "not met" })
                }
                _ => "—".to_string(),
            };
            println!(
                "| {} (D = {d}) | {s} | {} | {} | {cpu:.2} / {amortised:.2} | {} | {} | {target} | {runs} for {} samples | {} / {} / {wall:.2} |",
                case.name,
                cell(lp),
                cell(vjp),
                ratio(vjp),
                ratio(lp),
                2 * b,
                wall_of(lp),
                wall_of(vjp),
            );
        }
    }
    println!();
    println!("load average at the end: {}", load_average());
}
