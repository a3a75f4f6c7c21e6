//! Matrix products: Gemm, MatMul (either or both operands on the gradient path, as in attention's
//! `Q·Kᵀ` and `A·V`) and Einsum.

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
    OpRule::unary(
        "Einsum",
        "`dA = Einsum(dY, other operands → A's subscripts)` (batch letter first, no ellipsis or repeated letters)",
        einsum,
    )
    .inputs(Slots::All, 1),
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

/// An Einsum equation split into operand subscripts and the output's (implicit outputs made
/// explicit: the letters used once, alphabetically).
struct Equation {
    inputs: Vec<Vec<char>>,
    output: Vec<char>,
}

fn parse_equation(node: &NodeProto, eq: &str) -> Result<Equation> {
    let refuse = |why: &str| -> Result<Equation> {
        bail!("node {} (Einsum) has equation {eq:?}: {why}; not supported", node.display_name())
    };
    let eq_clean: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    if eq_clean.contains('.') {
        return refuse("ellipsis (`...`) subscripts");
    }
    let (lhs, rhs) = match eq_clean.split_once("->") {
        Some((l, r)) => (l.to_string(), Some(r.to_string())),
        None => (eq_clean.clone(), None),
    };
    let inputs: Vec<Vec<char>> = lhs.split(',').map(|t| t.chars().collect()).collect();
    if inputs
        .iter()
        .flatten()
        .copied()
        .chain(rhs.iter().flat_map(|r| r.chars()))
        .any(|c| !c.is_ascii_alphabetic())
    {
        return refuse("a subscript that is not a letter");
    }
    let output: Vec<char> = match rhs {
        Some(r) => r.chars().collect(),
        None => {
            let mut once: Vec<char> = inputs
                .iter()
                .flatten()
                .copied()
                .filter(|c| inputs.iter().flatten().filter(|d| *d == c).count() == 1)
                .collect();
            once.sort_unstable();
            once
        }
    };
    for s in inputs.iter().chain(std::iter::once(&output)) {
        if s.iter().enumerate().any(|(i, c)| s[..i].contains(c)) {
            return refuse("a letter repeated within one operand (a diagonal)");
        }
    }
    if output.iter().any(|c| !inputs.iter().any(|s| s.contains(c))) {
        return refuse("an output letter that no operand has");
    }
    Ok(Equation { inputs, output })
}

/// Each operand's gradient is itself an Einsum: the output's cotangent (with a letter for the `K`
/// cotangent rows after the batch letter) contracted with every other operand, producing the
/// operand's own subscripts. Operands that carry the batch must start with the output's batch letter.
fn einsum(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let eq_text = node.attr_string("equation").unwrap_or_default();
    let eq = parse_equation(node, &eq_text)?;
    let refuse = |why: String| -> Result<InputGrads> {
        bail!("node {} (Einsum) has equation {eq_text:?}: {why}; not supported", node.display_name())
    };
    if eq.inputs.len() != node.input.len() {
        return refuse(format!("{} operands in the equation, {} inputs", eq.inputs.len(), node.input.len()));
    }
    let out_rest = ctx.rest(node, &node.output[0])?;
    let Some(&batch) = eq.output.first() else {
        return refuse("a scalar output".into());
    };
    for (x, s) in node.input.iter().zip(&eq.inputs) {
        let batched = ctx.shape(x)?.batched;
        if batched && s.first() != Some(&batch) {
            return refuse(format!(
                "operand {x:?} carries the batch but its subscripts do not start with the output's batch letter {batch:?}"
            ));
        }
        if !batched && s.contains(&batch) {
            return refuse(format!("operand {x:?} has the batch letter {batch:?} but no batch axis"));
        }
    }
    let used: Vec<char> = eq.inputs.iter().flatten().chain(&eq.output).copied().collect();
    let Some(kl) = ('a'..='z').chain('A'..='Z').find(|c| !used.contains(c)) else {
        return refuse("no letter left for the cotangent rows".into());
    };
    let with_k = |s: &[char]| -> String {
        let mut v = vec![s[0], kl];
        v.extend_from_slice(&s[1..]);
        v.into_iter().collect()
    };
    let g = ctx.split(dy.y()?, &out_rest);
    let mut grads = Vec::new();
    for (i, x) in node.input.iter().enumerate() {
        if !wanted.get(i).copied().unwrap_or(false) {
            continue;
        }
        let si = &eq.inputs[i];
        let others: Vec<usize> = (0..node.input.len()).filter(|&j| j != i).collect();
        if let Some(c) =
            si.iter().find(|c| !eq.output.contains(c) && !others.iter().any(|&j| eq.inputs[j].contains(c)))
        {
            return refuse(format!("letter {c:?} of operand {x:?} is summed away within that operand"));
        }
        let mut terms = vec![with_k(&eq.output)];
        let mut ins: Vec<&str> = vec![&g];
        for &j in &others {
            terms.push(eq.inputs[j].iter().collect());
            ins.push(&node.input[j]);
        }
        let grad_eq = format!("{}->{}", terms.join(","), with_k(si));
        let gi = ctx.b.op("Einsum", &ins, vec![attr::string("equation", &grad_eq)]);
        let x_rest = ctx.rest(node, x)?;
        grads.push((i, ctx.flat(&gi, &x_rest)));
    }
    Ok(grads)
}
