//! Drift detectors on the embedding `z` itself, beside the paper's scores: the tests users know from
//! Alibi Detect, Evidently and NannyML, so the two kinds of signal can be compared on the same data
//! (`agent report`, `docs/DRIFT_SIGNALS.md`).
//!
//! Pure math, no I/O. Each detector is fitted once on a reference sample (`[N, D]`, one embedding per
//! row) and then tests windows against it:
//!
//! - [`mmd`]: unbiased MMD² with an RBF kernel, median-heuristic bandwidth, permutation p-value;
//! - [`ks_share`]: per-component two-sample KS, Benjamini–Hochberg, share of drifted components;
//! - [`centroid`]: cosine and Euclidean distance of the means, thresholds from resampled reference
//!   windows;
//! - [`pca`]: mean reconstruction error against a PCA fitted on the reference (NannyML's method).
//!
//! Cost is bounded by construction (each module says how): at a window of 1000 and `D = 2048` every
//! test stays well under a second on one core (`agent/examples/detectors_bench.rs`,
//! `docs/BENCHMARKS.md`). Randomness (subsets, permutations, resamples) comes from a seeded ChaCha8
//! generator, so the same inputs give the same result.

pub mod centroid;
pub mod ks_share;
mod linalg;
pub mod mmd;
pub mod pca;
#[cfg(test)]
mod reference_values;

use ndarray::{Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::Serialize;

pub use centroid::{Centroid, CentroidConfig};
pub use ks_share::{KsShare, KsShareConfig, benjamini_hochberg};
pub use mmd::{Mmd, MmdConfig};
pub use pca::{Pca, PcaConfig};

/// One detector's verdict on one window.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DetectorResult {
    pub name: String,
    /// The detector's statistic (its meaning is the detector's: MMD², a share, a distance, an error).
    pub statistic: f64,
    /// `None` for detectors that have no p-value (PCA reconstruction error: a ±3σ band).
    pub p_value: Option<f64>,
    /// The value of `statistic` beyond which the detector reports drift, for the same window size.
    pub threshold: f64,
    pub drift: bool,
}

/// Converts `[N, D]` embeddings to `f64`, refusing empty input and non-finite values: a NaN in one
/// component would silently poison every distance, so the caller hears which detector and which row.
pub(crate) fn to_f64(what: &str, x: ArrayView2<f32>) -> Result<Array2<f64>, String> {
    if x.nrows() == 0 || x.ncols() == 0 {
        return Err(format!("{what}: empty embedding sample (shape {:?})", x.shape()));
    }
    if let Some((row, _)) = x.axis_iter(Axis(0)).enumerate().find(|(_, r)| r.iter().any(|v| !v.is_finite())) {
        return Err(format!("{what}: row {row} has a non-finite embedding component"));
    }
    Ok(x.mapv(f64::from))
}

/// Checks a window's width against the reference's.
pub(crate) fn check_width(what: &str, reference_d: usize, window: ArrayView2<f32>) -> Result<(), String> {
    if window.ncols() != reference_d {
        return Err(format!(
            "{what}: the window's embeddings have {} components, the reference's {reference_d}",
            window.ncols()
        ));
    }
    Ok(())
}

/// At most `cap` rows of `x`, a seeded uniform subset (in their original order) when there are more.
pub(crate) fn subsample(x: Array2<f64>, cap: usize, seed: u64) -> Array2<f64> {
    if cap == 0 || x.nrows() <= cap {
        return x;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut idx = rand::seq::index::sample(&mut rng, x.nrows(), cap).into_vec();
    idx.sort_unstable();
    x.select(Axis(0), &idx)
}

/// The `q`-quantile of `v` (type 7, NumPy's default linear interpolation); `v` need not be sorted.
pub(crate) fn quantile(v: &[f64], q: f64) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    let pos = q.clamp(0.0, 1.0) * (s.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(s.len() - 1);
    s[lo] + (pos - lo as f64) * (s[hi] - s[lo])
}

/// Monte-Carlo p-value `(1 + k)/(1 + n)`, `k` of the `n` null statistics at least `observed`: counting
/// the observed statistic as one of the null draws keeps the test exact at level α and never gives 0
/// (Phipson & Smyth 2010), where `k/n` would be anti-conservative.
pub(crate) fn monte_carlo_p(observed: f64, null: &[f64]) -> f64 {
    let k = null.iter().filter(|&&s| s >= observed).count();
    (1 + k) as f64 / (1 + null.len()) as f64
}

#[cfg(test)]
pub(crate) mod testdata {
    //! Deterministic inputs shared with `tools/detectors_reference.py`, which computes the expected
    //! values independently with numpy/scipy: the same closed-form formulas, no shared random draws.
    use ndarray::Array2;

    /// `x[i, j] = sin(0.7·i + 1.3·j) + 0.5·cos(0.37·i·(j + 1)) + 0.1·j`, `[n, d]`.
    pub fn reference(n: usize, d: usize) -> Array2<f32> {
        Array2::from_shape_fn((n, d), |(i, j)| {
            let (i, j) = (i as f64, j as f64);
            ((0.7 * i + 1.3 * j).sin() + 0.5 * (0.37 * i * (j + 1.0)).cos() + 0.1 * j) as f32
        })
    }

    /// `y[i, j] = cos(0.9·i + 0.4·j)·(1 + 0.05·j) + shift`, `[n, d]`.
    pub fn window(n: usize, d: usize, shift: f64) -> Array2<f32> {
        Array2::from_shape_fn((n, d), |(i, j)| {
            ((0.9 * i as f64 + 0.4 * j as f64).cos() * (1.0 + 0.05 * j as f64) + shift) as f32
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monte_carlo_p_counts_the_observed_statistic() {
        assert_eq!(monte_carlo_p(5.0, &[1.0, 2.0, 3.0]), 0.25);
        assert_eq!(monte_carlo_p(2.0, &[1.0, 2.0, 3.0]), 0.75);
        assert_eq!(monte_carlo_p(0.0, &[1.0, 2.0, 3.0]), 1.0);
    }

    #[test]
    fn quantile_is_numpy_type_7() {
        // np.quantile([3, 1, 4, 1, 5], [0.5, 0.9]) = [3.0, 4.6]
        assert_eq!(quantile(&[3.0, 1.0, 4.0, 1.0, 5.0], 0.5), 3.0);
        assert!((quantile(&[3.0, 1.0, 4.0, 1.0, 5.0], 0.9) - 4.6).abs() < 1e-12);
    }

    #[test]
    fn bad_embeddings_are_named() {
        let mut x = Array2::<f32>::zeros((3, 2));
        x[[1, 0]] = f32::NAN;
        assert_eq!(to_f64("mmd", x.view()).unwrap_err(), "mmd: row 1 has a non-finite embedding component");
        assert!(to_f64("mmd", Array2::<f32>::zeros((0, 2)).view()).unwrap_err().contains("empty"));
        assert!(check_width("pca", 3, x.view()).unwrap_err().contains("2 components, the reference's 3"));
    }

    #[test]
    fn subsample_is_bounded_seeded_and_ordered() {
        let x = Array2::from_shape_fn((100, 1), |(i, _)| i as f64);
        let s = subsample(x.clone(), 10, 3);
        assert_eq!(s.nrows(), 10);
        assert!(s.column(0).windows(2).into_iter().all(|w| w[0] < w[1]));
        assert_eq!(s, subsample(x.clone(), 10, 3));
        assert_eq!(subsample(x.clone(), 200, 3), x);
    }
}
