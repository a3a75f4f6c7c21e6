//! Elementwise operators: activations and broadcasting arithmetic.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, local, one};
use crate::compiler::ctx::Backward;
use crate::compiler::registry::{OpRule, Slots};
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule::unary("Identity", "`dY`", |_, _, dy, _| Ok(one(dy.y()?.to_string()))),
    OpRule::unary("Dropout", "`dY` (inference)", |_, _, dy, _| Ok(one(dy.y()?.to_string()))),
    OpRule::unary("Neg", "`−dY`", |cx, _, dy, _| Ok(one(cx.b.op("Neg", &[dy.y()?], vec![])))),
    OpRule::unary("Relu", "`dY · (X > 0)`", relu),
    OpRule::unary("LeakyRelu", "`dY · (X > 0 ? 1 : α)`", leaky_relu),
    OpRule::unary("Sigmoid", "`dY · Y · (1 − Y)`", sigmoid),
    OpRule::unary("Tanh", "`dY · (1 − Y²)`", tanh),
    OpRule::unary("Softplus", "`dY · Sigmoid(X)`", softplus),
    OpRule::unary("Clip", "`dY · (min ≤ X ≤ max)`", clip),
    OpRule::unary("Add", "`dY`, summed over broadcast axes", elementwise).inputs(Slots::Only(&[0, 1]), 2),
    OpRule::unary("Sub", "`dY`, `−dY`, summed over broadcast axes", elementwise)
        .inputs(Slots::Only(&[0, 1]), 2),
    OpRule::unary("Mul", "`dY · B`, `dY · A`, summed over broadcast axes", elementwise)
        .inputs(Slots::Only(&[0, 1]), 2),
    OpRule::unary("Div", "`dY / B`, `−dY · Y / B`, summed over broadcast axes", elementwise)
        .inputs(Slots::Only(&[0, 1]), 2),
    OpRule::unary("Sum", "`dY` to every input, summed over broadcast axes", elementwise)
        .inputs(Slots::All, 1),
];

fn relu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let zero = ctx.b.scalar_f32(0.0);
    let pos = ctx.b.op("Greater", &[&node.input[0], &zero], vec![]);
    let l = ctx.b.op("Cast", &[&pos], vec![attr::int("to", data_type::FLOAT as i64)]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn leaky_relu(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let alpha = node.attr_float("alpha").unwrap_or(0.01);
    let zero = ctx.b.scalar_f32(0.0);
    let pos = ctx.b.op("Greater", &[&node.input[0], &zero], vec![]);
    let (o, a) = (ctx.b.scalar_f32(1.0), ctx.b.scalar_f32(alpha));
    let l = ctx.b.op("Where", &[&pos, &o, &a], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn sigmoid(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let y = node.output[0].as_str();
    let o = ctx.b.scalar_f32(1.0);
    let om = ctx.b.op("Sub", &[&o, y], vec![]);
    let l = ctx.b.mul(y, &om);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn tanh(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let y = node.output[0].as_str();
    let o = ctx.b.scalar_f32(1.0);
    let sq = ctx.b.mul(y, y);
    let l = ctx.b.op("Sub", &[&o, &sq], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn softplus(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let l = ctx.b.op("Sigmoid", &[&node.input[0]], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn clip(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    // Opset ≥ 11 (the compiler's floor is 13): bounds are optional inputs.
    let mut bounds: Vec<(String, &str)> = Vec::new();
    if let Some(m) = node.input.get(1).filter(|s| !s.is_empty()) {
        bounds.push((m.clone(), "GreaterOrEqual"));
    }
    if let Some(m) = node.input.get(2).filter(|s| !s.is_empty()) {
        bounds.push((m.clone(), "LessOrEqual"));
    }
    if bounds.is_empty() {
        return Ok(one(dy.y()?.to_string()));
    }
    let conds: Vec<String> = bounds.iter().map(|(b, op)| ctx.b.op(op, &[x, b], vec![])).collect();
    let inside =
        if conds.len() == 2 { ctx.b.op("And", &[&conds[0], &conds[1]], vec![]) } else { conds[0].clone() };
    let l = ctx.b.op("Cast", &[&inside], vec![attr::int("to", data_type::FLOAT as i64)]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn elementwise(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let dy = dy.y()?;
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
