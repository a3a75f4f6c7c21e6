//! Smoothed `vanilla` maps averaged over the points as early as exactness allows
//! (docs/spec/attribution-graph.md, "Smoothed maps"): the mean over a sample's `S` points is taken
//! before the gradient's point-independent linear tail ([`hoisted_mean`]), and, where the cotangent
//! reaching that tail is the same row for every point times per-point masks, the masks are averaged
//! instead of the masked rows ([`averaged_masks`]).

use std::collections::HashMap;

use super::{COTANGENT, ctx};
use crate::onnx::{self, proto::*};

/// Whether `t` is the same for every point: built from constants, initializers and the cotangent
/// input alone. A forward tensor (anything not emitted by the builder from constants) depends on the
/// points.
fn free(
    t: &str,
    cx: &ctx::Backward,
    producer: &HashMap<&str, usize>,
    data: &[String],
    memo: &mut HashMap<String, bool>,
) -> bool {
    if t.is_empty() || t == COTANGENT || constant(cx, t).is_some() {
        return true;
    }
    if data.iter().any(|d| d == t) {
        return false;
    }
    if let Some(&v) = memo.get(t) {
        return v;
    }
    let v = if let Some(&i) = producer.get(t) {
        cx.b.nodes[i].input.iter().all(|x| free(x, cx, producer, data, memo))
    } else {
        false // a forward-graph tensor
    };
    memo.insert(t.to_string(), v);
    v
}

/// Which node produces each tensor of the backward graph built so far.
fn producers(nodes: &[NodeProto]) -> HashMap<&str, usize> {
    nodes.iter().enumerate().flat_map(|(i, n)| n.output.iter().map(move |o| (o.as_str(), i))).collect()
}

/// A constant tensor by name: one the builder emitted, or the model's own.
fn constant<'a>(cx: &'a ctx::Backward, name: &str) -> Option<&'a TensorProto> {
    cx.b.initializers.iter().find(|i| i.name == name).or_else(|| cx.consts.get(name))
}

/// A constant int64 tensor's values.
fn const_ints(cx: &ctx::Backward, name: &str) -> Option<Vec<i64>> {
    onnx::tensor_to_i64(constant(cx, name)?).ok()
}

/// Whether `t` depends on the cotangent input (the per-row part of the backward graph).
fn on_cotangent(
    t: &str,
    nodes: &[NodeProto],
    producer: &HashMap<&str, usize>,
    memo: &mut HashMap<String, bool>,
) -> bool {
    if t == COTANGENT {
        return true;
    }
    if let Some(&v) = memo.get(t) {
        return v;
    }
    let v = producer.get(t).is_some_and(|&i| {
        nodes[i].input.iter().any(|x| !x.is_empty() && on_cotangent(x, nodes, producer, memo))
    });
    memo.insert(t.to_string(), v);
    v
}

/// The mean over each sample's `S` points of a layer's flat gradient `[B·S·K, rest…]` → `[B·K, rest…]`,
/// taken as early as exactness allows: the backward ops that produce the gradient from an earlier
/// cotangent are walked back while each is linear in that cotangent and the same for every point
/// (a `Conv`/`ConvTranspose`/`MatMul` with constant weights, reshapes, transposes, slices and pads
/// that keep the batch axis, products with constants). Such a tail commutes with the mean, so it is
/// emitted again on the averaged cotangent and runs on `B·K` rows instead of `B·S·K`: the layer's
/// transposed convolution, the costliest op of a smoothed `vanilla` map, runs once per sample
/// instead of once per point. `None` when there is no such tail (the mean is then taken at the
/// layer, as for the other methods). The per-point gradient stays for `actgrad` and `gradcam`,
/// which multiply it by the activation at the same point before averaging.
///
/// With one point (`S = 1`, the plain gradient) there is no mean, but [`averaged_masks`] still
/// pays: the rows `u_k` are computed once instead of once per sample, and the masks are multiplied
/// together per sample before they meet the `K` rows.
pub(super) fn hoisted_mean(
    cx: &mut ctx::Backward,
    g: &str,
    samples: usize,
    data_inputs: &[String],
) -> Option<String> {
    if samples == 0 {
        return None;
    }
    let nodes = &cx.b.nodes;
    let producer = producers(nodes);
    let mut point_free: HashMap<String, bool> = HashMap::new();
    let init_ints = |t: &str| const_ints(cx, t);
    let mut chain = Vec::new();
    let mut t = g.to_string();
    while let Some(&i) = producer.get(t.as_str()) {
        let n = &nodes[i];
        if n.output.len() != 1 || n.input.is_empty() {
            break;
        }
        let others_free = n.input[1..].iter().all(|x| free(x, cx, &producer, data_inputs, &mut point_free));
        let keeps_batch = match n.op_type.as_str() {
            "Conv" | "ConvTranspose" => n.input.len() == 2,
            // A point-free operand is the same for every point, whatever it broadcasts over.
            "MatMul" | "Reshape" | "Mul" | "Identity" => true,
            "Transpose" => n.attr_ints("perm").is_some_and(|p| p.first() == Some(&0)),
            "Slice" => n.input.get(3).and_then(|a| init_ints(a)).is_some_and(|a| !a.contains(&0)),
            "Pad" => {
                n.input
                    .get(1)
                    .and_then(|p| init_ints(p))
                    .is_some_and(|p| p.len() % 2 == 0 && p[0] == 0 && p[p.len() / 2] == 0)
                    && n.attr_string("mode").is_none_or(|m| m == "constant")
            }
            _ => false,
        };
        if !(others_free && keeps_batch) {
            break;
        }
        chain.push(i);
        t = n.input[0].clone();
    }
    let chain: Vec<NodeProto> = chain.iter().rev().map(|&i| nodes[i].clone()).collect();
    let data = data_inputs.first()?.clone();
    let x = match averaged_masks(cx, &t, samples, data_inputs) {
        Some(x) => x,
        // One point: the mean is the gradient itself.
        None if samples == 1 => return None,
        None => match scattered_mean(cx, &t, samples) {
            Some(x) => x,
            // Nothing but reshapes: no work saved.
            None if chain.iter().all(|n| matches!(n.op_type.as_str(), "Reshape" | "Identity")) => {
                return None;
            }
            None => mean_over_points(cx, &t, samples, &data),
        },
    };
    Some(replay(cx, chain, x))
}

/// The mean over each sample's `S` points of `t`, the cotangent where [`hoisted_mean`] stops, when
/// it has the form `u ⊙ m_s`: a row `u_k` that is the same at every point (the seed `e_k` through
/// point-independent ops: the embedding's `Gemm`, reshapes, a max pool's `Resize` of the cotangent)
/// times per-point masks `m_s` that do not depend on the row (ReLU's `X > 0`, a non-overlapping max
/// pool's "is the window's maximum"). Then `mean_s (u_k ⊙ m_s) = u_k ⊙ mean_s m_s`: the masks are
/// averaged once per point, `[B·S, 1, …]`, and multiplied into `K` rows per sample, instead of
/// masking and averaging `S·K` rows per sample. On the digit encoders (ReLU → 2×2 max pool → linear
/// head) this is everything between the embedding and the layer's transposed convolution.
///
/// Recognised, walking back from `t`: `Mul` by a row-independent operand (a mask, or a constant),
/// reshapes between the flat `[N·K, rest]` and split `[N, K, rest]` forms of one `rest`, down to a
/// tensor that is the same at every point. The masks multiply in the split form (every rule that
/// combines a cotangent with a forward tensor does, `ctx.rs`). `None` when anything else is on the
/// way; the caller then averages `t` itself. Exact: the identity holds elementwise, the result
/// differs from the per-point mean by float rounding only (`tests/gradients.rs`).
fn averaged_masks(cx: &mut ctx::Backward, t: &str, samples: usize, data_inputs: &[String]) -> Option<String> {
    let nodes = &cx.b.nodes;
    let producer = producers(nodes);
    let ints = |x: &str| const_ints(cx, x);
    // A reshape between the forms: `Some((split, rest))` for `[-1, rest…]` (flat) or
    // `Concat([-1], K, [rest…])` (split, `ctx::Backward::split`).
    let form = |n: &NodeProto| -> Option<(bool, Vec<i64>)> {
        if n.op_type != "Reshape" || n.input.len() != 2 {
            return None;
        }
        if let Some(v) = ints(&n.input[1]) {
            return (v.first() == Some(&-1)).then(|| (false, v[1..].to_vec()));
        }
        let c = &nodes[*producer.get(n.input[1].as_str())?];
        let parts_ok = c.op_type == "Concat" && c.input.len() == 3 && c.input[1] == cx.kdim;
        (parts_ok && ints(&c.input[0])? == [-1]).then_some(())?;
        Some((true, ints(&c.input[2])?))
    };
    let mut free_memo = HashMap::new();
    let mut dep_memo = HashMap::new();
    let mut uniform = |x: &str| uniform_chain(cx, &producer, data_inputs, x, &mut free_memo);
    let mut masks: Vec<String> = Vec::new();
    let mut rest: Option<Vec<i64>> = None;
    let mut same_rest = |r: Vec<i64>| -> bool { rest.get_or_insert_with(|| r.clone()) == &r };
    // Walking back: the form of the tensor in hand must be split where a mask multiplies it.
    let mut cur = t.to_string();
    let mut need_split = false;
    let mut t_split = None;
    let base_chain = loop {
        if let Some(chain) = uniform(&cur) {
            // A mask multiplied it: its form must be known to be split.
            let split_here = || {
                let n = &nodes[*producer.get(cur.as_str())?];
                form(n).filter(|(split, _)| *split).map(|(_, r)| r)
            };
            if need_split && !split_here().is_some_and(&mut same_rest) {
                return None;
            }
            if masks.is_empty() {
                return None; // nothing to average
            }
            break chain;
        }
        let n = &nodes[*producer.get(cur.as_str())?];
        match n.op_type.as_str() {
            "Reshape" => {
                let (split, r) = form(n)?;
                if (need_split && !split) || !same_rest(r) {
                    return None;
                }
                t_split.get_or_insert(split);
                need_split = false;
                cur = n.input[0].clone();
            }
            "Mul" if n.input.len() == 2 => {
                let d: Vec<bool> =
                    n.input.iter().map(|x| on_cotangent(x, nodes, &producer, &mut dep_memo)).collect();
                let (x, m) = match (d[0], d[1]) {
                    (true, false) => (&n.input[0], &n.input[1]),
                    (false, true) => (&n.input[1], &n.input[0]),
                    _ => return None,
                };
                t_split.get_or_insert(true);
                need_split = true;
                masks.push(m.clone());
                cur = x.clone();
            }
            _ => return None,
        }
    };
    let rest = rest?;
    let t_split = t_split?;
    // Each mask must broadcast *into* the rows' `[N, K, rest]`, not widen them (a `ReduceMax`'s
    // kept axis of size 1 meets a full-size mask): its shape, inferred from the probe, must be
    // `[N or 1, 1, r…]` with every `r` either 1 or the rows' own size.
    let fits = |m: &String| {
        mask_shape(cx, &producer, m).is_some_and(|d| {
            d.len() == rest.len() + 2
                && matches!(d[0], Dim::Points | Dim::Fixed(1))
                && d[1] == Dim::Fixed(1)
                && d[2..].iter().zip(&rest).all(|(a, &r)| *a == Dim::Fixed(1) || *a == Dim::Fixed(r))
        })
    };
    if !masks.iter().all(fits) {
        return None;
    }
    let base_chain: Vec<NodeProto> = base_chain.iter().map(|&i| nodes[i].clone()).collect();

    let u = replay_on_cotangent(cx, base_chain);
    let mut one_k = vec![1, -1];
    one_k.extend(&rest);
    let u = cx.b.reshape_const(&u, &one_k); // [1, K, rest]
    // The masks' product per point, `[N, 1, rest]`, then its mean over each sample's points.
    let data = data_inputs.first()?;
    let n_shape = cx.b.shape(data);
    let n = cx.b.slice1(&n_shape, 0, 1);
    let one = cx.b.const_i64(&[1]);
    let r = cx.b.const_i64(&rest);
    let ones_shape = cx.b.concat0(&[&n, &one, &r]);
    let mut m = cx.b.op(
        "ConstantOfShape",
        &[&ones_shape],
        vec![onnx::attr::tensor("value", onnx::tensor_f32("", &[1], &[1.0]))],
    );
    // Named, so that tests and `agent compile`'s readers can see where the masks were averaged.
    let name = cx.b.fresh("averaged_masks");
    cx.b.nodes.last_mut().expect("just added").name = name;
    for mask in &masks {
        m = cx.b.mul(&m, mask);
    }
    let mean = if samples == 1 {
        m
    } else {
        let mut grouped = vec![-1, samples as i64, 1];
        grouped.extend(&rest);
        let grouped = cx.b.reshape_const(&m, &grouped);
        let summed = cx.b.reduce_sum(&grouped, &[1], false);
        cx.b.scale(&summed, 1.0 / samples as f32) // [B, 1, rest]
    };
    let rows = cx.b.mul(&u, &mean); // [B, K, rest]
    if t_split {
        Some(rows)
    } else {
        let mut flat = vec![-1];
        flat.extend(&rest);
        Some(cx.b.reshape_const(&rows, &flat))
    }
}

/// `t`'s mean over each sample's points: whatever form the cotangent has there (flat `[N·K, …]` or
/// split `[N, K, …]`), its leading axis runs over points first, `n = b·S + s`: `[B, S, rest]` → mean
/// over S → leading axis ÷ S.
fn mean_over_points(cx: &mut ctx::Backward, t: &str, samples: usize, data: &str) -> String {
    let n_shape = cx.b.shape(data);
    let n = cx.b.slice1(&n_shape, 0, 1);
    let s = cx.b.const_i64(&[samples as i64]);
    let b = cx.b.op("Div", &[&n, &s], vec![]);
    let tail = cx.b.const_i64(&[samples as i64, -1]);
    let grouped_shape = cx.b.concat0(&[&b, &tail]);
    let grouped = cx.b.reshape(t, &grouped_shape);
    let summed = cx.b.reduce_sum(&grouped, &[1], false);
    let mean = cx.b.scale(&summed, 1.0 / samples as f32);
    let t_shape = cx.b.shape(t);
    let lead = cx.b.slice1(&t_shape, 0, 1);
    let lead = cx.b.op("Div", &[&lead, &s], vec![]);
    let rest = cx.b.slice1(&t_shape, 1, i64::MAX);
    let out_shape = cx.b.concat0(&[&lead, &rest]);
    cx.b.reshape(&mean, &out_shape)
}

/// The mean over each sample's points of `t` when `t` is an overlapping max pool's routing,
/// `ScatterElements(zeros [N·K, X], indices, dY, axis = 1, reduction = add)` (`rules/spatial.rs`):
/// the points' rows are scattered straight into their sample's rows, `[B·K, X]`, and divided by
/// `S`. Row `r = n·K + k` (point `n = b·S + s`) goes to `b·K + k`; the indices become offsets into
/// the flat `[B·K·X]` result, where the `S` points of a sample add up in the same place. This drops
/// the per-point zero fill and result (`S` times the size), and the sum over the points after it.
/// Exact up to the order of the float additions.
fn scattered_mean(cx: &mut ctx::Backward, t: &str, samples: usize) -> Option<String> {
    let nodes = &cx.b.nodes;
    let producer = producers(nodes);
    let made = |x: &str| producer.get(x).map(|&i| &nodes[i]);
    let sc = made(t)?;
    let add = sc.attr_string("reduction").as_deref() == Some("add");
    if sc.op_type != "ScatterElements" || !add || sc.attr_int("axis") != Some(1) || sc.input.len() != 3 {
        return None;
    }
    // The zeros' width `X`: `ConstantOfShape(Concat(rows, [X]))`.
    let zeros = made(&sc.input[0]).filter(|n| n.op_type == "ConstantOfShape")?;
    let shape = made(zeros.input.first()?)?;
    if shape.op_type != "Concat" || shape.input.len() != 2 {
        return None;
    }
    let [x] = const_ints(cx, &shape.input[1])?[..] else { return None };
    let (idx, upd) = (sc.input[1].clone(), sc.input[2].clone());
    let k = cx.kdim.clone();
    // Rows r = 0 … N·K−1, and where each goes: (r div S·K)·K + r mod K.
    let upd_shape = cx.b.shape(&upd);
    let rows = cx.b.slice1(&upd_shape, 0, 1);
    let zero = cx.b.const_i64(&[0]);
    let one = cx.b.const_i64(&[1]);
    let axis = cx.b.const_i64(&[0]);
    let mut scalar = |v: &str| cx.b.op("Squeeze", &[v, &axis], vec![]);
    let (r0, rn, r1) = (scalar(&zero), scalar(&rows), scalar(&one));
    let r = cx.b.op("Range", &[&r0, &rn, &r1], vec![]);
    let s = cx.b.const_i64(&[samples as i64]);
    let sk = cx.b.op("Mul", &[&s, &k], vec![]);
    let b = cx.b.op("Div", &[&r, &sk], vec![]);
    let bk = cx.b.op("Mul", &[&b, &k], vec![]);
    let kk = cx.b.op("Mod", &[&r, &k], vec![]);
    let dest = cx.b.op("Add", &[&bk, &kk], vec![]);
    let xw = cx.b.const_i64(&[x]);
    let offset = cx.b.op("Mul", &[&dest, &xw], vec![]);
    let offset = cx.b.unsqueeze(&offset, &[1]);
    let global = cx.b.op("Add", &[&idx, &offset], vec![]);
    let global = cx.b.reshape_const(&global, &[-1]);
    let flat_upd = cx.b.reshape_const(&upd, &[-1]);
    // [B·K·X] zeros: N·K rows ÷ S, times X.
    let out_rows = cx.b.op("Div", &[&rows, &s], vec![]);
    let out_len = cx.b.op("Mul", &[&out_rows, &xw], vec![]);
    let zeros = cx.b.op(
        "ConstantOfShape",
        &[&out_len],
        vec![onnx::attr::tensor("value", onnx::tensor_f32("", &[1], &[0.0]))],
    );
    let summed = cx.b.op(
        "ScatterElements",
        &[&zeros, &global, &flat_upd],
        vec![onnx::attr::int("axis", 0), onnx::attr::string("reduction", "add")],
    );
    let name = cx.b.fresh("scattered_mean");
    cx.b.nodes.last_mut().expect("just added").name = name;
    let summed = cx.b.reshape_const(&summed, &[-1, x]);
    Some(cx.b.scale(&summed, 1.0 / samples as f32))
}

/// A dim of an inferred mask shape: the points' axis, or a known size.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dim {
    Points,
    Fixed(i64),
}

/// The shape of a row-independent tensor of the backward graph (a mask), inferred from the probed
/// forward shapes through the few ops the rules build masks with; `None` when anything else is on
/// the way (the caller then does not average the masks).
fn mask_shape(cx: &ctx::Backward, producer: &HashMap<&str, usize>, t: &str) -> Option<Vec<Dim>> {
    if let Some(p) = cx.shapes.get(t) {
        if !p.batched {
            return Some(p.rest.iter().map(|&d| Dim::Fixed(d)).collect());
        }
        if p.layout.is_some() {
            return None;
        }
        return Some(std::iter::once(Dim::Points).chain(p.rest.iter().map(|&d| Dim::Fixed(d))).collect());
    }
    let ints = |x: &str| const_ints(cx, x);
    if let Some(c) = constant(cx, t) {
        return Some(c.dims.iter().map(|&d| Dim::Fixed(d)).collect());
    }
    let n = &cx.b.nodes[*producer.get(t)?];
    let input = |i: usize| mask_shape(cx, producer, n.input.get(i)?);
    match n.op_type.as_str() {
        "Cast" | "Not" | "Neg" | "Abs" | "Relu" | "Sigmoid" | "Sign" | "Reciprocal" | "Sqrt" | "Exp"
        | "Log" => input(0),
        "Greater" | "Less" | "GreaterOrEqual" | "LessOrEqual" | "Equal" | "And" | "Or" | "Mul" | "Div"
        | "Add" | "Sub" | "Where" | "Mod" => {
            let shapes: Vec<Vec<Dim>> = (0..n.input.len()).map(input).collect::<Option<_>>()?;
            let rank = shapes.iter().map(Vec::len).max()?;
            (0..rank)
                .map(|i| {
                    let mut out = Dim::Fixed(1);
                    for sh in &shapes {
                        let Some(&d) = (i + sh.len()).checked_sub(rank).and_then(|j| sh.get(j)) else {
                            continue;
                        };
                        out = match (out, d) {
                            (Dim::Fixed(1), d) | (d, Dim::Fixed(1)) => d,
                            (a, b) if a == b => a,
                            _ => return None,
                        };
                    }
                    Some(out)
                })
                .collect()
        }
        "Unsqueeze" => {
            let mut d = input(0)?;
            let mut axes = ints(n.input.get(1)?)?;
            let rank = (d.len() + axes.len()) as i64;
            for a in axes.iter_mut() {
                if *a < 0 {
                    *a += rank;
                }
            }
            axes.sort_unstable();
            for &a in &axes {
                d.insert(usize::try_from(a).ok()?.min(d.len()), Dim::Fixed(1));
            }
            Some(d)
        }
        "Reshape" => {
            // A constant shape whose only unknown is a leading −1 that stands for the points.
            let target = ints(n.input.get(1)?)?;
            let from = input(0)?;
            if target.first() != Some(&-1)
                || target[1..].iter().any(|&v| v <= 0)
                || from.first() != Some(&Dim::Points)
            {
                return None;
            }
            let per =
                |d: &[Dim]| d.iter().map(|x| if let Dim::Fixed(v) = x { *v } else { 1 }).product::<i64>();
            (per(&from[1..]) == target[1..].iter().product::<i64>()).then(|| {
                std::iter::once(Dim::Points).chain(target[1..].iter().map(|&v| Dim::Fixed(v))).collect()
            })
        }
        _ => None,
    }
}

/// The seed `Reshape(Expand(Unsqueeze(cotangent)), [-1, D])`: row `b·K + k` is cotangent row `k`.
fn is_seed(nodes: &[NodeProto], producer: &HashMap<&str, usize>, x: &str) -> bool {
    let up = |x: &str, op: &str| {
        producer.get(x).map(|&i| &nodes[i]).filter(|n| n.op_type == op).map(|n| n.input[0].as_str())
    };
    up(x, "Reshape").and_then(|e| up(e, "Expand")).and_then(|u| up(u, "Unsqueeze")) == Some(COTANGENT)
}

/// The ops from the seed to `x` when `x` is the same at every point: each takes the previous one as
/// its first input and nothing else that varies. `None` otherwise.
fn uniform_chain(
    cx: &ctx::Backward,
    producer: &HashMap<&str, usize>,
    data_inputs: &[String],
    x: &str,
    free_memo: &mut HashMap<String, bool>,
) -> Option<Vec<usize>> {
    let nodes = &cx.b.nodes;
    let mut chain = Vec::new();
    let mut cur = x;
    while !is_seed(nodes, producer, cur) {
        let &i = producer.get(cur)?;
        let n = &nodes[i];
        let op_ok = match n.op_type.as_str() {
            "MatMul" | "Reshape" | "Resize" | "Identity" | "Conv" | "ConvTranspose" | "Mul" => true,
            "Transpose" => n.attr_ints("perm").is_some_and(|p| p.first() == Some(&0)),
            _ => false,
        };
        if !(op_ok && n.output.len() == 1 && !n.input.is_empty()) {
            return None;
        }
        if !n.input[1..].iter().all(|x| free(x, cx, producer, data_inputs, free_memo)) {
            return None;
        }
        chain.push(i);
        cur = n.input[0].as_str();
    }
    chain.reverse();
    Some(chain)
}

/// One point's rows: the seed's ops replayed on the cotangent input itself (`[K, D]`, what the seed
/// holds for every point).
fn replay_on_cotangent(cx: &mut ctx::Backward, chain: Vec<NodeProto>) -> String {
    replay(cx, chain, COTANGENT.to_string())
}

/// The ops of `chain` emitted again, in order, on `x` as their first input; returns the last output.
fn replay(cx: &mut ctx::Backward, chain: Vec<NodeProto>, mut x: String) -> String {
    for n in chain {
        let mut copy = n.clone();
        copy.name = cx.b.fresh(&format!("{}_node", n.op_type));
        copy.input[0] = x;
        copy.output = vec![cx.b.fresh(&n.op_type)];
        x = copy.output[0].clone();
        cx.b.nodes.push(copy);
    }
    x
}

/// A layer gradient that is the same at every point (the seed through point-independent ops only:
/// a layer right before a linear head), for every sample: one point's rows built once from the
/// cotangent input and repeated for the `B` samples, instead of the seed's ops run on every point's
/// rows and averaged. Its smoothed `vanilla` map is that gradient itself, whatever `S`. Same form
/// as the per-point gradient (`[B·K, rest…]` for `[N·K, rest…]`). `None` when `g` varies.
pub(super) fn uniform_rows(
    cx: &mut ctx::Backward,
    g: &str,
    samples: usize,
    data_inputs: &[String],
) -> Option<String> {
    let producer = producers(&cx.b.nodes);
    let chain = uniform_chain(cx, &producer, data_inputs, g, &mut HashMap::new())?;
    if chain.is_empty() {
        return None; // the seed itself: a layer that is the embedding
    }
    let chain: Vec<NodeProto> = chain.iter().map(|&i| cx.b.nodes[i].clone()).collect();
    let u = replay_on_cotangent(cx, chain);
    // Repeated along the leading axis, once per sample: `B = N / S`; the other axes once (`Tile`'s
    // repeats: `[B, 1, …]`, the ones from `shape ÷ shape`).
    let data = data_inputs.first()?;
    let n_shape = cx.b.shape(data);
    let n = cx.b.slice1(&n_shape, 0, 1);
    let s = cx.b.const_i64(&[samples as i64]);
    let b = cx.b.op("Div", &[&n, &s], vec![]);
    let u_shape = cx.b.shape(&u);
    let ones = cx.b.op("Div", &[&u_shape, &u_shape], vec![]);
    let ones = cx.b.slice1(&ones, 1, i64::MAX);
    let repeats = cx.b.concat0(&[&b, &ones]);
    let tiled = cx.b.op("Tile", &[&u, &repeats], vec![]);
    let name = cx.b.fresh("uniform_rows");
    cx.b.nodes.last_mut().expect("just added").name = name;
    Some(tiled)
}
