//! Operators that pick, repeat or broadcast elements by position: Slice, Split, Gather,
//! GatherElements, Expand, Tile. Their gradients put each cotangent element back where it came from
//! (summing where one input element fed several outputs); positions come from constants or from
//! shape arithmetic the probe found batch-independent.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::{OpRule, Slots};
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule {
        // starts/ends/axes/steps are read as values (constants or probed shape arithmetic).
        min_inputs: 3,
        ..OpRule::unary(
            "Slice",
            "`Pad(dY)` with zeros back to `X`'s extent; steps ≠ 1 interleave zeros, negative steps reverse",
            slice,
        )
    },
    OpRule {
        grad_outputs: Slots::All,
        ..OpRule::unary(
            "Split",
            "`Concat` of the outputs' cotangents (zeros where none) along the axis",
            split,
        )
    },
    OpRule {
        min_inputs: 2,
        ..OpRule::unary(
            "Gather",
            "scatter-add of `dY` along the axis at the (constant) indices: a one-hot MatMul when small, `ScatterElements` otherwise",
            gather,
        )
    },
    OpRule {
        min_inputs: 2,
        ..OpRule::unary(
            "GatherElements",
            "`ScatterElements(0, indices, dY, reduction = add)` (indices treated as constants)",
            gather_elements,
        )
    },
    OpRule { min_inputs: 2, ..OpRule::unary("Expand", "`ReduceSum(dY)` over the broadcast axes", expand) },
    OpRule {
        min_inputs: 2,
        ..OpRule::unary("Tile", "`dY` reshaped to `[…, repeats, dim, …]`, summed over the repeats", tile)
    },
];

/// An axis attribute or value in `[0, rank)`.
fn norm_axis(node: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
    let r = rank as i64;
    if axis < -r || axis >= r {
        bail!("node {} ({}): axis {axis} is out of range for rank {rank}", node.display_name(), node.op_type);
    }
    Ok(if axis < 0 { axis + r } else { axis } as usize)
}

fn refuse_batch_axis<T>(node: &NodeProto, what: &str) -> Result<T> {
    bail!(
        "node {} ({}) {what} along the batch axis (axis 0); the compiler needs every sample to stay in its own row",
        node.display_name(),
        node.op_type
    )
}

/// A float zero tensor `[rows of like, rest…]`: the cotangent of an output nothing downstream used.
fn zeros_rows(ctx: &mut Backward, like: &str, rest: &[i64]) -> String {
    let sh = ctx.b.shape(like);
    let rows = ctx.b.slice1(&sh, 0, 1);
    let tail = ctx.b.const_i64(rest);
    let target = ctx.b.concat0(&[&rows, &tail]);
    let zero = ctx.b.const_f32(&[1], &[0.0]);
    ctx.b.op("Expand", &[&zero, &target], vec![])
}

/// The elements a Slice takes along one axis of extent `d`, following ONNX's clamping rules:
/// `(lowest index, count)`; the indices are `lowest + i·|step|`.
fn slice_range(start: i64, end: i64, step: i64, d: i64) -> (i64, i64) {
    let (mut s, mut e) = (start as i128, end as i128);
    let (d, st) = (d as i128, step as i128);
    if s < 0 {
        s += d;
    }
    if e < 0 {
        e += d;
    }
    let n = if st > 0 {
        let (s, e) = (s.clamp(0, d), e.clamp(0, d));
        ((e - s + st - 1) / st).max(0)
    } else {
        s = s.clamp(0, d - 1);
        let e = e.clamp(-1, d - 1);
        ((s - e + (-st) - 1) / (-st)).max(0)
    };
    let s = if st > 0 { s.clamp(0, d) } else { s };
    let lo = if st > 0 || n == 0 { s } else { s + (n - 1) * st };
    (lo as i64, n as i64)
}

/// Inputs 3 and 4 of a Slice when present (axes, steps), else their defaults.
fn optional_ints(ctx: &Backward, node: &NodeProto, slot: usize, what: &str) -> Result<Option<Vec<i64>>> {
    match node.input.get(slot).filter(|s| !s.is_empty()) {
        Some(t) => Ok(Some(ctx.const_ints(node, t, what)?)),
        None => Ok(None),
    }
}

fn slice(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let rank = x_rest.len() + 1;
    let starts = ctx.const_ints(node, &node.input[1], "starts")?;
    let ends = ctx.const_ints(node, &node.input[2], "ends")?;
    let axes = optional_ints(ctx, node, 3, "axes")?.unwrap_or_else(|| (0..starts.len() as i64).collect());
    let steps = optional_ints(ctx, node, 4, "steps")?.unwrap_or_else(|| vec![1; starts.len()]);
    if ends.len() != starts.len() || axes.len() != starts.len() || steps.len() != starts.len() {
        bail!(
            "node {} (Slice): starts, ends, axes and steps have different lengths ({}, {}, {}, {})",
            node.display_name(),
            starts.len(),
            ends.len(),
            axes.len(),
            steps.len()
        );
    }
    let mut g = dy.y()?.to_string();
    // `cur`: the dims after the rows of `g` as it is rebuilt axis by axis.
    let mut cur = ctx.rest(node, &node.output[0])?;
    let (mut before, mut after) = (vec![0i64; rank], vec![0i64; rank]);
    let mut seen = Vec::new();
    for i in 0..starts.len() {
        let a = norm_axis(node, axes[i], rank)?;
        if seen.contains(&a) {
            bail!("node {} (Slice) names axis {a} twice", node.display_name());
        }
        seen.push(a);
        let step = steps[i];
        if step == 0 {
            bail!("node {} (Slice) has step 0 on axis {a}", node.display_name());
        }
        if a == 0 {
            // `x[0:]` on the batch axis keeps every sample: nothing to undo.
            if starts[i] == 0 && step == 1 && ends[i] >= i32::MAX as i64 {
                continue;
            }
            return refuse_batch_axis(node, "slices");
        }
        let d = x_rest[a - 1];
        let (lo, n) = slice_range(starts[i], ends[i], step, d);
        if n == 0 {
            bail!(
                "node {} (Slice) takes no element on axis {a}; an empty tensor has no gradient",
                node.display_name()
            );
        }
        if n != cur[a - 1] {
            bail!(
                "internal: node {} (Slice) axis {a}: {n} elements computed, {} probed",
                node.display_name(),
                cur[a - 1]
            );
        }
        if step < 0 {
            let (s, e) = (ctx.b.const_i64(&[-1]), ctx.b.const_i64(&[i64::MIN]));
            let (ax, st) = (ctx.b.const_i64(&[a as i64]), ctx.b.const_i64(&[-1]));
            g = ctx.b.op("Slice", &[&g, &s, &e, &ax, &st], vec![]);
        }
        let s = step.abs();
        let mut len = n;
        if s > 1 {
            // [.., n, ..] → [.., n, 1, ..] → pad to [.., n, s, ..] → [.., n·s, ..]: element i lands at i·s.
            let u = ctx.b.unsqueeze(&g, &[a as i64 + 1]);
            let mut pads = vec![0i64; 2 * (rank + 1)];
            pads[rank + 1 + a + 1] = s - 1;
            let p = ctx.b.const_i64(&pads);
            let u = ctx.b.op("Pad", &[&u, &p], vec![]);
            len = n * s;
            cur[a - 1] = len;
            g = ctx.flat(&u, &cur.clone());
        }
        if lo + len > d {
            // Trailing interleaved zeros past the end of the axis.
            g = crop(ctx, &g, a, d - lo);
            len = d - lo;
        }
        cur[a - 1] = len;
        before[a] = lo;
        after[a] = d - lo - len;
    }
    if before.iter().chain(&after).any(|&p| p != 0) {
        let pads: Vec<i64> = before.into_iter().chain(after).collect();
        let p = ctx.b.const_i64(&pads);
        g = ctx.b.op("Pad", &[&g, &p], vec![]);
    }
    Ok(one(g))
}

/// `g[.., 0:len, ..]` on axis `a`.
fn crop(ctx: &mut Backward, g: &str, a: usize, len: i64) -> String {
    let (s, e, ax) = (ctx.b.const_i64(&[0]), ctx.b.const_i64(&[len]), ctx.b.const_i64(&[a as i64]));
    ctx.b.op("Slice", &[g, &s, &e, &ax], vec![])
}

fn split(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let a = norm_axis(node, node.attr_int("axis").unwrap_or(0), x_rest.len() + 1)?;
    if a == 0 {
        return refuse_batch_axis(node, "splits");
    }
    // The probe saw every output, so the sizes are known whatever form the split took (`split`
    // input, equal parts, opset 18's `num_outputs` with a shorter last part).
    let Some(like) = dy.by_output.iter().flatten().next().cloned() else {
        bail!("internal: Split without any cotangent");
    };
    let mut parts = Vec::new();
    for (i, o) in node.output.iter().enumerate() {
        match dy.by_output.get(i).cloned().flatten() {
            Some(g) => parts.push(g),
            None => {
                let rest = ctx.rest(node, o)?;
                parts.push(zeros_rows(ctx, &like, &rest));
            }
        }
    }
    if parts.len() == 1 {
        return Ok(one(parts.remove(0)));
    }
    let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
    Ok(one(ctx.b.op("Concat", &refs, vec![attr::int("axis", a as i64)])))
}

/// Indices of a Gather along an axis of extent `d`, negative ones counted from the end.
fn gather_indices(node: &NodeProto, idx: &[i64], d: i64) -> Result<Vec<i64>> {
    idx.iter()
        .map(|&i| {
            let j = if i < 0 { i + d } else { i };
            if !(0..d).contains(&j) {
                bail!("node {} (Gather): index {i} is out of range for an axis of {d}", node.display_name());
            }
            Ok(j)
        })
        .collect()
}

/// Up to this many index × axis elements the Gather rule multiplies by a one-hot matrix (one dense
/// MatMul, as fast as it gets for a class token); past it, a scatter-add keeps the graph small.
const MAX_ONE_HOT: i64 = 1024;

fn gather(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let a = norm_axis(node, node.attr_int("axis").unwrap_or(0), x_rest.len() + 1)?;
    if a == 0 {
        return refuse_batch_axis(node, "gathers");
    }
    let it = node.input[1].as_str();
    if ctx.shape(it)?.batched {
        bail!(
            "node {} (Gather): its indices ({it:?}) differ per sample; the compiler needs constant indices (or ones computed from shapes only)",
            node.display_name()
        );
    }
    let d = x_rest[a - 1];
    let idx = gather_indices(node, &ctx.const_ints(node, it, "indices")?, d)?;
    let m = idx.len() as i64;
    if m == 0 {
        bail!("node {} (Gather) has no indices; an empty tensor has no gradient", node.display_name());
    }
    // dX[.., j, ..] = Σ_i [idx_i = j] dY[.., i, ..], with dY's index axes flattened to m and the
    // axes after them to q; duplicate indices add up.
    let q: i64 = x_rest[a..].iter().product();
    let g = ctx.b.reshape_const(dy.y()?, &[-1, m, q]);
    let g = if d * m <= MAX_ONE_HOT {
        let mut onehot = vec![0f32; (d * m) as usize];
        for (i, &j) in idx.iter().enumerate() {
            onehot[(j * m) as usize + i] = 1.0;
        }
        let mt = ctx.b.const_f32(&[d, m], &onehot);
        ctx.b.op("MatMul", &[&mt, &g], vec![])
    } else {
        let i1 = ctx.b.const_i64(&idx);
        let i3 = ctx.b.reshape_const(&i1, &[1, m, 1]);
        let shape = ctx.b.shape(&g);
        let ie = ctx.b.op("Expand", &[&i3, &shape], vec![]);
        let zeros = zeros_rows(ctx, &g, &[d, q]);
        ctx.b.op(
            "ScatterElements",
            &[&zeros, &ie, &g],
            vec![attr::int("axis", 1), attr::string("reduction", "add")],
        )
    };
    Ok(one(ctx.flat(&g, &x_rest)))
}

fn gather_elements(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let a = norm_axis(node, node.attr_int("axis").unwrap_or(0), x_rest.len() + 1)?;
    if a == 0 {
        return refuse_batch_axis(node, "gathers");
    }
    let it = node.input[1].as_str();
    let is = ctx.shape(it)?;
    if !is.batched {
        bail!(
            "node {} (GatherElements): its indices ({it:?}) have no batch axis while its data does; the compiler needs both to carry the batch",
            node.display_name()
        );
    }
    // The indices are fixed integers, so dX is dY added back at the positions they name; every
    // cotangent row of a sample uses that sample's indices.
    let i5 = ctx.fwd(it)?;
    let sh = ctx.b.shape(it);
    let bdim = ctx.b.slice1(&sh, 0, 1);
    let tail = ctx.b.const_i64(&is.rest);
    let k = ctx.kdim.clone();
    let target = ctx.b.concat0(&[&bdim, &k, &tail]);
    let i5 = ctx.b.op("Expand", &[&i5, &target], vec![]);
    let idx = ctx.flat(&i5, &is.rest);
    let g = dy.y()?;
    let zeros = zeros_rows(ctx, g, &x_rest);
    let out = ctx.b.op(
        "ScatterElements",
        &[&zeros, &idx, g],
        vec![attr::int("axis", a as i64), attr::string("reduction", "add")],
    );
    Ok(one(out))
}

fn expand(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let out_rest = ctx.rest(node, &node.output[0])?;
    if x_rest.len() != out_rest.len() {
        bail!(
            "node {} (Expand) raises the rank of {:?} from {} to {}, which moves its batch axis; not supported",
            node.display_name(),
            node.input[0],
            x_rest.len() + 1,
            out_rest.len() + 1
        );
    }
    let axes: Vec<i64> =
        (0..x_rest.len()).filter(|&i| x_rest[i] != out_rest[i]).map(|i| i as i64 + 1).collect();
    let g = dy.y()?;
    Ok(one(if axes.is_empty() { g.to_string() } else { ctx.b.reduce_sum(g, &axes, true) }))
}

fn tile(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let reps = ctx.const_ints(node, &node.input[1], "repeats")?;
    if reps.len() != x_rest.len() + 1 {
        bail!(
            "node {} (Tile) has {} repeats for a tensor of rank {}",
            node.display_name(),
            reps.len(),
            x_rest.len() + 1
        );
    }
    if reps[0] != 1 {
        return refuse_batch_axis(node, "repeats samples");
    }
    if reps.iter().any(|&r| r < 1) {
        bail!(
            "node {} (Tile) has repeats {reps:?}; the compiler needs every repeat ≥ 1",
            node.display_name()
        );
    }
    // Output index r·d + i along an axis: reshape to [.., r, d, ..] and sum the r axes.
    let mut shape = vec![-1i64];
    let mut axes = Vec::new();
    for (i, &d) in x_rest.iter().enumerate() {
        let r = reps[i + 1];
        if r > 1 {
            axes.push(shape.len() as i64);
            shape.push(r);
        }
        shape.push(d);
    }
    if axes.is_empty() {
        return Ok(one(dy.y()?.to_string()));
    }
    let g = ctx.b.reshape_const(dy.y()?, &shape);
    Ok(one(ctx.b.reduce_sum(&g, &axes, false)))
}

#[cfg(test)]
mod tests {
    use super::slice_range;

    /// The elements ONNX's Slice takes, enumerated one by one (starts clamped to `[0, d − 1]` for
    /// negative steps, as the operator's definition says, unlike Python's slices).
    fn reference(start: i64, end: i64, step: i64, d: i64) -> Vec<i64> {
        let norm = |v: i64, neg_floor: i64| {
            let v = if v < 0 { v.saturating_add(d) } else { v };
            if step > 0 { v.clamp(0, d) } else { v.clamp(neg_floor, d - 1) }
        };
        let (s, e) = (norm(start, 0), norm(end, -1));
        let mut out = Vec::new();
        let mut i = s;
        while (step > 0 && i < e) || (step < 0 && i > e) {
            out.push(i);
            i += step;
        }
        out
    }

    #[test]
    fn slice_ranges_follow_onnx_clamping() {
        let ends = [i64::MIN, -100, -9, -4, -1, 0, 1, 3, 7, 8, 9, 100, i64::MAX];
        for start in [i64::MIN, -100, -9, -8, -3, -1, 0, 1, 2, 7, 8, 50, i64::MAX] {
            for &end in &ends {
                for step in [-5, -2, -1, 1, 2, 3, 9] {
                    let want = reference(start, end, step, 8);
                    let (lo, n) = slice_range(start, end, step, 8);
                    assert_eq!(n as usize, want.len(), "start {start} end {end} step {step}");
                    if let Some(min) = want.iter().min() {
                        assert_eq!(lo, *min, "start {start} end {end} step {step}");
                    }
                }
            }
        }
    }
}

/// Refusals of the indexing and matrix-product rules, compiled end to end on small hand-built models.
#[cfg(test)]
pub(crate) mod refusals {
    use crate::compiler::{self, CompileOptions};
    use crate::onnx::{self, attr, proto::*};
    use crate::scores::Method;

    pub fn node(op: &str, inputs: &[&str], output: &str, attribute: Vec<AttributeProto>) -> NodeProto {
        NodeProto {
            name: format!("{op}_{output}"),
            op_type: op.into(),
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: vec![output.into()],
            attribute,
            ..Default::default()
        }
    }

    /// x `[N, 4, 4]` → Identity → h (the layer) → `nodes` (ending in `y`) → Flatten → z.
    pub fn compile_error(nodes: Vec<NodeProto>, initializer: Vec<TensorProto>) -> String {
        let mut all = vec![node("Identity", &["x"], "h", vec![])];
        all.extend(nodes);
        all.push(node("Flatten", &["y"], "z", vec![attr::int("axis", 1)]));
        let model = ModelProto {
            ir_version: 8,
            opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
            graph: Some(GraphProto {
                name: "g".into(),
                node: all,
                initializer,
                input: vec![onnx::value_info("x", data_type::FLOAT, &[Err("N"), Ok(4), Ok(4)])],
                output: vec![onnx::value_info("z", data_type::FLOAT, &[Err("N"), Err("D")])],
                ..Default::default()
            }),
            ..Default::default()
        };
        let opts = CompileOptions {
            embedding: "z".into(),
            layers: vec!["h".into()],
            methods: vec![Method::Vanilla],
            channel_agg: None,
            smoothing_samples: 1,
            layouts: vec![],
        };
        match compiler::compile(&model, "t", &opts) {
            Ok(_) => panic!("the model should be refused"),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn slice_bounds_that_depend_on_the_data_are_refused() {
        // starts = the position of the largest element of the whole batch: one value whatever the
        // batch size, but not the same value for other inputs.
        let nodes = vec![
            node("Flatten", &["h"], "all", vec![attr::int("axis", 0)]),
            node("ArgMax", &["all"], "starts", vec![attr::int("axis", 1), attr::int("keepdims", 0)]),
            node("Slice", &["h", "starts", "ends", "axes"], "y", vec![]),
        ];
        let inits = vec![onnx::tensor_i64("ends", &[1], &[4]), onnx::tensor_i64("axes", &[1], &[2])];
        let e = compile_error(nodes, inits);
        for part in ["Slice_y", "starts", "must be a constant (or computed from shapes only)"] {
            assert!(e.contains(part), "{e:?} should mention {part:?}");
        }
    }
}
