//! Per-sample cost of scoring token samples ([`Engine::score_tokens`]) on the committed text fixture
//! (`tests/models/text/encoder.onnx`: BERT-style, hidden 32 = D, 2 layers, 4 heads), vanilla maps at
//! the output of encoder layer 0, exact estimator (D = 32 cotangent rows), S = 1.
//!
//! ```text
//! cargo build --release -p agent --example text_bench
//! target/release/examples/text_bench [--threads 2] [--max-length 128]
//! ```
//!
//! Without `length_buckets` the graph is compiled at `max_length` and every batch is padded to it,
//! so a sample costs the same whatever its own length; the bench shows it with samples of
//! `max_length` tokens and of 16 tokens, then the 16-token samples again with `length_buckets = [16]`
//! (their batches run on a graph compiled at 16 tokens).
//! Marginal time per sample is `(t(2b) − t(b)) / b` (start-up and per-call overheads drop out), as
//! process CPU time (all threads, /proc/self/stat) and wall time. The noise maps of a new length are
//! computed on its first sample (a cache miss costs `n_noise` samples); the bench warms them first
//! and reports the miss separately.

use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::engine::{Engine, EngineSpec, LayerSpec, TextSettings, TokenSample};
use agent::scores::Method;
use rand::{Rng, SeedableRng};

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// Process CPU seconds (user + system, all threads).
fn cpu_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    let fields: Vec<&str> = stat.rsplit(')').next().unwrap_or("").split_whitespace().collect();
    let ticks: f64 = fields.get(11..13).map_or(0.0, |f| f.iter().filter_map(|v| v.parse::<f64>().ok()).sum());
    ticks / 100.0
}

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn samples(n: usize, len: usize, seed: u64) -> Vec<TokenSample> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    (0..n)
        .map(|_| {
            let mut ids = vec![2i64];
            ids.extend((0..len - 2).map(|_| rng.random_range(5..1000i64)));
            ids.push(3);
            TokenSample::new(ids)
        })
        .collect()
}

/// (CPU, wall) seconds of scoring `xs`.
fn time(engine: &mut Engine, xs: &[TokenSample]) -> (f64, f64) {
    let (c0, w0) = (cpu_s(), Instant::now());
    engine.score_tokens(xs).expect("score");
    (cpu_s() - c0, w0.elapsed().as_secs_f64())
}

fn main() {
    let threads = arg("--threads", 2);
    let t = arg("--max-length", 128);
    let manifest: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(repo().join("tests/models/text/manifest.json")).expect("manifest"),
    )
    .expect("manifest json");
    let mut spec = EngineSpec::new(&repo().join("tests/models/text/encoder.onnx"), "embedding");
    spec.layers = vec![LayerSpec {
        name: "layer0".into(),
        tensor: manifest["layer"].as_str().unwrap().into(),
        ..Default::default()
    }];
    spec.score.methods = Some(vec![Method::Vanilla]);
    spec.runtime.threads = Some(threads);
    spec.text = TextSettings {
        max_length: Some(t),
        noise_exclude_ids: Some(vec![0, 1, 2, 3, 4]),
        ..Default::default()
    };
    let start = Instant::now();
    let mut engine = Engine::new(&spec).expect("engine");
    println!(
        "text fixture (D = {}, T = {t}, {threads} threads): engine ready in {:.2} s (compile + noise maps at T)",
        engine.embedding_dim(),
        start.elapsed().as_secs_f64()
    );
    let short = 16.min(t);
    bench(&mut engine, &[t, short]);
    spec.text.length_buckets = Some(vec![short]);
    let mut engine = Engine::new(&spec).expect("engine");
    println!("with length_buckets = [{short}]:");
    bench(&mut engine, &[short]);
}

fn bench(engine: &mut Engine, lengths: &[usize]) {
    let b = 32;
    for &len in lengths {
        let warm = samples(1, len, 1);
        let (miss_cpu, miss_wall) = time(engine, &warm); // the first sample of this length
        let (hit_cpu, hit_wall) = time(engine, &warm);
        let mut best: Option<(f64, f64)> = None;
        for rep in 0..3 {
            let (c1, w1) = time(engine, &samples(b, len, 10 + rep));
            let (c2, w2) = time(engine, &samples(2 * b, len, 20 + rep));
            let m = ((c2 - c1) / b as f64, (w2 - w1) / b as f64);
            best = Some(best.map_or(m, |x: (f64, f64)| (x.0.min(m.0), x.1.min(m.1))));
        }
        let (cpu, wall) = best.unwrap();
        println!(
            "  {len:3}-token samples: marginal {:.1} ms CPU, {:.1} ms wall per sample (best of 3, b = {b}); \
             one sample alone {:.1} ms wall, its length's first sample {:.1} ms wall ({:.1} ms more CPU: \
             noise maps, a bucket's compile)",
            cpu * 1e3,
            wall * 1e3,
            hit_wall * 1e3,
            miss_wall * 1e3,
            (miss_cpu - hit_cpu).max(0.0) * 1e3
        );
    }
}
