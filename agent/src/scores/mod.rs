//! The paper's scores, pure and I/O-free (their definitions: `docs/spec/scores.md`).
//!
//! Layout of a per-sample, per-layer attribution: `[D, H, W]`, one channel-aggregated map per embedding
//! component (exactly what the attribution graph outputs for one sample, `K` rows at a time).
//!
//! - [`channel`]: `φ_C` (reference path; the graph folds channels in production).
//! - [`normalize`]: min–max normalisation of one map.
//! - [`embedding`], [`variance`], [`stream`]: `φ_E`, the variance score, and streaming accumulators that
//!   take the graph's `[K, H, W]` chunks and give bit-identical results to the whole-array functions.
//! - [`noise`]: the noise score and its benchmark.
//! - [`subset`], [`hutchinson`]: the two large-`D` estimators of docs/spec/scores.md#cost, with measured
//!   errors.
//! - [`draws`]: the smoothed estimator's points and the noise inputs, from seeded generators.

pub mod channel;
pub mod draws;
pub mod embedding;
pub mod hutchinson;
mod moments;
pub mod noise;
pub mod normalize;
pub mod stream;
pub mod subset;
#[cfg(test)]
mod synthetic;
pub mod variance;

pub use channel::channel_aggregate;
pub use draws::{noise_inputs, noise_token_ids, smoothing_points};
pub use embedding::{EmbeddingAccumulator, embedding_aggregate, embedding_aggregate_maps};
pub use hutchinson::{HutchinsonAccumulator, hutchinson_probes, hutchinson_variance};
pub use noise::{NoiseReference, noise_benchmark, noise_score};
pub use normalize::normalize_map;
pub use stream::{SampleMaps, ScoreAccumulator};
pub use subset::{choose_dims, subset_variance_factor};
pub use variance::{VarianceAccumulator, variance_score};

use serde::{Deserialize, Serialize};

/// One sample's scores for one (layer, method) pair.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct LayerScores {
    pub noise_score: f64,
    pub variance_score: f64,
}

/// One sample's scores, aligned with the engine's keys (`Engine::keys`).
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

/// Why a score could not be computed. Typed rather than NaN so that a misconfiguration (no noise
/// inputs, a wrong shape from the graph) stops the engine with a message instead of exporting NaN.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScoreError {
    #[error("shape mismatch: expected {expected:?}, got {got:?}")]
    ShapeMismatch { expected: Vec<usize>, got: Vec<usize> },
    #[error("nothing to aggregate: no {0}")]
    Empty(&'static str),
    #[error("the noise benchmark compares pairs of noise inputs and needs at least 2, got {0}")]
    TooFewNoiseInputs(usize),
    #[error(
        "a random subset of {sample} of {population} embedding components cannot estimate a variance (need 2 ≤ K ≤ D)"
    )]
    BadSubset { sample: usize, population: usize },
    #[error("invalid parameter: {0}")]
    InvalidParameter(String),
}

/// Attribution method (docs/spec/scores.md#attribution).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Method {
    /// `∂z_j/∂h`
    Vanilla,
    /// `h ⊙ ∂z_j/∂h`
    #[serde(rename = "actgrad")]
    ActGrad,
    /// `ReLU(Σ_c α_{j,c} h_c)`, `α` the spatial mean of the gradient
    #[serde(rename = "gradcam")]
    GradCam,
}

impl Method {
    pub const ALL: [Method; 3] = [Method::Vanilla, Method::ActGrad, Method::GradCam];
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Vanilla => "vanilla",
            Method::ActGrad => "actgrad",
            Method::GradCam => "gradcam",
        }
    }
}

impl std::str::FromStr for Method {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "vanilla" => Ok(Method::Vanilla),
            "actgrad" => Ok(Method::ActGrad),
            "gradcam" => Ok(Method::GradCam),
            _ => Err(format!("unknown method {s:?} (expected vanilla, actgrad or gradcam)")),
        }
    }
}

/// An aggregation over channels (`φ_C`, docs/spec/scores.md#channel-aggregation) or over embedding components
/// (`φ_E`, docs/spec/scores.md#embedding-aggregation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Aggregation {
    Mean,
    Abs,
    /// Population variance (ddof = 0).
    Var,
}

impl Aggregation {
    pub fn as_str(self) -> &'static str {
        match self {
            Aggregation::Mean => "mean",
            Aggregation::Abs => "abs",
            Aggregation::Var => "var",
        }
    }
}

impl std::str::FromStr for Aggregation {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "mean" => Ok(Aggregation::Mean),
            "abs" => Ok(Aggregation::Abs),
            "var" => Ok(Aggregation::Var),
            _ => Err(format!("unknown aggregation {s:?} (expected mean, abs or var)")),
        }
    }
}
