//! `embedding_centroid`: the distance between the reference's and the window's mean embedding, as
//! cosine distance `1 − cos(μ_r, μ_w)` and Euclidean distance `‖μ_r − μ_w‖` (Evidently's `distance`,
//! Arize's centroid drift).
//!
//! A distance has no scale of its own, so the threshold comes from the reference: `resamples` times, a
//! pseudo-window of the window's size and a pseudo-reference of the reference's size are drawn with
//! replacement from the reference, and their means' distance is one draw of the statistic under "no
//! drift" — both sides resampled, because the observed statistic carries the sampling error of both
//! means (variance `Σ·(1/n + 1/N)`). Threshold: the `1 − α` quantile; p-value `(1 + k)/(1 + B)`.
//!
//! Cost: one `[2B, N] × [N, D]` product per test (`B = 200`, `N = 1000`, `D = 2048`: 8·10⁸
//! multiply-adds in a tuned GEMM), with the reference capped at `max_reference` rows. The null depends on `n` only, so a caller testing windows
//! of one size repeatedly may keep [`Centroid::null`]'s result.

use ndarray::{Array1, Array2, ArrayView1, ArrayView2, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::{DetectorResult, check_width, monte_carlo_p, quantile, subsample, to_f64};

pub const COSINE: &str = "embedding_centroid_cosine";
pub const EUCLIDEAN: &str = "embedding_centroid_euclidean";
const WHAT: &str = "embedding_centroid";

#[derive(Debug, Clone, PartialEq)]
pub struct CentroidConfig {
    pub resamples: usize,
    pub alpha: f64,
    /// Reference rows kept (seeded uniform subset); 0 keeps all.
    pub max_reference: usize,
    pub seed: u64,
}

impl Default for CentroidConfig {
    fn default() -> Self {
        CentroidConfig { resamples: 200, alpha: 0.05, max_reference: 1000, seed: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct Centroid {
    reference: Array2<f64>,
    mean: Array1<f64>,
    config: CentroidConfig,
}

/// The null distributions of both distances for one window size.
#[derive(Debug, Clone, PartialEq)]
pub struct CentroidNull {
    pub window: usize,
    pub cosine: Vec<f64>,
    pub euclidean: Vec<f64>,
}

pub fn cosine_distance(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    let (na, nb) = (a.dot(&a).sqrt(), b.dot(&b).sqrt());
    if na == 0.0 || nb == 0.0 {
        // A zero mean has no direction; call it orthogonal rather than NaN.
        return 1.0;
    }
    1.0 - a.dot(&b) / (na * nb)
}

pub fn euclidean_distance(a: ArrayView1<f64>, b: ArrayView1<f64>) -> f64 {
    a.iter().zip(b).map(|(x, y)| (x - y) * (x - y)).sum::<f64>().sqrt()
}

impl Centroid {
    pub fn fit(reference: ArrayView2<f32>, config: CentroidConfig) -> Result<Centroid, String> {
        let r = subsample(to_f64(WHAT, reference)?, config.max_reference, config.seed);
        if r.nrows() < 2 {
            return Err(format!("{WHAT}: the reference needs at least 2 embeddings, it has {}", r.nrows()));
        }
        let mean = r.mean_axis(Axis(0)).expect("non-empty");
        Ok(Centroid { reference: r, mean, config })
    }

    pub fn mean(&self) -> ArrayView1<'_, f64> {
        self.mean.view()
    }

    /// `(cosine, Euclidean)` distance of a window's mean from the reference's.
    pub fn distances(&self, window: ArrayView2<f32>) -> Result<(f64, f64), String> {
        check_width(WHAT, self.reference.ncols(), window)?;
        let w = to_f64(WHAT, window)?.mean_axis(Axis(0)).expect("non-empty");
        Ok((cosine_distance(self.mean.view(), w.view()), euclidean_distance(self.mean.view(), w.view())))
    }

    /// Distances of resampled pseudo-window means (size `window`) from resampled reference means.
    ///
    /// Each resample is a row of weights over the reference rows (draw counts divided by the draw
    /// size), so all `2·B` means come from one `[2B, N] × [N, D]` matrix product instead of
    /// `B·(n + N)` row additions.
    pub fn null(&self, window: usize) -> CentroidNull {
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let n_ref = self.reference.nrows();
        let b = self.config.resamples;
        let mut weights = Array2::<f64>::zeros((2 * b, n_ref));
        for r in 0..b {
            for (row, size) in [(2 * r, window.max(1)), (2 * r + 1, n_ref)] {
                for _ in 0..size {
                    weights[[row, rng.random_range(0..n_ref)]] += 1.0 / size as f64;
                }
            }
        }
        let means = weights.dot(&self.reference);
        let (mut cosine, mut euclidean) = (Vec::with_capacity(b), Vec::with_capacity(b));
        for r in 0..b {
            let (w, reference) = (means.row(2 * r), means.row(2 * r + 1));
            cosine.push(cosine_distance(reference, w));
            euclidean.push(euclidean_distance(reference, w));
        }
        CentroidNull { window, cosine, euclidean }
    }

    /// Both distances with thresholds from a fresh null for this window's size.
    pub fn test(&self, window: ArrayView2<f32>) -> Result<[DetectorResult; 2], String> {
        let null = self.null(window.nrows());
        self.test_with(window, &null)
    }

    /// Both distances against a null computed earlier (for the same window size).
    pub fn test_with(
        &self,
        window: ArrayView2<f32>,
        null: &CentroidNull,
    ) -> Result<[DetectorResult; 2], String> {
        if null.window != window.nrows() {
            return Err(format!(
                "{WHAT}: a null for windows of {} used on a window of {}",
                null.window,
                window.nrows()
            ));
        }
        let (cosine, euclidean) = self.distances(window)?;
        let alpha = self.config.alpha;
        let result = |name: &str, stat: f64, null: &[f64]| {
            let p = monte_carlo_p(stat, null);
            DetectorResult {
                name: name.into(),
                statistic: stat,
                p_value: Some(p),
                threshold: quantile(null, 1.0 - alpha),
                drift: p <= alpha,
            }
        };
        Ok([result(COSINE, cosine, &null.cosine), result(EUCLIDEAN, euclidean, &null.euclidean)])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::reference_values::*;
    use crate::detectors::testdata;

    #[test]
    fn distances_match_numpy() {
        let det = Centroid::fit(testdata::reference(40, 6).view(), CentroidConfig::default()).unwrap();
        let [cos, euc] = det.test(testdata::window(30, 6, 0.5).view()).unwrap();
        assert!((cos.statistic - CENTROID_COSINE).abs() < 1e-12, "{}", cos.statistic);
        assert!((euc.statistic - CENTROID_EUCLIDEAN).abs() < 1e-12, "{}", euc.statistic);
        assert_eq!(cosine_distance(ndarray::array![1.0, 0.0].view(), ndarray::array![0.0, 2.0].view()), 1.0);
    }

    /// The resampled null's spread follows `√(tr Σ·(1/n + 1/N))` for the Euclidean distance — the
    /// sampling error of two independent means — within the resampling noise.
    #[test]
    fn null_has_the_sampling_error_of_two_means() {
        let r = testdata::reference(400, 8);
        let cfg = CentroidConfig { resamples: 2000, max_reference: 0, ..CentroidConfig::default() };
        let det = Centroid::fit(r.view(), cfg).unwrap();
        let null = det.null(50);
        let rf = r.mapv(f64::from);
        let var: f64 = rf.var_axis(Axis(0), 0.0).sum();
        let expected_ms = var * (1.0 / 50.0 + 1.0 / 400.0);
        let ms: f64 = null.euclidean.iter().map(|e| e * e).sum::<f64>() / null.euclidean.len() as f64;
        assert!((ms / expected_ms - 1.0).abs() < 0.08, "{ms} vs {expected_ms}");
    }

    #[test]
    fn a_shift_is_flagged_and_the_reference_is_not() {
        let r = testdata::reference(200, 5);
        let det = Centroid::fit(r.view(), CentroidConfig::default()).unwrap();
        let [_, euc] = det.test(testdata::window(100, 5, 1.0).view()).unwrap();
        assert!(euc.drift && euc.p_value == Some(1.0 / 201.0) && euc.statistic > euc.threshold);
        let [cos, euc] = det.test(r.slice_axis(Axis(0), (..100).into())).unwrap();
        assert!(!euc.drift && !cos.drift, "{euc:?} {cos:?}");
        let null = det.null(10);
        assert!(det.test_with(r.view(), &null).unwrap_err().contains("windows of 10"));
    }
}
