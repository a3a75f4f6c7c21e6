//! Reverse-mode rules for elementwise, linear-algebra and shape operators (spec table in
//! `shared/spec/attribution-graph.md`). Spatial operators are in `spatial.rs`.
//!
//! A rule receives the cotangent of the node's first output in flat form `[B·K, out…]` and returns the
//! cotangents of the inputs that need one, also in flat form.

use anyhow::{Result, bail};

use super::ctx::Ctx;
use super::spatial;
use crate::onnx::{attr, proto::*};

/// Cotangents of the node's inputs, by input slot.
pub type InputGrads = Vec<(usize, String)>;

/// Dispatches to the rule for `node`. `wanted[i]` says whether input slot `i` needs a cotangent.
pub fn vjp(ctx: &mut Ctx, node: &NodeProto, dy: &str, wanted: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let y = node.output[0].as_str();
    let one = |g: String| vec![(0usize, g)];
    Ok(match node.op_type.as_str() {
        "Identity" | "Dropout" => one(dy.to_string()),
        "Neg" => one(ctx.b.op("Neg", &[dy], vec![])),
        "Relu" => {
            let zero = ctx.b.scalar_f32(0.0);
            let pos = ctx.b.op("Greater", &[x, &zero], vec![]);
            let l = ctx.b.op("Cast", &[&pos], vec![attr::int("to", data_type::FLOAT as i64)]);
            one(local(ctx, node, dy, &l)?)
        }
        "LeakyRelu" => {
            let alpha = node.attr_float("alpha").unwrap_or(0.01);
            let zero = ctx.b.scalar_f32(0.0);
            let pos = ctx.b.op("Greater", &[x, &zero], vec![]);
            let (o, a) = (ctx.b.scalar_f32(1.0), ctx.b.scalar_f32(alpha));
            let l = ctx.b.op("Where", &[&pos, &o, &a], vec![]);
            one(local(ctx, node, dy, &l)?)
        }
        "Sigmoid" => {
            let o = ctx.b.scalar_f32(1.0);
            let om = ctx.b.op("Sub", &[&o, y], vec![]);
            let l = ctx.b.mul(y, &om);
            one(local(ctx, node, dy, &l)?)
        }
        "Tanh" => {
            let o = ctx.b.scalar_f32(1.0);
            let sq = ctx.b.mul(y, y);
            let l = ctx.b.op("Sub", &[&o, &sq], vec![]);
            one(local(ctx, node, dy, &l)?)
        }
        "Softplus" => {
            let l = ctx.b.op("Sigmoid", &[x], vec![]);
            one(local(ctx, node, dy, &l)?)
        }
        "Clip" => one(clip(ctx, node, dy)?),
        "BatchNormalization" => one(batch_norm(ctx, node, dy)?),
        "Flatten" | "Reshape" | "Squeeze" | "Unsqueeze" => {
            let rest = ctx.rest(node, x)?;
            one(ctx.flat(dy, &rest))
        }
        "Transpose" => one(transpose(ctx, node, dy)?),
        "Gemm" => one(gemm(ctx, node, dy)?),
        "MatMul" => matmul(ctx, node, dy, wanted)?,
        "Add" | "Sub" | "Mul" | "Div" | "Sum" => elementwise(ctx, node, dy, wanted)?,
        "Concat" => concat(ctx, node, dy, wanted)?,
        "ReduceMean" | "ReduceSum" => one(reduce(ctx, node, dy)?),
        "Conv" => one(spatial::conv(ctx, node, dy)?),
        "ConvTranspose" => one(spatial::conv_transpose(ctx, node, dy)?),
        "MaxPool" => one(spatial::max_pool(ctx, node, dy)?),
        "AveragePool" => one(spatial::average_pool(ctx, node, dy)?),
        "GlobalAveragePool" => one(spatial::global_average_pool(ctx, node, dy)?),
        "Pad" => one(spatial::pad(ctx, node, dy)?),
        "Resize" => one(spatial::resize(ctx, node, dy)?),
        other => bail!("internal: no rule for {other}"),
    })
}

/// `dX = dY ⊙ L` for an elementwise local derivative `L` of the forward tensor's shape.
fn local(ctx: &mut Ctx, node: &NodeProto, dy: &str, l: &str) -> Result<String> {
    let rest = ctx.rest(node, &node.output[0])?;
    let g = ctx.split(dy, &rest);
    let l = ctx.b.unsqueeze(l, &[1]);
    let p = ctx.b.mul(&g, &l);
    Ok(ctx.flat(&p, &rest))
}

fn clip(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<String> {
    let x = node.input[0].as_str();
    // Opset ≥ 11: bounds are optional inputs; before: attributes.
    let mut bounds: Vec<(String, &str)> = Vec::new();
    if ctx.opset >= 11 {
        if let Some(m) = node.input.get(1).filter(|s| !s.is_empty()) {
            bounds.push((m.clone(), "GreaterOrEqual"));
        }
        if let Some(m) = node.input.get(2).filter(|s| !s.is_empty()) {
            bounds.push((m.clone(), "LessOrEqual"));
        }
    } else {
        if let Some(v) = node.attr_float("min") {
            bounds.push((ctx.b.scalar_f32(v), "GreaterOrEqual"));
        }
        if let Some(v) = node.attr_float("max") {
            bounds.push((ctx.b.scalar_f32(v), "LessOrEqual"));
        }
    }
    if bounds.is_empty() {
        return Ok(dy.to_string());
    }
    let conds: Vec<String> = bounds.iter().map(|(b, op)| ctx.b.op(op, &[x, b], vec![])).collect();
    let inside =
        if conds.len() == 2 { ctx.b.op("And", &[&conds[0], &conds[1]], vec![]) } else { conds[0].clone() };
    let l = ctx.b.op("Cast", &[&inside], vec![attr::int("to", data_type::FLOAT as i64)]);
    local(ctx, node, dy, &l)
}

/// Inference-mode batch norm is `x·s + t` per channel with `s = scale / sqrt(var + ε)`.
fn batch_norm(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<String> {
    if node.attr_int("training_mode").unwrap_or(0) != 0 {
        bail!(
            "node {} (BatchNormalization) is in training mode; export the model in inference mode",
            node.display_name()
        );
    }
    let rest = ctx.rest(node, &node.input[0])?;
    let eps = ctx.b.scalar_f32(node.attr_float("epsilon").unwrap_or(1e-5));
    let var = ctx.b.op("Add", &[&node.input[4], &eps], vec![]);
    let sd = ctx.b.op("Sqrt", &[&var], vec![]);
    let s = ctx.b.op("Div", &[&node.input[1], &sd], vec![]);
    // [C] → [C, 1, …] so it broadcasts over the spatial axes of [B·K, C, …].
    let mut shape = vec![-1];
    shape.extend(std::iter::repeat_n(1, rest.len().saturating_sub(1)));
    let s = ctx.b.reshape_const(&s, &shape);
    Ok(ctx.b.mul(dy, &s))
}

fn transpose(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<String> {
    let rank = ctx.rest(node, &node.input[0])?.len() + 1;
    let perm: Vec<i64> = match node.attr_ints("perm") {
        Some(p) => p.to_vec(),
        None => (0..rank as i64).rev().collect(),
    };
    if perm.first() != Some(&0) {
        bail!(
            "node {} (Transpose) moves the batch axis (perm {perm:?}); the compiler needs it to stay on axis 0",
            node.display_name()
        );
    }
    let mut inv = vec![0i64; perm.len()];
    for (i, &p) in perm.iter().enumerate() {
        inv[p as usize] = i as i64;
    }
    Ok(ctx.b.op("Transpose", &[dy], vec![attr::ints("perm", &inv)]))
}

/// `Y = α·op(A)·op(B) + β·C` with the batch in `A`'s rows: `dA = α·dY·op(B)ᵀ`.
fn gemm(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<String> {
    if node.attr_int("transA").unwrap_or(0) != 0 {
        bail!(
            "node {} (Gemm) has transA = 1, which puts the batch in A's columns; not supported",
            node.display_name()
        );
    }
    let b = node.input[1].as_str();
    if ctx.shape(b)?.batched {
        bail!("node {} (Gemm): operand B carries the batch; not supported", node.display_name());
    }
    let bt = if node.attr_int("transB").unwrap_or(0) != 0 {
        b.to_string()
    } else {
        ctx.b.op("Transpose", &[b], vec![attr::ints("perm", &[1, 0])])
    };
    let g = ctx.b.op("MatMul", &[dy, &bt], vec![]);
    let alpha = node.attr_float("alpha").unwrap_or(1.0);
    Ok(if alpha == 1.0 { g } else { ctx.b.scale(&g, alpha) })
}

/// Swaps the last two axes of a tensor of rank `rank`.
fn swap_last(ctx: &mut Ctx, t: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    ctx.b.op("Transpose", &[t], vec![attr::ints("perm", &perm)])
}

fn matmul(ctx: &mut Ctx, node: &NodeProto, dy: &str, wanted: &[bool]) -> Result<InputGrads> {
    let (a, b) = (node.input[0].as_str(), node.input[1].as_str());
    let out_rest = ctx.rest(node, &node.output[0])?;
    let (sa, sb) = (ctx.shape(a)?, ctx.shape(b)?);
    let rank = |s: &super::probe::ProbedShape| s.rest.len() + s.batched as usize;
    if rank(&sa) < 2 || rank(&sb) < 2 {
        bail!("node {} (MatMul) has a 1-D operand; not supported", node.display_name());
    }
    let g = ctx.split(dy, &out_rest);
    let mut grads = Vec::new();
    if wanted[0] {
        // dA = dY · Bᵀ
        let b5 = ctx.fwd(b)?;
        let bt = swap_last(ctx, &b5, rank(&sb) + sb.batched as usize);
        let ga = ctx.b.op("MatMul", &[&g, &bt], vec![]);
        let a_rest = ctx.rest(node, a)?;
        let ga = ctx.unbroadcast(node, &ga, &out_rest, &a_rest)?;
        grads.push((0, ctx.flat(&ga, &a_rest)));
    }
    if wanted[1] {
        // dB = Aᵀ · dY
        let a5 = ctx.fwd(a)?;
        let at = swap_last(ctx, &a5, rank(&sa) + sa.batched as usize);
        let gb = ctx.b.op("MatMul", &[&at, &g], vec![]);
        let b_rest = ctx.rest(node, b)?;
        let gb = ctx.unbroadcast(node, &gb, &out_rest, &b_rest)?;
        grads.push((1, ctx.flat(&gb, &b_rest)));
    }
    Ok(grads)
}

fn elementwise(ctx: &mut Ctx, node: &NodeProto, dy: &str, wanted: &[bool]) -> Result<InputGrads> {
    let op = node.op_type.as_str();
    let out_rest = ctx.rest(node, &node.output[0])?;
    let mut grads = Vec::new();
    for (slot, x) in node.input.iter().enumerate() {
        if !wanted.get(slot).copied().unwrap_or(false) {
            continue;
        }
        let x_rest = ctx.rest(node, x)?;
        let negate = op == "Sub" && slot == 1;
        // Same shape and a pure sum: the cotangent passes through in flat form.
        if x_rest == out_rest && matches!(op, "Add" | "Sum" | "Sub") {
            let g = if negate { ctx.b.op("Neg", &[dy], vec![]) } else { dy.to_string() };
            grads.push((slot, g));
            continue;
        }
        let g = ctx.split(dy, &out_rest);
        let g = match (op, slot) {
            ("Add" | "Sum", _) | ("Sub", 0) => g,
            ("Sub", _) => ctx.b.op("Neg", &[&g], vec![]),
            ("Mul", _) => {
                let other = ctx.fwd(&node.input[1 - slot])?;
                ctx.b.mul(&g, &other)
            }
            ("Div", 0) => {
                let den = ctx.fwd(&node.input[1])?;
                ctx.b.op("Div", &[&g, &den], vec![])
            }
            ("Div", _) => {
                // d(a/b)/db = −(a/b)/b = −Y/b
                let (y, den) = (ctx.fwd(&node.output[0])?, ctx.fwd(&node.input[1])?);
                let q = ctx.b.op("Div", &[&y, &den], vec![]);
                let p = ctx.b.mul(&g, &q);
                ctx.b.op("Neg", &[&p], vec![])
            }
            _ => bail!("internal: elementwise rule for {op}"),
        };
        let g = ctx.unbroadcast(node, &g, &out_rest, &x_rest)?;
        grads.push((slot, ctx.flat(&g, &x_rest)));
    }
    Ok(grads)
}

fn concat(ctx: &mut Ctx, node: &NodeProto, dy: &str, wanted: &[bool]) -> Result<InputGrads> {
    let out_rest = ctx.rest(node, &node.output[0])?;
    let rank = out_rest.len() as i64 + 1;
    let mut axis = node.attr_int("axis").unwrap_or(0);
    if axis < 0 {
        axis += rank;
    }
    if axis == 0 {
        bail!("node {} (Concat) concatenates along the batch axis; not supported", node.display_name());
    }
    let mut sizes = Vec::new();
    for x in &node.input {
        sizes.push(ctx.rest(node, x)?[axis as usize - 1]);
    }
    let split = ctx.b.const_i64(&sizes);
    let parts = ctx.b.op_n("Split", &[dy, &split], sizes.len(), vec![attr::int("axis", axis)]);
    Ok(parts.into_iter().enumerate().filter(|(i, _)| wanted[*i]).collect())
}

fn reduce(ctx: &mut Ctx, node: &NodeProto, dy: &str) -> Result<String> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let rank = x_rest.len() as i64 + 1;
    // Axes moved from attribute to input: ReduceSum at opset 13, ReduceMean at 18.
    let from_input = (node.op_type == "ReduceSum" && ctx.opset >= 13) || ctx.opset >= 18;
    let mut axes: Vec<i64> = if from_input {
        match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(a) => ctx.const_ints(node, a, "axes")?,
            None => vec![],
        }
    } else {
        node.attr_ints("axes").map(|a| a.to_vec()).unwrap_or_default()
    };
    if axes.is_empty() {
        if node.attr_int("noop_with_empty_axes").unwrap_or(0) != 0 {
            return Ok(dy.to_string());
        }
        axes = (0..rank).collect();
    }
    let axes: Vec<usize> = axes.iter().map(|&a| if a < 0 { a + rank } else { a } as usize).collect();
    if axes.contains(&0) {
        bail!("node {} ({}) reduces over the batch axis; not supported", node.display_name(), node.op_type);
    }
    let mut kept = x_rest.clone();
    let mut count = 1;
    for &a in &axes {
        count *= kept[a - 1];
        kept[a - 1] = 1;
    }
    let g = ctx.flat(dy, &kept);
    let n: i64 = x_rest.iter().product();
    let v = if node.op_type == "ReduceMean" { 1.0 / count as f32 } else { 1.0 };
    let spread = ctx.b.const_f32(&x_rest, &vec![v; n as usize]);
    Ok(ctx.b.mul(&g, &spread))
}
