//! Which signal sees drift first: the paper's scores (noise and variance score per layer and method,
//! as a KS statistic and as the relative drift of the mean, the two forms the shipped alert rules use)
//! against the embedding detectors (`agent::detectors`), on the demo's real held-out digits under
//! realistic shifts. Writes `power.csv`, `first_fire.csv` and `summary.json`; the table and figure of
//! `docs/DRIFT_SIGNALS.md` come from `tools/plot_drift_signals.py`.
//!
//! ```sh
//! cargo run --release -p agent --example drift_signals -- [--out docs/drift_signals] [--clean 1000] [--drifted 200]
//! ```
//!
//! Protocol. The 256 reference digits are the reference; the 256 disjoint stream digits are the
//! clean pool, and each shift is applied once to every stream digit (a seeded draw). A window of `n`
//! samples is drawn with replacement from a pool — an i.i.d. sample of its empirical distribution.
//! For each window size and signal the threshold is the 99th percentile of the signal over `--clean`
//! clean windows (a 1 % false-alarm rate), checked on as many fresh clean windows; a signal "fires"
//! on a window above it. Samples until it fires: the smallest window size at which it fires on at
//! least half of `--drifted` drifted windows. Engine settings: `config/demo.toml` (plain gradient,
//! `conv2_in` and `block2`, vanilla and actgrad), on the CPU.

#[path = "drift_signals/protocol.rs"]
mod protocol;

use std::path::PathBuf;

use agent::cli::report::EmbeddingModel;
use agent::config::Config;
use agent::detectors::Pca;
use agent::engine::Engine;
use agent::runtime::Provider;
use anyhow::{Context, Result, bail};
use ndarray::{Array4, Axis, s};
use protocol::{Scored, Settings, Shifted};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

const SIZES: [usize; 7] = [10, 20, 30, 50, 75, 100, 200];

struct Args {
    out: PathBuf,
    clean: usize,
    drifted: usize,
    seed: u64,
}

fn parse_args() -> Result<Args> {
    let mut a = Args { out: "docs/drift_signals".into(), clean: 1000, drifted: 200, seed: 7 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let mut v = || it.next().with_context(|| format!("{k} needs a value"));
        match k.as_str() {
            "--out" => a.out = v()?.into(),
            "--clean" => a.clean = v()?.parse()?,
            "--drifted" => a.drifted = v()?.parse()?,
            "--seed" => a.seed = v()?.parse()?,
            _ => bail!("unknown option {k}"),
        }
    }
    Ok(a)
}

/// A shift: a name, its severity, and the pool of (transformed) images with the indices windows draw.
struct Shift {
    name: String,
    severity: String,
    images: Array4<f32>,
    pool: Vec<usize>,
}

fn gaussian_blur(x: &Array4<f32>, sigma: f32) -> Array4<f32> {
    let r = (3.0 * sigma).ceil() as isize;
    let w: Vec<f32> = (-r..=r).map(|i| (-(i * i) as f32 / (2.0 * sigma * sigma)).exp()).collect();
    let sum: f32 = w.iter().sum();
    let w: Vec<f32> = w.iter().map(|v| v / sum).collect();
    let (n, c, h, wd) = x.dim();
    let clamp = |v: isize, hi: usize| v.clamp(0, hi as isize - 1) as usize;
    let mut tmp = Array4::<f32>::zeros(x.dim());
    let mut out = Array4::<f32>::zeros(x.dim());
    for b in 0..n {
        for ch in 0..c {
            for i in 0..h {
                for j in 0..wd {
                    tmp[[b, ch, i, j]] = (-r..=r)
                        .map(|k| w[(k + r) as usize] * x[[b, ch, i, clamp(j as isize + k, wd)]])
                        .sum();
                }
            }
            for i in 0..h {
                for j in 0..wd {
                    out[[b, ch, i, j]] = (-r..=r)
                        .map(|k| w[(k + r) as usize] * tmp[[b, ch, clamp(i as isize + k, h), j]])
                        .sum();
                }
            }
        }
    }
    out
}

fn shifts(stream: &Array4<f32>, labels: &[i64], seed: u64) -> Vec<Shift> {
    let all: Vec<usize> = (0..stream.len_of(Axis(0))).collect();
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut v = Vec::new();
    for lambda in [0.1f32, 0.2, 0.3] {
        let images = stream.mapv(|x| {
            let e: f32 = StandardNormal.sample(&mut rng);
            (x + lambda * e).clamp(0.0, 1.0)
        });
        v.push(Shift { name: "noise".into(), severity: format!("λ = {lambda}"), images, pool: all.clone() });
    }
    for sigma in [0.7f32, 1.2] {
        let images = gaussian_blur(stream, sigma);
        v.push(Shift {
            name: "blur".into(), severity: format!("σ = {sigma} px"), images, pool: all.clone()
        });
    }
    for c in [0.7f32, 0.4] {
        let mut images = stream.clone();
        for mut img in images.axis_iter_mut(Axis(0)) {
            let m = img.mean().unwrap_or(0.0);
            img.mapv_inplace(|x| m + c * (x - m));
        }
        v.push(Shift { name: "contrast".into(), severity: format!("× {c}"), images, pool: all.clone() });
    }
    for side in [6usize, 10] {
        let mut images = stream.clone();
        for mut img in images.axis_iter_mut(Axis(0)) {
            let (y, x) = (rng.random_range(0..=28 - side), rng.random_range(0..=28 - side));
            img.slice_mut(s![.., y..y + side, x..x + side]).fill(0.0);
        }
        v.push(Shift {
            name: "occlusion".into(),
            severity: format!("{side}×{side} px"),
            images,
            pool: all.clone(),
        });
    }
    let low: Vec<usize> = all.iter().copied().filter(|&i| labels[i] <= 4).collect();
    v.push(Shift {
        name: "class prior".into(),
        severity: "digits 0–4 only".into(),
        images: stream.clone(),
        pool: low,
    });
    let few: Vec<usize> = all.iter().copied().filter(|&i| labels[i] == 1 || labels[i] == 7).collect();
    v.push(Shift {
        name: "class prior".into(),
        severity: "digits 1 and 7 only".into(),
        images: stream.clone(),
        pool: few,
    });
    v
}

fn score(
    engine: &mut Engine,
    forward: &mut EmbeddingModel,
    pca: Option<&Pca>,
    x: &Array4<f32>,
) -> Result<Scored> {
    let mut scores = Vec::new();
    let mut zs = Vec::new();
    for chunk in x.axis_chunks_iter(Axis(0), 32) {
        scores.extend(engine.score_batch(chunk.into_dyn())?);
        zs.push(forward.embed(chunk.into_dyn())?);
    }
    let views: Vec<_> = zs.iter().map(|z| z.view()).collect();
    Scored::new(scores, ndarray::concatenate(Axis(0), &views)?, pca)
}

fn main() -> Result<()> {
    let args = parse_args()?;
    let cfg = Config::load(std::path::Path::new("config/demo.toml"))?;
    let mut spec = cfg.to_engine_spec();
    spec.runtime.providers = Some(vec![Provider::Cpu]);
    let mut engine = Engine::new(&spec)?;
    let input = engine.graph().inputs[0].name.clone();
    let mut forward = EmbeddingModel::new(&spec, &input)?;
    let load = |p: &str| -> Result<Array4<f32>> {
        let a: ndarray::ArrayD<f32> = ndarray_npy::read_npy(p).with_context(|| format!("reading {p}"))?;
        Ok(a.into_dimensionality()?)
    };
    let reference = load("models/digits/reference.npy")?;
    let stream = load("models/digits/stream.npy")?;
    let labels: ndarray::Array1<i64> = ndarray_npy::read_npy("models/digits/labels_stream.npy")?;
    let labels = labels.to_vec();

    let t0 = std::time::Instant::now();
    let ref_scored = score(&mut engine, &mut forward, None, &reference)?;
    let pca = protocol::fit_pca(ref_scored.z.view())?;
    let clean = score(&mut engine, &mut forward, Some(&pca), &stream)?;
    let mut shifted = Vec::new();
    for sh in shifts(&stream, &labels, args.seed) {
        let scored = score(&mut engine, &mut forward, Some(&pca), &sh.images)?;
        shifted.push(Shifted { name: sh.name, severity: sh.severity, scored, pool: sh.pool });
    }
    eprintln!("scored {} images in {:.1} s", 256 * (2 + shifted.len()), t0.elapsed().as_secs_f64());
    let settings =
        Settings { started: t0, sizes: &SIZES, clean: args.clean, drifted: args.drifted, seed: args.seed };
    let summary = protocol::run(engine.keys(), &ref_scored, &pca, &clean, &shifted, &settings, &args.out)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}
