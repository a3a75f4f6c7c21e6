//! The test models and ONNX Runtime: the manifest of `tests/models`, seeded inputs, runs of a model,
//! and models cut at a layer for finite differences. Part of [`super`]; `tests/common` re-exports it
//! for the tests that import it under that name.
#![allow(dead_code)]

use std::path::{Path, PathBuf};

use agent::onnx::{self, proto::*};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

/// The Python with numpy and onnx (`AGENT_PYTHON`, else the project's `.venv`).
pub fn python() -> PathBuf {
    std::env::var_os("AGENT_PYTHON")
        .map(PathBuf::from)
        .unwrap_or_else(|| repo_root().join(".venv/bin/python"))
}

#[derive(Debug, Clone, serde::Deserialize)]
pub struct ManifestEntry {
    pub name: String,
    pub file: String,
    pub input: String,
    pub input_shape: Vec<usize>,
    pub embedding: String,
    pub layers: Vec<String>,
    pub ops: Vec<String>,
    pub kind: String,
    pub d: usize,
    pub committed: bool,
}

impl ManifestEntry {
    pub fn path(&self) -> PathBuf {
        repo_root().join("tests/models").join(&self.file)
    }
}

pub fn manifest() -> Vec<ManifestEntry> {
    let text = std::fs::read_to_string(repo_root().join("tests/models/manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

pub fn rng(seed: u64) -> rand_chacha::ChaCha8Rng {
    rand_chacha::ChaCha8Rng::seed_from_u64(seed)
}

/// Uniform [0, 1) array of the given shape.
pub fn uniform(shape: &[usize], seed: u64) -> ArrayD<f32> {
    let mut r = rng(seed);
    ArrayD::from_shape_simple_fn(IxDyn(shape), || r.random::<f32>())
}

/// Runs a model (bytes) on named float inputs and returns the named outputs.
pub fn run(model: &[u8], inputs: Vec<(&str, ArrayD<f32>)>, outputs: &[&str]) -> Vec<ArrayD<f32>> {
    let mut s = agent::runtime::cpu_session(model).expect("session");
    let feeds: Vec<(String, ort::value::DynValue)> = inputs
        .into_iter()
        .map(|(n, a)| (n.to_string(), ort::value::Tensor::from_array(a).unwrap().into_dyn()))
        .collect();
    let out = s.run(feeds).expect("run");
    outputs.iter().map(|o| out[*o].try_extract_array::<f32>().unwrap().to_owned()).collect()
}

/// The model with `tensor` added as an extra float output.
pub fn with_output(model: &ModelProto, tensor: &str) -> Vec<u8> {
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    g.output.push(ValueInfoProto {
        name: tensor.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto { elem_type: data_type::FLOAT, shape: None }),
            ..Default::default()
        }),
        ..Default::default()
    });
    onnx::encode(&m)
}

/// The model's embedding as a function of (inputs, `layer`): the layer's producer writes elsewhere and
/// the layer becomes a graph input, so the layer value can be perturbed for finite differences.
pub fn tail_model(model: &ModelProto, layer: &str, embedding: &str) -> Vec<u8> {
    let mut m = model.clone();
    let g = m.graph.as_mut().unwrap();
    let is_input = g.input.iter().any(|v| v.name == layer);
    if !is_input {
        for n in g.node.iter_mut() {
            for o in n.output.iter_mut().filter(|o| *o == layer) {
                *o = format!("{layer}__replaced");
            }
        }
        g.input.push(ValueInfoProto {
            name: layer.into(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto { elem_type: data_type::FLOAT, shape: None }),
                ..Default::default()
            }),
            ..Default::default()
        });
    }
    g.output.retain(|o| o.name == embedding);
    if g.output.is_empty() {
        g.output.push(onnx::value_info(embedding, data_type::FLOAT, &[Err("N"), Err("D")]));
    }
    g.value_info.clear();
    onnx::encode(&m)
}

/// The pairs of two sequences that a test compares element by element, after checking that both
/// have the same, non-zero length: a bare `zip` stops at the shorter one and passes on empty input.
pub fn pairs<'a, A, B>(a: &'a [A], b: &'a [B]) -> impl Iterator<Item = (&'a A, &'a B)> {
    assert_eq!(a.len(), b.len(), "compared sequences differ in length");
    assert!(!a.is_empty(), "compared sequences are empty");
    a.iter().zip(b)
}
