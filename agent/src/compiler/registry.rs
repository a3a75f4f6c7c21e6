//! The operator registry: one entry per forward operator with a reverse-mode rule, and the only place
//! that says what the compiler supports.
//!
//! An entry sits beside its rule (in `rules/<family>.rs`) and says which inputs a gradient flows
//! through, which outputs carry one, which auxiliary outputs the forward node must expose, and the
//! rule itself. The path analysis, the refusal message, README's operator list and the spec's rule
//! table are all read from here, and `tests/registry.rs` proves every entry on a committed model against reference
//! gradients.

use anyhow::Result;

use super::ctx::Backward;
use super::rules::{self, Cotangents, InputGrads};
use crate::onnx::proto::NodeProto;

/// Input (or output) slots of a node.
#[derive(Debug, Clone, Copy)]
pub enum Slots {
    /// Exactly these slots (those the node does not have are skipped).
    Only(&'static [usize]),
    /// Every slot (variadic operators such as `Concat` and `Sum`).
    All,
}

impl Slots {
    pub fn contains(&self, slot: usize) -> bool {
        match self {
            Slots::Only(s) => s.contains(&slot),
            Slots::All => true,
        }
    }

    /// The slots of a list of `n` entries this selects.
    pub fn of(&self, n: usize) -> Vec<usize> {
        match self {
            Slots::Only(s) => s.iter().copied().filter(|&i| i < n).collect(),
            Slots::All => (0..n).collect(),
        }
    }
}

/// A reverse-mode rule: the cotangents of the node's gradient-carrying outputs in, the cotangents of
/// the inputs flagged in `wanted` out, all in flat `[B·K, …]` form.
pub type Vjp = fn(&mut Backward, &NodeProto, &Cotangents, &[bool]) -> Result<InputGrads>;

/// One operator's entry.
#[derive(Clone, Copy)]
pub struct OpRule {
    /// ONNX op type (default domain).
    pub op: &'static str,
    /// Inputs a gradient flows through; the others are treated as constants (shapes, indices, weights
    /// that no layer reaches). A layer that reaches another input is refused by name.
    pub grad_inputs: Slots,
    /// Outputs that carry a gradient; the rest (pool indices, saved statistics) do not.
    pub grad_outputs: Slots,
    /// Optional outputs the rule needs the forward node to produce (e.g. `MaxPool`'s indices); the
    /// compiler names them when the model left them out.
    pub aux_outputs: &'static [usize],
    /// The fewest inputs a well-formed node has (checked before the rule indexes them).
    pub min_inputs: usize,
    /// True for nodes of this op whose outputs carry no gradient at all (a `Cast` to an integer type).
    pub stops: Option<fn(&NodeProto) -> bool>,
    /// The gradient in one line, for the spec's rule table.
    pub formula: &'static str,
    pub vjp: Vjp,
}

impl OpRule {
    /// A rule for a unary op: gradient through input 0 into output 0, reading input 0.
    pub const fn unary(op: &'static str, formula: &'static str, vjp: Vjp) -> Self {
        OpRule {
            op,
            grad_inputs: Slots::Only(&[0]),
            grad_outputs: Slots::Only(&[0]),
            aux_outputs: &[],
            min_inputs: 1,
            stops: None,
            formula,
            vjp,
        }
    }

    /// The same rule with gradients through these inputs.
    pub const fn inputs(mut self, slots: Slots, min_inputs: usize) -> Self {
        self.grad_inputs = slots;
        self.min_inputs = min_inputs;
        self
    }
}

/// Ops whose outputs never carry a gradient (integer or boolean results, shape arithmetic,
/// piecewise-constant functions): an active input does not make their outputs active.
pub const NON_DIFFERENTIABLE: &[&str] = &[
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

/// Every entry, family by family (a new family adds its `RULES` here).
const FAMILIES: &[&[OpRule]] = &[
    rules::activation::RULES,
    rules::elementwise::RULES,
    rules::index::RULES,
    rules::linalg::RULES,
    rules::norm::RULES,
    rules::shape::RULES,
    rules::softmax::RULES,
    rules::spatial::RULES,
];

/// All registered rules, in family order.
pub fn all() -> impl Iterator<Item = &'static OpRule> {
    FAMILIES.iter().flat_map(|f| f.iter())
}

/// The rule for an op type of the default domain.
pub fn lookup(op: &str) -> Option<&'static OpRule> {
    all().find(|r| r.op == op)
}

/// Registered op types, sorted, for messages and docs.
pub fn supported_ops() -> Vec<&'static str> {
    let mut ops: Vec<&str> = all().map(|r| r.op).collect();
    ops.sort_unstable();
    ops
}

/// True when the node's outputs carry no gradient whatever its inputs.
pub fn stops_gradient(node: &NodeProto) -> bool {
    NON_DIFFERENTIABLE.contains(&node.op_type.as_str())
        || lookup(&node.op_type).and_then(|r| r.stops).is_some_and(|f| f(node))
}

/// The spec's rule table (markdown), generated so it cannot drift from the code.
pub fn markdown_table() -> String {
    let mut rows: Vec<&OpRule> = all().collect();
    rows.sort_by_key(|r| r.op);
    let mut s = String::from("| forward op | gradient flows through | gradient |\n|---|---|---|\n");
    for r in rows {
        let through = match r.grad_inputs {
            Slots::All => "every input".to_string(),
            Slots::Only(v) => v.iter().map(|i| format!("input {i}")).collect::<Vec<_>>().join(", "),
        };
        s.push_str(&format!("| {} | {} | {} |\n", r.op, through, r.formula.replace('|', "\\|")));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_op_is_registered_once() {
        let ops: Vec<&str> = all().map(|r| r.op).collect();
        let mut sorted = ops.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), ops.len(), "an op is registered twice: {ops:?}");
        for op in &ops {
            assert!(!NON_DIFFERENTIABLE.contains(op), "{op} is both registered and non-differentiable");
        }
    }

    #[test]
    fn table_lists_every_op() {
        let t = markdown_table();
        for r in all() {
            assert!(t.contains(&format!("| {} |", r.op)), "{} missing from the table", r.op);
        }
    }
}
