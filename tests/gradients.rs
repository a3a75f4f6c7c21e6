//! Every reverse-mode rule and every whole test model, checked against central finite differences of
//! the forward graph run in ONNX Runtime, on fresh random inputs, batch 1 and 3.
//!
//! ONNX Runtime's CPU kernels for Conv and friends are float32 only, so differences are taken in
//! float32, at two steps, ε = 4e-3 and 1e-3, and an entry must agree at one of them: the small step
//! resolves models dense in kinks (AlexNet-like stacks, where a larger step averages the slope over
//! many ReLU and max-pool switches), the large one resolves float32 rounding. Tolerance: |analytic − numeric| ≤ 2e-2 · max|analytic| of that sample's
//! Jacobian, plus an absolute floor of 1e-4 and of four float32 ulps of `z_j` over the step (a
//! difference of two float32 embeddings cannot resolve less: with |z| ≈ 16 that is ≈ 1e-3). ReLU and MaxPool are not differentiable everywhere: a step can cross a
//! kink. A coordinate is *smooth* when its forward and backward differences agree within that
//! tolerance; there the central difference must match the analytic value. Where they disagree, a kink
//! lies within the step; the coordinate passes if any of the three differences matches, and otherwise
//! counts as a kink, which must stay under 3% of the checked entries. A wrong rule fails on the smooth
//! coordinates, which are the vast majority. Coordinates are drawn where |h| > 2·4e-3: a layer that is a
//! ReLU output holds exact zeros, and a max-pool downstream then sees exact ties, where the gradient
//! is undefined (the analytic value follows ONNX Runtime's first-index tie-break).

mod common;

use agent::compiler::{self, CompileOptions};
use agent::onnx;
use agent::scores::{Aggregation, Method};
use common::*;
use ndarray::{ArrayD, Axis, IxDyn, s};
use rand::Rng;

const STEPS: [f32; 2] = [4e-3, 1e-3];
const REL_TOL: f32 = 2e-2;
const COORDS_PER_SAMPLE: usize = 12;

/// Worst relative error over the checked coordinates of one model, with `(checked, on kinks)`.
/// `components`: check these embedding components only (all when `None`); `batches`: batch sizes.
fn check_model(
    entry: &ManifestEntry,
    seed: u64,
    components: Option<&[usize]>,
    batches: &[usize],
) -> (f32, usize, usize) {
    let bytes = std::fs::read(entry.path()).unwrap();
    let model = onnx::decode(&bytes).unwrap();
    let opts = CompileOptions {
        embedding: entry.embedding.clone(),
        layers: entry.layers.clone(),
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        layouts: vec![],
    };
    let graph = compiler::compile(&model, "test", &opts).unwrap_or_else(|e| panic!("{}: {e:#}", entry.name));
    let compiled = graph.to_bytes();
    let d_all = graph.embedding_dim;
    assert_eq!(d_all, entry.d, "{}: embedding dim", entry.name);
    let comps: Vec<usize> = components.map(<[usize]>::to_vec).unwrap_or_else(|| (0..d_all).collect());
    let d = comps.len();
    let mut worst = 0.0f32;
    let (mut checked, mut kinks) = (0usize, 0usize);
    for (bi, &batch) in batches.iter().enumerate() {
        let mut shape = vec![batch];
        shape.extend(&entry.input_shape);
        let x = uniform(&shape, seed * 10 + bi as u64);
        let eye =
            ArrayD::from_shape_fn(IxDyn(&[d, d_all]), |i| if comps[i[0]] == i[1] { 1.0f32 } else { 0.0 });
        let names: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
        let maps = run(&compiled, vec![(&entry.input, x.clone()), (compiler::COTANGENT, eye)], &names);
        for (li, layer) in entry.layers.iter().enumerate() {
            // Raw map: [B, D, C, H, W] = ∂z_j/∂h.
            let jac = &maps[li];
            let h = run(&with_output(&model, layer), vec![(&entry.input, x.clone())], &[layer.as_str()])
                .remove(0);
            let tail = tail_model(&model, layer, &entry.embedding);
            let per_sample: usize = h.shape()[1..].iter().product();
            assert_eq!(jac.len(), batch * d * per_sample, "{}: map size for {layer}", entry.name);
            let mut r = rng(seed * 100 + li as u64 + 7 * bi as u64);
            for b in 0..batch {
                let hflat = h.index_axis(Axis(0), b).iter().copied().collect::<Vec<f32>>();
                let away: Vec<usize> = (0..per_sample).filter(|&c| hflat[c].abs() > 2.0 * STEPS[0]).collect();
                assert!(away.len() >= COORDS_PER_SAMPLE, "{}: layer {layer} is almost all zeros", entry.name);
                let coords: Vec<usize> =
                    (0..COORDS_PER_SAMPLE).map(|_| away[r.random_range(0..away.len())]).collect();
                // One run per sample: rows [h, then h ± ε e_i for each coordinate and step].
                let per_step = 2 * coords.len();
                let n = 1 + STEPS.len() * per_step;
                let hb = h.index_axis(Axis(0), b).to_owned();
                let mut hs = ndarray::stack(Axis(0), &vec![hb.view(); n]).unwrap();
                for (si, eps) in STEPS.iter().enumerate() {
                    for (ci, &c) in coords.iter().enumerate() {
                        let row = 1 + si * per_step + ci;
                        hs.index_axis_mut(Axis(0), row).as_slice_mut().unwrap()[c] += eps;
                        hs.index_axis_mut(Axis(0), row + coords.len()).as_slice_mut().unwrap()[c] -= eps;
                    }
                }
                let xb = x.index_axis(Axis(0), b).to_owned();
                let xs = ndarray::stack(Axis(0), &vec![xb.view(); n]).unwrap();
                let mut feeds = vec![(layer.as_str(), hs)];
                if entry.input != *layer {
                    feeds.push((entry.input.as_str(), xs));
                }
                let z = run(&tail, feeds, &[entry.embedding.as_str()]).remove(0);
                let jb = jac.to_owned().into_shape_with_order((batch, d, per_sample)).unwrap();
                let jb = jb.slice(s![b, .., ..]);
                let scale = jb.iter().fold(0.0f32, |m, v| m.max(v.abs())).max(1e-3);
                for (ci, &c) in coords.iter().enumerate() {
                    for j in 0..d {
                        let an = jb[[j, c]];
                        checked += 1;
                        // (relative error, smooth) at each step.
                        let mut tries = Vec::new();
                        let mut detail = String::new();
                        for (si, eps) in STEPS.iter().enumerate() {
                            let row = 1 + si * per_step + ci;
                            let zj = comps[j];
                            let (z0, zp, zm) = (z[[0, zj]], z[[row, zj]], z[[row + coords.len(), zj]]);
                            let central = (zp - zm) / (2.0 * eps);
                            let (fwd, bwd) = ((zp - z0) / eps, (z0 - zm) / eps);
                            let zmax = z0.abs().max(zp.abs()).max(zm.abs());
                            let floor = 1e-4 + 4.0 * f32::EPSILON * zmax / (2.0 * eps);
                            let rel = |e: f32| (e - floor).max(0.0) / scale;
                            let smooth = rel((fwd - bwd).abs()) <= REL_TOL;
                            let err = if smooth {
                                (an - central).abs()
                            } else {
                                [central, fwd, bwd].iter().map(|n| (an - n).abs()).fold(f32::MAX, f32::min)
                            };
                            tries.push((rel(err), smooth, err / scale));
                            detail +=
                                &format!(" [ε {eps}: central {central}, forward {fwd}, backward {bwd}]");
                        }
                        let best = tries.iter().map(|t| t.0).fold(f32::MAX, f32::min);
                        if best <= REL_TOL {
                            let raw = tries.iter().map(|t| t.2).fold(f32::MAX, f32::min);
                            worst = worst.max(raw);
                        } else if tries.iter().all(|t| !t.1) {
                            kinks += 1;
                        } else {
                            panic!(
                                "{} layer {layer} batch {batch} sample {b} coordinate {c} component {j}: analytic {an} (scale {scale}){detail}",
                                entry.name
                            );
                        }
                    }
                }
            }
        }
    }
    assert!(kinks * 100 <= checked * 3, "{}: {kinks} of {checked} entries sit on kinks", entry.name);
    (worst, checked, kinks)
}

#[test]
fn every_rule_and_model_matches_finite_differences() {
    let mut report = Vec::new();
    for (i, entry) in manifest().iter().filter(|e| e.committed).enumerate() {
        let (worst, checked, kinks) = check_model(entry, 1000 + i as u64, None, &[1, 3]);
        report.push(format!(
            "{:24} worst |analytic − numeric| / scale {worst:.1e} over {checked} entries ({kinks} on kinks)  ops {}",
            entry.name,
            entry.ops.join(",")
        ));
    }
    eprintln!("{}", report.join("\n"));
    assert!(report.len() >= 40, "expected the whole manifest, checked {}", report.len());
}

/// The real ResNet-18 layout (11 M parameters, D = 512, 224 × 224 inputs), built by the model script:
/// it compiles, and at two stage outputs its gradients for a random subset of components match finite
/// differences. The compile time is printed (measured figures: docs/REPRODUCTION.md).
#[test]
fn resnet18_compiles_and_matches_finite_differences() {
    let python = std::env::var("AGENT_PYTHON")
        .unwrap_or_else(|_| repo_root().join(".venv/bin/python").display().to_string());
    let out = std::process::Command::new(&python)
        .arg(repo_root().join("tests/models/build_models.py"))
        .args(["--only", "resnet18", "--out"])
        .arg(repo_root().join("tests/models"))
        .output()
        .expect("running tests/models/build_models.py (is .venv installed?)");
    assert!(out.status.success(), "building resnet18: {}", String::from_utf8_lossy(&out.stderr));
    let mut entry = manifest().into_iter().find(|e| e.name == "resnet18").unwrap();
    let model = onnx::decode(&std::fs::read(entry.path()).unwrap()).unwrap();
    let opts = CompileOptions {
        embedding: entry.embedding.clone(),
        layers: entry.layers.clone(),
        methods: Method::ALL.to_vec(),
        channel_agg: Some(Aggregation::Abs),
        smoothing_samples: 1,
        layouts: vec![],
    };
    let start = std::time::Instant::now();
    let g = compiler::compile(&model, "t", &opts).unwrap();
    eprintln!(
        "resnet18: compiled {} layers x 3 methods in {:.2} s",
        entry.layers.len(),
        start.elapsed().as_secs_f64()
    );
    assert_eq!(g.embedding_dim, 512);
    assert_eq!(g.outputs.len(), 4 * 3);
    // Gradients at layer2's and layer4's outputs, 5 random components, batch 1 and 2.
    entry.layers = vec![entry.layers[1].clone(), entry.layers[3].clone()];
    let comps = [3usize, 77, 200, 311, 509];
    let (worst, checked, kinks) = check_model(&entry, 4242, Some(&comps), &[1, 2]);
    eprintln!(
        "resnet18: worst |analytic − numeric| / scale {worst:.1e} over {checked} entries ({kinks} on kinks)"
    );
}

/// The aggregated outputs equal the same aggregations applied to the raw Jacobian and activation.
#[test]
fn methods_and_channel_aggregations_follow_the_raw_jacobian() {
    let entry = manifest().into_iter().find(|e| e.name == "mnist_encoder").unwrap();
    let bytes = std::fs::read(entry.path()).unwrap();
    let model = onnx::decode(&bytes).unwrap();
    let layer = entry.layers[0].clone();
    let x = uniform(&[2, 1, 28, 28], 5);
    let k = 3;
    let v = uniform(&[k, entry.d], 6) - 0.5;
    let raw_opts = CompileOptions {
        embedding: entry.embedding.clone(),
        layers: vec![layer.clone()],
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        layouts: vec![],
    };
    let raw = compiler::compile(&model, "t", &raw_opts).unwrap();
    let g = run(
        &raw.to_bytes(),
        vec![("input", x.clone()), (compiler::COTANGENT, v.clone())],
        &["attr/0/vanilla"],
    )
    .remove(0);
    let h = run(&with_output(&model, &layer), vec![("input", x.clone())], &[layer.as_str()]).remove(0);
    let h5 = h.clone().insert_axis(Axis(1));
    for agg in [Aggregation::Mean, Aggregation::Abs, Aggregation::Var] {
        let opts =
            CompileOptions { methods: Method::ALL.to_vec(), channel_agg: Some(agg), ..raw_opts.clone() };
        let c = compiler::compile(&model, "t", &opts).unwrap();
        let out = run(
            &c.to_bytes(),
            vec![("input", x.clone()), (compiler::COTANGENT, v.clone())],
            &["attr/0/vanilla", "attr/0/actgrad", "attr/0/gradcam"],
        );
        let chan = |a: &ArrayD<f32>| -> ArrayD<f32> {
            let mean = a.mean_axis(Axis(2)).unwrap();
            match agg {
                Aggregation::Mean => mean,
                Aggregation::Abs => a.mapv(f32::abs).mean_axis(Axis(2)).unwrap(),
                Aggregation::Var => {
                    let m = mean.clone().insert_axis(Axis(2));
                    (a - &m).mapv(|d| d * d).mean_axis(Axis(2)).unwrap()
                }
            }
        };
        let want_vanilla = chan(&g);
        let want_actgrad = chan(&(&g * &h5));
        let alpha = g
            .mean_axis(Axis(4))
            .unwrap()
            .mean_axis(Axis(3))
            .unwrap()
            .insert_axis(Axis(3))
            .insert_axis(Axis(4));
        let want_gradcam = (&alpha * &h5).sum_axis(Axis(2)).mapv(|v| v.max(0.0));
        for (got, want, what) in [
            (&out[0], want_vanilla, "vanilla"),
            (&out[1], want_actgrad, "actgrad"),
            (&out[2], want_gradcam, "gradcam"),
        ] {
            assert_eq!(got.shape(), want.shape(), "{what} {agg:?}");
            let scale = want.iter().fold(1e-6f32, |m, v| m.max(v.abs()));
            let err = (got - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
            assert!(err <= 1e-4 * scale + 1e-7, "{what} with {agg:?}: max error {err} (scale {scale})");
        }
    }
}

/// Smoothed `vanilla` maps, whose mean over the points the compiler takes before the layer's
/// transposed convolution (`hoisted_mean` in the compiler; on the encoder, over the masks before
/// the linear head's rows are multiplied in: `averaged_masks`), equal the mean of the plain graph's
/// per-point maps on the same points: raw `[B, K, C, H, W]` and `abs`-aggregated, on the encoder
/// (non-overlapping pools) and the AlexNet-like stack (overlapping ones).
#[test]
fn smoothed_vanilla_maps_equal_the_mean_of_the_per_point_maps() {
    const S: usize = 4;
    for name in ["mnist_encoder", "alexnet_small"] {
        let entry = manifest().into_iter().find(|e| e.name == name).unwrap();
        let model = onnx::decode(&std::fs::read(entry.path()).unwrap()).unwrap();
        let mut shape = vec![2 * S];
        shape.extend(&entry.input_shape);
        let points = uniform(&shape, 11);
        let v = uniform(&[3, entry.d], 12) - 0.5;
        for agg in [None, Some(Aggregation::Abs)] {
            let opts = |samples| CompileOptions {
                embedding: entry.embedding.clone(),
                layers: vec![entry.layers[0].clone()],
                methods: vec![Method::Vanilla],
                channel_agg: agg,
                smoothing_samples: samples,
                layouts: vec![],
            };
            let smoothed = compiler::compile(&model, "t", &opts(S)).unwrap();
            // The mean is taken before the transposed convolution. On the encoder everything between
            // the embedding and that convolution is one row per component times per-point masks
            // (ReLU, 2×2 max pool, linear head): the masks are averaged instead of the rows
            // (`averaged_masks`). The AlexNet-like stack has a hidden fully connected layer after its
            // last ReLU, so there the rows are averaged (found by the samples' count, the one `Div`
            // the compiler emits: the points' batch divided by S).
            let nodes = &smoothed.model.graph.as_ref().unwrap().node;
            let averaged = nodes.iter().any(|n| n.name.contains("averaged_masks"));
            assert_eq!(averaged, name == "mnist_encoder", "{name}: where the masks are averaged");
            // The AlexNet-like stack's pool2 overlaps: its ReLU moves after it (`rewrite.rs`) and
            // the points' rows are scattered straight into their sample's (`scattered_mean`).
            let scattered = nodes.iter().any(|n| n.name.contains("scattered_mean"));
            assert_eq!(
                scattered,
                name == "alexnet_small",
                "{name}: where the mean is fused into the scatter"
            );
            assert!(averaged || nodes.iter().any(|n| n.op_type == "Div"), "{name}: the mean was not hoisted");
            let feeds = || vec![("input", points.clone()), (compiler::COTANGENT, v.clone())];
            let got = run(&smoothed.to_bytes(), feeds(), &["attr/0/vanilla"]).remove(0);
            let plain =
                compiler::compile(&model, "t", &CompileOptions { channel_agg: None, ..opts(1) }).unwrap();
            let per_point = run(&plain.to_bytes(), feeds(), &["attr/0/vanilla"]).remove(0);
            // [B·S, K, C, H, W] → mean over each sample's S points → aggregated as the graph does.
            let mut grouped = vec![2, S];
            grouped.extend(&per_point.shape()[1..]);
            let mean = per_point.into_shape_with_order(IxDyn(&grouped)).unwrap().mean_axis(Axis(1)).unwrap();
            let want = match agg {
                None => mean,
                _ => mean.mapv(f32::abs).mean_axis(Axis(2)).unwrap(),
            };
            assert_eq!(got.shape(), want.shape(), "{name} {agg:?}");
            let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let err = (&got - &want).iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(err <= 1e-5 * scale, "{name} {agg:?}: max error {err} (scale {scale})");
        }
    }
}

/// One overlapping max pool of the tie test: kernel, stride, begin/end pad, dilation (both axes
/// alike), ceil mode, and the input and pooled sides.
struct PoolCase {
    name: &'static str,
    kernel: usize,
    stride: usize,
    pad: usize,
    dilation: usize,
    ceil: bool,
    side: usize,
    pooled: usize,
}

const POOL_CHANNELS: usize = 2;
const POOL_D: usize = 3;

/// x `[N, 2, side, side]` → `h = Relu(x)` (the layer) → MaxPool → Flatten → MatMul → z `[N, 3]`; with
/// `indices`, the pool's argmax indices as a float output `idx_f` as well.
fn pool_model(case: &PoolCase, indices: bool) -> onnx::proto::ModelProto {
    use agent::onnx::{attr, proto::*};
    let node = |op: &str, inputs: &[&str], outputs: &[&str], attribute: Vec<AttributeProto>| NodeProto {
        name: format!("{op}_{}", outputs[0]),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: outputs.iter().map(|s| s.to_string()).collect(),
        attribute,
        ..Default::default()
    };
    let (k, s, p, d) = (case.kernel as i64, case.stride as i64, case.pad as i64, case.dilation as i64);
    let mut pool = vec![
        attr::ints("kernel_shape", &[k, k]),
        attr::ints("strides", &[s, s]),
        attr::ints("pads", &[p, p, p, p]),
        attr::ints("dilations", &[d, d]),
    ];
    if case.ceil {
        pool.push(attr::int("ceil_mode", 1));
    }
    let pool_out: &[&str] = if indices { &["p", "idx"] } else { &["p"] };
    let mut nodes = vec![
        node("Relu", &["x"], &["h"], vec![]),
        node("MaxPool", &["h"], pool_out, pool),
        node("Flatten", &["p"], &["f"], vec![attr::int("axis", 1)]),
        node("MatMul", &["f", "w"], &["z"], vec![]),
    ];
    let rows = POOL_CHANNELS * case.pooled * case.pooled;
    let w = (uniform(&[rows, POOL_D], 77) - 0.5).iter().copied().collect::<Vec<f32>>();
    let side = case.side as i64;
    let mut outputs = vec![onnx::value_info("z", data_type::FLOAT, &[Err("N"), Ok(POOL_D as i64)])];
    if indices {
        nodes.push(node("Cast", &["idx"], &["idx_f"], vec![attr::int("to", data_type::FLOAT as i64)]));
        let pooled = case.pooled as i64;
        let dims = [Err("N"), Ok(POOL_CHANNELS as i64), Ok(pooled), Ok(pooled)];
        outputs.push(onnx::value_info("idx_f", data_type::FLOAT, &dims));
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            name: "pool".into(),
            node: nodes,
            initializer: vec![onnx::tensor_f32("w", &[rows as i64, POOL_D as i64], &w)],
            input: vec![onnx::value_info(
                "x",
                data_type::FLOAT,
                &[Err("N"), Ok(POOL_CHANNELS as i64), Ok(side), Ok(side)],
            )],
            output: outputs,
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Overlapping max-pool windows (stride < kernel; with pads, dilations, ceil mode) on inputs full of
/// ties: plateaus where a window's maximum occurs several times, ReLU zeros where a whole window is
/// 0, and maxima that several windows share. The spec's rule: each window's cotangent goes to the
/// input element whose index `MaxPool` reports, and an element reported by several windows gets the
/// sum. The reference is that rule in plain loops over the reported indices, compared with the
/// compiled graph everywhere; at a strict maximum shared by several windows the map is also checked
/// against a central difference of the model (it is differentiable there).
#[test]
fn overlapping_max_pools_route_ties_to_the_reported_index() {
    let case = |name, kernel, stride, pad, dilation, ceil, side, pooled| PoolCase {
        name,
        kernel,
        stride,
        pad,
        dilation,
        ceil,
        side,
        pooled,
    };
    let cases = [
        case("3x3/2", 3, 2, 0, 1, false, 9, 4),
        case("3x3/1", 3, 1, 0, 1, false, 9, 7),
        case("3x3/2 pads 1", 3, 2, 1, 1, false, 9, 5),
        case("2x2/1 dilation 2", 2, 1, 0, 2, false, 9, 7),
        case("3x3/2 ceil mode", 3, 2, 0, 1, true, 8, 4),
    ];
    for case in &cases {
        let (c_n, side, pooled) = (POOL_CHANNELS, case.side, case.pooled);
        // Sample 0: a plateau of 5s with a strict maximum 9 inside it (channel 0); all negative but
        // two points, so most windows see only ReLU zeros (channel 1). Sample 1: values rounded to
        // thirds (ties scattered everywhere; channel 0); random with a strict maximum 8 (channel 1).
        let mut x = uniform(&[2, c_n, side, side], 31);
        for r in 0..side {
            for c in 0..side {
                let at = |b, ch| IxDyn(&[b, ch, r, c]);
                if (2..side - 2).contains(&r) && (2..side - 2).contains(&c) {
                    x[at(0, 0)] = 5.0;
                }
                x[at(0, 1)] -= 2.0;
                x[at(1, 0)] = (x[at(1, 0)] * 3.0).floor() / 3.0;
            }
        }
        let spikes = [([0, 0, 4, 4], 9.0), ([1, 1, 3, 3], 8.0)];
        for (at, v) in &spikes {
            x[IxDyn(at)] = *v;
        }
        x[IxDyn(&[0, 1, 2, 2])] = 3.0;
        x[IxDyn(&[0, 1, side - 3, 4])] = 3.0;

        let model = pool_model(case, false);
        let opts = CompileOptions {
            embedding: "z".into(),
            layers: vec!["h".into()],
            methods: vec![Method::Vanilla],
            channel_agg: None,
            smoothing_samples: 1,
            layouts: vec![],
        };
        let graph = compiler::compile(&model, "t", &opts).unwrap_or_else(|e| panic!("{}: {e:#}", case.name));
        let eye =
            ArrayD::from_shape_fn(IxDyn(&[POOL_D, POOL_D]), |i| if i[0] == i[1] { 1.0f32 } else { 0.0 });
        let got =
            run(&graph.to_bytes(), vec![("x", x.clone()), (compiler::COTANGENT, eye)], &["attr/0/vanilla"])
                .remove(0);
        assert_eq!(got.shape(), &[2, POOL_D, c_n, side, side], "{}", case.name);

        let probe = onnx::encode(&pool_model(case, true));
        let idx = run(&probe, vec![("x", x.clone())], &["idx_f"]).remove(0);
        assert_eq!(idx.shape(), &[2, c_n, pooled, pooled], "{}: pooled size", case.name);
        let w = onnx::tensor_to_f32(&pool_model(case, false).graph.unwrap().initializer[0]).unwrap();
        let h = x.mapv(|v| v.max(0.0));
        let mut want = ArrayD::<f32>::zeros(got.shape());
        let (mut shared, mut plateau) = (0usize, 0usize);
        for b in 0..2 {
            for ch in 0..c_n {
                let mut reported = vec![0usize; side * side];
                for oy in 0..pooled {
                    for ox in 0..pooled {
                        let global = idx[IxDyn(&[b, ch, oy, ox])] as usize;
                        let local = global - (b * c_n + ch) * side * side;
                        let (r, c) = (local / side, local % side);
                        reported[local] += 1;
                        let row = (ch * pooled + oy) * pooled + ox;
                        for j in 0..POOL_D {
                            want[IxDyn(&[b, j, ch, r, c])] += w[row * POOL_D + j];
                        }
                        // The window's elements inside the input; a tie when the maximum occurs twice.
                        let max = h[IxDyn(&[b, ch, r, c])];
                        let taps = |o: usize| {
                            (0..case.kernel)
                                .map(move |t| {
                                    (o * case.stride + t * case.dilation) as isize - case.pad as isize
                                })
                                .filter(|&v| (0..side as isize).contains(&v))
                        };
                        let equal = taps(oy)
                            .flat_map(|wr| taps(ox).map(move |wc| (wr as usize, wc as usize)))
                            .filter(|&(wr, wc)| h[IxDyn(&[b, ch, wr, wc])] == max)
                            .count();
                        assert!(equal >= 1, "{}: reported index outside its window", case.name);
                        plateau += usize::from(equal > 1);
                    }
                }
                shared += reported.iter().filter(|&&n| n > 1).count();
            }
        }
        assert!(shared > 0 && plateau > 0, "{}: no shared maxima ({shared}) or ties ({plateau})", case.name);
        let scale = want.iter().fold(0.0f32, |m, v| m.max(v.abs()));
        let err = (&got - &want).iter().fold(0.0f32, |m, v| m.max(v.abs()));
        assert!(
            err <= 1e-6 * scale,
            "{}: max error {err} against the reported indices (scale {scale})",
            case.name
        );

        // Central differences at the strict maxima (the spikes stand 3 above everything near them).
        const EPS: f32 = 0.05;
        let mut checked_shared = false;
        for (at, _) in &spikes {
            let (b, ch) = (at[0], at[1]);
            let windows = idx
                .iter()
                .filter(|&&g| g as usize == (b * c_n + ch) * side * side + at[2] * side + at[3])
                .count();
            checked_shared |= windows > 1;
            let (mut plus, mut minus) = (x.clone(), x.clone());
            plus[IxDyn(at)] += EPS;
            minus[IxDyn(at)] -= EPS;
            let zp = run(&onnx::encode(&model), vec![("x", plus)], &["z"]).remove(0);
            let zm = run(&onnx::encode(&model), vec![("x", minus)], &["z"]).remove(0);
            for j in 0..POOL_D {
                let numeric = (zp[[b, j]] - zm[[b, j]]) / (2.0 * EPS);
                let analytic = got[IxDyn(&[b, j, ch, at[2], at[3]])];
                assert!(
                    (numeric - analytic).abs() <= 1e-3 * (1.0 + analytic.abs()),
                    "{}: at {at:?} ({windows} windows) component {j}: analytic {analytic}, central difference {numeric}",
                    case.name
                );
            }
        }
        assert!(checked_shared, "{}: no spike is shared by two windows", case.name);
    }
}

/// The compiled graph moves a ReLU after an overlapping max pool (`MaxPool(Relu(x))` →
/// `Relu(MaxPool(x))`, `compiler/rewrite.rs`): the forward values must stay the model's own, bit
/// for bit (the gradients after the move are checked against finite differences of the model
/// itself in `every_rule_and_model_matches_finite_differences`).
#[test]
fn moving_a_relu_after_an_overlapping_max_pool_keeps_the_forward_values() {
    let entry = manifest().into_iter().find(|e| e.name == "alexnet_small").unwrap();
    let bytes = std::fs::read(entry.path()).unwrap();
    let model = onnx::decode(&bytes).unwrap();
    let layer = entry.layers[0].clone();
    let opts = CompileOptions {
        embedding: entry.embedding.clone(),
        layers: vec![layer.clone()],
        methods: vec![Method::Vanilla],
        channel_agg: Some(Aggregation::Abs),
        smoothing_samples: 1,
        layouts: vec![],
    };
    let compiled = compiler::compile(&model, "t", &opts).unwrap();
    let nodes = &compiled.model.graph.as_ref().unwrap().node;
    assert!(
        nodes.iter().any(|n| n.op_type == "MaxPool" && n.output[0].starts_with("attr/pooled/")),
        "no ReLU was moved after a max pool"
    );
    let mut shape = vec![5];
    shape.extend(&entry.input_shape);
    let x = uniform(&shape, 21);
    let own = run(&bytes, vec![("input", x.clone())], &[entry.embedding.as_str()]).remove(0);
    let v = uniform(&[2, entry.d], 22);
    let got =
        run(&compiled.to_bytes(), vec![("input", x), (compiler::COTANGENT, v)], &[entry.embedding.as_str()])
            .remove(0);
    assert_eq!(own, got, "the embedding changed");
}

/// The same identity on every committed test model (every rule family, all their layers one at a
/// time): whichever way the compiler takes the mean over the points — at the layer, before the
/// gradient's point-independent tail, over the masks, inside a max pool's scatter, or not at all
/// because the gradient is the same at every point — the smoothed `vanilla` map is the mean of the
/// per-point maps.
#[test]
fn smoothed_vanilla_maps_are_the_per_point_mean_on_every_model() {
    const S: usize = 3;
    let mut checked = Vec::new();
    for entry in manifest().into_iter().filter(|e| e.committed) {
        let model = onnx::decode(&std::fs::read(entry.path()).unwrap()).unwrap();
        let mut shape = vec![2 * S];
        shape.extend(&entry.input_shape);
        let points = uniform(&shape, 31);
        let v = uniform(&[2, entry.d], 32) - 0.5;
        for layer in &entry.layers {
            let opts = |samples| CompileOptions {
                embedding: entry.embedding.clone(),
                layers: vec![layer.clone()],
                methods: vec![Method::Vanilla],
                channel_agg: None,
                smoothing_samples: samples,
                layouts: vec![],
            };
            let feeds = || vec![(entry.input.as_str(), points.clone()), (compiler::COTANGENT, v.clone())];
            let smoothed = compiler::compile(&model, "t", &opts(S)).unwrap();
            let got = run(&smoothed.to_bytes(), feeds(), &["attr/0/vanilla"]).remove(0);
            let plain = compiler::compile(&model, "t", &opts(1)).unwrap();
            let per_point = run(&plain.to_bytes(), feeds(), &["attr/0/vanilla"]).remove(0);
            let mut grouped = vec![2, S];
            grouped.extend(&per_point.shape()[1..]);
            let want = per_point.into_shape_with_order(IxDyn(&grouped)).unwrap().mean_axis(Axis(1)).unwrap();
            assert_eq!(got.shape(), want.shape(), "{} at {layer}", entry.name);
            let scale = want.iter().fold(1e-6f32, |m, x| m.max(x.abs()));
            let err = (&got - &want).iter().fold(0.0f32, |m, x| m.max(x.abs()));
            assert!(err <= 1e-5 * scale, "{} at {layer}: max error {err} (scale {scale})", entry.name);
            let nodes = &smoothed.model.graph.as_ref().unwrap().node;
            let how = if nodes.iter().any(|n| n.name.contains("uniform_rows")) {
                "uniform"
            } else if nodes.iter().any(|n| n.name.contains("averaged_masks")) {
                "masks"
            } else if nodes.iter().any(|n| n.name.contains("scattered_mean")) {
                "scatter"
            } else {
                "rows"
            };
            checked.push(format!("{} at {layer}: {err:.1e} ({how})", entry.name));
        }
    }
    eprintln!("{}", checked.join("\n"));
    assert!(checked.len() >= 40, "expected the whole manifest, checked {}", checked.len());
    for how in ["(uniform)", "(masks)", "(scatter)", "(rows)"] {
        assert!(checked.iter().any(|c| c.ends_with(how)), "no model exercised {how}");
    }
}
