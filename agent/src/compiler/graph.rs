//! Which nodes lie between the chosen layers and the embedding, and through which inputs.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use crate::onnx::proto::*;

/// Ops whose outputs carry no gradient (integer/boolean results, shape arithmetic, piecewise-constant
/// functions): an active input does not make their outputs active.
const NON_DIFFERENTIABLE: &[&str] = &[
    "Shape",
    "Size",
    "Equal",
    "Greater",
    "GreaterOrEqual",
    "Less",
    "LessOrEqual",
    "Not",
    "And",
    "Or",
    "Xor",
    "ArgMax",
    "ArgMin",
    "NonZero",
    "ConstantOfShape",
    "Range",
    "IsNaN",
    "IsInf",
    "Sign",
    "Floor",
    "Ceil",
    "Round",
    "EyeLike",
    "RandomNormalLike",
    "RandomUniformLike",
];

/// For each op with a reverse-mode rule, the input slots through which a gradient flows.
/// `None`: every input slot (Concat).
pub fn differentiable_slots(op: &str) -> Option<Option<&'static [usize]>> {
    let slots: Option<&'static [usize]> = match op {
        "Conv" | "ConvTranspose" | "Relu" | "LeakyRelu" | "Sigmoid" | "Tanh" | "Softplus" | "Clip"
        | "MaxPool" | "AveragePool" | "GlobalAveragePool" | "BatchNormalization" | "Gemm" | "Flatten"
        | "Reshape" | "Squeeze" | "Unsqueeze" | "Transpose" | "Dropout" | "Identity" | "Pad" | "Resize"
        | "ReduceMean" | "ReduceSum" | "Neg" => Some(&[0]),
        "MatMul" | "Add" | "Sub" | "Mul" | "Div" => Some(&[0, 1]),
        "Concat" | "Sum" => None,
        _ => return None,
    };
    Some(slots)
}

/// The op types with a rule, for messages and docs.
pub const SUPPORTED_OPS: &[&str] = &[
    "Conv",
    "ConvTranspose",
    "Relu",
    "LeakyRelu",
    "Sigmoid",
    "Tanh",
    "Softplus",
    "Clip",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "Gemm",
    "MatMul",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Sum",
    "Neg",
    "Concat",
    "Flatten",
    "Reshape",
    "Squeeze",
    "Unsqueeze",
    "Transpose",
    "Dropout",
    "Identity",
    "Pad",
    "Resize",
    "ReduceMean",
    "ReduceSum",
];

/// The part of the graph the gradient flows through.
pub struct PathAnalysis {
    /// Indices of the nodes needing a reverse-mode rule, in forward (topological) order.
    pub path_nodes: Vec<usize>,
    /// Tensors that depend on a layer and reach the embedding (their gradient is needed).
    pub needed: HashSet<String>,
}

fn slot_is_differentiable(op: &str, slot: usize) -> bool {
    match differentiable_slots(op) {
        Some(None) => true,
        Some(Some(slots)) => slots.contains(&slot),
        None => false,
    }
}

/// Finds the nodes between `layers` and `embedding`, refusing anything the compiler cannot differentiate.
pub fn analyse(graph: &GraphProto, layers: &[String], embedding: &str) -> Result<PathAnalysis> {
    let initializers: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    let mut produced: HashMap<&str, usize> = HashMap::new();
    for (i, n) in graph.node.iter().enumerate() {
        for o in &n.output {
            if !o.is_empty() {
                produced.insert(o.as_str(), i);
            }
        }
    }
    check_topological(graph)?;
    if !produced.contains_key(embedding) && !inputs.contains(embedding) {
        bail!("embedding {embedding:?} is not a tensor of the model{}", suggest(graph, embedding));
    }
    for l in layers {
        if initializers.contains(l.as_str()) && !produced.contains_key(l.as_str()) {
            bail!("layer {l:?} is a weight (initializer), not an activation");
        }
        if !produced.contains_key(l.as_str()) && !inputs.contains(l.as_str()) {
            bail!("layer {l:?} is not a tensor of the model{}", suggest(graph, l));
        }
        if l == embedding {
            bail!("layer {l:?} is the embedding itself; choose a tensor before it");
        }
    }

    // Forward: which tensors depend (differentiably) on which layer; one bit per layer.
    let mut active: HashMap<String, u64> = HashMap::new();
    for (i, l) in layers.iter().enumerate() {
        *active.entry(l.clone()).or_default() |= 1 << i;
    }
    for n in &graph.node {
        let mut bits = 0u64;
        for x in &n.input {
            bits |= active.get(x).copied().unwrap_or(0);
        }
        if bits == 0 || NON_DIFFERENTIABLE.contains(&n.op_type.as_str()) {
            continue;
        }
        // Only the data output carries the gradient for ops with auxiliary outputs.
        let outs: &[String] = match n.op_type.as_str() {
            "MaxPool" | "Dropout" | "BatchNormalization" => &n.output[..1],
            _ => &n.output,
        };
        for o in outs {
            *active.entry(o.clone()).or_default() |= bits;
        }
    }
    let reach = active.get(embedding).copied().unwrap_or(0);
    for (i, l) in layers.iter().enumerate() {
        if reach & (1 << i) == 0 {
            bail!(
                "layer {l:?} is not an ancestor of the embedding {embedding:?}: the embedding does not depend on it"
            );
        }
    }

    // Backward: nodes whose outputs are needed and whose inputs are active.
    let mut needed: HashSet<String> = HashSet::from([embedding.to_string()]);
    let mut path_nodes = Vec::new();
    for (i, n) in graph.node.iter().enumerate().rev() {
        if !n.output.iter().any(|o| needed.contains(o)) {
            continue;
        }
        let active_inputs: Vec<(usize, &String)> =
            n.input.iter().enumerate().filter(|(_, x)| active.contains_key(*x)).collect();
        if active_inputs.is_empty() {
            continue;
        }
        let layer_names = |bits: u64| -> String {
            layers
                .iter()
                .enumerate()
                .filter(|(j, _)| bits & (1 << j) != 0)
                .map(|(_, l)| l.as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let bits = active_inputs.iter().fold(0, |b, (_, x)| b | active[*x]);
        if !n.domain.is_empty() && n.domain != "ai.onnx" {
            bail!(
                "node {} (op {}, domain {}) lies between layer {} and the embedding, and custom-domain operators have no gradient rule",
                n.display_name(),
                n.op_type,
                n.domain,
                layer_names(bits)
            );
        }
        if differentiable_slots(&n.op_type).is_none() {
            bail!(
                "node {} (op {}) lies between layer {} and the embedding and has no gradient rule; supported ops: {}",
                n.display_name(),
                n.op_type,
                layer_names(bits),
                SUPPORTED_OPS.join(", ")
            );
        }
        for (slot, x) in &active_inputs {
            if !slot_is_differentiable(&n.op_type, *slot) {
                bail!(
                    "node {} (op {}) takes {x:?} (which depends on layer {}) as input {slot}, through which the compiler cannot differentiate",
                    n.display_name(),
                    n.op_type,
                    layer_names(active[*x])
                );
            }
            needed.insert((*x).clone());
        }
        path_nodes.push(i);
    }
    path_nodes.reverse();
    Ok(PathAnalysis { path_nodes, needed })
}

fn check_topological(graph: &GraphProto) -> Result<()> {
    let mut known: HashSet<&str> = graph.input.iter().map(|v| v.name.as_str()).collect();
    known.extend(graph.initializer.iter().map(|t| t.name.as_str()));
    known.insert("");
    for n in &graph.node {
        for x in &n.input {
            if !known.contains(x.as_str()) {
                bail!(
                    "node {} reads {x:?} before any node produces it (graph not topologically sorted, or the tensor is missing)",
                    n.display_name()
                );
            }
        }
        known.extend(n.output.iter().map(String::as_str));
    }
    Ok(())
}

/// " (did you mean …?)" with up to five tensor names that contain the asked-for name's last part.
fn suggest(graph: &GraphProto, name: &str) -> String {
    let key = name.rsplit('/').next().unwrap_or(name).to_lowercase();
    let mut hits: Vec<&str> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !key.is_empty() && o.to_lowercase().contains(&key))
        .map(String::as_str)
        .take(5)
        .collect();
    if hits.is_empty() {
        hits = graph.node.iter().rev().flat_map(|n| n.output.iter()).map(String::as_str).take(5).collect();
        if hits.is_empty() {
            return String::new();
        }
        return format!(" (tensors near the end of the graph: {})", hits.join(", "));
    }
    hits.dedup();
    format!(" (did you mean: {}?)", hits.join(", "))
}
