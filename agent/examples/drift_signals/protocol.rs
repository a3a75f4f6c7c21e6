//! The protocol of `drift_signals` (digits) and `text_drift` (text), shared: every signal — the
//! paper's scores per layer and method (KS statistic and |relative drift of the mean|, NS and VS) and
//! the embedding detectors — on windows drawn from clean and shifted pools, thresholds at the 99th
//! percentile of clean windows (1 % false alarms), and per shift the smallest window size at which a
//! signal fires on at least half of the drifted windows. Writes `power.csv`, `first_fire.csv` and
//! `summary.json` into `out`.

use std::fmt::Write as _;
use std::path::Path;

use agent::detectors::{Centroid, KsShare, Mmd, Pca};
use agent::drift::ks_two_sample;
use agent::engine::{SampleScores, ScoreKey};
use anyhow::{Context, Result};
use ndarray::{Array2, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde_json::json;

/// What one pool of inputs gave: per-sample scores, embeddings, and PCA errors.
pub struct Scored {
    pub scores: Vec<SampleScores>,
    pub z: Array2<f32>,
    pub pca_err: Vec<f64>,
}

impl Scored {
    /// `pca`: the reference's fit (`None` for the reference itself).
    pub fn new(scores: Vec<SampleScores>, z: Array2<f32>, pca: Option<&Pca>) -> Result<Scored> {
        let pca_err = match pca {
            Some(p) => p.errors(z.view()).map_err(anyhow::Error::msg)?,
            None => vec![],
        };
        Ok(Scored { scores, z, pca_err })
    }
}

/// A shifted pool: a name, its severity, the scored inputs, and the indices windows draw from.
pub struct Shifted {
    pub name: String,
    pub severity: String,
    pub scored: Scored,
    pub pool: Vec<usize>,
}

/// Window sizes, window counts and the seed.
pub struct Settings<'a> {
    /// When the run began (the summary's `seconds` counts from it, scoring included).
    pub started: std::time::Instant,
    pub sizes: &'a [usize],
    pub clean: usize,
    pub drifted: usize,
    pub seed: u64,
}

/// Everything fitted on the reference that the signals need.
struct Fitted {
    names: Vec<String>,
    /// Per (key, score), the reference's sorted values and mean.
    ref_scores: Vec<(Vec<f64>, f64)>,
    ks: KsShare,
    centroid: Centroid,
    pca_ref_mean: f64,
}

fn signal_names(keys: &[ScoreKey]) -> Vec<String> {
    let mut names = Vec::new();
    for k in keys {
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

/// The PCA the pools' reconstruction errors are measured with, fitted on the reference embeddings.
pub fn fit_pca(reference: ArrayView2<f32>) -> Result<Pca> {
    Pca::fit(reference, Default::default()).map_err(anyhow::Error::msg)
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

/// Runs the protocol and writes its files into `out`; returns the summary (also `summary.json`).
pub fn run(
    keys: &[ScoreKey],
    reference: &Scored,
    pca: &Pca,
    clean: &Scored,
    shifts: &[Shifted],
    s: &Settings,
    out: &Path,
) -> Result<serde_json::Value> {
    let e = anyhow::Error::msg;
    let rz = reference.z.view();
    let ref_err = pca.errors(rz).map_err(e)?;
    let names = signal_names(keys);
    let mut ref_scores = Vec::new();
    for k in 0..keys.len() {
        for pick in 0..2 {
            let mut v: Vec<f64> = reference
                .scores
                .iter()
                .map(|s| if pick == 0 { s.scores[k].noise_score } else { s.scores[k].variance_score })
                .collect();
            v.sort_by(f64::total_cmp);
            let mean = v.iter().sum::<f64>() / v.len() as f64;
            ref_scores.push((v, mean));
        }
    }
    let mmd = Mmd::fit(rz, Default::default()).map_err(e)?;
    let fitted = Fitted {
        names: names.clone(),
        ref_scores,
        ks: KsShare::fit(rz, Default::default()).map_err(e)?,
        centroid: Centroid::fit(rz, Default::default()).map_err(e)?,
        pca_ref_mean: ref_err.iter().sum::<f64>() / ref_err.len() as f64,
    };

    // One kernel matrix over reference, clean pool and every shifted pool.
    let mut blocks: Vec<ArrayView2<f32>> = vec![rz, clean.z.view()];
    blocks.extend(shifts.iter().map(|s| s.scored.z.view()));
    let all = ndarray::concatenate(Axis(0), &blocks)?;
    let kernel = mmd.kernel_matrix(all.view(), all.view()).map_err(e)?;
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
    let mut offsets = vec![m + clean.z.nrows()];
    for sh in shifts {
        offsets.push(offsets[offsets.len() - 1] + sh.scored.z.nrows());
    }

    let mut rng = ChaCha8Rng::seed_from_u64(s.seed);
    let mut power_csv = String::from("shift,severity,signal,n,power,threshold,false_alarm_rate\n");
    // first[(shift index)][signal] = smallest n with power ≥ 0.5
    let mut first: Vec<Vec<Option<usize>>> = vec![vec![None; names.len()]; shifts.len()];
    let mut far_all = Vec::new();
    let clean_pool: Vec<usize> = (0..clean.z.nrows()).collect();
    for &n in s.sizes {
        let t = std::time::Instant::now();
        let calib: Vec<Vec<f64>> = (0..s.clean)
            .map(|_| signals(&fitted, clean, &kernel, m, ref_within, &draw(&mut rng, &clean_pool, n)))
            .collect::<Result<_>>()?;
        let check: Vec<Vec<f64>> = (0..s.clean)
            .map(|_| signals(&fitted, clean, &kernel, m, ref_within, &draw(&mut rng, &clean_pool, n)))
            .collect::<Result<_>>()?;
        let thresholds: Vec<f64> = (0..names.len())
            .map(|k| quantile(&calib.iter().map(|v| v[k]).collect::<Vec<_>>(), 0.99))
            .collect();
        let far: Vec<f64> = (0..names.len())
            .map(|k| check.iter().filter(|v| v[k] > thresholds[k]).count() as f64 / check.len() as f64)
            .collect();
        far_all.extend(far.iter().copied());
        for (si, sh) in shifts.iter().enumerate() {
            let wins: Vec<Vec<f64>> = (0..s.drifted)
                .map(|_| {
                    signals(
                        &fitted,
                        &sh.scored,
                        &kernel,
                        offsets[si],
                        ref_within,
                        &draw(&mut rng, &sh.pool, n),
                    )
                })
                .collect::<Result<_>>()?;
            for (k, name) in names.iter().enumerate() {
                let power = wins.iter().filter(|v| v[k] > thresholds[k]).count() as f64 / wins.len() as f64;
                writeln!(
                    power_csv,
                    "{},{},{},{n},{power:.4},{:.6e},{:.4}",
                    sh.name, sh.severity, name, thresholds[k], far[k]
                )?;
                if power >= 0.5 && first[si][k].is_none() {
                    first[si][k] = Some(n);
                }
            }
        }
        eprintln!("window {n}: {:.1} s", t.elapsed().as_secs_f64());
    }
    std::fs::create_dir_all(out)?;
    std::fs::write(out.join("power.csv"), power_csv)?;
    let last = s.sizes[s.sizes.len() - 1];
    let mut first_csv = String::from("shift,severity,signal,samples_until_fire\n");
    for (si, sh) in shifts.iter().enumerate() {
        for (k, name) in names.iter().enumerate() {
            let v = first[si][k].map(|n| n.to_string()).unwrap_or_else(|| format!(">{last}"));
            writeln!(first_csv, "{},{},{},{v}", sh.name, sh.severity, name)?;
        }
    }
    std::fs::write(out.join("first_fire.csv"), first_csv)?;
    let mut far_sorted = far_all.clone();
    far_sorted.sort_by(f64::total_cmp);
    let summary = json!({
        "sizes": s.sizes,
        "clean_windows": s.clean,
        "drifted_windows": s.drifted,
        "seed": s.seed,
        "reference_samples": m,
        "pool_samples": clean.z.nrows(),
        "pca_components": pca.components().0,
        "pca_explained": pca.components().1,
        "mmd_bandwidth": mmd.bandwidth(),
        "false_alarm_rate_checked": {
            "min": far_sorted.first(), "median": far_sorted[far_sorted.len() / 2], "max": far_sorted.last(),
        },
        "seconds": s.started.elapsed().as_secs_f64(),
    });
    std::fs::write(out.join("summary.json"), serde_json::to_string_pretty(&summary)?)?;
    Ok(summary)
}

fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let pos = q * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}
