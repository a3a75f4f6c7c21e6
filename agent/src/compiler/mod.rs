//! The attribution-graph compiler: forward ONNX model in, forward + reverse-mode graph out.
//!
//! Contract (spec `shared/spec/attribution-graph.md`): the output graph keeps the model's inputs
//! (dynamic batch) and adds `attr_cotangent` `[K, D]`; it outputs the embedding `[B, D]` and, per layer
//! and method, `attr/{layer index}/{method}`: channel-aggregated per-row maps `[B, K, H, W]`
//! (`[B, K, C, H, W]` when compiled without channel aggregation, for checks). Only standard ONNX
//! operators are emitted (opset ≥ 17), so ONNX Runtime's inference builds run it on CPU and CUDA.

mod builder;
mod canonical;
mod ctx;
mod detect;
mod graph;
mod hoist;
pub mod inputs;
pub mod layers;
pub mod layout;
mod probe;
mod registry;
mod rewrite;
mod rules;

use std::collections::{HashMap, HashSet};

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

pub use graph::path_ops;
pub use inputs::{DecidedInput, InputRole, decide_roles, with_sequence_length};
pub use layout::{LayerLayout, LayerView, LayoutRequest};
pub use probe::InputSpec;
pub use registry::{markdown_table as rule_table, supported_ops};

use crate::onnx::{self, proto::*};
use crate::scores::{Aggregation, Method};

/// Name of the cotangent input.
pub const COTANGENT: &str = "attr_cotangent";
/// Version written into compiled graphs' metadata; bump when their contract changes.
pub const COMPILER_VERSION: &str = "1";
/// The lowest opset the compiler emits for (ScatterElements with reduction needs 16).
const MIN_OPSET: i64 = 17;

/// What to compile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CompileOptions {
    pub embedding: String,
    /// Layer tensors, in network order.
    pub layers: Vec<String>,
    pub methods: Vec<Method>,
    /// `None` outputs the raw per-channel maps `[B, K, C, H, W]` (used to check gradients).
    pub channel_agg: Option<Aggregation>,
    /// Smoothed attributions (spec §1): the model's batch holds `S` consecutive points per sample and
    /// the maps average the attribution over them *before* channel aggregation, as the spec defines
    /// (it matters for `abs` and `var`). Grad-CAM maps are averaged after their ReLU. `1` = plain.
    #[serde(default = "one")]
    pub smoothing_samples: usize,
    /// How each layer's axes are read (`layers` order). A layer without an entry is read channels
    /// first (`nchw`), as every layer was before layouts existed, so old graphs' metadata still reads.
    #[serde(default)]
    pub layouts: Vec<LayoutRequest>,
}

fn one() -> usize {
    1
}

/// One attribution output of a compiled graph.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MapOutput {
    pub name: String,
    pub layer: String,
    pub layer_index: usize,
    pub method: Method,
    /// Channels of the layer (before aggregation).
    pub channels: usize,
    /// Map height and width (rank-2 layers: 1 × 1; rank-3 channels-first layers: L × 1; token
    /// layers: the patch grid).
    pub height: usize,
    pub width: usize,
    /// How the layer was read (absent in graphs compiled before layouts: `nchw`).
    #[serde(default = "nchw")]
    pub layout: LayerLayout,
    /// Tokens left out of a token layer's map (class token, registers).
    #[serde(default)]
    pub prefix_tokens: usize,
}

fn nchw() -> LayerLayout {
    LayerLayout::Nchw
}

/// A compiled attribution graph and what the engine needs to know about it.
#[derive(Debug, Clone)]
pub struct AttributionGraph {
    pub model: ModelProto,
    pub inputs: Vec<InputSpec>,
    pub embedding: String,
    pub embedding_dim: usize,
    pub outputs: Vec<MapOutput>,
    /// Per layer, how its axes were read and why.
    pub views: Vec<LayerView>,
    pub options: CompileOptions,
    pub source_sha256: String,
}

impl AttributionGraph {
    pub fn to_bytes(&self) -> Vec<u8> {
        onnx::encode(&self.model)
    }
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Compiles a model given as bytes (hashed into the graph's metadata).
pub fn compile_bytes(bytes: &[u8], opts: &CompileOptions) -> Result<AttributionGraph> {
    let model = onnx::decode(bytes)?;
    compile(&model, &sha256_hex(bytes), opts)
}

pub fn compile(model: &ModelProto, source_sha256: &str, opts: &CompileOptions) -> Result<AttributionGraph> {
    check_options(opts)?;
    let (mut model, opset) = raised_opset(model)?;
    if let Some(g) = model.graph.as_mut() {
        let mut keep = opts.layers.clone();
        keep.push(opts.embedding.clone());
        rewrite::relu_after_overlapping_max_pool(g, &keep);
    }
    let analysis =
        graph::analyse(model.graph.as_ref().context("model has no graph")?, &opts.layers, &opts.embedding)?;
    expose_aux_outputs(&mut model, &analysis);
    let graph = model.graph.clone().context("model has no graph")?;
    let consts = ctx::constants(&graph);
    let probe = probe::probe(&model, &probe_targets(&graph, &analysis, &consts, opts))?;
    let inputs = probe::model_inputs(&graph)?;
    let d = check_shapes(&probe.shapes, opts)?;
    let hw = inputs::model_hw(&inputs);
    let views = opts
        .layers
        .iter()
        .enumerate()
        .map(|(i, l)| {
            let req = opts.layouts.get(i).copied().unwrap_or(LayoutRequest::NCHW);
            layout::resolve(&graph, l, &probe.shapes[l].rest, &req, hw)
        })
        .collect::<Result<Vec<_>>>()?;

    let mut b = builder::GraphBuilder::new("attr/");
    let kshape = b.shape(COTANGENT);
    let kdim = b.slice1(&kshape, 0, 1);
    let mut cx =
        ctx::Backward { b, shapes: probe.shapes.clone(), consts, kdim, opset, probed_values: &probe.values };
    let mut grads = backward(&mut cx, &graph, &analysis, &opts.embedding, d)?;
    let input_names: Vec<String> = inputs.iter().map(|i| i.name.clone()).collect();
    let (outputs, graph_outputs) = attribution_outputs(&mut cx, &mut grads, opts, &views, d, &input_names)?;

    let builder = cx.b;
    let g = model.graph.as_mut().context("model has no graph")?;
    g.node.extend(builder.nodes);
    g.initializer.extend(builder.initializers);
    g.input.push(onnx::value_info(COTANGENT, data_type::FLOAT, &[Err("K"), Ok(d)]));
    g.output = graph_outputs;
    g.value_info.retain(|v| !v.name.starts_with("attr/"));
    prune_unused(g);

    onnx::set_metadata(&mut model, "agent.compiler_version", COMPILER_VERSION);
    onnx::set_metadata(&mut model, "agent.source_sha256", source_sha256);
    onnx::set_metadata(&mut model, "agent.options", serde_json::to_string(opts)?);
    onnx::set_metadata(&mut model, "agent.outputs", serde_json::to_string(&outputs)?);
    onnx::set_metadata(&mut model, "agent.views", serde_json::to_string(&views)?);
    Ok(AttributionGraph {
        model,
        inputs,
        embedding: opts.embedding.clone(),
        embedding_dim: d as usize,
        outputs,
        views,
        options: opts.clone(),
        source_sha256: source_sha256.to_string(),
    })
}

fn check_options(opts: &CompileOptions) -> Result<()> {
    if opts.layers.is_empty() {
        bail!("no layer given: name at least one intermediate tensor (--layer)");
    }
    if opts.methods.is_empty() {
        bail!("no attribution method given");
    }
    if opts.layers.len() > 64 {
        bail!("at most 64 layers per graph");
    }
    Ok(())
}

/// The model with its default-domain opset raised to at least [`MIN_OPSET`], and that opset.
/// Opsets 13–16 → 17: no operator on a gradient path changes meaning in between.
fn raised_opset(model: &ModelProto) -> Result<(ModelProto, i64)> {
    let mut model = model.clone();
    let opset = onnx::default_opset(&model).unwrap_or(1);
    if opset < 13 {
        bail!(
            "the model uses opset {opset}; the compiler needs opset 13 or later (convert it with onnx.version_converter)"
        );
    }
    let opset = opset.max(MIN_OPSET);
    for o in model.opset_import.iter_mut().filter(|o| o.domain.is_empty() || o.domain == "ai.onnx") {
        o.version = opset;
    }
    model.ir_version = model.ir_version.max(8);
    Ok((model, opset))
}

/// Names the optional outputs the path's rules need (registry `aux_outputs`, e.g. MaxPool's
/// indices) where the model left them out, so the forward pass produces them once.
fn expose_aux_outputs(model: &mut ModelProto, analysis: &graph::PathAnalysis) {
    let Some(g) = model.graph.as_mut() else { return };
    for &i in &analysis.path_nodes {
        let n = &mut g.node[i];
        let Some(rule) = registry::lookup(&n.op_type) else { continue };
        for &slot in rule.aux_outputs {
            if n.output.len() <= slot {
                n.output.resize(slot + 1, String::new());
            }
            if n.output[slot].is_empty() {
                n.output[slot] = format!("attr/aux/{i}/{slot}");
            }
        }
    }
}

/// The tensors whose shapes the rules read: every gradient-carrying tensor, and each path node's
/// `reads` inputs and gradient-carrying outputs (constants excluded: their dims are known).
fn probe_targets(
    graph: &GraphProto,
    analysis: &graph::PathAnalysis,
    consts: &HashMap<String, TensorProto>,
    opts: &CompileOptions,
) -> Vec<String> {
    let mut to_probe: Vec<String> = analysis.needed.iter().cloned().collect();
    for &i in &analysis.path_nodes {
        let n = &graph.node[i];
        let Some(rule) = registry::lookup(&n.op_type) else { continue };
        // Every input: the rules read shapes of some and values of small shape-arithmetic ones
        // (pads, axes, indices computed at run time).
        to_probe.extend(n.input.iter().cloned());
        to_probe.extend(rule.grad_outputs.of(n.output.len()).into_iter().map(|s| n.output[s].clone()));
        // Auxiliary outputs too: their layouts follow the data's (canonical views need them).
        to_probe.extend(rule.aux_outputs.iter().filter_map(|&s| n.output.get(s).cloned()));
    }
    to_probe.extend(opts.layers.iter().cloned());
    let mut seen = HashSet::new();
    to_probe.retain(|t| !t.is_empty() && !consts.contains_key(t) && seen.insert(t.clone()));
    to_probe.sort();
    to_probe
}

/// The embedding's width `D`, after checking the embedding and layer shapes.
fn check_shapes(shapes: &HashMap<String, probe::ProbedShape>, opts: &CompileOptions) -> Result<i64> {
    let emb = &shapes[&opts.embedding];
    if !emb.batched || emb.rest.len() != 1 || emb.layout.is_some() {
        bail!("embedding {:?} must be rank 2 [batch, D]; it has shape {}", opts.embedding, describe(emb));
    }
    for l in &opts.layers {
        let s = &shapes[l];
        if !s.batched || s.rest.is_empty() || s.rest.len() > 3 || s.layout.is_some() {
            bail!(
                "layer {l:?} must be [batch, C], [batch, C, L], [batch, T, C], [batch, C, H, W] or [batch, H, W, C]; it has shape {}",
                describe(s)
            );
        }
    }
    Ok(emb.rest[0])
}

/// Seeds the embedding's cotangent and walks the path backwards; returns every tensor's cotangent
/// parts (layers among them).
fn backward(
    cx: &mut ctx::Backward,
    graph: &GraphProto,
    analysis: &graph::PathAnalysis,
    embedding: &str,
    d: i64,
) -> Result<HashMap<String, Vec<String>>> {
    // Seed: every (b, k) row gets cotangent row k, i.e. dZ = V repeated over the batch.
    let emb_shape = cx.b.shape(embedding);
    let bdim = cx.b.slice1(&emb_shape, 0, 1);
    let v = cx.b.unsqueeze(COTANGENT, &[0]);
    let dconst = cx.b.const_i64(&[d]);
    let k = cx.kdim.clone();
    let target = cx.b.concat0(&[&bdim, &k, &dconst]);
    let seed = cx.b.op("Expand", &[&v, &target], vec![]);
    let seed = cx.b.reshape_const(&seed, &[-1, d]);

    let mut grads: HashMap<String, Vec<String>> = HashMap::from([(embedding.to_string(), vec![seed])]);
    for &i in analysis.path_nodes.iter().rev() {
        let node = &graph.node[i];
        let rule = registry::lookup(&node.op_type).context("internal: path node without a rule")?;
        let by_output: Vec<Option<String>> = (0..node.output.len())
            .map(|s| {
                if rule.grad_outputs.contains(s) { take_grad(cx, &mut grads, &node.output[s]) } else { None }
            })
            .collect();
        if by_output.iter().all(Option::is_none) {
            continue;
        }
        let wanted: Vec<bool> = node.input.iter().map(|x| analysis.needed.contains(x)).collect();
        let at = || format!("building the gradient of node {} ({})", node.display_name(), node.op_type);
        // Nodes on tensors whose batch is moved or merged act on canonical views (canonical.rs).
        let rewritten = canonical::canonical_node(cx, node).with_context(at)?;
        let view = rewritten.as_ref().unwrap_or(node);
        let node_grads = (rule.vjp)(cx, view, &rules::Cotangents { by_output }, &wanted).with_context(at)?;
        for (slot, g) in node_grads {
            let x = &node.input[slot];
            // A layer that is also an intermediate keeps its total gradient; the sum is taken once,
            // after every consumer contributed (reverse topological order guarantees it).
            grads.entry(x.clone()).or_default().push(g);
        }
    }
    Ok(grads)
}

/// Per layer and method, the map output and its declaration; the embedding's declaration first.
fn attribution_outputs(
    cx: &mut ctx::Backward,
    grads: &mut HashMap<String, Vec<String>>,
    opts: &CompileOptions,
    views: &[LayerView],
    d: i64,
    model_inputs: &[String],
) -> Result<(Vec<MapOutput>, Vec<ValueInfoProto>)> {
    let mut outputs = Vec::new();
    let mut graph_outputs = vec![onnx::value_info(&opts.embedding, data_type::FLOAT, &[Err("N"), Ok(d)])];
    let data_inputs: Vec<String> = model_inputs.to_vec();
    for (li, layer) in opts.layers.iter().enumerate() {
        let g = take_grad(cx, grads, layer).context("internal: layer without gradient")?;
        let view = &views[li];
        let rest = view.viewed_rest();
        // `vanilla` maps are linear in the per-point gradient: their mean over the points is taken
        // before the gradient's point-independent tail when there is one (`hoisted_mean`) — unless
        // the per-point gradient is computed anyway (another method multiplies it by the activation
        // at each point, or it flows on to an earlier layer), where that would only add work.
        let per_point_needed = opts.methods.iter().any(|&m| m != Method::Vanilla)
            || cx.b.nodes.iter().any(|n| n.input.contains(&g));
        // A gradient that is the same at every point (a layer right before a linear head): its
        // `vanilla` map is built from one point's rows (`uniform_rows`), whatever else needs it.
        let averaged = if opts.methods.contains(&Method::Vanilla)
            && let Some(rows) = hoist::uniform_rows(cx, &g, opts.smoothing_samples, &data_inputs)
        {
            Some(rows)
        } else if per_point_needed {
            None
        } else {
            hoist::hoisted_mean(cx, &g, opts.smoothing_samples, &data_inputs)
        };
        for &method in &opts.methods {
            let name = format!("attr/{li}/{}", method.as_str());
            let (map, dims) = match (&averaged, method) {
                (Some(avg), Method::Vanilla) => {
                    attribution_map(cx, avg, layer, view, method, opts.channel_agg, 1)
                }
                _ => attribution_map(cx, &g, layer, view, method, opts.channel_agg, opts.smoothing_samples),
            };
            let node_out = cx.b.op("Identity", &[&map], vec![]);
            rename_output(&mut cx.b, &node_out, &name);
            let mut vi: Vec<Result<i64, &str>> =
                vec![Err(if opts.smoothing_samples > 1 { "B" } else { "N" }), Err("K")];
            vi.extend(dims.iter().map(|&x| Ok(x)));
            graph_outputs.push(onnx::value_info(&name, data_type::FLOAT, &vi));
            let (h, w) = spatial_hw(&rest);
            outputs.push(MapOutput {
                name,
                layer: layer.clone(),
                layer_index: li,
                method,
                channels: rest[0] as usize,
                height: h,
                width: w,
                layout: view.layout,
                prefix_tokens: view.prefix_tokens,
            });
        }
    }
    Ok((outputs, graph_outputs))
}

fn describe(s: &probe::ProbedShape) -> String {
    if s.batched {
        format!("[batch, {}]", s.rest.iter().map(i64::to_string).collect::<Vec<_>>().join(", "))
    } else {
        format!("{:?} (no batch axis)", s.rest)
    }
}

fn spatial_hw(rest: &[i64]) -> (usize, usize) {
    match rest.len() {
        1 => (1, 1),
        2 => (rest[1] as usize, 1),
        _ => (rest[1] as usize, rest[2] as usize),
    }
}

/// The summed cotangent of `t` (a `Sum` node when several consumers contributed).
/// Called only once every consumer has contributed (reverse topological order).
fn take_grad(cx: &mut ctx::Backward, grads: &mut HashMap<String, Vec<String>>, t: &str) -> Option<String> {
    let parts = grads.get_mut(t)?;
    if parts.len() > 1 {
        let refs: Vec<&str> = parts.iter().map(String::as_str).collect();
        let sum = cx.b.op("Sum", &refs, vec![]);
        *parts = vec![sum];
    }
    // Kept (summed) in the map: a layer that feeds another layer is read again at the end.
    Some(parts[0].clone())
}

fn rename_output(b: &mut builder::GraphBuilder, from: &str, to: &str) {
    if let Some(n) = b.nodes.iter_mut().rev().find(|n| n.output.iter().any(|o| o == from)) {
        for o in n.output.iter_mut().filter(|o| *o == from) {
            *o = to.to_string();
        }
    }
}

/// Drops the nodes no graph output depends on: the per-point gradient tail of a layer whose only
/// consumer was a `vanilla` map now computed from the hoisted mean ([`hoist::hoisted_mean`]), and forward
/// nodes past the embedding. ONNX Runtime would run them.
fn prune_unused(g: &mut GraphProto) {
    // A control-flow node's subgraphs read outer tensors without naming them as inputs.
    if g.node.iter().any(|n| n.attribute.iter().any(|a| a.g.is_some() || !a.graphs.is_empty())) {
        return;
    }
    let mut needed: HashSet<String> = g.output.iter().map(|o| o.name.clone()).collect();
    let mut keep = vec![false; g.node.len()];
    for (i, n) in g.node.iter().enumerate().rev() {
        if n.output.iter().any(|o| needed.contains(o)) {
            keep[i] = true;
            needed.extend(n.input.iter().filter(|x| !x.is_empty()).cloned());
        }
    }
    let mut i = 0;
    g.node.retain(|_| {
        i += 1;
        keep[i - 1]
    });
    // The compiler's own constants that only pruned nodes read (ONNX Runtime would warn about each).
    let read: HashSet<&str> = g.node.iter().flat_map(|n| n.input.iter().map(String::as_str)).collect();
    g.initializer.retain(|t| !t.name.starts_with("attr/") || read.contains(t.name.as_str()));
}

/// `[B·S, K, dims…]` → `[B, K, dims…]`, the mean over each sample's `S` smoothing points.
fn average_points(cx: &mut ctx::Backward, x: &str, dims: &[i64], samples: usize) -> String {
    if samples <= 1 {
        return x.to_string();
    }
    let lead = cx.b.const_i64(&[-1, samples as i64]);
    let tail = cx.b.const_i64(dims);
    let k = cx.kdim.clone();
    let shape = cx.b.concat0(&[&lead, &k, &tail]);
    let grouped = cx.b.reshape(x, &shape);
    let summed = cx.b.reduce_sum(&grouped, &[1], false);
    cx.b.scale(&summed, 1.0 / samples as f32)
}

/// Turns the flat gradient `[B·K, …]` of a layer into the method's map, channel-aggregated, as
/// `[B, K, H, W]` (or `[B, K, C, H, W]` raw). The layer's view (channels-last and token layers) is
/// applied first, to the gradient and to the layer tensor alike, so what follows is one code path for
/// every layout. Returns the map and its dims after `[B, K]`.
fn attribution_map(
    cx: &mut ctx::Backward,
    g: &str,
    layer: &str,
    view: &LayerView,
    method: Method,
    channel_agg: Option<Aggregation>,
    samples: usize,
) -> (String, Vec<i64>) {
    let rest = &view.viewed_rest();
    let c = rest[0];
    let (h, w) = spatial_hw(rest);
    let (h, w) = (h as i64, w as i64);
    let g5 = cx.split(g, &view.shape);
    let g5 = layout::apply(&mut cx.b, &g5, 2, view);
    let hw_shape = |b: &mut builder::GraphBuilder, x: &str, with_c: bool| {
        let s: Vec<i64> = if with_c { vec![0, 0, c, h, w] } else { vec![0, 0, h, w] };
        b.reshape_const(x, &s)
    };
    if method == Method::GradCam {
        // α_c = spatial mean of the gradient; map = ReLU(Σ_c α_c h_c).
        let viewed = layout::apply(&mut cx.b, layer, 1, view);
        let h5 = cx.b.unsqueeze(&viewed, &[1]);
        let spatial: Vec<i64> = (3..rest.len() as i64 + 2).collect();
        let alpha = if spatial.is_empty() {
            g5.clone()
        } else {
            let s = cx.b.reduce_sum(&g5, &spatial, true);
            cx.b.scale(&s, 1.0 / (h * w) as f32)
        };
        let weighted = cx.b.mul(&alpha, &h5);
        let summed = cx.b.reduce_sum(&weighted, &[2], false);
        let relu = cx.b.op("Relu", &[&summed], vec![]);
        let relu = average_points(cx, &relu, &[h, w], samples);
        return (hw_shape(&mut cx.b, &relu, false), vec![h, w]);
    }
    let a = if method == Method::ActGrad {
        let viewed = layout::apply(&mut cx.b, layer, 1, view);
        let h5 = cx.b.unsqueeze(&viewed, &[1]);
        cx.b.mul(&g5, &h5)
    } else {
        g5
    };
    let a = average_points(cx, &a, rest, samples);
    let Some(agg) = channel_agg else {
        return (hw_shape(&mut cx.b, &a, true), vec![c, h, w]);
    };
    let inv_c = 1.0 / c as f32;
    let m = match agg {
        Aggregation::Mean => {
            let s = cx.b.reduce_sum(&a, &[2], false);
            cx.b.scale(&s, inv_c)
        }
        Aggregation::Abs => {
            let abs = cx.b.op("Abs", &[&a], vec![]);
            let s = cx.b.reduce_sum(&abs, &[2], false);
            cx.b.scale(&s, inv_c)
        }
        Aggregation::Var => {
            let s = cx.b.reduce_sum(&a, &[2], true);
            let mean = cx.b.scale(&s, inv_c);
            let dev = cx.b.op("Sub", &[&a, &mean], vec![]);
            let sq = cx.b.mul(&dev, &dev);
            let s = cx.b.reduce_sum(&sq, &[2], false);
            cx.b.scale(&s, inv_c)
        }
    };
    (hw_shape(&mut cx.b, &m, false), vec![h, w])
}
