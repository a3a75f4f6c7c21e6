//! Operators that couple the elements along an axis: Softmax, LogSoftmax (attention, classifier
//! heads), ReduceMax and ReduceMin (max-pooling over tokens or channels).

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::OpRule;
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule::unary("Softmax", "`Y · (dY − Σₐ dY · Y)` along the axis", softmax),
    OpRule::unary("LogSoftmax", "`dY − exp(Y) · Σₐ dY` along the axis", softmax),
    OpRule::unary(
        "ReduceMax",
        "`dY` to the elements equal to the maximum, shared equally among ties",
        reduce_max,
    ),
    OpRule::unary(
        "ReduceMin",
        "`dY` to the elements equal to the minimum, shared equally among ties",
        reduce_max,
    ),
];

/// A forward axis (possibly negative) as an index into `[B, …]` of rank `rank`; the batch axis is
/// refused because the samples would then depend on each other.
fn axis_of(node: &NodeProto, axis: i64, rank: usize) -> Result<usize> {
    let a = if axis < 0 { axis + rank as i64 } else { axis };
    if a <= 0 || a >= rank as i64 {
        bail!(
            "node {} ({}) works along axis {axis} of a rank-{rank} tensor; the compiler needs an axis after the batch axis",
            node.display_name(),
            node.op_type
        );
    }
    Ok(a as usize)
}

/// Opset 13 semantics (one axis, default −1); the compiler refuses models older than opset 13, whose
/// Softmax flattened everything after `axis` instead.
fn softmax(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let rest = ctx.rest(node, &node.output[0])?;
    let a = axis_of(node, node.attr_int("axis").unwrap_or(-1), rest.len() + 1)?;
    // The split form [B, K, …] shifts every forward axis by one.
    let axes = [a as i64 + 1];
    let g = ctx.split(dy.y()?, &rest);
    let y = ctx.fwd(&node.output[0])?;
    let d = if node.op_type == "Softmax" {
        let gy = ctx.b.mul(&g, &y);
        let s = ctx.b.reduce_sum(&gy, &axes, true);
        let c = ctx.b.op("Sub", &[&g, &s], vec![]);
        ctx.b.mul(&c, &y)
    } else {
        let p = ctx.b.op("Exp", &[&y], vec![]);
        let s = ctx.b.reduce_sum(&g, &axes, true);
        let ps = ctx.b.mul(&p, &s);
        ctx.b.op("Sub", &[&g, &ps], vec![])
    };
    Ok(one(ctx.flat(&d, &rest)))
}

/// ReduceMax and ReduceMin: every element equal to the result gets an equal share of `dY` (as
/// `torch.amax` does), so a tie between copies of one value still adds up to the whole cotangent.
fn reduce_max(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let x_rest = ctx.rest(node, x)?;
    let rank = x_rest.len() + 1;
    // Axes moved from the attribute to an input at opset 18.
    let axes: Vec<i64> = if ctx.opset >= 18 {
        match node.input.get(1).filter(|s| !s.is_empty()) {
            Some(t) => ctx.const_ints(node, t, "axes")?,
            None => vec![],
        }
    } else {
        node.attr_ints("axes").map(<[i64]>::to_vec).unwrap_or_default()
    };
    let axes: Vec<usize> = if axes.is_empty() {
        if node.attr_int("noop_with_empty_axes").unwrap_or(0) != 0 {
            return Ok(one(dy.y()?.to_string()));
        }
        bail!(
            "node {} ({}) reduces over every axis, the batch axis among them; not supported",
            node.display_name(),
            node.op_type
        );
    } else {
        axes.iter().map(|&a| axis_of(node, a, rank)).collect::<Result<_>>()?
    };
    let mut kept = x_rest.clone();
    for &a in &axes {
        kept[a - 1] = 1;
    }
    let mut kept_shape = vec![0];
    kept_shape.extend(&kept);
    // The maximum with the reduced axes kept (whatever `keepdims` said), to compare against X.
    let y = ctx.b.reshape_const(&node.output[0], &kept_shape);
    let eq = ctx.b.op("Equal", &[x, &y], vec![]);
    let mask = ctx.b.op("Cast", &[&eq], vec![attr::int("to", data_type::FLOAT as i64)]);
    let fwd_axes: Vec<i64> = axes.iter().map(|&a| a as i64).collect();
    let ties = ctx.b.reduce_sum(&mask, &fwd_axes, true);
    let share = ctx.b.op("Div", &[&mask, &ties], vec![]);
    let share = ctx.b.unsqueeze(&share, &[1]);
    let g = ctx.split(dy.y()?, &kept);
    let d = ctx.b.mul(&g, &share);
    Ok(one(ctx.flat(&d, &x_rest)))
}
