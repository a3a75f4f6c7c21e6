//! The paper's drift experiment (§4.4): per-sample relative change of the scores under
//! `clip(x + λε, 0, 1)` and its Spearman correlation with λ.

use super::*;

pub(crate) fn drift(args: &Args, reference: &ArrayD<f32>) -> Result<Value> {
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
        let (keys, clean, drifted_scores, benchmarks) =
            drift_scores(&sp, *s, *fresh, x.view(), &drifted_sets)?;
        let (per_key, rel_table) = relative_changes(keys.len(), &clean, &drifted_scores);
        for (ki, key) in keys.iter().enumerate() {
            if per_key[ki].is_empty() {
                continue; // NS(x) = 0 throughout: nothing to plot
            }
            for (i, c) in clean.iter().enumerate() {
                write!(
                    csv,
                    "{label},{},{},{i},{:.6}",
                    key.layer,
                    key.method.as_str(),
                    c.scores[ki].noise_score
                )?;
                for r in &rel_table[ki][i] {
                    write!(csv, ",{r:.6}")?;
                }
                csv.push('\n');
            }
        }
        let secs = t.elapsed().as_secs_f64();
        let run = json!({"estimator": label, "samples": s, "smoothing": sigma, "smoothing_seed": seed});
        for (ki, key) in keys.iter().enumerate() {
            let ns_clean: Vec<f64> = clean.iter().map(|c| c.scores[ki].noise_score).collect();
            results.push(summarise(&run, key, &per_key[ki], &ns_clean, benchmarks[ki], *fresh));
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

/// One estimator's scores: `(keys, clean[i], drifted[λ][i], noise benchmark per key)`, from one
/// engine, or with fresh draws per sample from one engine per sample.
fn drift_scores(
    sp: &EngineSpec,
    points: usize,
    fresh: bool,
    x: ArrayViewD<f32>,
    drifted_sets: &[ArrayD<f32>],
) -> Result<DriftScores> {
    if fresh {
        return drift_scores_fresh(sp, x, drifted_sets);
    }
    let batch = if points == 1 { 32 } else { 4 };
    let mut engine = Engine::new(sp)?;
    let clean = engine.score_all(x, batch)?;
    let d: Vec<Vec<SampleScores>> =
        drifted_sets.iter().map(|xd| engine.score_all(xd.view(), batch)).collect::<Result<_>>()?;
    let b = engine.keys().iter().map(|k| k.noise_benchmark).collect();
    Ok((keys_of(&engine), clean, d, b))
}

/// Per key, the finite `(λ, (NS(x) − NS(x_λ))/NS(x))` points, and the table `rel[key][sample][λ]`
/// (NaN where `NS(x) = 0`).
#[allow(clippy::type_complexity)]
fn relative_changes(
    keys: usize,
    clean: &[SampleScores],
    drifted: &[Vec<SampleScores>],
) -> (Vec<Vec<(f64, f64)>>, Vec<Vec<Vec<f64>>>) {
    let n = clean.len();
    let mut per_key: Vec<Vec<(f64, f64)>> = vec![Vec::new(); keys];
    let mut rel_table = vec![vec![vec![f64::NAN; LAMBDAS.len()]; n]; keys];
    for (li, sc) in drifted.iter().enumerate() {
        let lambda = LAMBDAS[li];
        for ki in 0..keys {
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
    (per_key, rel_table)
}

/// One (estimator, key) result: Spearman correlations of the relative change with λ (all points,
/// without λ = 0, of the per-λ means) and the per-λ distribution; `run` holds the estimator's fields.
fn summarise(
    run: &Value,
    key: &Keys,
    pts: &[(f64, f64)],
    ns_clean: &[f64],
    benchmark: f64,
    fresh: bool,
) -> Value {
    let n = ns_clean.len();
    let mut v = run.clone();
    let o = v.as_object_mut().expect("an object");
    o.insert("layer".into(), json!(key.layer));
    o.insert("method".into(), json!(key.method.as_str()));
    o.insert("ns_clean_mean".into(), json!(mean(ns_clean)));
    o.insert("noise_benchmark".into(), json!(benchmark));
    if pts.is_empty() {
        o.insert(
            "note".into(),
            json!("NS(x) = 0 for every sample (input-independent gradient): relative change undefined"),
        );
        return v;
    }
    let l: Vec<f64> = pts.iter().map(|p| p.0).collect();
    let r: Vec<f64> = pts.iter().map(|p| p.1).collect();
    let nz: Vec<(f64, f64)> = pts.iter().copied().filter(|p| p.0 > 0.0).collect();
    let l_nz: Vec<f64> = nz.iter().map(|p| p.0).collect();
    let r_nz: Vec<f64> = nz.iter().map(|p| p.1).collect();
    let per_lambda: Vec<Value> = LAMBDAS
        .iter()
        .map(|&lam| {
            let v: Vec<f64> = pts.iter().filter(|p| (p.0 - f64::from(lam)).abs() < 1e-6).map(|p| p.1).collect();
            json!({"lambda": lam, "mean": mean(&v), "median": median(&v), "std": std(&v),
                   "frac_negative": v.iter().filter(|&&x| x < 0.0).count() as f64 / v.len() as f64, "n": v.len()})
        })
        .collect();
    let means: Vec<f64> = per_lambda.iter().map(|p| p["mean"].as_f64().unwrap_or(f64::NAN)).collect();
    o.insert("n_samples".into(), json!(n));
    o.insert("skipped_points".into(), json!(LAMBDAS.len() * n - pts.len()));
    o.insert("spearman".into(), json!(spearman(&l, &r)));
    o.insert("spearman_without_lambda0".into(), json!(spearman(&l_nz, &r_nz)));
    o.insert(
        "spearman_of_means".into(),
        json!(spearman(&LAMBDAS.iter().map(|&v| f64::from(v)).collect::<Vec<_>>(), &means)),
    );
    o.insert("fresh_draws_per_sample".into(), json!(fresh));
    o.insert("per_lambda".into(), json!(per_lambda));
    v
}

pub(crate) type DriftScores = (Vec<Keys>, Vec<SampleScores>, Vec<Vec<SampleScores>>, Vec<f64>);

/// The drift scores with smoothing draws that differ from sample to sample: one engine per sample
/// (smoothing seed = the spec's seed + sample index), scoring the clean sample and its drifted
/// versions with the same draws. The noise benchmark is the mean over the engines.
pub(crate) fn drift_scores_fresh(
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
