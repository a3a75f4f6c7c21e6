//! Elementwise operators: basic activations and broadcasting arithmetic.

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
    OpRule::unary("Sqrt", "`dY / (2·Y)`", sqrt),
    OpRule::unary("Reciprocal", "`−dY · Y²`", reciprocal),
    OpRule::unary("Exp", "`dY · Y`", exp),
    OpRule::unary("Log", "`dY / X`", log),
    OpRule::unary("Abs", "`dY · sign(X)` (0 at X = 0)", abs),
    OpRule::unary(
        "Pow",
        "`dY · E · X^(E − 1)`, summed over broadcast axes; the exponent `E` must not depend on a layer",
        pow,
    ),
    OpRule::unary(
        "Max",
        "`dY · (Xᵢ = Y) / #(Xⱼ = Y)` (ties share equally), summed over broadcast axes",
        max_min,
    )
    .inputs(Slots::All, 1),
    OpRule::unary(
        "Min",
        "`dY · (Xᵢ = Y) / #(Xⱼ = Y)` (ties share equally), summed over broadcast axes",
        max_min,
    )
    .inputs(Slots::All, 1),
    OpRule {
        grad_inputs: Slots::Only(&[1, 2]),
        min_inputs: 3,
        ..OpRule::unary(
            "Where",
            "`Where(C, dY, 0)`, `Where(C, 0, dY)`, summed over broadcast axes; the condition carries none",
            where_,
        )
    },
    OpRule {
        stops: Some(cast_stops),
        ..OpRule::unary(
            "Cast",
            "`CastLike(dY, X)` between float types; casts to other types carry none",
            cast,
        )
    },
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

/// `dX = dY ⊙ L` for input `slot`, where `l` is a batched forward tensor `[B, …]` that broadcasts to
/// the output's shape, summed back over the axes along which the input was broadcast.
fn times_local(ctx: &mut Backward, node: &NodeProto, dy: &str, l: &str, slot: usize) -> Result<String> {
    let out_rest = ctx.rest(node, &node.output[0])?;
    let x_rest = ctx.rest(node, &node.input[slot])?;
    let g = ctx.split(dy, &out_rest);
    let l = ctx.b.unsqueeze(l, &[1]);
    let p = ctx.b.mul(&g, &l);
    let p = ctx.unbroadcast(node, &p, &out_rest, &x_rest)?;
    Ok(ctx.flat(&p, &x_rest))
}

fn sqrt(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let two = ctx.b.scalar_f32(2.0);
    let den = ctx.b.mul(&node.output[0], &two);
    let l = ctx.b.op("Reciprocal", &[&den], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn reciprocal(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let y = node.output[0].as_str();
    let sq = ctx.b.mul(y, y);
    let l = ctx.b.op("Neg", &[&sq], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn exp(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let y = node.output[0].clone();
    Ok(one(local(ctx, node, dy.y()?, &y)?))
}

fn log(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let l = ctx.b.op("Reciprocal", &[&node.input[0]], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

fn abs(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let l = ctx.b.op("Sign", &[&node.input[0]], vec![]);
    Ok(one(local(ctx, node, dy.y()?, &l)?))
}

/// The exponent is read at run time, so a constant, a `Constant` node or any tensor that no layer
/// reaches works; the path analysis refuses one that a layer reaches (input 1 is not a gradient input).
/// `X^(E−1)` rather than `Y / X` keeps the derivative finite at `X = 0` for `E ≥ 1`.
fn pow(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    let x = node.input[0].as_str();
    // The exponent may be an integer tensor; the derivative needs it in X's float type.
    let e = ctx.b.op("CastLike", &[&node.input[1], x], vec![]);
    let o = ctx.b.scalar_f32(1.0);
    let o = ctx.b.op("CastLike", &[&o, x], vec![]);
    let em1 = ctx.b.op("Sub", &[&e, &o], vec![]);
    let p = ctx.b.op("Pow", &[x, &em1], vec![]);
    let l = ctx.b.mul(&e, &p);
    Ok(one(times_local(ctx, node, dy.y()?, &l, 0)?))
}

/// Where several inputs equal the result, each gets an equal share of the cotangent (the mean of the
/// one-sided derivatives, as PyTorch's `maximum`/`minimum` do), so the shares still sum to `dY`.
fn max_min(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let dy = dy.y()?;
    if node.input.len() == 1 {
        return Ok(one(dy.to_string()));
    }
    let y = node.output[0].as_str();
    let masks: Vec<String> = node
        .input
        .iter()
        .map(|x| {
            let eq = ctx.b.op("Equal", &[x, y], vec![]);
            ctx.b.op("Cast", &[&eq], vec![attr::int("to", data_type::FLOAT as i64)])
        })
        .collect();
    let refs: Vec<&str> = masks.iter().map(String::as_str).collect();
    let ties = ctx.b.op("Sum", &refs, vec![]);
    let mut grads = Vec::new();
    for (slot, mask) in masks.iter().enumerate() {
        if !wanted.get(slot).copied().unwrap_or(false) {
            continue;
        }
        let share = ctx.b.op("Div", &[mask, &ties], vec![]);
        grads.push((slot, times_local(ctx, node, dy, &share, slot)?));
    }
    Ok(grads)
}

fn where_(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let dy = dy.y()?;
    let out_rest = ctx.rest(node, &node.output[0])?;
    let c = ctx.shape(&node.input[0])?;
    if c.batched && c.rest.len() != out_rest.len() {
        bail!(
            "node {} (Where): the condition carries the batch but has rank {} against the output's {}; the compiler needs them equal",
            node.display_name(),
            c.rest.len() + 1,
            out_rest.len() + 1
        );
    }
    let cond = ctx.fwd(&node.input[0])?;
    let zero = ctx.b.scalar_f32(0.0);
    let g = ctx.split(dy, &out_rest);
    let z = ctx.b.op("CastLike", &[&zero, &g], vec![]);
    let mut grads = Vec::new();
    for slot in [1, 2] {
        if !wanted.get(slot).copied().unwrap_or(false) {
            continue;
        }
        let x_rest = ctx.rest(node, &node.input[slot])?;
        let (a, b) = if slot == 1 { (g.as_str(), z.as_str()) } else { (z.as_str(), g.as_str()) };
        let p = ctx.b.op("Where", &[&cond, a, b], vec![]);
        let p = ctx.unbroadcast(node, &p, &out_rest, &x_rest)?;
        grads.push((slot, ctx.flat(&p, &x_rest)));
    }
    Ok(grads)
}

/// ONNX's bfloat16 element type (not among the generated constants).
const BFLOAT16: i64 = 16;

/// A cast to an integer or boolean type is piecewise constant: no gradient flows through it.
fn cast_stops(node: &NodeProto) -> bool {
    let to = node.attr_int("to").unwrap_or(0);
    ![data_type::FLOAT as i64, data_type::FLOAT16 as i64, data_type::DOUBLE as i64, BFLOAT16].contains(&to)
}

/// The cotangent goes back to the input's float type, whatever it was.
fn cast(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
    Ok(one(ctx.b.op("CastLike", &[dy.y()?, &node.input[0]], vec![])))
}
