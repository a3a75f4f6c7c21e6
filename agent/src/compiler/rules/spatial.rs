//! Reverse-mode rules for convolutions, pools, padding and resizing.
//!
//! Convolution-like gradients are transposed convolutions on the flat `[B·K, C, …]` cotangent. Their
//! output size is pinned to the forward input's size from the probed shapes: per spatial axis, with
//! `r = (H_out − 1)·s − p_begin + d·(k − 1) + 1 − H_in`, the end pad is `r` when `r ≥ 0`, else the
//! output padding is `−r` (the spec's `output_padding` formula, generalised to `ceil_mode` pools).

use anyhow::{Result, anyhow, bail};

use super::one;
use crate::compiler::ctx::Backward;
use crate::compiler::registry::OpRule;
use crate::onnx::{self, attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule {
        min_inputs: 2,
        ..OpRule::unary(
            "Conv",
            "`ConvTranspose(dY, W)` with the same group, strides, pads, dilations; output size pinned by pads and `output_padding`",
            |cx, n, dy, _| Ok(one(conv(cx, n, dy.y()?)?)),
        )
    },
    OpRule {
        min_inputs: 2,
        ..OpRule::unary("ConvTranspose", "`Conv(dY, W)` with the same attributes", |cx, n, dy, _| {
            Ok(one(conv_transpose(cx, n, dy.y()?)?))
        })
    },
    OpRule {
        aux_outputs: &[1],
        ..OpRule::unary(
            "MaxPool",
            "non-overlapping windows: `dY` repeated over each window (Resize nearest) times the mask `Indices == own index`; overlapping: `ScatterElements(0, Indices, dY, reduction = add)`",
            |cx, n, dy, _| Ok(one(max_pool(cx, n, dy.y()?)?)),
        )
    },
    OpRule::unary("AveragePool", "grouped `ConvTranspose(dY / count, ones)`", |cx, n, dy, _| {
        Ok(one(average_pool(cx, n, dy.y()?)?))
    }),
    OpRule::unary("GlobalAveragePool", "`dY / (H·W)` broadcast over the window", |cx, n, dy, _| {
        Ok(one(global_average_pool(cx, n, dy.y()?)?))
    }),
    OpRule::unary("Pad", "constant mode: `Slice` of `dY`", |cx, n, dy, _| Ok(one(pad(cx, n, dy.y()?)?))),
    OpRule::unary(
        "Resize",
        "nearest, linear: `Rhᵀ · dY · Rw` with the resize matrices read off ONNX Runtime",
        |cx, n, dy, _| Ok(one(resize(cx, n, dy.y()?)?)),
    ),
];

/// Stride, dilation, kernel and explicit begin/end pads of a windowed op, per spatial axis.
struct Window {
    kernel: Vec<i64>,
    strides: Vec<i64>,
    dilations: Vec<i64>,
    begin: Vec<i64>,
    end: Vec<i64>,
}

fn window(node: &NodeProto, kernel: Vec<i64>, x_spatial: &[i64]) -> Result<Window> {
    let n = kernel.len();
    let strides = node.attr_ints("strides").map(<[i64]>::to_vec).unwrap_or(vec![1; n]);
    let dilations = node.attr_ints("dilations").map(<[i64]>::to_vec).unwrap_or(vec![1; n]);
    let auto_pad = node.attr_string("auto_pad").unwrap_or_default();
    let (begin, end) = match auto_pad.as_str() {
        "" | "NOTSET" => {
            let pads = node.attr_ints("pads").map(<[i64]>::to_vec).unwrap_or(vec![0; 2 * n]);
            (pads[..n].to_vec(), pads[n..].to_vec())
        }
        "VALID" => (vec![0; n], vec![0; n]),
        "SAME_UPPER" | "SAME_LOWER" => {
            let (mut b, mut e) = (vec![0; n], vec![0; n]);
            for i in 0..n {
                let out = (x_spatial[i] + strides[i] - 1) / strides[i];
                let total =
                    ((out - 1) * strides[i] + dilations[i] * (kernel[i] - 1) + 1 - x_spatial[i]).max(0);
                let small = total / 2;
                if auto_pad == "SAME_UPPER" {
                    (b[i], e[i]) = (small, total - small);
                } else {
                    (b[i], e[i]) = (total - small, small);
                }
            }
            (b, e)
        }
        other => bail!("node {} ({}): unknown auto_pad {other:?}", node.display_name(), node.op_type),
    };
    if strides.len() != n || dilations.len() != n || begin.len() != n {
        bail!(
            "node {} ({}): attribute lengths do not match the kernel's rank",
            node.display_name(),
            node.op_type
        );
    }
    Ok(Window { kernel, strides, dilations, begin, end })
}

/// Attributes of the transposed convolution that maps a `y_spatial` cotangent back onto `x_spatial`.
fn transposed_attrs(w: &Window, x_spatial: &[i64], y_spatial: &[i64]) -> Vec<AttributeProto> {
    let n = w.kernel.len();
    let (mut end, mut out_pad) = (vec![0; n], vec![0; n]);
    for i in 0..n {
        let r = (y_spatial[i] - 1) * w.strides[i] - w.begin[i] + w.dilations[i] * (w.kernel[i] - 1) + 1
            - x_spatial[i];
        if r >= 0 { end[i] = r } else { out_pad[i] = -r }
    }
    let mut pads = w.begin.clone();
    pads.extend(end);
    vec![
        attr::ints("kernel_shape", &w.kernel),
        attr::ints("strides", &w.strides),
        attr::ints("dilations", &w.dilations),
        attr::ints("pads", &pads),
        attr::ints("output_padding", &out_pad),
    ]
}

fn spatial_shapes(ctx: &Backward, node: &NodeProto) -> Result<(Vec<i64>, Vec<i64>)> {
    let x = ctx.rest(node, &node.input[0])?;
    let y = ctx.rest(node, &node.output[0])?;
    if x.len() < 2 || y.len() != x.len() {
        bail!(
            "node {} ({}): expected [N, C, spatial…] input, got rest {x:?}",
            node.display_name(),
            node.op_type
        );
    }
    Ok((x, y))
}

fn kernel_of(ctx: &Backward, node: &NodeProto, n: usize) -> Result<Vec<i64>> {
    if let Some(k) = node.attr_ints("kernel_shape") {
        return Ok(k.to_vec());
    }
    let w = ctx.shape(&node.input[1])?;
    if w.batched || w.rest.len() != n + 2 {
        bail!("node {} ({}): cannot tell the kernel shape", node.display_name(), node.op_type);
    }
    Ok(w.rest[2..].to_vec())
}

/// `dX = ConvTranspose(dY, W)` with the forward's group, strides, pads and dilations.
pub fn conv(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    let (x, y) = spatial_shapes(ctx, node)?;
    let kernel = kernel_of(ctx, node, x.len() - 1)?;
    let w = window(node, kernel, &x[1..])?;
    let group = node.attr_int("group").unwrap_or(1);
    if let Some(dx) = conv_stride1(ctx, node, dy, &w, &x, &y, group)? {
        return Ok(dx);
    }
    let mut attrs = transposed_attrs(&w, &x[1..], &y[1..]);
    attrs.push(attr::int("group", group));
    Ok(ctx.b.op("ConvTranspose", &[dy, &node.input[1]], attrs))
}

/// For stride 1 the input gradient is itself a convolution: the cotangent, padded by
/// `d·(k − 1) − pad` on each side, correlated with the kernel flipped in space and with its channel
/// axes swapped per group. ONNX Runtime's `Conv` kernels are several times faster than its
/// `ConvTranspose` on the `[B·K, …]` batches the rules produce. `None` when this form does not apply
/// (strides, or pads larger than the dilated kernel).
fn conv_stride1(
    ctx: &mut Backward,
    node: &NodeProto,
    dy: &str,
    w: &Window,
    x: &[i64],
    y: &[i64],
    group: i64,
) -> Result<Option<String>> {
    let n = w.kernel.len();
    if w.strides.iter().any(|&s| s != 1) {
        return Ok(None);
    }
    let (mut begin, mut end) = (vec![0; n], vec![0; n]);
    for i in 0..n {
        let reach = w.dilations[i] * (w.kernel[i] - 1);
        begin[i] = reach - w.begin[i];
        // The output must come back to the input's size exactly.
        end[i] = x[i + 1] - y[i + 1] + reach - begin[i];
        if begin[i] < 0 || end[i] < 0 {
            return Ok(None);
        }
    }
    let wshape = ctx.shape(&node.input[1])?;
    if wshape.batched || wshape.rest.len() != n + 2 {
        return Ok(None);
    }
    let (c_out, c_in_g) = (wshape.rest[0], wshape.rest[1]);
    let c_out_g = c_out / group;
    // W [C_out, C_in/g, k…] → [g, C_out/g, C_in/g, k…] → swap the channel axes → [C_in, C_out/g, k…].
    let mut grouped = vec![group, c_out_g, c_in_g];
    grouped.extend(&w.kernel);
    let wg = ctx.b.reshape_const(&node.input[1], &grouped);
    let mut perm: Vec<i64> = vec![0, 2, 1];
    perm.extend(3..3 + n as i64);
    let wt = ctx.b.op("Transpose", &[&wg], vec![attr::ints("perm", &perm)]);
    let mut swapped = vec![group * c_in_g, c_out_g];
    swapped.extend(&w.kernel);
    let wt = ctx.b.reshape_const(&wt, &swapped);
    // Flip every spatial axis (Slice with step −1).
    let starts = ctx.b.const_i64(&vec![-1; n]);
    let ends = ctx.b.const_i64(&vec![i64::MIN; n]);
    let axes = ctx.b.const_i64(&(2..2 + n as i64).collect::<Vec<_>>());
    let steps = ctx.b.const_i64(&vec![-1; n]);
    let flipped = ctx.b.op("Slice", &[&wt, &starts, &ends, &axes, &steps], vec![]);
    let mut pads = begin;
    pads.extend(end);
    let attrs = vec![
        attr::ints("kernel_shape", &w.kernel),
        attr::ints("strides", &vec![1; n]),
        attr::ints("dilations", &w.dilations),
        attr::ints("pads", &pads),
        attr::int("group", group),
    ];
    Ok(Some(ctx.b.op("Conv", &[dy, &flipped], attrs)))
}

/// `dX = Conv(dY, W)` with the same attributes.
pub fn conv_transpose(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    if node.attr("output_shape").is_some() || node.attr_string("auto_pad").is_some_and(|a| a != "NOTSET") {
        bail!(
            "node {} (ConvTranspose) sets output_shape or auto_pad; the compiler needs explicit pads",
            node.display_name()
        );
    }
    let (x, y) = spatial_shapes(ctx, node)?;
    let kernel = kernel_of(ctx, node, x.len() - 1)?;
    let w = window(node, kernel, &x[1..])?;
    for i in 0..w.kernel.len() {
        let back =
            (y[i + 1] + w.begin[i] + w.end[i] - w.dilations[i] * (w.kernel[i] - 1) - 1) / w.strides[i] + 1;
        if back != x[i + 1] {
            bail!(
                "node {} (ConvTranspose): its output padding is not invertible by a convolution",
                node.display_name()
            );
        }
    }
    let mut pads = w.begin.clone();
    pads.extend(&w.end);
    let attrs = vec![
        attr::ints("kernel_shape", &w.kernel),
        attr::ints("strides", &w.strides),
        attr::ints("dilations", &w.dilations),
        attr::ints("pads", &pads),
        attr::int("group", node.attr_int("group").unwrap_or(1)),
    ];
    Ok(ctx.b.op("Conv", &[dy, &node.input[1]], attrs))
}

/// Routes each output's cotangent back to the input element its `Indices` point at.
///
/// Non-overlapping windows (stride = kernel, no leading pad — most CNNs) need no scatter: see
/// [`max_pool_tiled`]. Overlapping windows use `ScatterElements` with `reduction = add` (two windows
/// can share their maximum). Measured on the AlexNet-like stack of docs/BENCHMARKS.md (3×3/2 pools,
/// 64 points × 32 rows, ONNX Runtime CPU, 2 threads): 80 ms CPU per run with the scatter against
/// 132 ms for the scatter-free alternative tried (per-offset masks and one grouped `ConvTranspose`
/// with one-hot kernels), so the scatter stays for that case. A second alternative, a per-sample
/// one-hot routing matrix `[Y, X]` built once from `Indices` and one `MatMul` per (sample, channel)
/// with the `K` rows between two transposes, measured level with the scatter (36.5 against 33.3 ms
/// at 64 points × 32 rows, 33.7 against 33.9 at 32 × 32; the transposes cost what the scatter saves).
/// A third round timed the routing alone (docs/BENCHMARKS.md, "Overlapping max pools without
/// ScatterElements"; `tools/pool_routing_bench.py`), every form exact, in CPU time against the
/// scatter's: a static `Gather` of the windows covering each input element 18×, stride-phase sums
/// interleaved by `DepthToSpace` 7×, the routing matrix by `Einsum` 1.8×, `ScatterND` of rows with
/// `K` innermost between two transposes 1.06×. ONNX Runtime's CPU kernels for element-granular moves
/// cost per element what its scatter costs per update, and a dense form touches every element of the
/// larger input several times. `MaxUnpool` would place the values fastest but has no CUDA kernel.
pub fn max_pool(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    if node.attr_int("storage_order").unwrap_or(0) != 0 {
        bail!("node {} (MaxPool) uses storage_order = 1; not supported", node.display_name());
    }
    let (x, y) = spatial_shapes(ctx, node)?;
    let kernel =
        node.attr_ints("kernel_shape").ok_or_else(|| anyhow!("MaxPool without kernel_shape"))?.to_vec();
    let w = window(node, kernel, &x[1..])?;
    // An axis with one window has no neighbour to overlap with, whatever its stride (AlexNet's last
    // 3×3/2 pool on a 3×3 input): it tiles like stride = kernel.
    let tiles = (0..w.kernel.len()).all(|i| w.strides[i] == w.kernel[i] || y[i + 1] == 1);
    if tiles && w.dilations.iter().all(|&d| d == 1) && w.begin.iter().all(|&p| p == 0) {
        return Ok(max_pool_tiled(ctx, node, dy, &x, &y, &w.kernel));
    }
    // The compiler names the Indices output (registry `aux_outputs`) when the model left it out.
    let indices = node.output[1].clone();
    let (x_size, y_size): (i64, i64) = (x.iter().product(), y.iter().product());
    // Indices count over the whole tensor (batch included); reduce them to within-sample offsets.
    let per = ctx.b.const_i64(&[x_size]);
    let local = ctx.b.op("Mod", &[&indices, &per], vec![]);
    let local = ctx.b.reshape_const(&local, &[-1, 1, y_size]);
    let local_shape = ctx.b.shape(&local);
    let b = ctx.b.slice1(&local_shape, 0, 1);
    let tail = ctx.b.const_i64(&[y_size]);
    let k = ctx.kdim.clone();
    let expand_to = ctx.b.concat0(&[&b, &k, &tail]);
    let idx = ctx.b.op("Expand", &[&local, &expand_to], vec![]);
    let idx = ctx.b.reshape_const(&idx, &[-1, y_size]);
    let upd = ctx.b.reshape_const(dy, &[-1, y_size]);
    let rows = ctx.b.shape(&upd);
    let rows = ctx.b.slice1(&rows, 0, 1);
    let width = ctx.b.const_i64(&[x_size]);
    let zshape = ctx.b.concat0(&[&rows, &width]);
    let zeros = ctx.b.op(
        "ConstantOfShape",
        &[&zshape],
        vec![attr::tensor("value", onnx::tensor_f32("", &[1], &[0.0]))],
    );
    let dx = ctx.b.op(
        "ScatterElements",
        &[&zeros, &idx, &upd],
        vec![attr::int("axis", 1), attr::string("reduction", "add")],
    );
    Ok(ctx.flat(&dx, &x))
}

/// Non-overlapping windows (stride = kernel, no leading pad) tile the input: window `p`'s offset `o`
/// is input element `p·k + o` per axis, so the routing is a reshape. The `Indices`, upsampled by
/// repetition over each window, are compared with every element's own index (mask, once per
/// batch); the cotangent, repeated the same way, is multiplied by it and reshaped onto the input grid,
/// then cut or zero-padded where the windows' tiling is longer or shorter than the input.
fn max_pool_tiled(ctx: &mut Backward, node: &NodeProto, dy: &str, x: &[i64], y: &[i64], k: &[i64]) -> String {
    let (c, xs, ys) = (x[0], &x[1..], &y[1..]);
    let n = xs.len();
    let x_hw: i64 = xs.iter().product();
    // [.., y1, 1, y2, 1, …] interleaved shape, the tiled one [.., y1·k1, y2·k2, …].
    let mut interleaved = vec![c];
    let mut expanded = vec![c];
    for i in 0..n {
        interleaved.extend([ys[i], 1]);
        expanded.extend([ys[i], k[i]]);
    }
    let tiled: Vec<i64> = (0..n).map(|i| ys[i] * k[i]).collect();
    // Each tiled element's index within its channel of the input (−1 where the tiling overhangs).
    let mut own = Vec::with_capacity(tiled.iter().product::<i64>() as usize);
    for t in 0..tiled.iter().product::<i64>() {
        let at = unflatten(t, &tiled);
        let inside = (0..n).all(|i| at[i] < xs[i]);
        own.push(if inside { (0..n).fold(0, |f, i| f * xs[i] + at[i]) } else { -1 });
    }
    let hw = ctx.b.const_i64(&[x_hw]);
    let local = ctx.b.op("Mod", &[&node.output[1], &hw], vec![]);
    let mut lead = vec![-1];
    lead.extend(&interleaved);
    let local = ctx.b.reshape_const(&local, &lead);
    // `Equal` broadcasts each window's index over the window against every element's own index
    // (an `Expand` of the int64 indices first cost about as much as the rest of the mask).
    let own_name = ctx.b.fresh("maxpool_own");
    let mut own_dims = vec![1];
    own_dims.extend(&expanded[1..]);
    ctx.b.initializers.push(onnx::tensor_i64(&own_name, &own_dims, &own));
    let hit = ctx.b.op("Equal", &[&local, &own_name], vec![]);
    let mask = ctx.b.op("Cast", &[&hit], vec![attr::int("to", data_type::FLOAT as i64)]);
    let mut per_sample = vec![-1, 1, c];
    per_sample.extend(&tiled);
    let mask = ctx.b.reshape_const(&mask, &per_sample); // [B, 1, C, y1·k1, …]
    // The cotangent repeated over each window: `Resize` nearest with integer scales (floor of i / k).
    let mut scales = vec![1.0f32, 1.0];
    scales.extend(k.iter().map(|&v| v as f32));
    let scales = ctx.b.const_f32(&[scales.len() as i64], &scales);
    let up = ctx.b.op(
        "Resize",
        &[dy, "", &scales],
        vec![
            attr::string("mode", "nearest"),
            attr::string("coordinate_transformation_mode", "asymmetric"),
            attr::string("nearest_mode", "floor"),
        ],
    );
    let mut split = vec![c];
    split.extend(&tiled);
    let up = ctx.split(&up, &split); // [B, K, C, y1·k1, …]
    let routed = ctx.b.mul(&up, &mask);
    let mut flat = vec![-1, c];
    flat.extend(&tiled);
    let routed = ctx.b.reshape_const(&routed, &flat);
    // Tiling vs input, per axis: cut what overhangs, zero-pad what the floor-mode windows left out.
    let (cut, short): (Vec<i64>, Vec<i64>) =
        (0..n).map(|i| (tiled[i].min(xs[i]), (xs[i] - tiled[i]).max(0))).unzip();
    let routed = if cut != tiled {
        let starts = ctx.b.const_i64(&vec![0; n]);
        let ends = ctx.b.const_i64(&cut);
        let axes = ctx.b.const_i64(&(2..2 + n as i64).collect::<Vec<_>>());
        ctx.b.op("Slice", &[&routed, &starts, &ends, &axes], vec![])
    } else {
        routed
    };
    if short.iter().any(|&s| s > 0) {
        let mut pads = vec![0i64; 2 * (n + 2)];
        for i in 0..n {
            pads[n + 2 + 2 + i] = short[i];
        }
        let pads = ctx.b.const_i64(&pads);
        ctx.b.op("Pad", &[&routed, &pads], vec![])
    } else {
        routed
    }
}

/// Row-major multi-index of `flat` in a tensor of `dims`.
fn unflatten(mut flat: i64, dims: &[i64]) -> Vec<i64> {
    let mut idx = vec![0; dims.len()];
    for i in (0..dims.len()).rev() {
        idx[i] = flat % dims[i];
        flat /= dims[i];
    }
    idx
}

/// Grouped transposed convolution with a ones kernel, after dividing by each window's divisor.
pub fn average_pool(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    let (x, y) = spatial_shapes(ctx, node)?;
    let kernel =
        node.attr_ints("kernel_shape").ok_or_else(|| anyhow!("AveragePool without kernel_shape"))?.to_vec();
    let w = window(node, kernel, &x[1..])?;
    let include_pad = node.attr_int("count_include_pad").unwrap_or(0) != 0;
    // Divisor per output position: the window's elements inside the input (or inside the padded
    // input with count_include_pad), which is separable across axes.
    let per_axis: Vec<Vec<f32>> = (0..w.kernel.len())
        .map(|i| {
            let (lo, hi) = if include_pad { (-w.begin[i], x[i + 1] + w.end[i]) } else { (0, x[i + 1]) };
            (0..y[i + 1])
                .map(|o| {
                    let start = o * w.strides[i] - w.begin[i];
                    (0..w.kernel[i]).filter(|j| (lo..hi).contains(&(start + j * w.dilations[i]))).count()
                        as f32
                })
                .collect()
        })
        .collect();
    let spatial = &y[1..];
    let total: i64 = spatial.iter().product();
    let mut inv = Vec::with_capacity(total as usize);
    for flat in 0..total {
        let (mut rem, mut div) = (flat, 1.0f32);
        for i in (0..spatial.len()).rev() {
            div *= per_axis[i][(rem % spatial[i]) as usize];
            rem /= spatial[i];
        }
        inv.push(if div > 0.0 { 1.0 / div } else { 0.0 });
    }
    let inv = ctx.b.const_f32(spatial, &inv);
    let scaled = ctx.b.mul(dy, &inv);
    let c = x[0];
    let mut wdims = vec![c, 1];
    wdims.extend(&w.kernel);
    let ones = ctx.b.const_f32(&wdims, &vec![1.0; wdims.iter().product::<i64>() as usize]);
    let mut attrs = transposed_attrs(&w, &x[1..], &y[1..]);
    attrs.push(attr::int("group", c));
    Ok(ctx.b.op("ConvTranspose", &[&scaled, &ones], attrs))
}

pub fn global_average_pool(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    let (x, _) = spatial_shapes(ctx, node)?;
    let spatial = &x[1..];
    let n: i64 = spatial.iter().product();
    let spread = ctx.b.const_f32(spatial, &vec![1.0 / n as f32; n as usize]);
    Ok(ctx.b.mul(dy, &spread))
}

/// Constant padding: the cotangent of the input is the un-padded window of the output's.
pub fn pad(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    let mode = node.attr_string("mode").unwrap_or_else(|| "constant".into());
    if mode != "constant" {
        bail!("node {} (Pad) uses mode {mode:?}; only constant padding has a rule", node.display_name());
    }
    let x = ctx.rest(node, &node.input[0])?;
    let rank = x.len() + 1;
    let pads = if ctx.opset >= 11 {
        ctx.const_ints(node, &node.input[1], "pads")?
    } else {
        node.attr_ints("pads").map(<[i64]>::to_vec).unwrap_or_default()
    };
    let axes: Vec<usize> = match node.input.get(3).filter(|s| !s.is_empty()) {
        Some(a) => ctx
            .const_ints(node, a, "axes")?
            .iter()
            .map(|&a| if a < 0 { a + rank as i64 } else { a } as usize)
            .collect(),
        None => (0..rank).collect(),
    };
    let mut begin = vec![0i64; rank];
    for (i, &a) in axes.iter().enumerate() {
        begin[a] = pads[i];
        if pads[i] < 0 || pads[i + axes.len()] < 0 {
            bail!("node {} (Pad) crops with negative pads; not supported", node.display_name());
        }
    }
    if begin[0] != 0 || pads[axes.len()..].iter().zip(&axes).any(|(p, &a)| a == 0 && *p != 0) {
        bail!("node {} (Pad) pads the batch axis; not supported", node.display_name());
    }
    let starts = ctx.b.const_i64(&begin[1..]);
    let ends: Vec<i64> = (1..rank).map(|a| begin[a] + x[a - 1]).collect();
    let ends = ctx.b.const_i64(&ends);
    let ax: Vec<i64> = (1..rank as i64).collect();
    let ax = ctx.b.const_i64(&ax);
    Ok(ctx.b.op("Slice", &[dy, &starts, &ends, &ax], vec![]))
}

/// Resize is linear and, for nearest and (bi)linear modes, separable: `Y = Rh·X·Rwᵀ` per channel.
/// The matrices are read off ONNX Runtime itself by resizing one-hot rows and columns with the
/// node's own attributes, then checked against a random input, so every coordinate-transformation
/// and rounding mode is reproduced exactly as the runtime implements it.
pub fn resize(ctx: &mut Backward, node: &NodeProto, dy: &str) -> Result<String> {
    let (x, y) = spatial_shapes(ctx, node)?;
    if x.len() != 3 || x[0] != y[0] {
        bail!(
            "node {} (Resize): only [N, C, H, W] inputs resized over H and W have a rule",
            node.display_name()
        );
    }
    let mode = node.attr_string("mode").unwrap_or_else(|| "nearest".into());
    let ctm = node.attr_string("coordinate_transformation_mode").unwrap_or_default();
    if mode == "cubic" || ctm == "tf_crop_and_resize" {
        bail!(
            "node {} (Resize): mode {mode:?} / {ctm:?} has no rule (nearest and linear do)",
            node.display_name()
        );
    }
    let (rh, rw) = resize_matrices(ctx, node, (x[1], x[2]), (y[1], y[2]))?;
    let rht = ctx.b.const_f32(&[x[1], y[1]], &transpose(&rh, y[1] as usize, x[1] as usize));
    let rw = ctx.b.const_f32(&[y[2], x[2]], &rw);
    let t = ctx.b.op("MatMul", &[&rht, dy], vec![]);
    Ok(ctx.b.op("MatMul", &[&t, &rw], vec![]))
}

fn transpose(m: &[f32], rows: usize, cols: usize) -> Vec<f32> {
    let mut t = vec![0.0; m.len()];
    for r in 0..rows {
        for c in 0..cols {
            t[c * rows + r] = m[r * cols + c];
        }
    }
    t
}

/// Runs a one-node Resize model with the node's attributes on `batch` inputs of `[batch, 1, H, W]`.
fn run_resize(
    ctx: &Backward,
    node: &NodeProto,
    hw: (i64, i64),
    out_hw: (i64, i64),
    input: Vec<f32>,
) -> Result<Vec<f32>> {
    let batch = input.len() as i64 / (hw.0 * hw.1);
    let mut inits = Vec::new();
    let roi = match node.input.get(1).filter(|s| !s.is_empty()) {
        Some(r) => {
            let v = ctx.const_floats(node, r, "roi")?;
            inits.push(onnx::tensor_f32("roi", &[v.len() as i64], &v));
            "roi"
        }
        None => "",
    };
    let scales = node.input.get(2).filter(|s| !s.is_empty()).and_then(|s| ctx.consts.get(s));
    let mut inputs = vec!["x".to_string(), roi.to_string()];
    match scales.map(onnx::tensor_to_f32).transpose()?.filter(|s| !s.is_empty()) {
        Some(s) => {
            inits.push(onnx::tensor_f32("scales", &[4], &[1.0, 1.0, s[2], s[3]]));
            inputs.push("scales".into());
        }
        None => {
            inits.push(onnx::tensor_i64("sizes", &[4], &[batch, 1, out_hw.0, out_hw.1]));
            inputs.extend(["".to_string(), "sizes".to_string()]);
        }
    }
    let mut attrs = node.attribute.clone();
    attrs.retain(|a| a.name != "axes");
    let graph = GraphProto {
        name: "resize_probe".into(),
        node: vec![NodeProto {
            op_type: "Resize".into(),
            input: inputs,
            output: vec!["y".into()],
            attribute: attrs,
            ..Default::default()
        }],
        initializer: inits,
        input: vec![onnx::value_info("x", data_type::FLOAT, &[Ok(batch), Ok(1), Ok(hw.0), Ok(hw.1)])],
        output: vec![onnx::value_info(
            "y",
            data_type::FLOAT,
            &[Ok(batch), Ok(1), Ok(out_hw.0), Ok(out_hw.1)],
        )],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: ctx.opset }],
        graph: Some(graph),
        ..Default::default()
    };
    let mut session = crate::runtime::cpu_session(&onnx::encode(&model))?;
    let a = ndarray::Array4::from_shape_vec((batch as usize, 1, hw.0 as usize, hw.1 as usize), input)?;
    let out = session
        .run(ort::inputs!["x" => ort::value::TensorRef::from_array_view(&a).map_err(|e| anyhow!("{e}"))?])
        .map_err(|e| anyhow!("probing Resize node {}: {e}", node.display_name()))?;
    let (_, v) = out["y"].try_extract_tensor::<f32>().map_err(|e| anyhow!("{e}"))?;
    Ok(v.to_vec())
}

/// `Rh` (`[Ho, H]`) and `Rw` (`[Wo, W]`), row-major.
fn resize_matrices(
    ctx: &Backward,
    node: &NodeProto,
    (h, w): (i64, i64),
    (ho, wo): (i64, i64),
) -> Result<(Vec<f32>, Vec<f32>)> {
    let (hu, wu, hou, wou) = (h as usize, w as usize, ho as usize, wo as usize);
    // Row probes: sample i is 1 on row i. Output column 0 of sample i is Rh[:, i]·(Rw·1)[0], and the
    // rows of Rw sum to 1 for nearest and linear interpolation (checked below).
    let mut rows = vec![0.0f32; hu * hu * wu];
    for i in 0..hu {
        rows[i * hu * wu + i * wu..i * hu * wu + (i + 1) * wu].fill(1.0);
    }
    let out = run_resize(ctx, node, (h, w), (ho, wo), rows)?;
    let mut rh = vec![0.0f32; hou * hu];
    for i in 0..hu {
        for a in 0..hou {
            rh[a * hu + i] = out[i * hou * wou + a * wou];
        }
    }
    let mut cols = vec![0.0f32; wu * hu * wu];
    for j in 0..wu {
        for r in 0..hu {
            cols[j * hu * wu + r * wu + j] = 1.0;
        }
    }
    let out = run_resize(ctx, node, (h, w), (ho, wo), cols)?;
    let mut rw = vec![0.0f32; wou * wu];
    for j in 0..wu {
        for b in 0..wou {
            rw[b * wu + j] = out[j * hou * wou + b];
        }
    }
    // Check separability on a fixed pseudo-random input.
    let xs: Vec<f32> = (0..hu * wu).map(|i| ((i * 7919 % 101) as f32) / 101.0).collect();
    let want = run_resize(ctx, node, (h, w), (ho, wo), xs.clone())?;
    for a in 0..hou {
        for b in 0..wou {
            let mut v = 0.0f32;
            for i in 0..hu {
                for j in 0..wu {
                    v += rh[a * hu + i] * xs[i * wu + j] * rw[b * wu + j];
                }
            }
            if (v - want[a * wou + b]).abs() > 1e-4 {
                bail!("node {} (Resize) is not separable in its current mode; no rule", node.display_name());
            }
        }
    }
    Ok((rh, rw))
}
