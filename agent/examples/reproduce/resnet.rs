//! ResNet-18 with random weights: curves, estimator errors and timing at `D = 512`.

use super::*;

/// Per-input exact maps: `[input][output key]` → `[D, H, W]`, as [`exact_maps`] returns them.
type Maps = Vec<Vec<Array3<f32>>>;

/// The identity-row maps of the default (abs) scoring graph, which every later step compares with.
struct ExactMaps {
    keys: Vec<Keys>,
    noise: Maps,
    samples: Maps,
    /// The engine's `dims = 64` scores against the emulation from these maps on the same subset.
    check64: Value,
}

pub(crate) fn resnet18(
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

    let compile_s = compile_times(path, timing)?;
    let sp = spec(path, &RESNET_LAYERS, &Method::ALL, threads);
    let exact = exact_maps_via_subset_engine(&sp, noise.view(), inputs.view(), n, timing)?;
    let check_exact = exact_engine_check(&sp, inputs.view(), &exact, timing)?;
    let curve_rows = exact_curves(&exact, curves)?;
    subset_errors("resnet18", &exact.keys, &exact.noise, &exact.samples, &[8, 16, 64, 128, 256], 5, est)?;
    let check64 = exact.check64;
    drop((exact.noise, exact.samples));
    mean_graph_errors(path, threads, noise.view(), inputs.view(), est)?;
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

/// Compile time alone (decode + compile), three times; the best goes to the timing table, all
/// three to the summary.
fn compile_times(path: &Path, timing: &mut Vec<Timing>) -> Result<Vec<f64>> {
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
    Ok(compile_s)
}

/// Exact maps through the default scoring graph (abs channel aggregation), every method, from an
/// engine built with `dims = 64`: the same engine then times `dims = 64` scoring and checks it
/// against the emulation on the same subset, so it is built once.
fn exact_maps_via_subset_engine(
    sp: &EngineSpec,
    noise: ArrayViewD<f32>,
    inputs: ArrayViewD<f32>,
    n: usize,
    timing: &mut Vec<Timing>,
) -> Result<ExactMaps> {
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
    let check64 = engine_agreement(&mut e64, inputs, &xn, &xs, Some(&dims64), 1)?;
    let what = "score_batch (+ a negligible check)";
    timing.push(Timing::of("resnet18", "dims=64; 4 layers x 3 methods", what, n, 1, &t));
    Ok(ExactMaps { keys, noise: xn, samples: xs, check64 })
}

/// Exact scoring through the engine for one sample (n_noise = 2 keeps its start-up short; noise
/// inputs are prefix-stable, so the emulation uses the first 2 of the 4).
fn exact_engine_check(
    sp: &EngineSpec,
    inputs: ArrayViewD<f32>,
    exact: &ExactMaps,
    timing: &mut Vec<Timing>,
) -> Result<Value> {
    let mut sp2 = sp.clone();
    sp2.noise.n_noise = Some(2);
    let t = Clock::start();
    let mut ex = Engine::new(&sp2)?;
    let what = "Engine::new (compile + session + noise maps)";
    timing.push(Timing::of("resnet18", "exact D=512; 4 layers x 3 methods; n_noise=2", what, 1, 1, &t));
    let t = Clock::start();
    let one = inputs.slice_axis(Axis(0), ndarray::Slice::from(0..1));
    let check_exact = engine_agreement(&mut ex, one, &exact.noise[..2], &exact.samples[..1], None, 1)?;
    let what = "score_batch (+ a negligible check)";
    timing.push(Timing::of("resnet18", "exact D=512; 4 layers x 3 methods", what, 1, 1, &t));
    Ok(check_exact)
}

/// Curves (exact) from the maps, plain and binarised variance score: a row per output key into
/// `curves`, and its means for the summary.
fn exact_curves(exact: &ExactMaps, curves: &mut CurveTable) -> Result<Vec<Value>> {
    let mut curve_rows = Vec::new();
    for (o, key) in exact.keys.iter().enumerate() {
        let ne: Vec<Array2<f32>> = exact
            .noise
            .iter()
            .map(|m| reduce(&m[o], None, None).map(|r| r.embedding))
            .collect::<Result<_>>()?;
        let nref = NoiseReference::new(&ne)?;
        let bench = nref.benchmark()?;
        let (mut ns, mut vs, mut vb) = (Vec::new(), Vec::new(), Vec::new());
        for m in &exact.samples {
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
    Ok(curve_rows)
}

/// Hutchinson and the mean map: vanilla, mean channel aggregation (a graph of its own, so its
/// exact maps are computed again).
fn mean_graph_errors(
    path: &Path,
    threads: usize,
    noise: ArrayViewD<f32>,
    inputs: ArrayViewD<f32>,
    est: &mut EstimatorTable,
) -> Result<()> {
    let mut spm = spec(path, &RESNET_LAYERS, &[Method::Vanilla], threads);
    spm.score.channel_agg = Some(Aggregation::Mean);
    spm.score.subset_components = Some(2);
    let mut em = Engine::new(&spm)?;
    let mkeys = keys_of(&em);
    eprintln!("  resnet18: exact maps (mean graph) and Hutchinson probes …");
    let mn = exact_maps(&mut em, noise.view(), 32, 1)?;
    let ms = exact_maps(&mut em, inputs.view(), 32, 1)?;
    hutchinson_errors("resnet18", &mut em, &mkeys, noise, inputs, &mn, &ms, &[8, 16, 64], 2, 1, est)?;
    Ok(())
}
