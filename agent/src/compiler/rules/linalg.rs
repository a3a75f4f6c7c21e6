//! Matrix products.

use anyhow::{Result, bail};

use super::{Cotangents, InputGrads, one};
use crate::compiler::ctx::Backward;
use crate::compiler::probe::ProbedShape;
use crate::compiler::registry::{OpRule, Slots};
use crate::onnx::{attr, proto::*};

pub const RULES: &[OpRule] = &[
    OpRule {
        reads: Slots::Only(&[0, 1]),
        min_inputs: 2,
        ..OpRule::unary("Gemm", "from `alpha`, `transB`: `dA = alpha · dY · op(B)ᵀ` (`transA = 0`)", gemm)
    },
    OpRule::unary(
        "MatMul",
        "`dA = dY · Bᵀ`, `dB = Aᵀ · dY`, summed over broadcast axes (both operands may carry the batch)",
        matmul,
    )
    .inputs(Slots::Only(&[0, 1]), 2),
];

/// `Y = α·op(A)·op(B) + β·C` with the batch in `A`'s rows: `dA = α·dY·op(B)ᵀ`.
fn gemm(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, _: &[bool]) -> Result<InputGrads> {
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
    let g = ctx.b.op("MatMul", &[dy.y()?, &bt], vec![]);
    let alpha = node.attr_float("alpha").unwrap_or(1.0);
    Ok(one(if alpha == 1.0 { g } else { ctx.b.scale(&g, alpha) }))
}

/// Swaps the last two axes of a tensor of rank `rank`.
fn swap_last(ctx: &mut Backward, t: &str, rank: usize) -> String {
    let mut perm: Vec<i64> = (0..rank as i64).collect();
    perm.swap(rank - 1, rank - 2);
    ctx.b.op("Transpose", &[t], vec![attr::ints("perm", &perm)])
}

fn matmul(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let (a, b) = (node.input[0].as_str(), node.input[1].as_str());
    let out_rest = ctx.rest(node, &node.output[0])?;
    let (sa, sb) = (ctx.shape(a)?, ctx.shape(b)?);
    let rank = |s: &ProbedShape| s.rest.len() + s.batched as usize;
    if rank(&sa) < 2 || rank(&sb) < 2 {
        bail!("node {} (MatMul) has a 1-D operand; not supported", node.display_name());
    }
    let g = ctx.split(dy.y()?, &out_rest);
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
