//! Which tensors of a model can be monitored: `agent layers`.
//!
//! Every data-dependent tensor is probed (batch 2 and 3, as the compiler does), read with the layout
//! auto-detection would choose, and checked for a gradient path to the embedding on which every
//! operator has a rule — the same path analysis the compiler runs, once per tensor, reporting the
//! node that blocks instead of failing. Tensor names are interned to indices so the per-tensor pass
//! stays linear in the graph.

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use serde::Serialize;

use super::layout::{self, LayoutRequest};
use super::{probe, registry};
use crate::onnx::proto::*;

/// A node that stops a tensor's gradient on its way to the embedding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Blocker {
    pub node: String,
    pub op: String,
    pub why: String,
}

/// One tensor a user could name as a layer.
#[derive(Debug, Clone, Serialize)]
pub struct TensorInfo {
    pub name: String,
    /// Dims after the batch axis.
    pub shape: Vec<i64>,
    /// The producing node's op and name, and its index in the graph's (topological) node order.
    pub op: String,
    pub node: String,
    pub depth: usize,
    /// As auto-detection decides it (`nchw`, `nhwc`, `tokens`), with the map it gives.
    pub layout: String,
    pub channels: usize,
    pub grid: [usize; 2],
    pub prefix_tokens: usize,
    pub layout_reason: String,
    /// True when every operator between the tensor and the embedding has a rule.
    pub monitorable: bool,
    pub blocked_by: Option<Blocker>,
}

/// A rank-2 `[batch, D]` tensor that could serve as the embedding.
#[derive(Debug, Clone, Serialize)]
pub struct EmbeddingCandidate {
    pub name: String,
    pub dim: i64,
    /// True for the model's own outputs.
    pub graph_output: bool,
}

#[derive(Debug, Clone, Serialize)]
pub struct LayersReport {
    /// The embedding the tensors were checked against.
    pub embedding: String,
    /// True when `embedding` was chosen here (no `--embedding` given).
    pub embedding_chosen: bool,
    pub embedding_candidates: Vec<EmbeddingCandidate>,
    /// Ancestors of the embedding with a layer's rank, in graph order.
    pub tensors: Vec<TensorInfo>,
    /// Tensors whose shape does not follow the batch on axis 0 (one line each); a path through one
    /// is reported blocked at the node that reads or writes it.
    pub skipped: Vec<String>,
}

/// The sequence length a text model with a dynamic length is listed at.
pub const LIST_LENGTH: usize = 16;

/// Lists the tensors of `model` that reach `embedding` (or, without one, the first rank-2 output).
/// A text model with a dynamic sequence axis is probed at [`LIST_LENGTH`] tokens (its token layers
/// show `T` = that length).
pub fn list(model: &ModelProto, embedding: Option<&str>) -> Result<LayersReport> {
    let fixed = super::inputs::with_dynamic_length_fixed(model, LIST_LENGTH)?;
    let model = fixed.as_ref().unwrap_or(model);
    let graph = model.graph.as_ref().context("model has no graph")?;
    let ix = Index::new(graph);
    let from_inputs = ix.active_from(graph, ix.inputs.iter().copied(), 0);
    let candidates: Vec<String> = graph
        .node
        .iter()
        .flat_map(|n| n.output.iter())
        .filter(|o| !o.is_empty() && ix.id.get(o.as_str()).is_some_and(|&i| from_inputs[i]))
        .cloned()
        .collect();
    let (probe, odd) =
        probe::probe_lenient(model, &candidates, true).context("probing the model's tensors")?;
    // A tensor whose batch is not on axis 0 blocks every path through it: the compiler refuses it.
    let mut off_axis = vec![None; ix.producer.len()];
    for (t, why) in &odd {
        off_axis[ix.id[t.as_str()]] = Some(why.clone());
    }
    let skipped: Vec<String> = odd.into_iter().map(|(_, why)| why).collect();
    let outputs: HashSet<&str> = graph.output.iter().map(|o| o.name.as_str()).collect();
    let embedding_candidates: Vec<EmbeddingCandidate> = candidates
        .iter()
        .filter_map(|t| {
            let s = probe.shapes.get(t)?;
            (s.batched && s.layout.is_none() && s.rest.len() == 1).then(|| EmbeddingCandidate {
                name: t.clone(),
                dim: s.rest[0],
                graph_output: outputs.contains(t.as_str()),
            })
        })
        .collect();
    let (embedding, chosen) = match embedding {
        Some(e) => {
            if !ix.id.contains_key(e) {
                bail!("embedding {e:?} is not a tensor of the model");
            }
            match probe.shapes.get(e) {
                Some(s) if s.batched && s.layout.is_none() && s.rest.len() == 1 => {}
                Some(s) => bail!("embedding {e:?} must be rank 2 [batch, D]; it has dims {:?}", s.rest),
                None => bail!("embedding {e:?} does not depend on the model's input"),
            }
            (e.to_string(), false)
        }
        None => {
            let pick = embedding_candidates
                .iter()
                .find(|c| c.graph_output)
                .or(embedding_candidates.last())
                .context("the model has no rank-2 [batch, D] tensor to use as the embedding")?;
            (pick.name.clone(), true)
        }
    };
    let hw = super::inputs::model_hw(&probe::model_inputs(graph)?);
    let emb = ix.id[embedding.as_str()];
    let mut tensors = Vec::new();
    for t in &candidates {
        let Some(s) = probe.shapes.get(t) else { continue };
        // A layer carries the batch on axis 0 (a moved or merged batch, e.g. inside attention, is
        // not a map of the sample).
        if !s.batched || s.layout.is_some() || s.rest.is_empty() || s.rest.len() > 3 || *t == embedding {
            continue;
        }
        let tid = ix.id[t.as_str()];
        let Some(blocked) = ix.path_check(graph, tid, emb, &off_axis) else { continue };
        let Ok(view) = layout::resolve(graph, t, &s.rest, &LayoutRequest::default(), hw) else { continue };
        let node_index = ix.producer[tid].expect("candidates are node outputs");
        let n = &graph.node[node_index];
        tensors.push(TensorInfo {
            name: t.clone(),
            shape: s.rest.clone(),
            op: n.op_type.clone(),
            node: n.display_name().to_string(),
            depth: node_index,
            layout: view.layout.as_str().to_string(),
            channels: view.channels,
            grid: view.grid,
            prefix_tokens: view.prefix_tokens,
            layout_reason: view.reason,
            monitorable: blocked.is_none(),
            blocked_by: blocked,
        });
    }
    Ok(LayersReport { embedding, embedding_chosen: chosen, embedding_candidates, tensors, skipped })
}

/// The graph's tensors as indices.
struct Index<'a> {
    id: HashMap<&'a str, usize>,
    producer: Vec<Option<usize>>,
    inputs: Vec<usize>,
    /// Per node: input and output ids (`usize::MAX` for an empty name).
    node_in: Vec<Vec<usize>>,
    node_out: Vec<Vec<usize>>,
}

impl<'a> Index<'a> {
    fn new(graph: &'a GraphProto) -> Self {
        let mut id: HashMap<&str, usize> = HashMap::new();
        let mut intern = |name: &'a str| -> usize {
            if name.is_empty() {
                return usize::MAX;
            }
            let next = id.len();
            *id.entry(name).or_insert(next)
        };
        let inits: HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
        let inputs: Vec<usize> = graph
            .input
            .iter()
            .filter(|v| !inits.contains(v.name.as_str()))
            .map(|v| intern(&v.name))
            .collect();
        let mut node_in = Vec::new();
        let mut node_out = Vec::new();
        for n in &graph.node {
            node_in.push(n.input.iter().map(|x| intern(x)).collect::<Vec<_>>());
            node_out.push(n.output.iter().map(|x| intern(x)).collect::<Vec<_>>());
        }
        let mut producer = vec![None; id.len()];
        for (i, outs) in node_out.iter().enumerate() {
            for &o in outs.iter().filter(|&&o| o != usize::MAX) {
                producer[o] = Some(i);
            }
        }
        Index { id, producer, inputs, node_in, node_out }
    }

    /// Tensors that depend differentiably on `start`, walking nodes from `first_node` on (as the
    /// compiler's analysis: stopping ops end it, auxiliary outputs stay inactive).
    fn active_from(
        &self,
        graph: &GraphProto,
        start: impl Iterator<Item = usize>,
        first_node: usize,
    ) -> Vec<bool> {
        let mut active = vec![false; self.producer.len()];
        for s in start {
            active[s] = true;
        }
        for (i, n) in graph.node.iter().enumerate().skip(first_node) {
            if !self.node_in[i].iter().any(|&x| x != usize::MAX && active[x]) || registry::stops_gradient(n) {
                continue;
            }
            let outs = match registry::lookup(&n.op_type) {
                Some(r) => r.grad_outputs.of(n.output.len()),
                None => (0..n.output.len()).collect(),
            };
            for s in outs {
                let o = self.node_out[i][s];
                if o != usize::MAX {
                    active[o] = true;
                }
            }
        }
        active
    }

    /// `None` when `t` is not an ancestor of `emb`; `Some(None)` when every node on the way has a
    /// rule; `Some(Some(blocker))` naming the node (nearest the embedding) the compiler would refuse.
    fn path_check(
        &self,
        graph: &GraphProto,
        t: usize,
        emb: usize,
        off_axis: &[Option<String>],
    ) -> Option<Option<Blocker>> {
        let first = self.producer[t].map_or(0, |p| p + 1);
        let active = self.active_from(graph, std::iter::once(t), first);
        if !active[emb] {
            return None;
        }
        let mut needed = vec![false; active.len()];
        needed[emb] = true;
        let last = self.producer[emb]?;
        for i in (first..=last).rev() {
            if !self.node_out[i].iter().any(|&o| o != usize::MAX && needed[o]) {
                continue;
            }
            let ins: Vec<(usize, usize)> = self.node_in[i]
                .iter()
                .copied()
                .enumerate()
                .filter(|&(_, x)| x != usize::MAX && active[x])
                .collect();
            if ins.is_empty() {
                continue;
            }
            let n = &graph.node[i];
            let block = |why: String| {
                Some(Some(Blocker { node: n.display_name().to_string(), op: n.op_type.clone(), why }))
            };
            if !n.domain.is_empty() && n.domain != "ai.onnx" {
                return block(format!("custom domain {}: no gradient rule", n.domain));
            }
            let Some(rule) = registry::lookup(&n.op_type) else {
                return block("no gradient rule".into());
            };
            for &(slot, x) in &ins {
                if !rule.grad_inputs.contains(slot) {
                    return block(format!("the compiler cannot differentiate through its input {slot}"));
                }
                needed[x] = true;
            }
            let on_path = self.node_out[i].iter().chain(ins.iter().map(|(_, x)| x));
            if let Some(why) = on_path.filter_map(|&x| off_axis.get(x).and_then(Option::as_ref)).next() {
                return block(why.clone());
            }
        }
        Some(None)
    }
}
