//! Reproduces the paper's experiments (§4.1, §4.3, §4.4, figure 2) and the spec's estimator errors
//! (`docs/spec/scores.md#cost`) with the agent's own code: [`Engine`] (attribution graph in ONNX Runtime),
//! its
//! `score_batch`, `run_rows` and the accumulators of `agent::scores`. Writes plain CSV/JSON; the
//! figures come from `tools/plot_reproduction.py`, and `scripts/reproduce.sh` runs both.
//!
//! ```sh
//! cargo run --release -p agent --example reproduce -- --out docs/reproduction \
//!     --resnet target/repro-models/resnet18.onnx
//! ```
//!
//! Options: `--out DIR` (default `docs/reproduction`), `--resnet PATH` (the random-weight ResNet-18
//! from `tests/models/build_models.py --only resnet18`; without it the ResNet parts are skipped),
//! `--drift-n N` digits for the drift experiment (default 128), `--smooth-s S` points of the smoothed
//! estimator (default 50), `--resnet-n N` inputs for the ResNet experiments (default 4),
//! `--threads T` ONNX Runtime intra-op threads (default 2).
//!
//! Every number is computed here from a seeded run; nothing is typed in.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Instant;

use agent::compiler::{self, CompileOptions};
use agent::engine::{Engine, EngineSpec, LayerSpec, SampleScores};
use agent::scores::{
    self, Aggregation, Method, NoiseReference, ScoreAccumulator, choose_dims, embedding_aggregate,
    hutchinson_probes, hutchinson_variance,
};
use anyhow::{Context, Result, bail};
use ndarray::{Array2, Array3, Array4, ArrayD, ArrayView3, ArrayViewD, Axis, IxDyn, s};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::{Value, json};

const ENCODER: &str = "models/digits/encoder.onnx";
const UNTRAINED: &str = "models/digits/encoder_untrained.onnx";
const REFERENCE: &str = "models/digits/reference.npy";
const ALEXNET: &str = "tests/models/alexnet_small.onnx";
const POOL1: &str = "/pool1/MaxPool_output_0";
const POOL2: &str = "/pool2/MaxPool_output_0";
const DIGIT_LAYERS: [(&str, &str); 2] = [("conv2_in", POOL1), ("block2_out", POOL2)];
const RESNET_LAYERS: [(&str, &str); 4] = [
    ("layer1", "/layer1/layer1.1/relu_1/Relu_output_0"),
    ("layer2", "/layer2/layer2.1/relu_1/Relu_output_0"),
    ("layer3", "/layer3/layer3.1/relu_1/Relu_output_0"),
    ("layer4", "/layer4/layer4.1/relu_1/Relu_output_0"),
];
const ALEXNET_LAYERS: [(&str, &str); 2] = [("pool1", "pool1"), ("relu5", "relu5")];
const LAMBDAS: [f32; 10] = [0.0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9];
/// Seeds: which reference digits, the drift noise, the input subsets of the random models.
const DIGIT_SUBSET_SEED: u64 = 20240;
const DRIFT_SEED: u64 = 4400;

struct Args {
    out: PathBuf,
    resnet: Option<PathBuf>,
    drift_n: usize,
    smooth_s: usize,
    resnet_n: usize,
    threads: usize,
}

fn parse_args() -> Result<Args> {
    let mut a = Args {
        out: PathBuf::from("docs/reproduction"),
        resnet: None,
        drift_n: 128,
        smooth_s: 50,
        resnet_n: 4,
        threads: 2,
    };
    let mut it = std::env::args().skip(1);
    while let Some(flag) = it.next() {
        let mut val = || it.next().with_context(|| format!("{flag} needs a value"));
        match flag.as_str() {
            "--out" => a.out = PathBuf::from(val()?),
            "--resnet" => a.resnet = Some(PathBuf::from(val()?)),
            "--drift-n" => a.drift_n = val()?.parse()?,
            "--smooth-s" => a.smooth_s = val()?.parse()?,
            "--resnet-n" => a.resnet_n = val()?.parse()?,
            "--threads" => a.threads = val()?.parse()?,
            other => bail!("unknown option {other}"),
        }
    }
    Ok(a)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
    let started = Instant::now();
    let mut summary = serde_json::Map::new();
    summary.insert("run".into(), run_info(&args, "start"));

    let reference = load_digits()?;
    eprintln!("[reproduce] drift (§4.4) …");
    drift(&args, &reference)?;
    summary.insert("drift".into(), json!("drift.json"));
    eprintln!("[reproduce] digit score curves (§4.1, §4.3) …");
    let mut curves = CurveTable::default();
    summary.insert("digit_curves".into(), digit_curves(&args, &reference, &mut curves)?);
    eprintln!("[reproduce] alexnet_small (random weights) …");
    summary.insert("alexnet_small".into(), alexnet_curves(&args, &reference, &mut curves)?);
    eprintln!("[reproduce] digit estimator errors (docs/spec/scores.md#cost) …");
    let mut est = EstimatorTable::default();
    summary.insert("digit_estimators".into(), digit_estimators(&args, &reference, &mut est)?);
    eprintln!("[reproduce] digit timing …");
    let mut timing = Vec::new();
    digit_timing(&args, &reference, &mut timing)?;
    if let Some(resnet) = args.resnet.clone() {
        eprintln!("[reproduce] ResNet-18 (random weights): curves, estimators, timing …");
        summary.insert(
            "resnet18".into(),
            resnet18(&args, &resnet, &reference, &mut curves, &mut est, &mut timing)?,
        );
    } else {
        eprintln!("[reproduce] no --resnet given: ResNet-18 parts skipped");
    }
    curves.write(&args.out.join("curves.csv"))?;
    est.write(&args.out.join("estimators.csv"))?;
    write_timing(&args.out.join("timing.csv"), &timing)?;
    summary.insert("timing".into(), Value::Array(timing.iter().map(|t| t.json()).collect()));
    let mut end = run_info(&args, "end");
    end["elapsed_s"] = json!(started.elapsed().as_secs_f64());
    summary.insert("run_end".into(), end);
    std::fs::write(
        args.out.join("summary.json"),
        serde_json::to_string_pretty(&Value::Object(summary))? + "\n",
    )?;
    eprintln!("[reproduce] done in {:.0} s; data in {}", started.elapsed().as_secs_f64(), args.out.display());
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// Inputs and engine specifications
// ---------------------------------------------------------------------------------------------

fn load_digits() -> Result<ArrayD<f32>> {
    let a: ArrayD<f32> = ndarray_npy::read_npy(REFERENCE).with_context(|| format!("reading {REFERENCE}"))?;
    if a.shape()[1..] != [1, 28, 28] {
        bail!("{REFERENCE} has shape {:?}", a.shape());
    }
    Ok(a)
}

/// `n` of the reference digits, a seeded simple random sample (sorted indices).
fn digit_subset(reference: &ArrayD<f32>, n: usize) -> ArrayD<f32> {
    let idx = choose_dims(reference.shape()[0], n, DIGIT_SUBSET_SEED);
    reference.select(Axis(0), &idx)
}

fn spec(model: &Path, layers: &[(&str, &str)], methods: &[Method], threads: usize) -> EngineSpec {
    let mut spec = EngineSpec {
        layers: layers
            .iter()
            .map(|(n, t)| LayerSpec { name: (*n).into(), tensor: (*t).into(), ..Default::default() })
            .collect(),
        ..EngineSpec::new(model, "embedding")
    };
    spec.score.methods = Some(methods.to_vec());
    spec.runtime.threads = Some(threads);
    spec
}

/// Digits resized (bilinear, half-pixel centres, edges clamped) to `h × w` and repeated over
/// `channels`: structured inputs for the random-weight models, which have no data of their own.
fn resized_digits(digits: ArrayViewD<f32>, channels: usize, h: usize, w: usize) -> ArrayD<f32> {
    let n = digits.shape()[0];
    let (sh, sw) = (digits.shape()[2], digits.shape()[3]);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n, channels, h, w]));
    for i in 0..n {
        let src = digits.slice(s![i, 0, .., ..]);
        let img = Array2::from_shape_fn((h, w), |(y, x)| {
            let fy = ((y as f64 + 0.5) * sh as f64 / h as f64 - 0.5).clamp(0.0, (sh - 1) as f64);
            let fx = ((x as f64 + 0.5) * sw as f64 / w as f64 - 0.5).clamp(0.0, (sw - 1) as f64);
            let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(sh - 1), (x0 + 1).min(sw - 1));
            let (ty, tx) = (fy - y0 as f64, fx - x0 as f64);
            let v = |yy: usize, xx: usize| f64::from(src[[yy, xx]]);
            let top = v(y0, x0) * (1.0 - tx) + v(y0, x1) * tx;
            let bottom = v(y1, x0) * (1.0 - tx) + v(y1, x1) * tx;
            (top * (1.0 - ty) + bottom * ty) as f32
        });
        for c in 0..channels {
            out.slice_mut(s![i, c, .., ..]).assign(&img);
        }
    }
    out
}

/// `x_λ = clip(x + λ·ε, 0, 1)`, `ε ~ N(0, I)` drawn afresh for every sample from ChaCha8(`seed`).
fn drifted(x: ArrayViewD<f32>, lambda: f32, seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lambda = f64::from(lambda);
    x.mapv(|v| {
        let e: f64 = StandardNormal.sample(&mut rng);
        (f64::from(v) + lambda * e).clamp(0.0, 1.0) as f32
    })
}

/// The noise inputs an engine with `n_noise`/`noise_seed` draws (no normalisation on our models).
fn engine_noise(shape: &[usize], n: usize, seed: u64) -> ArrayD<f32> {
    let v = scores::noise_inputs(shape, n, seed);
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    ndarray::stack(Axis(0), &views).expect("same shapes")
}

// ---------------------------------------------------------------------------------------------
// Statistics
// ---------------------------------------------------------------------------------------------

/// Ranks 1..n with ties given their average rank.
fn ranks(v: &[f64]) -> Vec<f64> {
    let mut idx: Vec<usize> = (0..v.len()).collect();
    idx.sort_by(|&a, &b| v[a].total_cmp(&v[b]));
    let mut r = vec![0.0; v.len()];
    let mut i = 0;
    while i < idx.len() {
        let mut j = i;
        while j + 1 < idx.len() && v[idx[j + 1]] == v[idx[i]] {
            j += 1;
        }
        let avg = (i + j) as f64 / 2.0 + 1.0;
        for &k in &idx[i..=j] {
            r[k] = avg;
        }
        i = j + 1;
    }
    r
}

fn pearson(a: &[f64], b: &[f64]) -> f64 {
    let n = a.len() as f64;
    let (ma, mb) = (a.iter().sum::<f64>() / n, b.iter().sum::<f64>() / n);
    let (mut sab, mut saa, mut sbb) = (0.0, 0.0, 0.0);
    for (x, y) in a.iter().zip(b) {
        sab += (x - ma) * (y - mb);
        saa += (x - ma).powi(2);
        sbb += (y - mb).powi(2);
    }
    sab / (saa * sbb).sqrt()
}

/// Spearman's rank correlation (Pearson correlation of the tie-averaged ranks, as scipy's).
fn spearman(a: &[f64], b: &[f64]) -> f64 {
    pearson(&ranks(a), &ranks(b))
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() { f64::NAN } else { v.iter().sum::<f64>() / v.len() as f64 }
}

fn std(v: &[f64]) -> f64 {
    let m = mean(v);
    (v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64).sqrt()
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

// ---------------------------------------------------------------------------------------------
// §4.4 drift
// ---------------------------------------------------------------------------------------------

fn drift(args: &Args, reference: &ArrayD<f32>) -> Result<Value> {
    let x = digit_subset(reference, args.drift_n);
    let n = x.shape()[0];
    // The same drifted inputs for every estimator: one ε draw per λ (seed DRIFT_SEED + λ index).
    let drifted_sets: Vec<ArrayD<f32>> =
        LAMBDAS.iter().enumerate().map(|(li, &l)| drifted(x.view(), l, DRIFT_SEED + li as u64)).collect();
    // (label, S, σ, smoothing seed, fresh draws per sample)
    let mut estimators = vec![("plain".to_string(), 1usize, 0.0f32, 0u64, false)];
    estimators.push((format!("smoothed_s{}", args.smooth_s), args.smooth_s, 0.5, 0, false));
    for seed in 0..3u64 {
        estimators.push((format!("smoothed_s16_seed{seed}"), 16, 0.5, seed, false));
    }
    estimators.push(("smoothed_s16_fresh".to_string(), 16, 0.5, 1000, true));
    estimators.push((format!("smoothed_s{}_fresh", args.smooth_s), args.smooth_s, 0.5, 1000, true));
    let mut csv = String::from("estimator,layer,method,sample,ns_clean");
    for l in LAMBDAS {
        write!(csv, ",rel_{l:.1}")?;
    }
    csv.push('\n');
    let mut results = Vec::new();
    let mut seconds = serde_json::Map::new();
    for (label, s, sigma, seed, fresh) in &estimators {
        let mut sp =
            spec(Path::new(ENCODER), &DIGIT_LAYERS, &[Method::Vanilla, Method::ActGrad], args.threads);
        sp.score.smoothing_points = Some(*s);
        sp.score.smoothing = Some(*sigma);
        sp.score.smoothing_seed = Some(*seed);
        let t = Instant::now();
        // clean[i], drifted[λ][i]; benchmarks per key (averaged over engines when fresh).
        let (keys, clean, drifted_scores, benchmarks) = if *fresh {
            drift_scores_fresh(&sp, x.view(), &drifted_sets)?
        } else {
            let batch = if *s == 1 { 32 } else { 4 };
            let mut engine = Engine::new(&sp)?;
            let clean = engine.score_all(x.view(), batch)?;
            let d: Vec<Vec<SampleScores>> =
                drifted_sets.iter().map(|xd| engine.score_all(xd.view(), batch)).collect::<Result<_>>()?;
            let b = engine.keys().iter().map(|k| k.noise_benchmark).collect();
            (keys_of(&engine), clean, d, b)
        };
        let mut per_key: Vec<Vec<(f64, f64)>> = vec![Vec::new(); keys.len()];
        // rel[key][sample][λ]
        let mut rel_table = vec![vec![vec![f64::NAN; LAMBDAS.len()]; n]; keys.len()];
        for (li, sc) in drifted_scores.iter().enumerate() {
            let lambda = LAMBDAS[li];
            for ki in 0..keys.len() {
                for i in 0..n {
                    let (a, b) = (clean[i].scores[ki].noise_score, sc[i].scores[ki].noise_score);
                    let rel = if a > 1e-12 { (a - b) / a } else { f64::NAN };
                    rel_table[ki][i][li] = rel;
                    if rel.is_finite() {
                        per_key[ki].push((f64::from(lambda), rel));
                    }
                }
            }
        }
        for (ki, key) in keys.iter().enumerate() {
            if per_key[ki].is_empty() {
                continue; // NS(x) = 0 throughout: nothing to plot
            }
            for i in 0..n {
                write!(
                    csv,
                    "{label},{},{},{i},{:.6}",
                    key.layer,
                    key.method.as_str(),
                    clean[i].scores[ki].noise_score
                )?;
                for r in &rel_table[ki][i] {
                    write!(csv, ",{r:.6}")?;
                }
                csv.push('\n');
            }
        }
        let secs = t.elapsed().as_secs_f64();
        for (ki, key) in keys.iter().enumerate() {
            let pts = &per_key[ki];
            let skipped = LAMBDAS.len() * n - pts.len();
            let ns_clean: Vec<f64> = clean.iter().map(|c| c.scores[ki].noise_score).collect();
            if pts.is_empty() {
                results.push(json!({
                    "estimator": label, "samples": s, "smoothing": sigma, "smoothing_seed": seed,
                    "layer": key.layer, "method": key.method.as_str(),
                    "note": "NS(x) = 0 for every sample (input-independent gradient): relative change undefined",
                    "ns_clean_mean": mean(&ns_clean), "noise_benchmark": benchmarks[ki],
                }));
                continue;
            }
            let l: Vec<f64> = pts.iter().map(|p| p.0).collect();
            let r: Vec<f64> = pts.iter().map(|p| p.1).collect();
            let nz: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.0 > 0.0).collect();
            let l_nz: Vec<f64> = nz.iter().map(|p| p.0).collect();
            let r_nz: Vec<f64> = nz.iter().map(|p| p.1).collect();
            let per_lambda: Vec<Value> = LAMBDAS
                .iter()
                .map(|&lam| {
                    let v: Vec<f64> =
                        pts.iter().filter(|p| (p.0 - f64::from(lam)).abs() < 1e-6).map(|p| p.1).collect();
                    json!({"lambda": lam, "mean": mean(&v), "median": median(&v), "std": std(&v),
                           "frac_negative": v.iter().filter(|&&x| x < 0.0).count() as f64 / v.len() as f64, "n": v.len()})
                })
                .collect();
            let means: Vec<f64> = per_lambda.iter().map(|p| p["mean"].as_f64().unwrap_or(f64::NAN)).collect();
            results.push(json!({
                "estimator": label, "samples": s, "smoothing": sigma, "smoothing_seed": seed,
                "layer": key.layer, "method": key.method.as_str(),
                "n_samples": n, "skipped_points": skipped,
                "spearman": spearman(&l, &r),
                "spearman_without_lambda0": spearman(&l_nz, &r_nz),
                "spearman_of_means": spearman(&LAMBDAS.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &means),
                "ns_clean_mean": mean(&ns_clean), "noise_benchmark": benchmarks[ki],
                "fresh_draws_per_sample": fresh,
                "per_lambda": per_lambda,
            }));
        }
        eprintln!("  drift {label}: {secs:.1} s ({} samples × {} λ + clean)", n, LAMBDAS.len());
        seconds.insert(label.clone(), json!(secs));
    }
    std::fs::write(args.out.join("drift_samples.csv"), csv)?;
    let v = json!({
        "model": ENCODER, "weights": "trained", "n_samples": n,
        "drift": "x_λ = clip(x + λ ε, 0, 1), ε ~ N(0, I) drawn per (λ, sample, pixel) from ChaCha8(4400 + λ index); the same drifted inputs for every estimator. Smoothing draws: the engine seeds each sample's draws from its smoothing seed and the sample's values (so x and x_λ get different draws); `_fresh` uses one engine per sample, seed 1000 + sample index",
        "spearman_computed_in": "Rust (tie-averaged ranks; cross-checked with scipy.stats.spearmanr in tools/plot_reproduction.py)",
        "results": results,
        "seconds_per_estimator": seconds,
    });
    std::fs::write(args.out.join("drift.json"), serde_json::to_string_pretty(&v)? + "\n")?;
    Ok(v)
}

type DriftScores = (Vec<Keys>, Vec<SampleScores>, Vec<Vec<SampleScores>>, Vec<f64>);

/// The drift scores with smoothing draws that differ from sample to sample: one engine per sample
/// (smoothing seed = the spec's seed + sample index), scoring the clean sample and its drifted
/// versions with the same draws. The noise benchmark is the mean over the engines.
fn drift_scores_fresh(
    sp: &EngineSpec,
    x: ArrayViewD<f32>,
    drifted_sets: &[ArrayD<f32>],
) -> Result<DriftScores> {
    let n = x.shape()[0];
    let (mut keys, mut clean, mut bench) = (Vec::new(), Vec::new(), Vec::new());
    let mut drifted: Vec<Vec<SampleScores>> = vec![Vec::new(); drifted_sets.len()];
    for i in 0..n {
        let mut spi = sp.clone();
        spi.score.smoothing_seed = Some(sp.score.smoothing_seed() + i as u64);
        let mut e = Engine::new(&spi)?;
        let mut views = vec![x.index_axis(Axis(0), i)];
        views.extend(drifted_sets.iter().map(|d| d.index_axis(Axis(0), i)));
        let batch = ndarray::stack(Axis(0), &views)?;
        let mut sc = e.score_batch(batch.view())?.into_iter();
        clean.push(sc.next().context("clean score")?);
        for (li, s) in sc.enumerate() {
            drifted[li].push(s);
        }
        if bench.is_empty() {
            bench = vec![0.0; e.keys().len()];
            keys = keys_of(&e);
        }
        for (b, k) in bench.iter_mut().zip(e.keys()) {
            *b += k.noise_benchmark / n as f64;
        }
    }
    Ok((keys, clean, drifted, bench))
}

// ---------------------------------------------------------------------------------------------
// §4.1 / §4.3 score curves
// ---------------------------------------------------------------------------------------------

#[derive(Default)]
struct CurveTable {
    rows: Vec<String>,
}

struct CurveRow<'a> {
    model: &'a str,
    weights: &'a str,
    source: &'a str,
    layer_index: usize,
    layer: &'a str,
    method: &'a str,
    ns: &'a [f64],
    vs: &'a [f64],
    vs_bin: &'a [f64],
    bench: f64,
}

impl CurveTable {
    fn push(&mut self, r: CurveRow) {
        self.rows.push(format!(
            "{},{},{},{},{},{},{},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e},{:.6e}",
            r.model,
            r.weights,
            r.source,
            r.layer_index,
            r.layer,
            r.method,
            r.ns.len(),
            mean(r.ns),
            std(r.ns),
            r.bench,
            mean(r.vs),
            std(r.vs),
            mean(r.vs_bin),
            std(r.vs_bin)
        ));
    }
    fn write(&self, path: &Path) -> Result<()> {
        let mut s = String::from(
            "model,weights,source,layer_index,layer,method,n,ns_mean,ns_std,ns_bench,vs_mean,vs_std,vs_bin_mean,vs_bin_std\n",
        );
        for r in &self.rows {
            s.push_str(r);
            s.push('\n');
        }
        std::fs::write(path, s)?;
        Ok(())
    }
}

/// Scores `data` with `sp` twice (variance score plain and binarised at 0.5) and adds the curve rows.
fn engine_curves(
    sp: &EngineSpec,
    data: ArrayViewD<f32>,
    model: &str,
    weights: &str,
    table: &mut CurveTable,
) -> Result<Vec<Value>> {
    let mut e = Engine::new(sp)?;
    let plain = e.score_all(data.view(), 32)?;
    let mut spb = sp.clone();
    spb.score.binarize = Some(0.5);
    let mut eb = Engine::new(&spb)?;
    let bin = eb.score_all(data, 32)?;
    let layer_index = |name: &str| sp.layers.iter().position(|l| l.name == name).unwrap_or(0);
    let mut out = Vec::new();
    for (ki, key) in e.keys().iter().enumerate() {
        let ns: Vec<f64> = plain.iter().map(|s| s.scores[ki].noise_score).collect();
        let vs: Vec<f64> = plain.iter().map(|s| s.scores[ki].variance_score).collect();
        let vb: Vec<f64> = bin.iter().map(|s| s.scores[ki].variance_score).collect();
        let nsb: Vec<f64> = bin.iter().map(|s| s.scores[ki].noise_score).collect();
        // Binarisation touches only the variance score.
        let max_ns_diff = ns.iter().zip(&nsb).map(|(a, b)| (a - b).abs()).fold(0.0, f64::max);
        table.push(CurveRow {
            model,
            weights,
            source: "engine.score_batch",
            layer_index: layer_index(&key.layer),
            layer: &key.layer,
            method: key.method.as_str(),
            ns: &ns,
            vs: &vs,
            vs_bin: &vb,
            bench: key.noise_benchmark,
        });
        out.push(json!({
            "layer": key.layer, "method": key.method.as_str(), "n": ns.len(),
            "ns_mean": mean(&ns), "ns_std": std(&ns), "ns_bench": key.noise_benchmark,
            "ns_over_bench": mean(&ns) / key.noise_benchmark,
            "vs_mean": mean(&vs), "vs_bin_mean": mean(&vb),
            "ns_max_diff_binarised_engine": max_ns_diff,
        }));
    }
    Ok(out)
}

fn digit_curves(args: &Args, reference: &ArrayD<f32>, table: &mut CurveTable) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (weights, path) in [("trained", ENCODER), ("untrained", UNTRAINED)] {
        let sp = spec(Path::new(path), &DIGIT_LAYERS, &Method::ALL, args.threads);
        let rows = engine_curves(&sp, reference.view(), "digits", weights, table)?;
        out.insert(weights.into(), json!({"model": path, "n_samples": reference.shape()[0], "scores": rows}));
    }
    Ok(Value::Object(out))
}

fn alexnet_curves(args: &Args, reference: &ArrayD<f32>, table: &mut CurveTable) -> Result<Value> {
    let inputs = resized_digits(digit_subset(reference, 64).view(), 3, 67, 67);
    let sp = spec(Path::new(ALEXNET), &ALEXNET_LAYERS, &Method::ALL, args.threads);
    let rows = engine_curves(&sp, inputs.view(), "alexnet_small", "random", table)?;
    Ok(json!({
        "model": ALEXNET, "weights": "random (no trained weights exist for this test model)",
        "inputs": "64 reference digits resized to 67×67 (bilinear), repeated over 3 channels",
        "scores": rows,
    }))
}

// ---------------------------------------------------------------------------------------------
// Large-D estimators (docs/spec/scores.md#cost): exact per-component maps through run_rows, estimators on top
// ---------------------------------------------------------------------------------------------

/// Per input, per graph output: the `[D, H, W]` maps of every component (identity cotangent rows),
/// computed `rows` at a time for `batch` inputs at a time.
fn exact_maps(
    engine: &mut Engine,
    data: ArrayViewD<f32>,
    rows: usize,
    batch: usize,
) -> Result<Vec<Vec<Array3<f32>>>> {
    let d = engine.embedding_dim();
    let n = data.shape()[0];
    let mut out: Vec<Vec<Array3<f32>>> = Vec::with_capacity(n);
    for chunk in data.axis_chunks_iter(Axis(0), batch) {
        let b = chunk.shape()[0];
        let mut parts: Vec<Vec<Array4<f32>>> = Vec::new();
        for start in (0..d).step_by(rows) {
            let end = (start + rows).min(d);
            let eye =
                Array2::from_shape_fn((end - start, d), |(r, j)| if start + r == j { 1.0f32 } else { 0.0 });
            parts.push(engine.run_rows(chunk.view(), eye.view())?);
        }
        for i in 0..b {
            let per_output: Vec<Array3<f32>> = (0..parts[0].len())
                .map(|o| {
                    let views: Vec<ArrayView3<f32>> =
                        parts.iter().map(|p| p[o].index_axis(Axis(0), i)).collect();
                    ndarray::concatenate(Axis(0), &views).expect("same map shapes")
                })
                .collect();
            out.push(per_output);
        }
    }
    Ok(out)
}

/// What the engine computes from the rows of `dims` (all when `None`): `E` and `VS`, through the
/// same accumulator the engine uses (subset-corrected when `dims` is a strict subset).
fn reduce(maps: &Array3<f32>, dims: Option<&[usize]>, binarize: Option<f32>) -> Result<scores::SampleMaps> {
    let (d, h, w) = maps.dim();
    let mut acc = ScoreAccumulator::new(h, w, Aggregation::Var, false, binarize);
    match dims {
        Some(idx) if idx.len() < d => {
            acc = acc.subset_of(d);
            acc.push(maps.select(Axis(0), idx).view())?;
        }
        _ => acc.push(maps.view())?,
    }
    Ok(acc.finish()?)
}

#[derive(Default)]
struct EstimatorTable {
    rows: Vec<String>,
}

struct ErrRow<'a> {
    model: &'a str,
    layer: &'a str,
    method: &'a str,
    estimator: &'a str,
    k: usize,
    quantity: &'a str,
    exact: &'a [f64],
    est: &'a [f64],
}

impl EstimatorTable {
    /// Mean absolute error, mean relative error (over pairs with |exact| > 1e-12), mean signed
    /// relative error, mean exact value, max absolute error.
    fn push(&mut self, r: ErrRow) -> Value {
        let abs: Vec<f64> = r.exact.iter().zip(r.est).map(|(a, b)| (b - a).abs()).collect();
        let rel: Vec<f64> = r
            .exact
            .iter()
            .zip(r.est)
            .filter(|(a, _)| a.abs() > 1e-12)
            .map(|(a, b)| ((b - a) / a).abs())
            .collect();
        let signed: Vec<f64> =
            r.exact.iter().zip(r.est).filter(|(a, _)| a.abs() > 1e-12).map(|(a, b)| (b - a) / a).collect();
        let max_abs = abs.iter().copied().fold(0.0, f64::max);
        let v = json!({
            "model": r.model, "layer": r.layer, "method": r.method, "estimator": r.estimator, "k": r.k,
            "quantity": r.quantity, "n": abs.len(), "mean_abs_err": mean(&abs),
            "mean_rel_err": if rel.is_empty() { Value::Null } else { json!(mean(&rel)) },
            "mean_signed_rel_err": if signed.is_empty() { Value::Null } else { json!(mean(&signed)) },
            "exact_mean": mean(r.exact), "max_abs_err": max_abs,
        });
        let f = |x: &Value| x.as_f64().map_or("".to_string(), |v| format!("{v:.6e}"));
        self.rows.push(format!(
            "{},{},{},{},{},{},{},{},{},{},{},{}",
            r.model,
            r.layer,
            r.method,
            r.estimator,
            r.k,
            r.quantity,
            abs.len(),
            f(&v["mean_abs_err"]),
            f(&v["mean_rel_err"]),
            f(&v["mean_signed_rel_err"]),
            f(&v["exact_mean"]),
            f(&v["max_abs_err"])
        ));
        v
    }
    fn write(&self, path: &Path) -> Result<()> {
        let mut s = String::from(
            "model,layer,method,estimator,k,quantity,n,mean_abs_err,mean_rel_err,mean_signed_rel_err,exact_mean,max_abs_err\n",
        );
        for r in &self.rows {
            s.push_str(r);
            s.push('\n');
        }
        std::fs::write(path, s)?;
        Ok(())
    }
}

struct Keys {
    layer: String,
    method: Method,
}

/// Subset estimator (`dims = k`) for NS and VS from exact maps, `draws` subsets (seeds 0..draws),
/// against the exact scores. `noise[i][o]`, `samples[i][o]`: exact maps per input and output.
#[allow(clippy::too_many_arguments)]
fn subset_errors(
    model: &str,
    keys: &[Keys],
    noise: &[Vec<Array3<f32>>],
    samples: &[Vec<Array3<f32>>],
    ks: &[usize],
    draws: u64,
    table: &mut EstimatorTable,
) -> Result<Vec<Value>> {
    let d = samples[0][0].shape()[0];
    let mut out = Vec::new();
    for (o, key) in keys.iter().enumerate() {
        let noise_e: Vec<Array2<f32>> =
            noise.iter().map(|m| reduce(&m[o], None, None).map(|r| r.embedding)).collect::<Result<_>>()?;
        let exact_ref = NoiseReference::new(&noise_e)?;
        let exact: Vec<scores::SampleMaps> =
            samples.iter().map(|m| reduce(&m[o], None, None)).collect::<Result<_>>()?;
        let exact_ns: Vec<f64> =
            exact.iter().map(|e| exact_ref.score(e.embedding.view())).collect::<Result<_, _>>()?;
        let exact_vs: Vec<f64> = exact.iter().map(|e| e.variance_score).collect();
        for &k in ks.iter().filter(|&&k| k < d) {
            let (mut xn, mut en, mut xv, mut ev) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            for seed in 0..draws {
                let dims = choose_dims(d, k, seed);
                // As the engine: the noise side is reduced over the same subset.
                let ne: Vec<Array2<f32>> = noise
                    .iter()
                    .map(|m| reduce(&m[o], Some(&dims), None).map(|r| r.embedding))
                    .collect::<Result<_>>()?;
                let nref = NoiseReference::new(&ne)?;
                for (i, m) in samples.iter().enumerate() {
                    let r = reduce(&m[o], Some(&dims), None)?;
                    xn.push(exact_ns[i]);
                    en.push(nref.score(r.embedding.view())?);
                    xv.push(exact_vs[i]);
                    ev.push(r.variance_score);
                }
            }
            let (layer, method) = (key.layer.as_str(), key.method.as_str());
            out.push(table.push(ErrRow {
                model,
                layer,
                method,
                estimator: "subset",
                k,
                quantity: "NS",
                exact: &xn,
                est: &en,
            }));
            out.push(table.push(ErrRow {
                model,
                layer,
                method,
                estimator: "subset",
                k,
                quantity: "VS",
                exact: &xv,
                est: &ev,
            }));
        }
    }
    Ok(out)
}

/// Hutchinson probes and the one-pass mean map, on a graph compiled with `mean` channel aggregation
/// and `vanilla` (linear in the cotangent). `exact_noise`/`exact_samples`: identity-row maps of
/// `noise`/`samples`. As for the subset estimator, the noise side uses the same probes as the samples
/// (an engine would compute its noise maps once, with its fixed probes).
#[allow(clippy::too_many_arguments)]
fn hutchinson_errors(
    model: &str,
    engine: &mut Engine,
    keys: &[Keys],
    noise: ArrayViewD<f32>,
    samples: ArrayViewD<f32>,
    exact_noise: &[Vec<Array3<f32>>],
    exact_samples: &[Vec<Array3<f32>>],
    ks: &[usize],
    draws: u64,
    batch: usize,
    table: &mut EstimatorTable,
) -> Result<Vec<Value>> {
    let d = engine.embedding_dim();
    let n = samples.shape()[0];
    let mut out = Vec::new();
    // Exact per-pixel variance maps (E with var embedding aggregation).
    let var_maps = |maps: &[Vec<Array3<f32>>]| -> Result<Vec<Vec<Array2<f32>>>> {
        Ok(maps
            .iter()
            .map(|per| {
                per.iter()
                    .map(|m| embedding_aggregate(m.view(), Aggregation::Var, false))
                    .collect::<Result<_, _>>()
            })
            .collect::<Result<_, _>>()?)
    };
    let exact_var = var_maps(exact_samples)?;
    let exact_noise_var = var_maps(exact_noise)?;
    // Per input, per output: the estimated variance map with the given probes.
    let estimate =
        |engine: &mut Engine, data: ArrayViewD<f32>, probes: &Array2<f32>| -> Result<Vec<Vec<Array2<f32>>>> {
            let mut res = Vec::new();
            for chunk in data.axis_chunks_iter(Axis(0), batch) {
                let maps = engine.run_rows(chunk.view(), probes.view())?;
                for b in 0..chunk.shape()[0] {
                    res.push(
                        maps.iter()
                            .map(|m| hutchinson_variance(m.index_axis(Axis(0), b), d))
                            .collect::<Result<_, _>>()?,
                    );
                }
            }
            Ok(res)
        };
    for &k in ks {
        let mut acc: Vec<[Vec<f64>; 6]> = (0..keys.len()).map(|_| Default::default()).collect();
        for seed in 0..draws {
            let probes = hutchinson_probes(d, k, 1000 + seed);
            let est_noise = estimate(engine, noise.view(), &probes)?;
            let est = estimate(engine, samples.view(), &probes)?;
            for (o, a) in acc.iter_mut().enumerate() {
                let exact_ref =
                    NoiseReference::new(&exact_noise_var.iter().map(|v| v[o].clone()).collect::<Vec<_>>())?;
                let est_ref =
                    NoiseReference::new(&est_noise.iter().map(|v| v[o].clone()).collect::<Vec<_>>())?;
                for i in 0..n {
                    let (x, e) = (&exact_var[i][o], &est[i][o]);
                    for (p, q) in x.iter().zip(e.iter()) {
                        a[0].push(f64::from(*p));
                        a[1].push(f64::from(*q));
                    }
                    a[2].push(x.iter().map(|&v| f64::from(v)).sum::<f64>() / x.len() as f64);
                    a[3].push(e.iter().map(|&v| f64::from(v)).sum::<f64>() / e.len() as f64);
                    a[4].push(exact_ref.score(x.view())?);
                    a[5].push(est_ref.score(e.view())?);
                }
            }
        }
        for (o, key) in keys.iter().enumerate() {
            let a = &acc[o];
            let (layer, method) = (key.layer.as_str(), key.method.as_str());
            let q = |quantity, exact, est| ErrRow {
                model,
                layer,
                method,
                estimator: "hutchinson",
                k,
                quantity,
                exact,
                est,
            };
            out.push(table.push(q("var_map_pixel", &a[0], &a[1])));
            out.push(table.push(q("var_map_pixel_mean", &a[2], &a[3])));
            out.push(table.push(q("NS", &a[4], &a[5])));
        }
    }
    // One pass with the row 1/D gives mean_j of the maps.
    let row = Array2::from_elem((1, d), 1.0 / d as f32);
    let mut mean_maps: Vec<Vec<Array2<f32>>> = Vec::new();
    for chunk in samples.axis_chunks_iter(Axis(0), batch) {
        let maps = engine.run_rows(chunk.view(), row.view())?;
        for b in 0..chunk.shape()[0] {
            mean_maps.push(maps.iter().map(|m| m.slice(s![b, 0, .., ..]).to_owned()).collect());
        }
    }
    for (o, key) in keys.iter().enumerate() {
        let (mut x, mut e) = (Vec::new(), Vec::new());
        let mut max_rel: f64 = 0.0;
        for i in 0..n {
            let exact = embedding_aggregate(exact_samples[i][o].view(), Aggregation::Mean, false)?;
            let scale = exact.iter().fold(0.0f64, |m, &v| m.max(f64::from(v).abs()));
            for (a, b) in exact.iter().zip(mean_maps[i][o].iter()) {
                x.push(f64::from(*a));
                e.push(f64::from(*b));
                if scale > 0.0 {
                    max_rel = max_rel.max((f64::from(*b) - f64::from(*a)).abs() / scale);
                }
            }
        }
        let (layer, method) = (key.layer.as_str(), key.method.as_str());
        let mut v = table.push(ErrRow {
            model,
            layer,
            method,
            estimator: "mean_map_one_pass",
            k: 1,
            quantity: "mean_map_pixel",
            exact: &x,
            est: &e,
        });
        v["max_abs_err_over_max_abs_map"] = json!(max_rel);
        out.push(v);
    }
    Ok(out)
}

/// Checks the emulation above against the engine itself: `score_batch` of an engine with the same
/// settings (`dims`, `n_noise`) must give the scores `reduce` + `NoiseReference` give from exact maps.
fn engine_agreement(
    engine: &mut Engine,
    data: ArrayViewD<f32>,
    noise: &[Vec<Array3<f32>>],
    samples: &[Vec<Array3<f32>>],
    dims: Option<&[usize]>,
    batch: usize,
) -> Result<Value> {
    let got = engine.score_all(data, batch)?;
    let (mut ns_diff, mut vs_diff, mut ns_max, mut bench_diff) = (0.0f64, 0.0f64, 0.0f64, 0.0f64);
    for (o, key) in engine.keys().iter().enumerate() {
        let ne: Vec<Array2<f32>> =
            noise.iter().map(|m| reduce(&m[o], dims, None).map(|r| r.embedding)).collect::<Result<_>>()?;
        let nref = NoiseReference::new(&ne)?;
        bench_diff = bench_diff.max((nref.benchmark()? - key.noise_benchmark).abs());
        for (i, m) in samples.iter().enumerate() {
            let r = reduce(&m[o], dims, None)?;
            let ns = nref.score(r.embedding.view())?;
            ns_diff = ns_diff.max((ns - got[i].scores[o].noise_score).abs());
            vs_diff = vs_diff.max((r.variance_score - got[i].scores[o].variance_score).abs());
            ns_max = ns_max.max(ns);
        }
    }
    Ok(
        json!({"max_abs_diff_ns": ns_diff, "max_abs_diff_vs": vs_diff, "max_abs_diff_bench": bench_diff, "max_ns": ns_max,
              "samples": samples.len(), "dims": dims.map(|d| d.len())}),
    )
}

fn keys_of(engine: &Engine) -> Vec<Keys> {
    engine.keys().iter().map(|k| Keys { layer: k.layer.clone(), method: k.method }).collect()
}

fn digit_estimators(args: &Args, reference: &ArrayD<f32>, table: &mut EstimatorTable) -> Result<Value> {
    let samples = digit_subset(reference, 64);
    let noise = engine_noise(&[1, 28, 28], 4, 0);
    // NS / VS: the default scoring graph (abs channel aggregation), every method.
    let sp = spec(Path::new(ENCODER), &DIGIT_LAYERS, &Method::ALL, args.threads);
    let mut e = Engine::new(&sp)?;
    let keys = keys_of(&e);
    let xn = exact_maps(&mut e, noise.view(), 32, 4)?;
    let xs = exact_maps(&mut e, samples.view(), 32, 16)?;
    let exact_check = engine_agreement(&mut e, samples.view(), &xn, &xs, None, 16)?;
    let mut spk = sp.clone();
    spk.score.subset_components = Some(8);
    let mut ek = Engine::new(&spk)?;
    let dims8 = choose_dims(32, 8, sp.estimator_seed());
    let subset_check = engine_agreement(&mut ek, samples.view(), &xn, &xs, Some(&dims8), 16)?;
    subset_errors("digits", &keys, &xn, &xs, &[4, 8, 16, 24], 20, table)?;
    // Hutchinson and the mean map: vanilla with mean channel aggregation.
    let mut spm = spec(Path::new(ENCODER), &DIGIT_LAYERS, &[Method::Vanilla], args.threads);
    spm.score.channel_agg = Some(Aggregation::Mean);
    let mut em = Engine::new(&spm)?;
    let mkeys = keys_of(&em);
    let mn = exact_maps(&mut em, noise.view(), 32, 4)?;
    let ms = exact_maps(&mut em, samples.view(), 32, 16)?;
    hutchinson_errors(
        "digits",
        &mut em,
        &mkeys,
        noise.view(),
        samples.view(),
        &mn,
        &ms,
        &[8, 16, 64],
        20,
        16,
        table,
    )?;
    Ok(json!({
        "model": ENCODER, "d": 32, "n_samples": samples.shape()[0], "n_noise": 4,
        "engine_agreement_exact": exact_check, "engine_agreement_dims8": subset_check,
        "subset_draws": 20, "hutchinson_draws": 20, "errors": "estimators.csv",
    }))
}

// ---------------------------------------------------------------------------------------------
// Timing
// ---------------------------------------------------------------------------------------------

/// Wall-clock and CPU time (user + system, all threads of this process) since `start`. CPU time
/// is less sensitive to other processes on a shared machine than wall time.
struct Clock {
    wall: Instant,
    cpu: f64,
}

impl Clock {
    fn start() -> Clock {
        Clock { wall: Instant::now(), cpu: cpu_seconds() }
    }
    fn wall(&self) -> f64 {
        self.wall.elapsed().as_secs_f64()
    }
    fn cpu(&self) -> f64 {
        cpu_seconds() - self.cpu
    }
}

/// utime + stime of this process from `/proc/self/stat` (Linux; clock ticks of 1/100 s, the kernel's
/// USER_HZ); NaN elsewhere.
fn cpu_seconds() -> f64 {
    let Ok(stat) = std::fs::read_to_string("/proc/self/stat") else { return f64::NAN };
    let Some(rest) = stat.rfind(')').map(|i| &stat[i + 1..]) else { return f64::NAN };
    let f: Vec<&str> = rest.split_whitespace().collect();
    match (f.get(11).and_then(|v| v.parse::<f64>().ok()), f.get(12).and_then(|v| v.parse::<f64>().ok())) {
        (Some(u), Some(s)) => (u + s) / 100.0,
        _ => f64::NAN,
    }
}

struct Timing {
    model: String,
    config: String,
    what: String,
    n: usize,
    batch: usize,
    seconds: f64,
    cpu_seconds: f64,
}

impl Timing {
    fn new(model: &str, config: &str, what: &str, n: usize, batch: usize, wall: f64, cpu: f64) -> Timing {
        Timing {
            model: model.into(),
            config: config.into(),
            what: what.into(),
            n,
            batch,
            seconds: wall,
            cpu_seconds: cpu,
        }
    }
    fn of(model: &str, config: &str, what: &str, n: usize, batch: usize, clock: &Clock) -> Timing {
        Timing::new(model, config, what, n, batch, clock.wall(), clock.cpu())
    }
    fn per_sample_ms(&self) -> f64 {
        1000.0 * self.seconds / self.n.max(1) as f64
    }
    fn cpu_per_sample_ms(&self) -> f64 {
        1000.0 * self.cpu_seconds / self.n.max(1) as f64
    }
    fn json(&self) -> Value {
        json!({"model": self.model, "config": self.config, "what": self.what, "n": self.n, "batch": self.batch,
               "seconds": self.seconds, "per_sample_ms": self.per_sample_ms(),
               "cpu_seconds": self.cpu_seconds, "cpu_per_sample_ms": self.cpu_per_sample_ms()})
    }
}

fn write_timing(path: &Path, t: &[Timing]) -> Result<()> {
    let mut s =
        String::from("model,config,what,n,batch,seconds,per_sample_ms,cpu_seconds,cpu_per_sample_ms\n");
    for x in t {
        writeln!(
            s,
            "{},{},{},{},{},{:.4},{:.3},{:.2},{:.3}",
            x.model,
            x.config,
            x.what,
            x.n,
            x.batch,
            x.seconds,
            x.per_sample_ms(),
            x.cpu_seconds,
            x.cpu_per_sample_ms()
        )?;
    }
    std::fs::write(path, s)?;
    Ok(())
}

fn digit_timing(args: &Args, reference: &ArrayD<f32>, out: &mut Vec<Timing>) -> Result<()> {
    let layers = "conv2_in+block2_out; vanilla+actgrad+gradcam";
    for (samples, n, batch) in [(1usize, 256usize, 16usize), (1, 32, 1), (16, 64, 4), (50, 32, 4)] {
        let mut sp = spec(Path::new(ENCODER), &DIGIT_LAYERS, &Method::ALL, args.threads);
        sp.score.smoothing_points = Some(samples);
        sp.score.smoothing = Some(if samples > 1 { 0.5 } else { 0.0 });
        let t = Clock::start();
        let mut e = Engine::new(&sp)?;
        let setup = Timing::of("digits", "", "Engine::new (compile + session + noise maps)", 1, 1, &t);
        let data = digit_subset(reference, n);
        // One warm-up batch, not timed.
        e.score_all(data.slice_axis(Axis(0), ndarray::Slice::from(0..batch)), batch)?;
        let t = Clock::start();
        e.score_all(data.view(), batch)?;
        let config = format!("exact D=32 S={samples}; {layers}");
        out.push(Timing::of("digits", &config, "score_batch", n, batch, &t));
        out.push(Timing { config, ..setup });
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------------
// ResNet-18 (random weights)
// ---------------------------------------------------------------------------------------------

fn resnet18(
    args: &Args,
    path: &Path,
    reference: &ArrayD<f32>,
    curves: &mut CurveTable,
    est: &mut EstimatorTable,
    timing: &mut Vec<Timing>,
) -> Result<Value> {
    let threads = args.threads;
    let n = args.resnet_n;
    let inputs = resized_digits(digit_subset(reference, n).view(), 3, 224, 224);
    let noise = engine_noise(&[3, 224, 224], 4, 0);

    // Compile time alone (decode + compile), three times.
    let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let opts = CompileOptions {
        embedding: "embedding".into(),
        layers: RESNET_LAYERS.iter().map(|l| l.1.to_string()).collect(),
        methods: Method::ALL.to_vec(),
        channel_agg: Some(Aggregation::Abs),
        smoothing_samples: 1,
        layouts: vec![],
    };
    let (mut compile_s, mut compile_cpu) = (Vec::new(), Vec::new());
    for _ in 0..3 {
        let t = Clock::start();
        let g = compiler::compile_bytes(&bytes, &opts)?;
        compile_s.push(t.wall());
        compile_cpu.push(t.cpu());
        drop(g);
    }
    let best = |v: &[f64]| v.iter().copied().fold(f64::INFINITY, f64::min);
    timing.push(Timing::new(
        "resnet18",
        "4 layers x 3 methods",
        "compile (decode + attribution graph; best of 3)",
        1,
        1,
        best(&compile_s),
        best(&compile_cpu),
    ));

    // Exact maps through the default scoring graph (abs channel aggregation), every method.
    let sp = spec(path, &RESNET_LAYERS, &Method::ALL, threads);
    let mut sp_dims = sp.clone();
    sp_dims.score.subset_components = Some(64);
    let t = Clock::start();
    let mut e64 = Engine::new(&sp_dims)?;
    let what = "Engine::new (compile + session + noise maps)";
    timing.push(Timing::of("resnet18", "dims=64; 4 layers x 3 methods; n_noise=4", what, 1, 1, &t));
    let keys = keys_of(&e64);
    eprintln!("  resnet18: exact maps of {} noise + {n} inputs (abs graph) …", noise.shape()[0]);
    let t = Clock::start();
    let xn = exact_maps(&mut e64, noise.view(), 32, 1)?;
    let xs = exact_maps(&mut e64, inputs.view(), 32, 1)?;
    let config = "exact D=512 via run_rows (32 rows per run); 4 layers x 3 methods";
    timing.push(Timing::of("resnet18", config, "identity-row maps", noise.shape()[0] + n, 1, &t));
    // dims = 64 through the engine: timing, and agreement with the emulation on the same subset.
    let t = Clock::start();
    let dims64 = choose_dims(512, 64, sp.estimator_seed());
    let check64 = engine_agreement(&mut e64, inputs.view(), &xn, &xs, Some(&dims64), 1)?;
    let what = "score_batch (+ a negligible check)";
    timing.push(Timing::of("resnet18", "dims=64; 4 layers x 3 methods", what, n, 1, &t));
    drop(e64);

    // Exact scoring through the engine for one sample (n_noise = 2 keeps its start-up short; noise
    // inputs are prefix-stable, so the emulation uses the first 2 of the 4).
    let mut sp2 = sp.clone();
    sp2.noise.n_noise = Some(2);
    let t = Clock::start();
    let mut ex = Engine::new(&sp2)?;
    let what = "Engine::new (compile + session + noise maps)";
    timing.push(Timing::of("resnet18", "exact D=512; 4 layers x 3 methods; n_noise=2", what, 1, 1, &t));
    let t = Clock::start();
    let one = inputs.slice_axis(Axis(0), ndarray::Slice::from(0..1));
    let check_exact = engine_agreement(&mut ex, one, &xn[..2], &xs[..1], None, 1)?;
    let what = "score_batch (+ a negligible check)";
    timing.push(Timing::of("resnet18", "exact D=512; 4 layers x 3 methods", what, 1, 1, &t));
    drop(ex);

    // Curves (exact) from the maps, plain and binarised variance score.
    let mut curve_rows = Vec::new();
    for (o, key) in keys.iter().enumerate() {
        let ne: Vec<Array2<f32>> =
            xn.iter().map(|m| reduce(&m[o], None, None).map(|r| r.embedding)).collect::<Result<_>>()?;
        let nref = NoiseReference::new(&ne)?;
        let bench = nref.benchmark()?;
        let (mut ns, mut vs, mut vb) = (Vec::new(), Vec::new(), Vec::new());
        for m in &xs {
            let r = reduce(&m[o], None, None)?;
            ns.push(nref.score(r.embedding.view())?);
            vs.push(r.variance_score);
            vb.push(reduce(&m[o], None, Some(0.5))?.variance_score);
        }
        let li = RESNET_LAYERS.iter().position(|l| l.0 == key.layer).unwrap_or(0);
        curves.push(CurveRow {
            model: "resnet18",
            weights: "random",
            source: "run_rows identity + ScoreAccumulator",
            layer_index: li,
            layer: &key.layer,
            method: key.method.as_str(),
            ns: &ns,
            vs: &vs,
            vs_bin: &vb,
            bench,
        });
        curve_rows.push(json!({"layer": key.layer, "method": key.method.as_str(), "n": ns.len(),
            "ns_mean": mean(&ns), "ns_bench": bench, "ns_over_bench": mean(&ns) / bench,
            "vs_mean": mean(&vs), "vs_bin_mean": mean(&vb)}));
    }
    subset_errors("resnet18", &keys, &xn, &xs, &[8, 16, 64, 128, 256], 5, est)?;
    drop((xn, xs));

    // Hutchinson and the mean map: vanilla, mean channel aggregation.
    let mut spm = spec(path, &RESNET_LAYERS, &[Method::Vanilla], threads);
    spm.score.channel_agg = Some(Aggregation::Mean);
    spm.score.subset_components = Some(2);
    let mut em = Engine::new(&spm)?;
    let mkeys = keys_of(&em);
    eprintln!("  resnet18: exact maps (mean graph) and Hutchinson probes …");
    let mn = exact_maps(&mut em, noise.view(), 32, 1)?;
    let ms = exact_maps(&mut em, inputs.view(), 32, 1)?;
    hutchinson_errors(
        "resnet18",
        &mut em,
        &mkeys,
        noise.view(),
        inputs.view(),
        &mn,
        &ms,
        &[8, 16, 64],
        2,
        1,
        est,
    )?;
    Ok(json!({
        "model": path.display().to_string(),
        "weights": "random (tests/models/build_models.py --only resnet18; no trained weights are available offline)",
        "inputs": format!("{n} reference digits resized to 224×224 (bilinear), repeated over 3 channels"),
        "n_noise": 4, "d": 512,
        "compile_seconds": compile_s,
        "engine_agreement_dims64": check64, "engine_agreement_exact_one_sample_n_noise2": check_exact,
        "curves": curve_rows, "subset_draws": 5, "hutchinson_draws": 2, "errors": "estimators.csv",
    }))
}

// ---------------------------------------------------------------------------------------------

fn run_info(args: &Args, when: &str) -> Value {
    let load = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let commit = std::process::Command::new("git")
        .args(["rev-parse", "--short", "HEAD"])
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    json!({
        "when": when, "loadavg": load.trim(), "commit": commit,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "threads": args.threads, "drift_n": args.drift_n, "smooth_s": args.smooth_s, "resnet_n": args.resnet_n,
        "profile": if cfg!(debug_assertions) { "debug" } else { "release" },
    })
}
