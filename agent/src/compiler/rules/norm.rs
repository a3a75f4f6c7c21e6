//! Normalisations.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::OpRule;
use crate::onnx::proto::*;

pub const RULES: &[OpRule] = &[OpRule {
    min_inputs: 5,
    ..OpRule::unary(
        "BatchNormalization",
        "inference mode: `dY · scale / sqrt(var + ε)` per channel",
        batch_norm,
    )
}];

/// Inference-mode batch norm is `x·s + t` per channel with `s = scale / sqrt(var + ε)`.
fn batch_norm(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
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
    Ok(one(ctx.b.mul(dy.y()?, &s)))
}
