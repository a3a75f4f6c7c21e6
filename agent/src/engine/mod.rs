//! The engine: an attribution graph in an ONNX Runtime session, turning samples into per-layer scores.
//!
//! This is the boundary the daemon, `agent score` and `agent baseline` share: they hand it batches of
//! decoded samples and get one [`SampleScores`] per sample back.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::runtime::Provider;
use crate::scores::{Aggregation, Method};

/// A layer to monitor: a short label for metrics and the ONNX tensor it names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LayerSpec {
    /// Label used in metrics and output (`layer="conv2"`); bounded, chosen by the user.
    pub name: String,
    /// The intermediate tensor in the ONNX graph.
    pub tensor: String,
}

/// Mean/std normalisation applied after scaling to `[0, 1]`, per channel of the model's layout; the
/// same type and function ([`plugins::decode::normalize`]) for noise inputs and decoded data.
pub use plugins::decode::{Layout, Normalization};

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
    /// Score a seeded random subset of this many embedding components (spec §6); `None` = all `D`.
    pub dims: Option<usize>,
    /// Cotangent rows per ONNX Runtime run (`K`).
    pub rows_per_run: usize,
    /// Providers in order of preference, threads, runtime library.
    pub providers: Vec<Provider>,
    pub threads: usize,
    pub onnxruntime_path: Option<PathBuf>,
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
