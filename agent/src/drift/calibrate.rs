//! Thresholds for the relative drift `|Δ|` from the baseline itself, instead of one fixed number for
//! every model and layer: docs/DRIFT_SIGNALS.md measured that on the demo encoder a 1 % false-alarm
//! rate at windows of 100 needs `|Δ|` thresholds of 0.014–0.029, an order of magnitude below the
//! `0.2` the alert rules used to hard-code, which then missed most realistic shifts.
//!
//! The threshold for windows of `n` samples is the `1 − α` quantile of `|Δ|` over `resamples`
//! pseudo-windows of `n` scores drawn with replacement from the reference reservoir, each compared
//! with the reference mean: the spread `|Δ|` has when the window comes from the reference
//! distribution. Cost `resamples · n` additions per (layer, method, score), done when the window size
//! changes, not per sample.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::baseline::ScoreSummary;
use super::relative_drift;

/// The `1 − alpha` quantile of `|Δ|` for windows of `n` drawn from `reference`'s reservoir; `None`
/// when the reservoir is empty, `n = 0`, or `Δ` is undefined (a reference mean of 0).
pub fn abs_drift_threshold(
    reference: &ScoreSummary,
    n: usize,
    alpha: f64,
    resamples: usize,
    seed: u64,
) -> Option<f64> {
    let r = &reference.reservoir;
    if r.is_empty() || n == 0 || resamples == 0 {
        return None;
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut draws = Vec::with_capacity(resamples);
    for _ in 0..resamples {
        let mean = (0..n).map(|_| r[rng.random_range(0..r.len())]).sum::<f64>() / n as f64;
        draws.push(relative_drift(reference.mean, mean)?.abs());
    }
    draws.sort_by(f64::total_cmp);
    // Type 7 quantile, as the rest of the crate.
    let pos = (1.0 - alpha).clamp(0.0, 1.0) * (draws.len() - 1) as f64;
    let lo = pos.floor() as usize;
    let hi = (lo + 1).min(draws.len() - 1);
    Some(draws[lo] + (pos - lo as f64) * (draws[hi] - draws[lo]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(values: Vec<f64>) -> ScoreSummary {
        let n = values.len() as f64;
        let mean = values.iter().sum::<f64>() / n;
        let std = (values.iter().map(|v| (v - mean) * (v - mean)).sum::<f64>() / n).sqrt();
        let mut reservoir = values;
        reservoir.sort_by(f64::total_cmp);
        ScoreSummary { count: reservoir.len() as u64, mean, std, non_finite: 0, reservoir }
    }

    /// The window mean of `n` draws is about normal with sd `σ/√n`, so the 99th percentile of `|Δ|`
    /// is about `2.576·σ/(√n·|mean|)` (the two-sided 1 % point of the normal).
    #[test]
    fn matches_the_normal_approximation() {
        // 0.5 ± 0.1·(i mod 21 − 10)/10: a symmetric reservoir with mean 0.5
        let s = summary((0..2100).map(|i| 0.5 + 0.1 * (f64::from(i % 21) - 10.0) / 10.0).collect());
        let t = abs_drift_threshold(&s, 100, 0.01, 20_000, 3).unwrap();
        let expected = 2.5758 * s.std / (100f64.sqrt() * 0.5);
        assert!((t / expected - 1.0).abs() < 0.05, "{t} vs {expected}");
        // Larger windows, tighter thresholds (∝ 1/√n); seeded.
        let t4 = abs_drift_threshold(&s, 400, 0.01, 20_000, 3).unwrap();
        assert!((t / t4 - 2.0).abs() < 0.15, "{t} vs {t4}");
        assert_eq!(abs_drift_threshold(&s, 100, 0.01, 20_000, 3), Some(t));
    }

    #[test]
    fn undefined_cases() {
        assert_eq!(abs_drift_threshold(&summary(vec![0.0, 0.0]), 10, 0.01, 100, 0), None);
        assert_eq!(abs_drift_threshold(&summary(vec![1.0]), 0, 0.01, 100, 0), None);
        // A constant non-zero score: Δ is always 0.
        assert_eq!(abs_drift_threshold(&summary(vec![2.0; 5]), 3, 0.01, 100, 0), Some(0.0));
    }
}
