//! The paper's scores, pure and I/O-free (spec: `shared/spec/scores.md`).
//!
//! Layout of a per-sample, per-layer attribution: `[D, H, W]`, one channel-aggregated map per embedding
//! component (exactly what the attribution graph outputs for one sample, `K` rows at a time).

use serde::{Deserialize, Serialize};

/// Attribution method (spec §1).
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

/// An aggregation over channels (`φ_C`, spec §2) or over embedding components (`φ_E`, spec §4).
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
