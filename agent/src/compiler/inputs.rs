//! What each model input is for. A vision model has one float input, the one the maps explain; a text
//! encoder has integer inputs (token ids, an attention mask, token types, sometimes positions) that
//! the engine builds from token samples and feeds, and that the attribution graph never
//! differentiates (the reverse pass starts at the monitored layers, downstream of the embedding
//! lookup).
//!
//! Text encoders are exported with a dynamic sequence axis; the compiler needs fixed sizes after the
//! batch (every shape is probed once), so a text model is compiled at one length `T`
//! ([`with_sequence_length`]) and the engine pads every batch to it.

use std::collections::BTreeMap;
use std::fmt;

use anyhow::{Result, bail};
use serde::{Deserialize, Serialize};

use super::InputSpec;
use crate::onnx::{self, proto::*};

/// The role of one model input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum InputRole {
    /// The float input of a vision (or any non-text) model: what the samples are.
    Values,
    /// Token ids `[B, T]`, padded with the pad id.
    Ids,
    /// Attention mask `[B, T]`: 1 on a sample's tokens, 0 on padding.
    Mask,
    /// Token type (segment) ids `[B, T]`: the sample's own, else 0.
    TokenTypes,
    /// Position ids `[B, T]`: `0, 1, …, T − 1`.
    Positions,
}

impl InputRole {
    pub fn as_str(self) -> &'static str {
        match self {
            InputRole::Values => "values",
            InputRole::Ids => "ids",
            InputRole::Mask => "mask",
            InputRole::TokenTypes => "token_types",
            InputRole::Positions => "positions",
        }
    }

    /// The role a common input name implies (Hugging Face, sentence-transformers and TF-BERT exports).
    pub fn from_name(name: &str) -> Option<InputRole> {
        let n = name.to_ascii_lowercase();
        let n = n.trim_end_matches(":0");
        Some(match n {
            "input_ids" | "ids" | "token_ids" | "tokens" | "input_word_ids" | "input" => InputRole::Ids,
            "attention_mask" | "mask" | "input_mask" => InputRole::Mask,
            "token_type_ids" | "segment_ids" | "type_ids" | "input_type_ids" => InputRole::TokenTypes,
            "position_ids" | "positions" => InputRole::Positions,
            _ => return None,
        })
    }
}

impl fmt::Display for InputRole {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for InputRole {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "values" => Ok(InputRole::Values),
            "ids" => Ok(InputRole::Ids),
            "mask" => Ok(InputRole::Mask),
            "token_types" => Ok(InputRole::TokenTypes),
            "positions" => Ok(InputRole::Positions),
            _ => Err(format!(
                "unknown input role {s:?} (expected ids, mask, token_types, positions or values)"
            )),
        }
    }
}

/// One model input with its decided role.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DecidedInput {
    pub name: String,
    /// ONNX element type (1 = float32, 7 = int64).
    pub elem_type: i32,
    pub role: InputRole,
    /// True when the role came from the input's name or type, not from the configuration.
    pub detected: bool,
}

impl DecidedInput {
    /// `input_ids: ids (detected from the name)`.
    pub fn describe(&self) -> String {
        let how = if self.detected { "detected" } else { "configured" };
        format!("{}: {} ({how}, {})", self.name, self.role, type_name(self.elem_type))
    }
}

fn type_name(t: i32) -> String {
    match t {
        data_type::FLOAT => "float32".into(),
        data_type::INT64 => "int64".into(),
        data_type::INT32 => "int32".into(),
        t => format!("element type {t}"),
    }
}

/// A model input as declared: name, ONNX element type, dims (`None` where symbolic or unknown).
pub type DeclaredInput = (String, i32, Vec<Option<i64>>);

/// The model's inputs (graph inputs that are not initializers), read from the declaration without
/// requiring fixed sizes.
pub fn declared_inputs(graph: &GraphProto) -> Result<Vec<DeclaredInput>> {
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = Vec::new();
    for v in graph.input.iter().filter(|v| !inits.contains(v.name.as_str())) {
        let Some((t, dims)) = onnx::value_info_shape(v) else {
            bail!("model input {:?} is not a tensor", v.name)
        };
        out.push((v.name.clone(), t, dims));
    }
    Ok(out)
}

/// Decides every input's role: configured (`configured`, by input name) or detected — a float input
/// is `values`, an integer input takes the role its name implies. Every problem is listed: an
/// integer input without a role, a role given twice, a text model without ids or with a float
/// input besides, a configured name the model does not have, an integer role on a non-int64 input.
pub fn decide_roles(
    inputs: &[(String, i32)],
    configured: &BTreeMap<String, InputRole>,
) -> std::result::Result<Vec<DecidedInput>, Vec<String>> {
    let mut problems = Vec::new();
    for name in configured.keys() {
        if !inputs.iter().any(|(n, _)| n == name) {
            let names: Vec<&str> = inputs.iter().map(|(n, _)| n.as_str()).collect();
            problems.push(format!(
                "input {name:?} is configured but the model has no such input (it has {names:?})"
            ));
        }
    }
    let mut out = Vec::new();
    for (name, t) in inputs {
        let (role, detected) = match configured.get(name) {
            Some(&r) => (r, false),
            None if *t == data_type::FLOAT => (InputRole::Values, true),
            None => match InputRole::from_name(name) {
                Some(r) => (r, true),
                None => {
                    problems.push(format!(
                        "input {name:?} ({}) has no role: name it under [model.input_roles] as ids, mask, token_types or positions",
                        type_name(*t)
                    ));
                    continue;
                }
            },
        };
        if role == InputRole::Values && *t != data_type::FLOAT {
            problems
                .push(format!("input {name:?} is {}; the values role takes a float32 input", type_name(*t)));
        }
        if role != InputRole::Values && *t != data_type::INT64 {
            problems
                .push(format!("input {name:?} is {}; the {role} role takes an int64 input", type_name(*t)));
        }
        out.push(DecidedInput { name: name.clone(), elem_type: *t, role, detected });
    }
    let count = |r: InputRole| out.iter().filter(|i| i.role == r).count();
    for r in [InputRole::Values, InputRole::Ids, InputRole::Mask, InputRole::TokenTypes, InputRole::Positions]
    {
        if count(r) > 1 {
            let names: Vec<&str> = out.iter().filter(|i| i.role == r).map(|i| i.name.as_str()).collect();
            problems.push(format!("inputs {names:?} all have the role {r}; each role is one input"));
        }
    }
    // A text model: any integer input, or any role other than values (decided or not).
    let text =
        inputs.iter().any(|(_, t)| *t != data_type::FLOAT) || out.iter().any(|i| i.role != InputRole::Values);
    if text && count(InputRole::Ids) == 0 {
        problems.push("the model has integer inputs but none with the ids role (the token ids)".into());
    }
    if text && count(InputRole::Values) > 0 {
        problems.push(
            "the model mixes a float input with token inputs; the engine feeds either one float input or token inputs"
                .into(),
        );
    }
    if !text && count(InputRole::Values) != 1 {
        problems.push(format!("the engine scores models with one float32 input; this one has {}", out.len()));
    }
    if problems.is_empty() { Ok(out) } else { Err(problems) }
}

/// True when the decided inputs are a text model's (token ids and their companions).
pub fn is_text(inputs: &[DecidedInput]) -> bool {
    inputs.iter().any(|i| i.role == InputRole::Ids)
}

/// The model with axis 1 of each named input (`[batch, sequence]`) fixed to `t`, so the compiler's
/// probe and rules see fixed sizes. A symbolic or unknown length becomes `t`; a fixed one must
/// already be `t`.
pub fn with_sequence_length(model: &ModelProto, inputs: &[&str], t: usize) -> Result<ModelProto> {
    let mut m = model.clone();
    let Some(g) = m.graph.as_mut() else { bail!("model has no graph") };
    for name in inputs {
        let Some(v) = g.input.iter_mut().find(|v| v.name == *name) else {
            bail!("model has no input {name:?}");
        };
        let Some(shape) =
            v.r#type.as_mut().and_then(|t| t.tensor_type.as_mut()).and_then(|t| t.shape.as_mut())
        else {
            bail!("input {name:?} declares no shape; a token input is [batch, sequence]");
        };
        if shape.dim.len() != 2 {
            bail!("input {name:?} has rank {}; a token input is [batch, sequence]", shape.dim.len());
        }
        let d = &mut shape.dim[1];
        match d.dim_value {
            Some(fixed) if fixed > 0 && fixed as usize != t => bail!(
                "input {name:?} has a fixed length of {fixed} tokens; set max_length = {fixed} (it is {t})"
            ),
            _ => {
                d.dim_value = Some(t as i64);
                d.dim_param = None;
            }
        }
    }
    Ok(m)
}

/// A text model whose token inputs have a dynamic length, with that length fixed to `t` (`None`:
/// nothing to fix — a model with a float input, or fixed lengths already).
pub fn with_dynamic_length_fixed(model: &ModelProto, t: usize) -> Result<Option<ModelProto>> {
    let Some(graph) = model.graph.as_ref() else { return Ok(None) };
    let declared = declared_inputs(graph)?;
    let tokens = !declared.is_empty()
        && declared.iter().all(|(_, ty, dims)| *ty == data_type::INT64 && dims.len() == 2);
    if !tokens || declared.iter().all(|(_, _, dims)| dims[1].is_some_and(|d| d > 0)) {
        return Ok(None);
    }
    let names: Vec<&str> = declared.iter().map(|(n, _, _)| n.as_str()).collect();
    with_sequence_length(model, &names, t).map(Some)
}

/// The input's map aspect for layout detection: a float input's `[C, H, W]`/`[H, W, C]`/`[H, W]`
/// grid, else (a text model) the `T × 1` strip of its token sequence, so that a `[T, C]` token layer
/// reads as `T` positions in order, with no prefix and no square grid guessed.
pub fn model_hw(inputs: &[InputSpec]) -> Option<(i64, i64)> {
    if let Some(f) = inputs.iter().find(|i| i.elem_type == data_type::FLOAT) {
        return super::layout::input_hw(&f.rest);
    }
    inputs.iter().find(|i| i.elem_type == data_type::INT64 && i.rest.len() == 1).map(|i| (i.rest[0], 1))
}

/// The vocabulary size of a text model: the rows of the embedding table a `Gather` takes with the ids
/// input as indices (directly, or through a `Cast`), with that table's name.
pub fn vocab_of(graph: &GraphProto, ids: &str) -> Option<(usize, String)> {
    let mut names = vec![ids.to_string()];
    names.extend(
        graph
            .node
            .iter()
            .filter(|n| n.op_type == "Cast" && n.input.first().is_some_and(|i| i == ids))
            .map(|n| n.output[0].clone()),
    );
    graph
        .node
        .iter()
        .filter(|n| n.op_type == "Gather" && n.input.len() == 2 && names.contains(&n.input[1]))
        .find_map(|n| {
            let table = graph.initializer.iter().find(|t| t.name == n.input[0])?;
            let rows = *table.dims.first()?;
            (rows > 0 && table.dims.len() == 2).then(|| (rows as usize, table.name.clone()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ins(v: &[(&str, i32)]) -> Vec<(String, i32)> {
        v.iter().map(|(n, t)| (n.to_string(), *t)).collect()
    }

    #[test]
    fn bert_names_are_detected() {
        let i = ins(&[
            ("input_ids", data_type::INT64),
            ("attention_mask", data_type::INT64),
            ("token_type_ids", data_type::INT64),
        ]);
        let d = decide_roles(&i, &BTreeMap::new()).unwrap();
        let roles: Vec<InputRole> = d.iter().map(|x| x.role).collect();
        assert_eq!(roles, [InputRole::Ids, InputRole::Mask, InputRole::TokenTypes]);
        assert!(d.iter().all(|x| x.detected));
        assert!(is_text(&d));
    }

    #[test]
    fn a_vision_model_is_one_float_input() {
        let d = decide_roles(&ins(&[("pixels", data_type::FLOAT)]), &BTreeMap::new()).unwrap();
        assert_eq!(d[0].role, InputRole::Values);
        assert!(!is_text(&d));
        let e = decide_roles(&ins(&[("a", data_type::FLOAT), ("b", data_type::FLOAT)]), &BTreeMap::new())
            .unwrap_err();
        assert!(e.iter().any(|p| p.contains("role values")), "{e:?}");
    }

    #[test]
    fn unknown_names_need_a_configured_role() {
        let i = ins(&[("x0", data_type::INT64), ("x1", data_type::INT64)]);
        let e = decide_roles(&i, &BTreeMap::new()).unwrap_err();
        assert_eq!(e.len(), 3, "{e:?}"); // two inputs without a role, no ids
        assert!(e[0].contains("\"x0\"") && e[0].contains("[model.input_roles]"), "{e:?}");
        let conf = BTreeMap::from([("x0".to_string(), InputRole::Ids), ("x1".to_string(), InputRole::Mask)]);
        let d = decide_roles(&i, &conf).unwrap();
        assert_eq!((d[0].role, d[0].detected), (InputRole::Ids, false));
        let conf = BTreeMap::from([("nope".to_string(), InputRole::Ids)]);
        let e = decide_roles(&i, &conf).unwrap_err();
        assert!(e[0].contains("\"nope\"") && e[0].contains("no such input"), "{e:?}");
    }

    #[test]
    fn wrong_types_and_duplicates_are_named() {
        let i = ins(&[("input_ids", data_type::INT32), ("ids", data_type::INT64)]);
        let e = decide_roles(&i, &BTreeMap::new()).unwrap_err();
        assert!(e.iter().any(|p| p.contains("int32") && p.contains("int64")), "{e:?}");
        assert!(e.iter().any(|p| p.contains("each role is one input")), "{e:?}");
        let i = ins(&[("input_ids", data_type::INT64), ("pixels", data_type::FLOAT)]);
        let e = decide_roles(&i, &BTreeMap::new()).unwrap_err();
        assert!(e.iter().any(|p| p.contains("mixes")), "{e:?}");
    }
}
