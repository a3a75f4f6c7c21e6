//! Forward rewrites that keep every value the model computes and make its backward graph cheaper.

use std::collections::HashMap;

use crate::onnx::proto::*;

/// `MaxPool(Relu(x))` → `Relu(MaxPool(x))` where the pool's windows overlap. Both give the same
/// values bit for bit (`max` and `relu` are selections that commute). The gradient is exact too: the
/// ReLU's mask `X > 0` is then taken on the pooled tensor, `[y > 0]`, which is the mask at the
/// element each window routes to whenever the window's maximum is positive; where it is not, both
/// forms give the window's cotangent zero (the pooled `relu'` is 0, and before, every element of an
/// all-non-positive window had `relu' = 0`). What changes is where the mask is applied: on the
/// pooled cotangent, `(k/s)²` times smaller than the pool's input, before the routing
/// (`ScatterElements`), which the smoothed `vanilla` maps can then fuse with their mean
/// (`hoist.rs`). Non-overlapping pools keep the model's order: their routing is a repetition and a
/// mask, which `hoist.rs` averages as masks when the ReLU mask follows it.
///
/// Only where nothing else reads the ReLU's output (another node, a graph output, a configured
/// layer) and the pool's `Indices` output is unused by the model.
pub(super) fn relu_after_overlapping_max_pool(graph: &mut GraphProto, keep: &[String]) {
    let mut readers: HashMap<String, usize> = HashMap::new();
    for n in &graph.node {
        for i in n.input.iter().filter(|i| !i.is_empty()) {
            *readers.entry(i.clone()).or_default() += 1;
        }
    }
    for o in &graph.output {
        *readers.entry(o.name.clone()).or_default() += 1;
    }
    let producer: HashMap<String, usize> = graph
        .node
        .iter()
        .enumerate()
        .flat_map(|(i, n)| n.output.iter().map(move |o| (o.clone(), i)))
        .collect();
    let mut swaps = Vec::new();
    for (p, pool) in graph.node.iter().enumerate() {
        if pool.op_type != "MaxPool"
            || pool.input.is_empty()
            || pool.output.iter().skip(1).any(|o| !o.is_empty())
        {
            continue;
        }
        let (Some(kernel), strides) = (pool.attr_ints("kernel_shape"), pool.attr_ints("strides")) else {
            continue;
        };
        let overlapping =
            kernel.iter().enumerate().any(|(i, &k)| strides.and_then(|s| s.get(i)).copied().unwrap_or(1) < k);
        let r_out = &pool.input[0];
        let Some(&r) = producer.get(r_out) else { continue };
        let relu = &graph.node[r];
        if !overlapping
            || relu.op_type != "Relu"
            || relu.input.len() != 1
            || readers.get(r_out) != Some(&1)
            || keep.contains(r_out)
        {
            continue;
        }
        swaps.push((r, p));
    }
    for (r, p) in swaps {
        let x = graph.node[r].input[0].clone();
        let y = graph.node[p].output[0].clone();
        let pooled = format!("attr/pooled/{y}");
        // The pool takes the ReLU's place (before it in the node order), the ReLU the pool's.
        let mut pool = graph.node[p].clone();
        pool.input[0] = x;
        pool.output = vec![pooled.clone()];
        let mut relu = graph.node[r].clone();
        relu.input = vec![pooled];
        relu.output = vec![y];
        graph.node[r] = pool;
        graph.node[p] = relu;
    }
}
