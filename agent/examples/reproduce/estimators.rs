//! Large-`D` estimators (docs/spec/scores.md#cost): exact per-component maps through `run_rows`, the subset and Hutchinson estimators on top, and their errors.

use super::*;

/// Per input, per graph output: the `[D, H, W]` maps of every component (identity cotangent rows),
/// computed `rows` at a time for `batch` inputs at a time.
pub(crate) fn exact_maps(
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
pub(crate) fn reduce(
    maps: &Array3<f32>,
    dims: Option<&[usize]>,
    binarize: Option<f32>,
) -> Result<scores::SampleMaps> {
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
pub(crate) struct EstimatorTable {
    pub(crate) rows: Vec<String>,
}

pub(crate) struct ErrRow<'a> {
    pub(crate) model: &'a str,
    pub(crate) layer: &'a str,
    pub(crate) method: &'a str,
    pub(crate) estimator: &'a str,
    pub(crate) k: usize,
    pub(crate) quantity: &'a str,
    pub(crate) exact: &'a [f64],
    pub(crate) est: &'a [f64],
}

impl EstimatorTable {
    /// Mean absolute error, mean relative error (over pairs with |exact| > 1e-12), mean signed
    /// relative error, mean exact value, max absolute error.
    pub(crate) fn push(&mut self, r: ErrRow) -> Value {
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
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
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

pub(crate) struct Keys {
    pub(crate) layer: String,
    pub(crate) method: Method,
}

/// Subset estimator (`dims = k`) for NS and VS from exact maps, `draws` subsets (seeds 0..draws),
/// against the exact scores. `noise[i][o]`, `samples[i][o]`: exact maps per input and output.
#[allow(clippy::too_many_arguments)]
pub(crate) fn subset_errors(
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
pub(crate) fn hutchinson_errors(
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
    for &k in ks {
        let mut acc: Vec<[Vec<f64>; 6]> = (0..keys.len()).map(|_| Default::default()).collect();
        for seed in 0..draws {
            let probes = hutchinson_probes(d, k, 1000 + seed);
            let est_noise = hutchinson_maps(engine, noise.view(), &probes, batch)?;
            let est = hutchinson_maps(engine, samples.view(), &probes, batch)?;
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
    out.extend(mean_map_errors(model, engine, keys, samples, exact_samples, batch, table)?);
    Ok(out)
}

/// Per input, per output: the variance map estimated from `probes` (Hutchinson).
fn hutchinson_maps(
    engine: &mut Engine,
    data: ArrayViewD<f32>,
    probes: &Array2<f32>,
    batch: usize,
) -> Result<Vec<Vec<Array2<f32>>>> {
    let d = engine.embedding_dim();
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
}

/// The one-pass mean map (one cotangent row `1/D`) against the mean of the exact per-component maps.
fn mean_map_errors(
    model: &str,
    engine: &mut Engine,
    keys: &[Keys],
    samples: ArrayViewD<f32>,
    exact_samples: &[Vec<Array3<f32>>],
    batch: usize,
    table: &mut EstimatorTable,
) -> Result<Vec<Value>> {
    let (d, n) = (engine.embedding_dim(), samples.shape()[0]);
    let mut out = Vec::new();
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
pub(crate) fn engine_agreement(
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

pub(crate) fn keys_of(engine: &Engine) -> Vec<Keys> {
    engine.keys().iter().map(|k| Keys { layer: k.layer.clone(), method: k.method }).collect()
}

pub(crate) fn digit_estimators(
    args: &Args,
    reference: &ArrayD<f32>,
    table: &mut EstimatorTable,
) -> Result<Value> {
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
