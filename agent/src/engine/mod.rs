//! The engine: an attribution graph in an ONNX Runtime session, turning samples into per-layer scores.
//!
//! This is the boundary the daemon, `agent score` and `agent baseline` share: they hand it batches of
//! decoded samples and get one [`SampleScores`] per sample back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compiler::{LayerLayout, LayoutRequest};
use crate::runtime::Provider;

/// A layer to monitor: a short label for metrics and the ONNX tensor it names. The configuration's
/// `[[model.layers]]` entries are this type, and `--layer` flags parse into it ([`std::str::FromStr`]),
/// so a per-layer setting is added here once.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Label used in metrics and output (`layer="conv2"`); bounded, chosen by the user.
    pub name: String,
    /// The intermediate tensor in the ONNX graph.
    pub tensor: String,
    /// How the tensor's axes are read: `auto` (default), `nchw`, `nhwc` or `tokens`
    /// (docs/spec/attribution-graph.md#layer-layouts). Left out of the serialised form at its
    /// default, so the settings hash of configurations written before layouts existed is unchanged.
    #[serde(default, skip_serializing_if = "is_auto")]
    pub layout: LayerLayout,
    /// Token layers: the patch grid `[gh, gw]` (default: inferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grid: Option<[usize; 2]>,
    /// Token layers: tokens before the patch tokens (class token, registers; default: inferred).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix_tokens: Option<usize>,
}

fn is_auto(l: &LayerLayout) -> bool {
    *l == LayerLayout::Auto
}

impl LayerSpec {
    /// The compiler's request for this layer.
    pub fn layout_request(&self) -> LayoutRequest {
        LayoutRequest { layout: self.layout, grid: self.grid, prefix_tokens: self.prefix_tokens }
    }
}

/// `--layer TENSOR` or `--layer label=TENSOR`.
impl std::str::FromStr for LayerSpec {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(match s.split_once('=') {
            Some((name, tensor)) if !name.is_empty() => {
                LayerSpec { name: name.into(), tensor: tensor.into(), ..Default::default() }
            }
            _ => LayerSpec { name: s.into(), tensor: s.into(), ..Default::default() },
        })
    }
}

/// Mean/std normalisation applied after scaling to `[0, 1]`, per channel of the model's layout; the
/// same type and function ([`plugins::decode::normalize`]) for noise inputs and decoded data.
pub use plugins::decode::{Layout, Normalization};

/// The noise score's `E` map (docs/spec/scores.md#cost). The variance score always comes from
/// per-component maps: all `D`, or the `dims` subset.
///
/// - `exact`: `E` aggregates the same per-component maps (all `D`, or the `dims` subset).
/// - `mean_map`: `E = mean_j M_j` from ONE cotangent row `1/D`, exact for the `mean` embedding
///   aggregation of a map that is linear in the cotangent (`vanilla`/`actgrad` with `mean` channel
///   aggregation, no `normalize_dims`); with `dims` set, the variance score then costs `dims` rows.
/// - `hutchinson`: `E = Var_j M_j` estimated from `probes` centred Rademacher rows, for the `var`
///   embedding aggregation under the same linearity conditions. Measured errors: docs/REPRODUCTION.md.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Estimator {
    #[default]
    Exact,
    MeanMap,
    Hutchinson,
}

impl std::str::FromStr for Estimator {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "exact" => Ok(Estimator::Exact),
            "mean_map" => Ok(Estimator::MeanMap),
            "hutchinson" => Ok(Estimator::Hutchinson),
            _ => Err(format!("unknown estimator {s:?} (expected exact, mean_map or hutchinson)")),
        }
    }
}

/// `x_ref` of the smoothed estimator (docs/spec/scores.md#smoothed-attributions): written `"black"` (zeros,
/// the default), `"input"` (each input itself, so `x̃ = x + t·σ·ε`: only the noise is scaled by `t`), or the
/// path of a `.npy` sample.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(from = "String", into = "String")]
pub enum SmoothingReference {
    #[default]
    Black,
    Input,
    File(PathBuf),
}

impl From<String> for SmoothingReference {
    fn from(s: String) -> Self {
        match s.as_str() {
            "black" | "" => SmoothingReference::Black,
            "input" => SmoothingReference::Input,
            _ => SmoothingReference::File(PathBuf::from(s)),
        }
    }
}

impl From<SmoothingReference> for String {
    fn from(r: SmoothingReference) -> String {
        match r {
            SmoothingReference::Black => "black".into(),
            SmoothingReference::Input => "input".into(),
            SmoothingReference::File(p) => p.display().to_string(),
        }
    }
}

impl std::str::FromStr for SmoothingReference {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(SmoothingReference::from(s.to_string()))
    }
}

/// Everything the engine needs; the daemon's configuration and the command-line flags both build one.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EngineSpec {
    pub model_path: PathBuf,
    /// Model name used in metric labels.
    pub model_name: String,
    /// The rank-2 embedding output `[B, D]`.
    pub embedding: String,
    /// Layers in network order (the score curve's order).
    pub layers: Vec<LayerSpec>,
    /// How each sample is scored.
    pub score: ScoreSettings,
    /// The noise inputs.
    pub noise: NoiseSettings,
    /// Normalisation of raw `[0,1]` values (applied to noise inputs; decoders apply it to images).
    pub normalization: Normalization,
    /// Providers in order of preference, threads, runtime library.
    pub runtime: RuntimeSettings,
    /// Text models: input roles, pad id, length, noise ids (empty for a vision model).
    #[serde(default)]
    pub text: TextSettings,
}

impl EngineSpec {
    /// Seed of the component subset and the Hutchinson probes: its own setting, else the noise
    /// seed (which seeded both before they had their own).
    pub fn estimator_seed(&self) -> u64 {
        self.score.estimator_seed.unwrap_or_else(|| self.noise.seed())
    }

    /// The specification with the defaults of [`ScoreSettings`] and [`NoiseSettings`] for
    /// everything but the model, its embedding and the layers (none yet), except that it runs the
    /// plain gradient (`smoothing_points = 1`) on the CPU: what a one-off scoring without a configuration wants.
    pub fn new(model_path: &std::path::Path, embedding: &str) -> EngineSpec {
        EngineSpec {
            model_path: model_path.to_path_buf(),
            model_name: model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            embedding: embedding.to_string(),
            layers: vec![],
            score: ScoreSettings { smoothing_points: Some(1), ..ScoreSettings::default() },
            noise: NoiseSettings::default(),
            normalization: Normalization::default(),
            runtime: RuntimeSettings { providers: Some(vec![Provider::Cpu]), ..RuntimeSettings::default() },
            text: TextSettings::default(),
        }
    }
}

/// The per-sample results live with the scores (pure types), so that `drift` reads them without
/// depending on the engine.
pub use crate::scores::{LayerScores, SampleScores, ScoreKey};

/// Scores `batch` (`[N, …]`) `chunk` samples at a time through `score`, checks that each chunk gives
/// one result per sample, and hands each chunk's results to `on_chunk` with the index of its first
/// sample: the one loop for "score all of these" (the daemon's micro-batches and its baseline,
/// `agent score`, the reproduction), whatever does the scoring ([`Engine`], or the daemon's `Scorer`).
pub fn score_in_chunks(
    batch: ndarray::ArrayViewD<f32>,
    chunk: usize,
    score: &mut dyn FnMut(ndarray::ArrayViewD<f32>) -> anyhow::Result<Vec<SampleScores>>,
    on_chunk: &mut dyn FnMut(usize, Vec<SampleScores>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    let n = batch.len_of(ndarray::Axis(0));
    let mut start = 0;
    while start < n {
        let end = (start + chunk.max(1)).min(n);
        let scores = score(batch.slice_axis(ndarray::Axis(0), (start..end).into()))?;
        if scores.len() != end - start {
            anyhow::bail!("the engine returned {} results for {} samples", scores.len(), end - start);
        }
        on_chunk(start, scores)?;
        start = end;
    }
    Ok(())
}

mod session;
mod settings;
pub mod tokens;
pub use session::{Engine, normalize};
pub use settings::{NoiseSettings, RuntimeSettings, ScoreSettings};
pub use tokens::{TextModel, TextSettings, TokenSample, score_tokens_in_chunks};
