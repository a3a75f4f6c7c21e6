//! Activations that modern exporters emit as single operators (MobileNetV3's hard functions,
//! transformers' GELU, YOLO's Mish). Their derivatives are rebuilt from elementary ONNX ops so the
//! graph runs wherever the forward model does.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, local, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::OpRule;
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule::unary("HardSigmoid", "`dY · α · (0 < αX + β < 1)`", hard_sigmoid),
    OpRule::unary("HardSwish", "`dY · (X ≥ 3 ? 1 : X > −3 ? X/3 + 1/2 : 0)`", hard_swish),
    OpRule::unary("Erf", "`dY · 2/√π · exp(−X²)`", erf),
    OpRule::unary(
        "Gelu",
        "none: `dY · (Φ(X) + X·φ(X))`; tanh: `dY · (½(1 + t) + ½X(1 − t²)·√(2/π)(1 + 3·0.044715·X²))`, `t = tanh(√(2/π)(X + 0.044715·X³))`",
        gelu,
    ),
    OpRule::unary("Mish", "`dY · (t + X·(1 − t²)·σ(X))`, `t = tanh(softplus(X))`", mish),
    OpRule {
        // The slope is a weight: a layer that reaches it is refused by the path analysis.
        min_inputs: 2,
        ..OpRule::unary("PRelu", "`dY · (X > 0 ? 1 : slope)`", prelu)
    },
    OpRule::unary("Elu", "`dY · (X > 0 ? 1 : Y + α)`", elu),
    OpRule::unary("Selu", "`dY · (X > 0 ? γ : Y + γ·α)`", elu),
    OpRule::unary("Celu", "`dY · (X > 0 ? 1 : exp(X/α))`", celu),
    OpRule::unary("Softsign", "`dY / (1 + |X|)²`", softsign),
    OpRule::unary("ThresholdedRelu", "`dY · (X > α)`", thresholded_relu),
];

fn unop(ctx: &mut Backward, op: &str, x: &str) -> String {
    ctx.b.op(op, &[x], vec![])
}

fn binop(ctx: &mut Backward, op: &str, a: &str, b: &str) -> String {
    ctx.b.op(op, &[a, b], vec![])
}

fn plus(ctx: &mut Backward, x: &str, c: f32) -> String {
    let c = ctx.b.scalar_f32(c);
    binop(ctx, "Add", x, &c)
}

/// `(lo < X < hi)` as 0/1 floats; at the kinks themselves the derivative is taken as 0.
fn inside(ctx: &mut Backward, x: &str, lo: f32, hi: f32) -> String {
    let (l, h) = (ctx.b.scalar_f32(lo), ctx.b.scalar_f32(hi));
    let a = binop(ctx, "Greater", x, &l);
    let b = binop(ctx, "Less", x, &h);
    let both = binop(ctx, "And", &a, &b);
    ctx.b.op("Cast", &[&both], vec![attr::int("to", data_type::FLOAT as i64)])
}

fn hard_sigmoid(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let alpha = node.attr_float("alpha").unwrap_or(0.2);
    let beta = node.attr_float("beta").unwrap_or(0.5);
    let ax = ctx.b.scale(&node.input[0], alpha);
    let a = plus(ctx, &ax, beta);
    let m = inside(ctx, &a, 0.0, 1.0);
    let l = ctx.b.scale(&m, alpha);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

/// `HardSwish(x) = x · HardSigmoid(x)` with `α = 1/6, β = 1/2`: slope `x/3 + 1/2` inside (−3, 3),
/// 1 above, 0 below.
fn hard_swish(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let third = ctx.b.scale(x, 1.0 / 3.0);
    let slope = plus(ctx, &third, 0.5);
    let m = inside(ctx, x, -3.0, 3.0);
    let mid = ctx.b.mul(&slope, &m);
    let three = ctx.b.scalar_f32(3.0);
    let above = binop(ctx, "GreaterOrEqual", x, &three);
    let above = ctx.b.op("Cast", &[&above], vec![attr::int("to", data_type::FLOAT as i64)]);
    let l = binop(ctx, "Add", &mid, &above);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

/// `exp(−x²)`, the shape of both Erf's and exact GELU's derivatives.
fn gauss(ctx: &mut Backward, x: &str, scale: f32) -> String {
    let sq = ctx.b.mul(x, x);
    let e = ctx.b.scale(&sq, -scale);
    unop(ctx, "Exp", &e)
}

fn erf(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let g = gauss(ctx, &node.input[0], 1.0);
    let l = ctx.b.scale(&g, std::f32::consts::FRAC_2_SQRT_PI);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn gelu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let approx = node.attr_string("approximate").unwrap_or_else(|| "none".into());
    let l = match approx.as_str() {
        "none" => {
            // Φ(x) + x·φ(x), Φ(x) = ½(1 + erf(x/√2)), φ(x) = exp(−x²/2)/√(2π)
            let xs = ctx.b.scale(x, std::f32::consts::FRAC_1_SQRT_2);
            let e = unop(ctx, "Erf", &xs);
            let e1 = plus(ctx, &e, 1.0);
            let cdf = ctx.b.scale(&e1, 0.5);
            let g = gauss(ctx, x, 0.5);
            let pdf = ctx.b.scale(&g, 1.0 / (2.0 * std::f32::consts::PI).sqrt());
            let xpdf = ctx.b.mul(x, &pdf);
            binop(ctx, "Add", &cdf, &xpdf)
        }
        "tanh" => {
            const C: f32 = 0.044_715;
            let k = (2.0 / std::f32::consts::PI).sqrt();
            let x2 = ctx.b.mul(x, x);
            let x3 = ctx.b.mul(&x2, x);
            let cx3 = ctx.b.scale(&x3, C);
            let inner = binop(ctx, "Add", x, &cx3);
            let u = ctx.b.scale(&inner, k);
            let t = unop(ctx, "Tanh", &u);
            // ½(1 + t)
            let t1 = plus(ctx, &t, 1.0);
            let first = ctx.b.scale(&t1, 0.5);
            // ½x(1 − t²)·k(1 + 3C·x²)
            let tt = ctx.b.mul(&t, &t);
            let one_m = ctx.b.scalar_f32(1.0);
            let sech2 = binop(ctx, "Sub", &one_m, &tt);
            let cx2 = ctx.b.scale(&x2, 3.0 * C);
            let du = plus(ctx, &cx2, 1.0);
            let du = ctx.b.scale(&du, 0.5 * k);
            let xs = ctx.b.mul(x, &sech2);
            let second = ctx.b.mul(&xs, &du);
            binop(ctx, "Add", &first, &second)
        }
        other => bail!(
            "node {} (Gelu) has approximate = {other:?}; the compiler knows \"none\" and \"tanh\"",
            node.display_name()
        ),
    };
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn mish(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    let sp = unop(ctx, "Softplus", x);
    let t = unop(ctx, "Tanh", &sp);
    let s = unop(ctx, "Sigmoid", x);
    let tt = ctx.b.mul(&t, &t);
    let one_m = ctx.b.scalar_f32(1.0);
    let sech2 = binop(ctx, "Sub", &one_m, &tt);
    let xs = ctx.b.mul(x, &sech2);
    let xss = ctx.b.mul(&xs, &s);
    let l = binop(ctx, "Add", &t, &xss);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn positive(ctx: &mut Backward, x: &str) -> String {
    let zero = ctx.b.scalar_f32(0.0);
    binop(ctx, "Greater", x, &zero)
}

fn prelu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let pos = positive(ctx, &node.input[0]);
    let o = ctx.b.scalar_f32(1.0);
    // The slope broadcasts to X's shape (unidirectionally), so the local derivative has Y's shape.
    let l = ctx.b.op("Where", &[&pos, &o, &node.input[1]], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

/// Elu and Selu: below zero `Y = γ·α·(eˣ − 1)`, so the slope `γ·α·eˣ` is `Y + γ·α` (γ = 1 for Elu).
fn elu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let (alpha, gamma) = if node.op_type == "Selu" {
        (node.attr_float("alpha").unwrap_or(1.673_263_2), node.attr_float("gamma").unwrap_or(1.050_701))
    } else {
        (node.attr_float("alpha").unwrap_or(1.0), 1.0)
    };
    let pos = positive(ctx, &node.input[0]);
    let below = plus(ctx, &node.output[0], gamma * alpha);
    let g = ctx.b.scalar_f32(gamma);
    let l = ctx.b.op("Where", &[&pos, &g, &below], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn celu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let alpha = node.attr_float("alpha").unwrap_or(1.0);
    let x = node.input[0].as_str();
    let xa = ctx.b.scale(x, 1.0 / alpha);
    let e = unop(ctx, "Exp", &xa);
    let pos = positive(ctx, x);
    let o = ctx.b.scalar_f32(1.0);
    let l = ctx.b.op("Where", &[&pos, &o, &e], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn softsign(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let a = unop(ctx, "Abs", &node.input[0]);
    let d = plus(ctx, &a, 1.0);
    let d2 = ctx.b.mul(&d, &d);
    let l = unop(ctx, "Reciprocal", &d2);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn thresholded_relu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let alpha = ctx.b.scalar_f32(node.attr_float("alpha").unwrap_or(1.0));
    let above = binop(ctx, "Greater", &node.input[0], &alpha);
    let l = ctx.b.op("Cast", &[&above], vec![attr::int("to", data_type::FLOAT as i64)]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}
