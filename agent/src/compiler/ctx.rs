//! State shared by the reverse-mode rules: the builder, probed shapes, constants, and the `[B, K]` views.
//!
//! Cotangents travel in *flat* form `[B·K, rest…]`: row `b·K + k` is the vector-Jacobian product of
//! cotangent row `k` for sample `b`. Convolutions and pools run on that form directly (a bigger batch).
//! Rules that combine a cotangent with a forward tensor `[B, rest…]` switch to the *split* form
//! `[B, K, rest…]` and insert an axis into the forward tensor (`[B, 1, rest…]`), so it broadcasts over
//! `K` without being copied.

use std::collections::HashMap;

use anyhow::{Result, anyhow, bail};

use super::builder::GraphBuilder;
use super::probe::ProbedShape;
use crate::onnx::{self, proto::*};

pub struct Backward<'a> {
    pub b: GraphBuilder,
    /// Probed shapes, plus the canonical aliases added on the way (`canonical.rs`).
    pub shapes: HashMap<String, ProbedShape>,
    pub consts: HashMap<String, TensorProto>,
    /// `[1]` int64 holding `K` (rows of the cotangent input).
    pub kdim: String,
    pub opset: i64,
    /// Values of small tensors the probe saw that do not depend on the batch (shape arithmetic such
    /// as `Shape → Gather → Concat`); rules read them like constants.
    pub probed_values: &'a HashMap<String, Vec<f64>>,
}

impl Backward<'_> {
    /// Shape of a tensor: from the probe, or an initializer's dims.
    pub fn shape(&self, t: &str) -> Result<ProbedShape> {
        if let Some(s) = self.shapes.get(t) {
            return Ok(s.clone());
        }
        if let Some(c) = self.consts.get(t) {
            return Ok(ProbedShape { batched: false, rest: c.dims.clone(), layout: None });
        }
        Err(anyhow!("internal: no shape known for tensor {t:?}"))
    }

    /// Dims after the batch axis of a tensor that must carry the batch.
    pub fn rest(&self, node: &NodeProto, t: &str) -> Result<Vec<i64>> {
        let s = self.shape(t)?;
        if !s.batched {
            bail!(
                "node {} (op {}): tensor {t:?} should carry the batch on axis 0 but has fixed shape {:?}",
                node.display_name(),
                node.op_type,
                s.rest
            );
        }
        Ok(s.rest)
    }

    /// `[B·K, rest…]` → `[B, K, rest…]`.
    pub fn split(&mut self, dy: &str, rest: &[i64]) -> String {
        let lead = self.b.const_i64(&[-1]);
        let tail = self.b.const_i64(rest);
        let shape = self.b.concat0(&[&lead, &self.kdim.clone(), &tail]);
        self.b.reshape(dy, &shape)
    }

    /// `[B, K, rest…]` (or anything with that many elements per row) → `[B·K, rest…]`.
    pub fn flat(&mut self, x: &str, rest: &[i64]) -> String {
        let mut s = vec![-1];
        s.extend_from_slice(rest);
        self.b.reshape_const(x, &s)
    }

    /// A forward tensor, ready to broadcast against a split-form cotangent: batched tensors get an
    /// axis 1 inserted; constants broadcast from the right as they are.
    pub fn fwd(&mut self, t: &str) -> Result<String> {
        if self.shape(t)?.batched { Ok(self.b.unsqueeze(t, &[1])) } else { Ok(t.to_string()) }
    }

    /// Sums a split-form gradient `[B, K, out…]` down to a batched operand's shape `[B, K, x…]`,
    /// undoing broadcasting.
    pub fn unbroadcast(
        &mut self,
        node: &NodeProto,
        g: &str,
        out_rest: &[i64],
        x_rest: &[i64],
    ) -> Result<String> {
        if out_rest.len() != x_rest.len() {
            bail!(
                "node {} (op {}): an operand of rank {} broadcasts against rank {}; the compiler needs operands that carry the batch to have the output's rank",
                node.display_name(),
                node.op_type,
                x_rest.len() + 1,
                out_rest.len() + 1
            );
        }
        let axes: Vec<i64> =
            (0..x_rest.len()).filter(|&i| x_rest[i] == 1 && out_rest[i] != 1).map(|i| i as i64 + 2).collect();
        Ok(if axes.is_empty() { g.to_string() } else { self.b.reduce_sum(g, &axes, true) })
    }

    pub fn const_ints(&self, node: &NodeProto, t: &str, what: &str) -> Result<Vec<i64>> {
        if let Some(v) = self.probed_values.get(t) {
            return Ok(v.iter().map(|&x| x as i64).collect());
        }
        match self.consts.get(t) {
            Some(c) => onnx::tensor_to_i64(c),
            None => bail!(
                "node {} (op {}): its {what} ({t:?}) must be a constant (or computed from shapes only) for the compiler",
                node.display_name(),
                node.op_type
            ),
        }
    }

    pub fn const_floats(&self, node: &NodeProto, t: &str, what: &str) -> Result<Vec<f32>> {
        if let Some(v) = self.probed_values.get(t) {
            return Ok(v.iter().map(|&x| x as f32).collect());
        }
        match self.consts.get(t) {
            Some(c) => onnx::tensor_to_f32(c),
            None => bail!(
                "node {} (op {}): its {what} ({t:?}) must be a constant (or computed from shapes only) for the compiler",
                node.display_name(),
                node.op_type
            ),
        }
    }
}

/// Initializers and `Constant` node outputs, by name.
pub fn constants(graph: &GraphProto) -> HashMap<String, TensorProto> {
    let mut out: HashMap<String, TensorProto> =
        graph.initializer.iter().map(|t| (t.name.clone(), t.clone())).collect();
    for n in graph.node.iter().filter(|n| n.op_type == "Constant") {
        let value = n.attr("value").and_then(|a| a.t.clone()).or_else(|| {
            let a = n.attr("value_ints")?;
            Some(onnx::tensor_i64("", &[a.ints.len() as i64], &a.ints))
        });
        let value = value.or_else(|| n.attr("value_int").map(|a| onnx::tensor_i64("", &[], &[a.i])));
        let value = value.or_else(|| n.attr("value_float").map(|a| onnx::tensor_f32("", &[], &[a.f])));
        let value = value.or_else(|| {
            let a = n.attr("value_floats")?;
            Some(onnx::tensor_f32("", &[a.floats.len() as i64], &a.floats))
        });
        if let (Some(mut t), Some(o)) = (value, n.output.first()) {
            t.name = o.clone();
            out.insert(o.clone(), t);
        }
    }
    out
}
