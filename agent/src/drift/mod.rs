//! Pure statistics for rolling drift monitoring (docs/spec/scores.md#drift): the reference baseline, the
//! rolling window, relative drift and the Kolmogorov–Smirnov test. No I/O: the daemon reads and writes
//! baseline files and feeds windows; everything here is deterministic and tested with literals.
//!
//! Depends on nothing in the crate but the pure types of `scores` (ARCHITECTURE.md, "Invariants";
//! checked by the `layers` test in `lib.rs`): no engine, no configuration, no command-line text.

pub mod baseline;
pub mod calibrate;
pub mod ks;
pub mod maps;
pub mod merge;
pub mod welford;
pub mod window;

pub use baseline::{
    BASELINE_FORMAT, Baseline, BaselineBuilder, BaselineEntry, BaselineError, BaselineMeta,
    DEFAULT_EMBEDDING_RESERVOIR_SIZE, DEFAULT_RESERVOIR_SIZE, EmbeddingSample, ScoreSummary, Shard,
};
pub use calibrate::abs_drift_threshold;
pub use ks::{KsResult, kolmogorov_q, ks_two_sample};
pub use maps::{MapError, MapSums, MapWindow, MeanMap, ReferenceMaps};
pub use merge::merge;
pub use welford::RunningStats;
pub use window::{Window, WindowError};

/// Relative drift, paper §4.4: `Δ = (ref − window)/ref`, for the noise score and the variance score
/// alike. Positive: the window scores lower than the reference.
///
/// `None` when `reference` is 0 or not finite (or `window` is not finite): a reference score of 0
/// means the layer does not distinguish the reference data from noise at all, so "relative to it" has
/// no meaning; reporting nothing (and leaving alerting to the KS test and the absolute scores) is
/// more honest than ±∞ or NaN in a time series.
pub fn relative_drift(reference: f64, window: f64) -> Option<f64> {
    if reference == 0.0 || !reference.is_finite() || !window.is_finite() {
        return None;
    }
    Some((reference - window) / reference)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn relative_drift_literals() {
        // binary-exact literals: the window scoring lower gives a positive drift, higher a negative one
        assert_eq!(relative_drift(0.5, 0.25), Some(0.5));
        assert_eq!(relative_drift(0.25, 0.375), Some(-0.5));
        assert_eq!(relative_drift(0.25, 0.25), Some(0.0));
        assert_eq!(relative_drift(0.0, 0.1), None);
        assert_eq!(relative_drift(f64::NAN, 0.1), None);
        assert_eq!(relative_drift(0.1, f64::INFINITY), None);
    }
}
