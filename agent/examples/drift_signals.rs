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

use std::fmt::Write as _;
use std::path::PathBuf;

use agent::cli::report::EmbeddingModel;
use agent::config::Config;
use agent::detectors::{Centroid, KsShare, Mmd, Pca};
use agent::drift::ks_two_sample;
use agent::engine::{Engine, SampleScores};
use agent::runtime::Provider;
use anyhow::{Context, Result, bail};
use ndarray::{Array2, Array4, ArrayView2, Axis, s};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};
use serde_json::json;

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

/// What one pool of images gave: per-sample scores, embeddings, and PCA errors.
struct Scored {
    scores: Vec<SampleScores>,
    z: Array2<f32>,
    pca_err: Vec<f64>,
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
    let z = ndarray::concatenate(Axis(0), &views)?;
    let pca_err = match pca {
        Some(p) => p.errors(z.view()).map_err(anyhow::Error::msg)?,
        None => vec![],
    };
    Ok(Scored { scores, z, pca_err })
}

/// Everything fitted on the reference that the signals need.
struct Fitted {
    names: Vec<String>,
    /// Per (key, score), the reference's sorted values and mean.
    ref_scores: Vec<(Vec<f64>, f64)>,
    mmd: Mmd,
    ks: KsShare,
    centroid: Centroid,
    pca_ref_mean: f64,
}

fn signal_names(engine: &Engine) -> Vec<String> {
    let mut names = Vec::new();
    for k in engine.keys() {
        let m = k.method.as_str();
        names.push(format!("NS KS {}/{m}", k.layer));
        names.push(format!("|ΔNS| {}/{m}", k.layer));
        names.push(format!("VS KS {}/{m}", k.layer));
        names.push(format!("|ΔVS| {}/{m}", k.layer));
    }
    for n in [
        "embedding_mmd",
        "embedding_ks_share",
        "embedding_centroid_cosine",
        "embedding_centroid_euclidean",
        "embedding_pca",
    ] {
        names.push(n.into());
    }
    names
}

/// Every signal on one window (`idx` into `pool`'s samples); larger = more drift for each.
fn signals(
    f: &Fitted,
    pool: &Scored,
    kernel: &Array2<f64>,
    offset: usize,
    ref_within: f64,
    idx: &[usize],
) -> Result<Vec<f64>> {
    let mut out = Vec::with_capacity(f.names.len());
    let keys = pool.scores[0].scores.len();
    for k in 0..keys {
        for (si, pick) in [0usize, 1].into_iter().enumerate() {
            let (r, r_mean) = &f.ref_scores[2 * k + si];
            let mut w: Vec<f64> = idx
                .iter()
                .map(|&i| {
                    let s = pool.scores[i].scores[k];
                    if pick == 0 { s.noise_score } else { s.variance_score }
                })
                .collect();
            w.sort_by(f64::total_cmp);
            let ks = ks_two_sample(r, &w).context("empty window")?.statistic;
            let mean = w.iter().sum::<f64>() / w.len() as f64;
            out.push(ks);
            out.push(agent::drift::relative_drift(*r_mean, mean).map(f64::abs).unwrap_or(0.0));
        }
    }
    // MMD² from the pooled kernel: reference rows 0..m, this pool's rows from `offset`.
    let m = f.ref_scores[0].0.len();
    let wi: Vec<usize> = idx.iter().map(|&i| offset + i).collect();
    let mut within = 0.0;
    for (a, &i) in wi.iter().enumerate() {
        for &j in &wi[a + 1..] {
            within += kernel[[i, j]];
        }
    }
    let n = wi.len() as f64;
    let cross: f64 = wi.iter().map(|&i| (0..m).map(|j| kernel[[i, j]]).sum::<f64>()).sum();
    out.push(ref_within + 2.0 * within / (n * (n - 1.0)) - 2.0 * cross / (n * m as f64));
    let z = pool.z.select(Axis(0), idx);
    let ks = f.ks.test(z.view()).map_err(anyhow::Error::msg)?;
    out.push(-ks.p_value.unwrap_or(1.0).max(1e-300).log10());
    let (cos, euc) = f.centroid.distances(z.view()).map_err(anyhow::Error::msg)?;
    out.push(cos);
    out.push(euc);
    let e = idx.iter().map(|&i| pool.pca_err[i]).sum::<f64>() / n;
    out.push((e - f.pca_ref_mean).abs());
    Ok(out)
}

fn draw(rng: &mut ChaCha8Rng, pool: &[usize], n: usize) -> Vec<usize> {
    (0..n).map(|_| pool[rng.random_range(0..pool.len())]).collect()
}

fn main() -> Result<()> {
    let args = parse_args()?;
    std::fs::create_dir_all(&args.out)?;
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
    let e = anyhow::Error::msg;
    let rz = ref_scored.z.view();
    let pca = Pca::fit(rz, Default::default()).map_err(e)?;
    let ref_err = pca.errors(rz).map_err(e)?;
    let names = signal_names(&engine);
    let mut ref_scores = Vec::new();
    for k in 0..engine.keys().len() {
        for pick in 0..2 {
            let mut v: Vec<f64> = ref_scored
                .scores
                .iter()
                .map(|s| if pick == 0 { s.scores[k].noise_score } else { s.scores[k].variance_score })
                .collect();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            ref_scores.push((v, mean));
        }
    }
    let fitted = Fitted {
        names: names.clone(),
        ref_scores,
        mmd: Mmd::fit(rz, Default::default()).map_err(e)?,
        ks: KsShare::fit(rz, Default::default()).map_err(e)?,
        centroid: Centroid::fit(rz, Default::default()).map_err(e)?,
        pca_ref_mean: ref_err.iter().sum::<f64>() / ref_err.len() as f64,
    };
    let clean = score(&mut engine, &mut forward, Some(&pca), &stream)?;
    let shifts = shifts(&stream, &labels, args.seed);
    let mut shifted = Vec::new();
    for sh in &shifts {
        shifted.push(score(&mut engine, &mut forward, Some(&pca), &sh.images)?);
    }
    eprintln!("scored {} images in {:.1} s", 256 * (2 + shifts.len()), t0.elapsed().as_secs_f64());

    // One kernel matrix over reference, clean pool and every shifted pool.
    let mut blocks: Vec<ArrayView2<f32>> = vec![rz, clean.z.view()];
    blocks.extend(shifted.iter().map(|s| s.z.view()));
    let all = ndarray::concatenate(Axis(0), &blocks)?;
    let kernel = fitted.mmd.kernel_matrix(all.view(), all.view()).map_err(e)?;
    let m = rz.nrows();
    let ref_within = {
        let k = &kernel;
        let mut t = 0.0;
        for i in 0..m {
            for j in i + 1..m {
                t += k[[i, j]];
            }
        }
        2.0 * t / (m * (m - 1)) as f64
    };

    let mut rng = ChaCha8Rng::seed_from_u64(args.seed);
    let mut power_csv = String::from("shift,severity,signal,n,power,threshold,false_alarm_rate\n");
    // first[(shift index)][signal] = smallest n with power ≥ 0.5
    let mut first: Vec<Vec<Option<usize>>> = vec![vec![None; names.len()]; shifts.len()];
    let mut far_all = Vec::new();
    let clean_pool: Vec<usize> = (0..256).collect();
    for &n in &SIZES {
        let t = std::time::Instant::now();
        let calib: Vec<Vec<f64>> = (0..args.clean)
            .map(|_| signals(&fitted, &clean, &kernel, m, ref_within, &draw(&mut rng, &clean_pool, n)))
            .collect::<Result<_>>()?;
        let check: Vec<Vec<f64>> = (0..args.clean)
            .map(|_| signals(&fitted, &clean, &kernel, m, ref_within, &draw(&mut rng, &clean_pool, n)))
            .collect::<Result<_>>()?;
        let thresholds: Vec<f64> = (0..names.len())
            .map(|s| quantile(&calib.iter().map(|v| v[s]).collect::<Vec<_>>(), 0.99))
            .collect();
        let far: Vec<f64> = (0..names.len())
            .map(|s| check.iter().filter(|v| v[s] > thresholds[s]).count() as f64 / check.len() as f64)
            .collect();
        far_all.extend(far.iter().copied());
        for (si, sh) in shifts.iter().enumerate() {
            let offset = m + 256 * (si + 1);
            let wins: Vec<Vec<f64>> = (0..args.drifted)
                .map(|_| {
                    signals(&fitted, &shifted[si], &kernel, offset, ref_within, &draw(&mut rng, &sh.pool, n))
                })
                .collect::<Result<_>>()?;
            for (s, name) in names.iter().enumerate() {
                let power = wins.iter().filter(|v| v[s] > thresholds[s]).count() as f64 / wins.len() as f64;
                writeln!(
                    power_csv,
                    "{},{},{},{n},{power:.4},{:.6e},{:.4}",
                    sh.name, sh.severity, name, thresholds[s], far[s]
                )?;
                if power >= 0.5 && first[si][s].is_none() {
                    first[si][s] = Some(n);
                }
            }
        }
        eprintln!("window {n}: {:.1} s", t.elapsed().as_secs_f64());
    }
    std::fs::write(args.out.join("power.csv"), power_csv)?;
    let mut first_csv = String::from("shift,severity,signal,samples_until_fire\n");
    for (si, sh) in shifts.iter().enumerate() {
        for (s, name) in names.iter().enumerate() {
            let v =
                first[si][s].map(|n| n.to_string()).unwrap_or_else(|| format!(">{}", SIZES[SIZES.len() - 1]));
            writeln!(first_csv, "{},{},{},{v}", sh.name, sh.severity, name)?;
        }
    }
    std::fs::write(args.out.join("first_fire.csv"), first_csv)?;
    let mut far_sorted = far_all.clone();
    far_sorted.sort_by(f64::total_cmp);
    let summary = json!({
        "sizes": SIZES,
        "clean_windows": args.clean,
        "drifted_windows": args.drifted,
        "seed": args.seed,
        "reference_samples": m,
        "pool_samples": 256,
        "pca_components": pca.components().0,
        "pca_explained": pca.components().1,
        "mmd_bandwidth": fitted.mmd.bandwidth(),
        "false_alarm_rate_checked": {
            "min": far_sorted.first(), "median": far_sorted[far_sorted.len() / 2], "max": far_sorted.last(),
        },
        "seconds": t0.elapsed().as_secs_f64(),
    });
    std::fs::write(args.out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    println!("{}", serde_json::to_string_pretty(&summary)?);
    Ok(())
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}
