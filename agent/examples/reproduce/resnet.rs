//! ResNet-18 with random weights: curves, estimator errors and timing at `D = 512`.

use super::*;

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
