//! Normalisations: inference-mode batch norm (a per-channel affine map), and the per-sample norms
//! (layer, group, instance) whose statistics depend on the input and so take part in the gradient.
//!
//! The per-sample norms share one rule. With the sample's elements grouped as `[P, M]` (`M` elements
//! normalised together), `x̂ = (x − μ)·r`, `r = 1/√(σ² + ε)` and `g = dY · scale`:
//! `dX = r · (g − mean(g) − x̂ · mean(g · x̂))`, means over `M`.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::OpRule;
use crate::onnx::proto::*;

const NORM_FORMULA: &str = "`r · (g − mean(g) − x̂ · mean(g · x̂))`, `g = dY · scale`, `x̂ = (X − μ) · r`, means over the normalised elements";

pub const RULES: &[OpRule] = &[
    OpRule {
        min_inputs: 5,
        ..OpRule::unary(
            "BatchNormalization",
            "inference mode: `dY · scale / sqrt(var + ε)` per channel",
            batch_norm,
        )
    },
    OpRule {
        // Mean and InvStdDev: the forward pass computes them anyway, the rule reuses them.
        aux_outputs: &[1, 2],
        min_inputs: 2,
        ..OpRule::unary("LayerNormalization", NORM_FORMULA, layer_norm)
    },
    OpRule { min_inputs: 3, ..OpRule::unary("GroupNormalization", NORM_FORMULA, group_norm) },
    OpRule { min_inputs: 3, ..OpRule::unary("InstanceNormalization", NORM_FORMULA, group_norm) },
];

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

/// `r · (g − mean(g) − x̂ · mean(g · x̂))` for `g` `[B, K, P, M]`, `x̂` `[B, P, M]`, `r` `[B, P, 1]`.
fn normalised_grad(ctx: &mut Backward, g: &str, xhat: &str, r: &str, m: i64) -> String {
    let xhat = ctx.b.unsqueeze(xhat, &[1]);
    let r = ctx.b.unsqueeze(r, &[1]);
    let inv_m = 1.0 / m as f32;
    let s1 = ctx.b.reduce_sum(g, &[3], true);
    let m1 = ctx.b.scale(&s1, inv_m);
    let gx = ctx.b.mul(g, &xhat);
    let s2 = ctx.b.reduce_sum(&gx, &[3], true);
    let m2 = ctx.b.scale(&s2, inv_m);
    let c = ctx.b.op("Sub", &[g, &m1], vec![]);
    let xm = ctx.b.mul(&xhat, &m2);
    let c = ctx.b.op("Sub", &[&c, &xm], vec![]);
    ctx.b.mul(&c, &r)
}

/// Normalises over axes `axis…` (stash type float32); the statistics come from the node's own Mean
/// and InvStdDev outputs, which the compiler asks the forward node to produce.
fn layer_norm(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let rest = ctx.rest(node, x)?;
    let rank = rest.len() as i64 + 1;
    let axis = node.attr_int("axis").unwrap_or(-1);
    let a = if axis < 0 { axis + rank } else { axis };
    if a <= 0 || a >= rank {
        bail!(
            "node {} (LayerNormalization) normalises from axis {axis} of a rank-{rank} tensor; the compiler needs an axis after the batch axis",
            node.display_name()
        );
    }
    let (mean, inv_sd) = match (node.output.get(1), node.output.get(2)) {
        (Some(m), Some(s)) if !m.is_empty() && !s.is_empty() => (m.as_str(), s.as_str()),
        _ => bail!(
            "internal: LayerNormalization {} without its Mean and InvStdDev outputs",
            node.display_name()
        ),
    };
    let p: i64 = rest[..a as usize - 1].iter().product();
    let m: i64 = rest[a as usize - 1..].iter().product();
    let d = ctx.b.op("Sub", &[x, mean], vec![]);
    let xhat = ctx.b.mul(&d, inv_sd);
    let xhat = ctx.b.reshape_const(&xhat, &[0, p, m]);
    let r = ctx.b.reshape_const(inv_sd, &[0, p, 1]);
    let g = ctx.split(dy.y()?, &rest);
    let scale = ctx.fwd(&node.input[1])?;
    let g = ctx.b.mul(&g, &scale);
    let g = ctx.b.reshape_const(&g, &[0, 0, p, m]);
    let dx = normalised_grad(ctx, &g, &xhat, &r, m);
    Ok(one(ctx.flat(&dx, &rest)))
}

/// GroupNormalization (`num_groups` groups of channels) and InstanceNormalization (a group per
/// channel) over `[B, C, spatial…]`. GroupNormalization's scale is per group at opset 18 and per
/// channel from opset 21; the model's opset decides, and a scale of the other length is refused.
fn group_norm(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let rest = ctx.rest(node, x)?;
    let c = rest[0];
    let instance = node.op_type == "InstanceNormalization";
    let groups = if instance {
        c
    } else {
        node.attr_int("num_groups").ok_or_else(|| {
            anyhow::anyhow!("node {} (GroupNormalization) has no num_groups attribute", node.display_name())
        })?
    };
    if groups <= 0 || c % groups != 0 {
        bail!(
            "node {} ({}): {c} channels do not split into {groups} groups",
            node.display_name(),
            node.op_type
        );
    }
    let per_channel = instance || ctx.opset >= 21;
    let scale = node.input[1].as_str();
    let scale_shape = ctx.shape(scale)?;
    let want = if per_channel { c } else { groups };
    if scale_shape.batched || scale_shape.rest != [want] {
        bail!(
            "node {} ({}) at opset {}: scale has shape {:?}{}; expected [{want}] ({})",
            node.display_name(),
            node.op_type,
            ctx.opset,
            scale_shape.rest,
            if scale_shape.batched { " after the batch axis" } else { "" },
            if per_channel { "one per channel" } else { "one per group, opset 18 semantics" }
        );
    }
    let eps = node.attr_float("epsilon").unwrap_or(1e-5);
    let m: i64 = rest.iter().product::<i64>() / groups;

    // Statistics per sample and group, recomputed from X: [B, G, M].
    let xg = ctx.b.reshape_const(x, &[0, groups, m]);
    let s = ctx.b.reduce_sum(&xg, &[2], true);
    let mu = ctx.b.scale(&s, 1.0 / m as f32);
    let d = ctx.b.op("Sub", &[&xg, &mu], vec![]);
    let d2 = ctx.b.mul(&d, &d);
    let s2 = ctx.b.reduce_sum(&d2, &[2], true);
    let var = ctx.b.scale(&s2, 1.0 / m as f32);
    let e = ctx.b.scalar_f32(eps);
    let ve = ctx.b.op("Add", &[&var, &e], vec![]);
    let sd = ctx.b.op("Sqrt", &[&ve], vec![]);
    let r = ctx.b.op("Reciprocal", &[&sd], vec![]);
    let xhat = ctx.b.mul(&d, &r);

    let g = ctx.split(dy.y()?, &rest);
    let g = if per_channel {
        // [C] → [C, 1, …] against [B, K, C, spatial…].
        let mut shape = vec![c];
        shape.extend(std::iter::repeat_n(1, rest.len() - 1));
        let sc = ctx.b.reshape_const(scale, &shape);
        let g = ctx.b.mul(&g, &sc);
        ctx.b.reshape_const(&g, &[0, 0, groups, m])
    } else {
        let g = ctx.b.reshape_const(&g, &[0, 0, groups, m]);
        let sc = ctx.b.reshape_const(scale, &[groups, 1]);
        ctx.b.mul(&g, &sc)
    };
    let dx = normalised_grad(ctx, &g, &xhat, &r, m);
    Ok(one(ctx.flat(&dx, &rest)))
}
