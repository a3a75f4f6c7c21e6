//! Operators that move or reduce elements without arithmetic on them: reshapes, transposes,
//! concatenation, sums and means over axes.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::{OpRule, Slots};
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule::unary("Flatten", "`Reshape(dY, Shape(X))`", reshape_back),
    OpRule { min_inputs: 2, ..OpRule::unary("Reshape", "`Reshape(dY, Shape(X))`", reshape_back) },
    OpRule::unary("Squeeze", "`Reshape(dY, Shape(X))`", reshape_back),
    OpRule { min_inputs: 2, ..OpRule::unary("Unsqueeze", "`Reshape(dY, Shape(X))`", reshape_back) },
    OpRule::unary(
        "Transpose",
        "`Transpose` with the inverse permutation (batch axis stays first)",
        transpose,
    ),
    OpRule::unary("Concat", "`Split` along the axis", concat).inputs(Slots::All, 1),
    OpRule::unary("ReduceMean", "`dY` broadcast back over the reduced axes, `/ count`", reduce),
    OpRule::unary("ReduceSum", "`dY` broadcast back over the reduced axes", reduce),
];

/// Reshape-like ops keep the elements in order, so the cotangent only needs the input's shape —
/// however the forward computed its target shape (constants, or `Shape → Gather → Concat` at run time).
fn reshape_back(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let rest = ctx.rest(node, &node.input[0])?;
    Ok(one(ctx.flat(dy.y()?, &rest)))
}

fn transpose(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
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
    Ok(one(ctx.b.op("Transpose", &[dy.y()?], vec![attr::ints("perm", &inv)])))
}

fn concat(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
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
    let parts = ctx.b.op_n("Split", &[dy.y()?, &split], sizes.len(), vec![attr::int("axis", axis)]);
    Ok(parts.into_iter().enumerate().filter(|(i, _)| wanted[*i]).collect())
}

fn reduce(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x_rest = ctx.rest(node, &node.input[0])?;
    let rank = x_rest.len() as i64 + 1;
    // Axes moved from attribute to input: ReduceSum at opset 13, the other reductions at 18.
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
            return Ok(one(dy.y()?.to_string()));
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
    let g = ctx.flat(dy.y()?, &kept);
    let n: i64 = x_rest.iter().product();
    let v = if node.op_type == "ReduceMean" { 1.0 / count as f32 } else { 1.0 };
    let spread = ctx.b.const_f32(&x_rest, &vec![v; n as usize]);
    Ok(one(ctx.b.mul(&g, &spread)))
}
