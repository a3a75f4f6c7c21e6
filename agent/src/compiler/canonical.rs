//! Nodes that touch tensors whose batch is not plain axis 0 (see [`BatchLayout`]), rewritten to act on
//! the canonical views `[B, rest…]`, so the rules never see another layout.
//!
//! The cotangent of every tensor is kept in canonical flat form `[B·K, rest…]`; a node's forward
//! tensors are replaced by canonical aliases (a `Transpose` moving the batch to the front, a `Reshape`
//! splitting `B·m` into `[B, m]`, computed once on the forward side) and the attributes that name
//! axes (axis, axes, perm) are renumbered. Operators whose meaning depends on the physical layout in
//! ways not handled here (convolutions, pools, Einsum, Expand/Tile shape vectors, broadcasting of a
//! constant against a moved batch) are refused by name.

use anyhow::{Result, bail};

use super::ctx::Backward;
use super::probe::{BatchLayout, ProbedShape};
use crate::onnx::{self, attr, proto::*};

/// Ops whose rules read no axis and broadcast only over trailing axes (elementwise, reshapes, MatMul).
const LAYOUT_FREE: &[&str] = &[
    "Identity",
    "Dropout",
    "Neg",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Clip",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Reshape",
    "Squeeze",
    "MatMul",
    "HardSigmoid",
    "HardSwish",
    "Erf",
    "Gelu",
    "Mish",
    "PRelu",
    "Elu",
    "Selu",
    "Celu",
    "Softsign",
    "ThresholdedRelu",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Log",
    "Abs",
    "Pow",
    "Max",
    "Min",
    "Where",
    "Cast",
];

/// Ops with an `axis` attribute (with its default) that refers to input 0's axes.
const AXIS_ATTR: &[(&str, i64)] = &[
    ("Concat", 0),
    ("Split", 0),
    ("Gather", 0),
    ("GatherElements", 0),
    ("Softmax", -1),
    ("LogSoftmax", -1),
    ("LayerNormalization", -1),
];

fn layout_of(cx: &Backward, t: &str) -> Option<BatchLayout> {
    cx.shapes.get(t).and_then(|s| s.layout.clone())
}

/// The canonical view of a forward tensor: the tensor itself for plain layouts, else an alias.
pub fn canonical(cx: &mut Backward, t: &str) -> String {
    let Some(lay) = layout_of(cx, t) else { return t.to_string() };
    let alias = format!("attr/canonical/{t}");
    if cx.shapes.contains_key(&alias) {
        return alias;
    }
    let rest = cx.shapes[t].rest.clone();
    let mut x = t.to_string();
    if lay.axis != 0 {
        let mut perm = vec![lay.axis as i64];
        perm.extend((0..lay.rank as i64).filter(|&p| p != lay.axis as i64));
        x = cx.b.op("Transpose", &[&x], vec![attr::ints("perm", &perm)]);
    }
    let mut shape = vec![-1];
    shape.extend(&rest);
    cx.b.reshape_const(&x, &shape);
    cx.b.nodes.last_mut().expect("the Reshape just added").output[0] = alias.clone();
    cx.shapes.insert(alias.clone(), ProbedShape { batched: true, rest, layout: None });
    alias
}

fn refuse(node: &NodeProto, t: &str, lay: &BatchLayout, why: &str) -> anyhow::Error {
    anyhow::anyhow!(
        "node {} (op {}) reads {t:?}, whose batch sits on axis {} (merged with a factor {}); {why}",
        node.display_name(),
        node.op_type,
        lay.axis,
        lay.factor
    )
}

/// Renumbers a physical axis of a tensor with layout `lay` (negative axes count from the physical end).
fn axis_of(node: &NodeProto, t: &str, lay: &BatchLayout, axis: i64) -> Result<i64> {
    let p = if axis < 0 { axis + lay.rank as i64 } else { axis };
    if p < 0 || p >= lay.rank as i64 {
        bail!("node {} (op {}): axis {axis} out of range", node.display_name(), node.op_type);
    }
    match lay.canonical_axis(p as usize) {
        Some(c) => Ok(c as i64),
        None => Err(refuse(node, t, lay, "the node works along the batch axis itself")),
    }
}

fn set_ints(node: &mut NodeProto, name: &str, v: &[i64]) {
    node.attribute.retain(|a| a.name != name);
    node.attribute.push(attr::ints(name, v));
}

fn set_int(node: &mut NodeProto, name: &str, v: i64) {
    node.attribute.retain(|a| a.name != name);
    node.attribute.push(attr::int(name, v));
}

/// `node` rewritten for canonical views, or `None` when it touches only plain layouts.
pub fn canonical_node(cx: &mut Backward, node: &NodeProto) -> Result<Option<NodeProto>> {
    let touched: Vec<&String> =
        node.input.iter().chain(&node.output).filter(|t| layout_of(cx, t).is_some()).collect();
    let Some(&first) = touched.first() else { return Ok(None) };
    let op = node.op_type.as_str();
    let mut n = node.clone();
    let reference = if op == "Unsqueeze" { &node.output[0] } else { &node.input[0] };
    let lay = layout_of(cx, reference);
    if let Some(&(_, default)) = AXIS_ATTR.iter().find(|(o, _)| *o == op) {
        if let Some(lay) = &lay {
            let axis = node.attr_int("axis").unwrap_or(default);
            set_int(&mut n, "axis", axis_of(node, reference, lay, axis)?);
        }
    } else if op == "Transpose" {
        let (lx, ly) = (layout_of(cx, &node.input[0]), layout_of(cx, &node.output[0]));
        let rank = match (&lx, &ly) {
            (Some(l), _) | (_, Some(l)) => l.rank,
            _ => unreachable!(),
        };
        let perm: Vec<i64> =
            node.attr_ints("perm").map(<[i64]>::to_vec).unwrap_or_else(|| (0..rank as i64).rev().collect());
        let (ax, mx) = lx.as_ref().map_or((0, 1), |l| (l.axis, l.factor));
        if ly.as_ref().map_or(1, |l| l.factor) != mx {
            return Err(refuse(
                node,
                first,
                lx.as_ref().or(ly.as_ref()).unwrap(),
                "the Transpose changes the batch factor",
            ));
        }
        // Canonical axes of x: the batch, then the physical axes in order, the batch axis standing
        // for its factor `m` (label −1) when `m > 1`; y's likewise, each named by the x axis it holds.
        let label = |p: usize| -> Option<i64> {
            if p != ax {
                Some(p as i64)
            } else if mx > 1 {
                Some(-1)
            } else {
                None
            }
        };
        let cx_axes: Vec<i64> = (0..rank).filter_map(label).collect();
        let cy_axes: Vec<i64> = perm.iter().filter_map(|&p| label(p as usize)).collect();
        let mut canon = vec![0i64];
        for l in cy_axes {
            canon.push(cx_axes.iter().position(|&q| q == l).unwrap() as i64 + 1);
        }
        set_ints(&mut n, "perm", &canon);
    } else if matches!(
        op,
        "ReduceMean" | "ReduceSum" | "ReduceMax" | "ReduceMin" | "Squeeze" | "Unsqueeze" | "Slice"
    ) {
        let Some(lay) = &lay else {
            return Err(refuse(
                node,
                first,
                &layout_of(cx, first).unwrap(),
                "mixed layouts are not supported",
            ));
        };
        let slot = if op == "Slice" { 3 } else { 1 };
        let from_input = node.input.get(slot).is_some_and(|s| !s.is_empty());
        let axes: Vec<i64> = if op == "Slice" && !from_input {
            let starts = cx.const_ints(node, &node.input[1], "starts")?;
            (0..starts.len() as i64).collect()
        } else if from_input {
            cx.const_ints(node, &node.input[slot], "axes")?
        } else if let Some(a) = node.attr_ints("axes") {
            a.to_vec()
        } else {
            // No axes: every axis (reductions), every size-1 axis (Squeeze) — both include the batch.
            return Err(refuse(node, reference, lay, "the node has no explicit axes"));
        };
        let mapped = axes.iter().map(|&a| axis_of(node, reference, lay, a)).collect::<Result<Vec<_>>>()?;
        if from_input || op == "Slice" {
            let name = cx.b.const_i64(&mapped);
            cx.consts.insert(name.clone(), onnx::tensor_i64(&name, &[mapped.len() as i64], &mapped));
            if n.input.len() <= slot {
                n.input.resize(slot + 1, String::new());
            }
            n.input[slot] = name;
        } else {
            set_ints(&mut n, "axes", &mapped);
        }
    } else if !LAYOUT_FREE.contains(&op) {
        return Err(refuse(
            node,
            first,
            &layout_of(cx, first).unwrap(),
            "this operator's rule needs the batch on axis 0",
        ));
    }
    // Broadcasting: a moved batch only meets tensors of the same layout or scalars.
    if LAYOUT_FREE.contains(&op) && node.input.len() > 1 {
        let layouts: Vec<(Option<BatchLayout>, bool, usize)> = node
            .input
            .iter()
            .filter(|t| !t.is_empty())
            .map(|t| {
                let s = cx.shape(t).ok();
                (
                    layout_of(cx, t),
                    s.as_ref().is_some_and(|s| s.batched),
                    s.map_or(0, |s| s.rest.iter().product::<i64>() as usize),
                )
            })
            .collect();
        let moved = layouts.iter().find_map(|(l, _, _)| l.clone().filter(|l| l.axis != 0));
        if let Some(m) = moved {
            let ok = layouts.iter().all(|(l, batched, numel)| {
                l.as_ref() == Some(&m) || (!batched && *numel <= 1) || (!batched && op == "MatMul")
            });
            if !ok {
                return Err(refuse(node, first, &m, "it broadcasts against a tensor of another layout"));
            }
        }
    }
    for t in n.input.iter_mut().chain(n.output.iter_mut()) {
        if !t.is_empty() && layout_of(cx, t).is_some() {
            *t = canonical(cx, t);
        }
    }
    Ok(Some(n))
}
