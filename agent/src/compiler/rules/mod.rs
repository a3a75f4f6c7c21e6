//! Reverse-mode rules, one file per family; each file's `RULES` lists its registry entries
//! (`super::registry`) beside the functions they name.
//!
//! A rule receives the cotangents of the node's gradient-carrying outputs in flat form `[B·K, out…]`
//! and returns the cotangents of the inputs that need one, also in flat form.

pub mod activation;
pub mod elementwise;
pub mod index;
pub mod linalg;
pub mod norm;
pub mod shape;
pub mod softmax;
pub mod spatial;

use anyhow::{Result, anyhow};

use super::ctx::Backward;
use crate::onnx::proto::NodeProto;

/// Cotangents of the node's inputs, by input slot.
pub type InputGrads = Vec<(usize, String)>;

/// The cotangents of a node's outputs, by output slot (`None`: that output does not reach the
/// embedding, its cotangent is zero).
pub struct Cotangents {
    pub by_output: Vec<Option<String>>,
}

impl Cotangents {
    /// The cotangent of output 0, which every single-output rule has (the compiler calls a rule only
    /// when some gradient-carrying output has a cotangent).
    pub fn y(&self) -> Result<&str> {
        self.by_output
            .first()
            .and_then(|o| o.as_deref())
            .ok_or_else(|| anyhow!("internal: no cotangent for output 0"))
    }
}

/// Wraps a rule for the data input (slot 0) of a single-output op.
pub fn one(g: String) -> InputGrads {
    vec![(0, g)]
}

/// `dX = dY ⊙ L` for an elementwise local derivative `L` of the forward output's shape.
pub fn local(ctx: &mut Backward, node: &NodeProto, dy: &str, l: &str) -> Result<String> {
    let rest = ctx.rest(node, &node.output[0])?;
    let g = ctx.split(dy, &rest);
    let l = ctx.b.unsqueeze(l, &[1]);
    let p = ctx.b.mul(&g, &l);
    Ok(ctx.flat(&p, &rest))
}
