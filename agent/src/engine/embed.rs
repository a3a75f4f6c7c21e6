//! The model cut at its embedding, in a forward-only ONNX Runtime session of its own: the embedding
//! detectors ([`crate::detectors`]) need `z` for every scored sample, and the attribution graph's
//! session keeps only maps and scores. Embedding a sample is one forward pass of the model up to
//! the embedding, where scoring it runs the attribution graph with `D` cotangent rows at each of
//! `S` smoothing points, so embedding every scored sample adds little. Kept apart from `session.rs`
//! so the scoring path stays untouched.

use anyhow::{Context, Result, anyhow};
use ndarray::{Array2, ArrayViewD};
use ort::session::Session;
use ort::value::TensorRef;

use super::{EngineSpec, TextModel, TokenSample};
use crate::runtime;

/// The model cut at the embedding output, in its own session (same providers and threads as the
/// engine's).
pub struct EmbeddingModel {
    session: Session,
    input: String,
    output: String,
}

impl EmbeddingModel {
    /// `input`: the model input fed with the same batches the engine scores.
    pub fn new(spec: &EngineSpec, input: &str) -> Result<EmbeddingModel> {
        let (env, _) = runtime::environment(spec.runtime.onnxruntime_path.as_deref())?;
        let mut model = crate::onnx::load(&spec.model_path)?;
        let graph =
            model.graph.as_mut().with_context(|| format!("{} has no graph", spec.model_path.display()))?;
        graph.output = vec![crate::onnx::value_info(
            &spec.embedding,
            crate::onnx::proto::data_type::FLOAT,
            &[Err("N"), Err("D")],
        )];
        let so = super::session::session_options(spec);
        let (session, _) = runtime::session(env, &crate::onnx::encode(&model), &so)
            .with_context(|| format!("the forward session of {}", spec.model_path.display()))?;
        Ok(EmbeddingModel { session, input: input.to_string(), output: spec.embedding.clone() })
    }

    /// `[B, D]` embeddings of a batch.
    pub fn embed(&mut self, batch: ArrayViewD<f32>) -> Result<Array2<f32>> {
        let feeds = ort::inputs![
            self.input.as_str() => TensorRef::from_array_view(batch).map_err(|e| anyhow!("{e}"))?,
        ];
        let out = self.session.run(feeds).map_err(|e| anyhow!("ONNX Runtime failed: {e}"))?;
        let z = out[self.output.as_str()].try_extract_array::<f32>().map_err(|e| anyhow!("{e}"))?;
        Ok(z.into_dimensionality::<ndarray::Ix2>()?.to_owned())
    }

    /// `[B, D]` embeddings of a text model's samples, padded to the longest of them (pad id, mask 0),
    /// which the model's own masking keeps out of each embedding.
    pub fn embed_tokens(&mut self, text: &TextModel, samples: &[TokenSample]) -> Result<Array2<f32>> {
        let longest = samples.iter().map(|s| s.len()).max().unwrap_or(0);
        let packed = text.pack(samples, longest)?;
        let feeds = text.feeds(packed.view().into_dyn())?;
        let out = self.session.run(feeds).map_err(|e| anyhow!("ONNX Runtime failed: {e}"))?;
        let z = out[self.output.as_str()].try_extract_array::<f32>().map_err(|e| anyhow!("{e}"))?;
        Ok(z.into_dimensionality::<ndarray::Ix2>()?.to_owned())
    }
}
