//! Score curves over depth (paper §4.1, §4.3): trained vs untrained digit encoders, and AlexNet.

use super::*;

#[derive(Default)]
pub(crate) struct CurveTable {
    pub(crate) rows: Vec<String>,
}

pub(crate) struct CurveRow<'a> {
    pub(crate) model: &'a str,
    pub(crate) weights: &'a str,
    pub(crate) source: &'a str,
    pub(crate) layer_index: usize,
    pub(crate) layer: &'a str,
    pub(crate) method: &'a str,
    pub(crate) ns: &'a [f64],
    pub(crate) vs: &'a [f64],
    pub(crate) vs_bin: &'a [f64],
    pub(crate) bench: f64,
}

impl CurveTable {
    pub(crate) fn push(&mut self, r: CurveRow) {
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
    pub(crate) fn write(&self, path: &Path) -> Result<()> {
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
pub(crate) fn engine_curves(
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

pub(crate) fn digit_curves(args: &Args, reference: &ArrayD<f32>, table: &mut CurveTable) -> Result<Value> {
    let mut out = serde_json::Map::new();
    for (weights, path) in [("trained", ENCODER), ("untrained", UNTRAINED)] {
        let sp = spec(Path::new(path), &DIGIT_LAYERS, &Method::ALL, args.threads);
        let rows = engine_curves(&sp, reference.view(), "digits", weights, table)?;
        out.insert(weights.into(), json!({"model": path, "n_samples": reference.shape()[0], "scores": rows}));
    }
    Ok(Value::Object(out))
}

pub(crate) fn alexnet_curves(args: &Args, reference: &ArrayD<f32>, table: &mut CurveTable) -> Result<Value> {
    let inputs = resized_digits(digit_subset(reference, 64).view(), 3, 67, 67);
    let sp = spec(Path::new(ALEXNET), &ALEXNET_LAYERS, &Method::ALL, args.threads);
    let rows = engine_curves(&sp, inputs.view(), "alexnet_small", "random", table)?;
    Ok(json!({
        "model": ALEXNET, "weights": "random (no trained weights exist for this test model)",
        "inputs": "64 reference digits resized to 67×67 (bilinear), repeated over 3 channels",
        "scores": rows,
    }))
}
