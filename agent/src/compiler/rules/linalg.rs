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

/// An Einsum equation with every operand's subscripts spelled out: ellipses replaced by letters of
/// their own (aligned from the right, as Einsum broadcasts them), an implicit output made explicit.
#[derive(Debug, PartialEq)]
struct Equation {
    inputs: Vec<Vec<char>>,
    output: Vec<char>,
}

/// Letters a subscript may use, in the order fresh ones are taken.
fn letters() -> impl Iterator<Item = char> {
    ('a'..='z').chain('A'..='Z')
}

/// Parses `eq` for operands of these ranks; the error says what is not supported.
fn parse_equation(eq: &str, ranks: &[usize]) -> std::result::Result<Equation, String> {
    let eq: String = eq.chars().filter(|c| !c.is_whitespace()).collect();
    let (lhs, rhs) = match eq.split_once("->") {
        Some((l, r)) => (l, Some(r)),
        None => (eq.as_str(), None),
    };
    let terms: Vec<&str> = lhs.split(',').collect();
    if terms.len() != ranks.len() {
        return Err(format!("{} operands in the equation, {} inputs", terms.len(), ranks.len()));
    }
    let ok = |t: &str| t.replacen("...", "", 1).chars().all(|c| c.is_ascii_alphabetic());
    if !terms.iter().all(|t| ok(t)) || !rhs.is_none_or(ok) {
        return Err("a subscript that is neither a letter nor one ellipsis".into());
    }
    let mut fresh = letters().filter(|c| !eq.contains(*c));
    let explicit = |t: &str| t.chars().filter(char::is_ascii_alphabetic).count();
    let mut ell_dims = Vec::new();
    for (t, &r) in terms.iter().zip(ranks) {
        let n = explicit(t);
        let e = if t.contains("...") { r.checked_sub(n) } else { (r == n).then_some(0) };
        match e {
            Some(e) => ell_dims.push(e),
            None => return Err(format!("subscripts {t:?} for an operand of rank {r}")),
        }
    }
    let most = ell_dims.iter().copied().max().unwrap_or(0);
    let ell: Vec<char> = (0..most).filter_map(|_| fresh.next()).collect();
    if ell.len() != most {
        return Err("too many ellipsis axes to name".into());
    }
    let spell = |t: &str, e: usize| -> Vec<char> {
        let e_letters: String = ell[most - e..].iter().collect();
        t.replacen("...", &e_letters, 1).chars().collect()
    };
    let inputs: Vec<Vec<char>> = terms.iter().zip(&ell_dims).map(|(t, &e)| spell(t, e)).collect();
    let output = match rhs {
        Some(r) => spell(r, if r.contains("...") { most } else { 0 }),
        None => {
            let named: Vec<char> =
                terms.iter().flat_map(|t| t.chars()).filter(char::is_ascii_alphabetic).collect();
            let mut once: Vec<char> =
                named.iter().copied().filter(|c| named.iter().filter(|d| *d == c).count() == 1).collect();
            once.sort_unstable();
            ell.iter().copied().chain(once).collect()
        }
    };
    for s in inputs.iter().chain(std::iter::once(&output)) {
        if s.iter().enumerate().any(|(i, c)| s[..i].contains(c)) {
            return Err("a letter repeated within one operand (a diagonal)".into());
        }
    }
    if output.iter().any(|c| !inputs.iter().any(|s| s.contains(c))) {
        return Err("an output letter that no operand has".into());
    }
    Ok(Equation { inputs, output })
}

/// Each operand's gradient is itself an Einsum: the output's cotangent (with a letter for the `K`
/// cotangent rows after the batch letter) contracted with every other operand, producing the
/// operand's own subscripts; letters summed within the operand alone come back through a ones
/// vector. Operands that carry the batch must start with the output's batch letter, and a letter must
/// have one size everywhere (Einsum's size-1 broadcasting would need a sum the rule does not do).
fn einsum(ctx: &mut Backward, node: &NodeProto, dy: &Cotangents, wanted: &[bool]) -> Result<InputGrads> {
    let eq_text = node.attr_string("equation").unwrap_or_default();
    let refuse = |why: String| -> Result<InputGrads> {
        bail!("node {} (Einsum) has equation {eq_text:?}: {why}; not supported", node.display_name())
    };
    let mut shapes = Vec::new();
    for x in &node.input {
        shapes.push(ctx.shape(x)?);
    }
    let ranks: Vec<usize> = shapes.iter().map(|s| s.rest.len() + s.batched as usize).collect();
    let eq = match parse_equation(&eq_text, &ranks) {
        Ok(eq) => eq,
        Err(why) => return refuse(why),
    };
    let out_rest = ctx.rest(node, &node.output[0])?;
    let Some(&batch) = eq.output.first() else {
        return refuse("a scalar output".into());
    };
    // Letter sizes; the batch letter's size is the (dynamic) batch.
    let mut size: Vec<(char, i64)> = vec![(batch, -1)];
    for ((x, s), sh) in node.input.iter().zip(&eq.inputs).zip(&shapes) {
        if sh.batched && s.first() != Some(&batch) {
            return refuse(format!(
                "operand {x:?} carries the batch but its subscripts do not start with the output's batch letter {batch:?}"
            ));
        }
        if !sh.batched && s.contains(&batch) {
            return refuse(format!("operand {x:?} has the batch letter {batch:?} but no batch axis"));
        }
        let dims: Vec<i64> =
            if sh.batched { [-1].iter().chain(&sh.rest).copied().collect() } else { sh.rest.clone() };
        for (&c, &d) in s.iter().zip(&dims) {
            match size.iter().find(|(l, _)| *l == c) {
                Some(&(_, known)) if known != d => {
                    return refuse(format!("letter {c:?} has sizes {known} and {d} (broadcasting)"));
                }
                Some(_) => {}
                None => size.push((c, d)),
            }
        }
    }
    let used: Vec<char> = eq.inputs.iter().flatten().chain(&eq.output).copied().collect();
    let Some(kl) = letters().find(|c| !used.contains(c)) else {
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
        let mut terms = vec![with_k(&eq.output)];
        let mut ins: Vec<String> = vec![g.clone()];
        for &j in &others {
            terms.push(eq.inputs[j].iter().collect());
            ins.push(node.input[j].clone());
        }
        let alone: Vec<char> = si
            .iter()
            .copied()
            .filter(|c| !eq.output.contains(c) && !others.iter().any(|&j| eq.inputs[j].contains(c)))
            .collect();
        if !alone.is_empty() {
            let dims: Vec<i64> =
                alone.iter().map(|c| size.iter().find(|(l, _)| l == c).map_or(1, |&(_, d)| d)).collect();
            let n: i64 = dims.iter().product();
            ins.push(ctx.b.const_f32(&dims, &vec![1.0; n as usize]));
            terms.push(alone.iter().collect());
        }
        let grad_eq = format!("{}->{}", terms.join(","), with_k(si));
        let refs: Vec<&str> = ins.iter().map(String::as_str).collect();
        let gi = ctx.b.op("Einsum", &refs, vec![attr::string("equation", &grad_eq)]);
        let x_rest = ctx.rest(node, x)?;
        grads.push((i, ctx.flat(&gi, &x_rest)));
    }
    Ok(grads)
}

#[cfg(test)]
mod tests {
    use super::{Equation, parse_equation};
    use crate::compiler::rules::index::refusals::{compile_error, node};
    use crate::onnx::{self, attr};

    fn eq(inputs: &[&str], output: &str) -> Equation {
        Equation {
            inputs: inputs.iter().map(|s| s.chars().collect()).collect(),
            output: output.chars().collect(),
        }
    }

    #[test]
    fn equations_are_spelled_out() {
        assert_eq!(parse_equation("bhqd, bhkd -> bhqk", &[4, 4]), Ok(eq(&["bhqd", "bhkd"], "bhqk")));
        assert_eq!(parse_equation("bij,jk", &[3, 2]), Ok(eq(&["bij", "jk"], "bik")));
        // Ellipses get fresh letters aligned from the right; implicit outputs put them first.
        assert_eq!(parse_equation("...ij,jk->...ik", &[4, 2]), Ok(eq(&["abij", "jk"], "abik")));
        assert_eq!(parse_equation("...ij,...jk", &[4, 3]), Ok(eq(&["abij", "bjk"], "abik")));
    }

    #[test]
    fn unsupported_equations_say_why() {
        let why = |e: &str, r: &[usize]| parse_equation(e, r).unwrap_err();
        assert!(why("bii->bi", &[3]).contains("diagonal"));
        assert!(why("bij->bik", &[3]).contains("no operand has"));
        assert!(why("bij,jk->bik", &[3]).contains("2 operands"));
        assert!(why("bij->bi", &[4]).contains("rank 4"));
        assert!(why("bi1->bi", &[3]).contains("neither a letter"));
    }

    #[test]
    fn einsum_diagonals_and_batchless_batch_letters_are_refused() {
        let e = compile_error(
            vec![node("Einsum", &["h"], "y", vec![attr::string("equation", "bii->bi")])],
            vec![],
        );
        for part in ["Einsum_y", "bii->bi", "diagonal", "not supported"] {
            assert!(e.contains(part), "{e:?} should mention {part:?}");
        }
        let w = onnx::tensor_f32("w", &[1, 4, 4], &[0.5; 16]);
        let eq = attr::string("equation", "bij,bjk->bik");
        let e = compile_error(vec![node("Einsum", &["h", "w"], "y", vec![eq])], vec![w]);
        for part in ["Einsum_y", "\"w\"", "batch letter 'b' but no batch axis"] {
            assert!(e.contains(part), "{e:?} should mention {part:?}");
        }
    }
}
