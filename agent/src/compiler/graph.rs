//! Which nodes lie between the chosen layers and the embedding, and through which inputs.

use std::collections::{HashMap, HashSet};

use anyhow::{Result, bail};

use super::registry::{self, OpRule};
use crate::onnx::proto::*;

/// The part of the graph the gradient flows through.
pub struct PathAnalysis {
    /// Indices of the nodes needing a reverse-mode rule, in forward (topological) order.
    pub path_nodes: Vec<usize>,
    /// Tensors that depend on a layer and reach the embedding (their gradient is needed).
    pub needed: HashSet<String>,
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
        if bits == 0 || registry::stops_gradient(n) {
            continue;
        }
        // Auxiliary outputs (pool indices, saved statistics) carry no gradient; an op without a rule
        // keeps all its outputs active so the backward pass can name it.
        let outs = match registry::lookup(&n.op_type) {
            Some(r) => r.grad_outputs.of(n.output.len()),
            None => (0..n.output.len()).collect(),
        };
        for o in outs.into_iter().map(|i| &n.output[i]).filter(|o| !o.is_empty()) {
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
        let Some(rule) = registry::lookup(&n.op_type) else {
            bail!(
                "node {} (op {}) lies between layer {} and the embedding and has no gradient rule; supported ops: {}",
                n.display_name(),
                n.op_type,
                layer_names(bits),
                registry::supported_ops().join(", ")
            );
        };
        check_arity(n, rule)?;
        for (slot, x) in &active_inputs {
            if !rule.grad_inputs.contains(*slot) {
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

/// A node must have the inputs its rule indexes and the outputs it writes to.
fn check_arity(n: &NodeProto, rule: &OpRule) -> Result<()> {
    if n.input.len() < rule.min_inputs || n.input.first().is_none_or(String::is_empty) || n.output.is_empty()
    {
        bail!(
            "node {} (op {}) has {} inputs and {} outputs; a well-formed {} has at least {} inputs and one output",
            n.display_name(),
            n.op_type,
            n.input.len(),
            n.output.len(),
            n.op_type,
            rule.min_inputs
        );
    }
    Ok(())
}

/// The op types on the path from `layers` to `embedding` (sorted, unique).
pub fn path_ops(graph: &GraphProto, layers: &[String], embedding: &str) -> Result<Vec<String>> {
    let a = analyse(graph, layers, embedding)?;
    let mut ops: Vec<String> = a.path_nodes.iter().map(|&i| graph.node[i].op_type.clone()).collect();
    ops.sort();
    ops.dedup();
    Ok(ops)
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
