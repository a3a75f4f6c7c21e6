//! The engine: an attribution graph in an ONNX Runtime session, turning samples into per-layer scores.
//!
//! This is the boundary the daemon, `agent score` and `agent baseline` share: they hand it batches of
//! decoded samples and get one [`SampleScores`] per sample back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::compiler::{LayerLayout, LayoutRequest};
use crate::runtime::Provider;
use crate::scores::{Aggregation, Method};

/// A layer to monitor: a short label for metrics and the ONNX tensor it names.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LayerSpec {
    /// Label used in metrics and output (`layer="conv2"`); bounded, chosen by the user.
    pub name: String,
    /// The intermediate tensor in the ONNX graph.
    pub tensor: String,
    /// How the tensor's axes are read: `auto` (default), `nchw`, `nhwc` or `tokens`
    /// (docs/spec/token-layers.md). Left out of the serialised form at its default, so the settings
    /// hash of configurations written before layouts existed is unchanged.
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

/// Mean/std normalisation applied after scaling to `[0, 1]`, per channel of the model's layout; the
/// same type and function ([`plugins::decode::normalize`]) for noise inputs and decoded data.
pub use plugins::decode::{Layout, Normalization};

/// The noise score's `E` map (spec §6). The variance score always comes from per-component maps: all
/// `D`, or the `dims` subset.
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

pub fn default_probes() -> usize {
    64
}

/// `x_ref` of the smoothed estimator (spec §1): written `"black"` (zeros, the default), `"input"` (each
/// input itself, so `x̃ = x + t·σ·ε`: only the noise is scaled by `t`), or the path of a `.npy` sample.
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
    pub methods: Vec<Method>,
    pub channel_agg: Aggregation,
    pub embedding_agg: Aggregation,
    pub normalize_dims: bool,
    /// Variance-score binarisation threshold (paper Fig. 5), off when `None`.
    pub binarize: Option<f32>,
    /// Noise inputs drawn at start-up (`U[0,1]` in the raw input domain) ...
    pub n_noise: usize,
    pub noise_seed: u64,
    /// ... or given explicitly as `.npy` files (then `n_noise`/`noise_seed` are not used).
    pub noise_inputs: Vec<PathBuf>,
    /// Normalisation of raw `[0,1]` values (applied to noise inputs; decoders apply it to images).
    pub normalization: Normalization,
    /// Smoothed estimator (spec §1): `samples = 1, smoothing = 0` is the plain gradient.
    pub samples: usize,
    pub smoothing: f32,
    pub smoothing_seed: u64,
    /// Reference input `x_ref` of the smoothed estimator.
    #[serde(default)]
    pub smoothing_reference: SmoothingReference,
    /// Score a seeded random subset of this many embedding components (spec §6); `None` = all `D`.
    pub dims: Option<usize>,
    /// How the embedding-aggregated map `E` of the noise score is obtained (spec §6).
    #[serde(default)]
    pub estimator: Estimator,
    /// Hutchinson probes (with `estimator = hutchinson`).
    #[serde(default = "default_probes")]
    pub probes: usize,
    /// Cotangent rows per ONNX Runtime run (`K`).
    pub rows_per_run: usize,
    /// Providers in order of preference, threads, runtime library.
    pub providers: Vec<Provider>,
    pub threads: usize,
    pub onnxruntime_path: Option<PathBuf>,
}

impl EngineSpec {
    /// The specification with the spec's defaults for everything but the model, its embedding and
    /// the layers (none yet): vanilla, `abs`/`var` aggregations, 4 noise inputs with seed 0, the plain
    /// gradient (`samples = 1`), exact scores, 32 rows per run, CPU.
    pub fn new(model_path: &std::path::Path, embedding: &str) -> EngineSpec {
        EngineSpec {
            model_path: model_path.to_path_buf(),
            model_name: model_path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_default(),
            embedding: embedding.to_string(),
            layers: vec![],
            methods: vec![Method::Vanilla],
            channel_agg: Aggregation::Abs,
            embedding_agg: Aggregation::Var,
            normalize_dims: false,
            binarize: None,
            n_noise: 4,
            noise_seed: 0,
            noise_inputs: vec![],
            normalization: Normalization::default(),
            samples: 1,
            smoothing: 0.0,
            smoothing_seed: 0,
            smoothing_reference: SmoothingReference::Black,
            dims: None,
            estimator: Estimator::Exact,
            probes: default_probes(),
            rows_per_run: 32,
            providers: vec![Provider::Cpu],
            threads: 0,
            onnxruntime_path: None,
        }
    }
}

/// One sample's scores for one (layer, method) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    pub noise_score: f64,
    pub variance_score: f64,
}

/// One sample's scores, aligned with [`Engine::keys`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SampleScores {
    pub scores: Vec<LayerScores>,
}

/// A (layer, method) pair the engine scores, with its noise benchmark.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreKey {
    pub layer: String,
    pub method: Method,
    pub noise_benchmark: f64,
}

mod session;
pub use session::{Engine, normalize};
