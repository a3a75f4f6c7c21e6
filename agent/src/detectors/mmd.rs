//! `embedding_mmd`: the unbiased MMD² between the reference's and the window's embeddings with an RBF
//! kernel, and a permutation p-value (Gretton et al. 2012; Alibi Detect's `MMDDrift`).
//!
//! Kernel `k(a, b) = exp(−‖a − b‖² / (2σ²))` with the median heuristic fixed on the reference at fit
//! time: `2σ² = median_{i<j} ‖r_i − r_j‖²`, so the kernel's scale follows the data's and a window
//! cannot move its own bandwidth.
//!
//! Cost bound: both sides are capped at `max_samples` rows (a seeded uniform subset), so with the
//! defaults (500 each) the pooled kernel matrix is 1000 × 1000 whatever the window: one GEMM of
//! `1000 × D × 1000` to fill it, then each permutation is a pass over its upper triangle (5·10⁵ adds),
//! never a new kernel evaluation. The statistic's standard error from the cap is what a window of 500
//! gives; MMD's power grows with the sample, so the cap trades a little power for a fixed cost.

use ndarray::{Array2, ArrayView2};
use rand::SeedableRng;
use rand::seq::SliceRandom;
use rand_chacha::ChaCha8Rng;

use super::{DetectorResult, check_width, linalg, monte_carlo_p, quantile, subsample, to_f64};

pub const NAME: &str = "embedding_mmd";

#[derive(Debug, Clone, PartialEq)]
pub struct MmdConfig {
    /// Rows kept per side (reference at fit, window at test); 0 keeps all.
    pub max_samples: usize,
    /// Permutations of the pooled sample for the p-value.
    pub permutations: usize,
    /// Drift when `p ≤ alpha`.
    pub alpha: f64,
    pub seed: u64,
}

impl Default for MmdConfig {
    fn default() -> Self {
        MmdConfig { max_samples: 500, permutations: 200, alpha: 0.05, seed: 0 }
    }
}

/// A fitted MMD detector: the (capped) reference and its bandwidth.
#[derive(Debug, Clone)]
pub struct Mmd {
    reference: Array2<f64>,
    /// `2σ²`, the kernel's denominator.
    two_sigma2: f64,
    config: MmdConfig,
}

impl Mmd {
    pub fn fit(reference: ArrayView2<f32>, config: MmdConfig) -> Result<Mmd, String> {
        let r = subsample(to_f64(NAME, reference)?, config.max_samples, config.seed);
        if r.nrows() < 2 {
            return Err(format!("{NAME}: the reference needs at least 2 embeddings, it has {}", r.nrows()));
        }
        let d2 = linalg::sq_distances(r.view(), r.view());
        let mut upper: Vec<f64> = Vec::with_capacity(r.nrows() * (r.nrows() - 1) / 2);
        for i in 0..r.nrows() {
            for j in i + 1..r.nrows() {
                upper.push(d2[[i, j]]);
            }
        }
        let two_sigma2 = median(&mut upper);
        if two_sigma2 <= 0.0 {
            return Err(format!(
                "{NAME}: the reference embeddings are (mostly) identical; the median distance is 0"
            ));
        }
        Ok(Mmd { reference: r, two_sigma2, config })
    }

    /// `σ` of the kernel.
    pub fn bandwidth(&self) -> f64 {
        (self.two_sigma2 / 2.0).sqrt()
    }

    /// The fitted kernel between every row of `a` and every row of `b` (for experiments that test
    /// many windows drawn from one pool: fill the pool's kernel once, then [`mmd2_indexed`]).
    pub fn kernel_matrix(&self, a: ArrayView2<f32>, b: ArrayView2<f32>) -> Result<Array2<f64>, String> {
        let (a, b) = (to_f64(NAME, a)?, to_f64(NAME, b)?);
        let mut k = linalg::sq_distances(a.view(), b.view());
        k.mapv_inplace(|d| (-d / self.two_sigma2).exp());
        Ok(k)
    }

    /// The statistic, the permutation p-value `(1 + k)/(1 + n)`, and as threshold the permutation
    /// distribution's `1 − α` quantile (the critical value the statistic is compared with).
    pub fn test(&self, window: ArrayView2<f32>) -> Result<DetectorResult, String> {
        check_width(NAME, self.reference.ncols(), window)?;
        let w = subsample(to_f64(NAME, window)?, self.config.max_samples, self.config.seed ^ 0x5eed);
        if w.nrows() < 2 {
            return Err(format!("{NAME}: the window needs at least 2 embeddings, it has {}", w.nrows()));
        }
        let (m, n) = (self.reference.nrows(), w.nrows());
        let pooled = ndarray::concatenate(ndarray::Axis(0), &[self.reference.view(), w.view()])
            .map_err(|e| format!("{NAME}: {e}"))?;
        let mut k = linalg::sq_distances(pooled.view(), pooled.view());
        k.mapv_inplace(|d| (-d / self.two_sigma2).exp());
        let pooled = PooledKernel::new(k);
        let mut labels: Vec<bool> = (0..m + n).map(|i| i >= m).collect();
        let observed = pooled.mmd2(&labels);
        let mut rng = ChaCha8Rng::seed_from_u64(self.config.seed);
        let null: Vec<f64> = (0..self.config.permutations)
            .map(|_| {
                labels.shuffle(&mut rng);
                pooled.mmd2(&labels)
            })
            .collect();
        let p = monte_carlo_p(observed, &null);
        Ok(DetectorResult {
            name: NAME.into(),
            statistic: observed,
            p_value: Some(p),
            threshold: quantile(&null, 1.0 - self.config.alpha),
            drift: p <= self.config.alpha,
        })
    }
}

/// A pooled sample's kernel matrix with the sums a permutation does not change (the grand total and
/// the diagonal), so each split's MMD² costs one matrix–vector product: with `y` the 0/1 indicator of
/// the second sample and `v = K·y`, `S_yy = y·v`, `S_xy = Σv − S_yy`, `S_xx = T − 2·S_xy − S_yy`,
/// then the diagonals are taken out of the within-sample sums. Branch-free and vectorised, where a
/// walk over the triangle tests two labels per entry.
pub struct PooledKernel {
    k: Array2<f64>,
    total: f64,
    diag: Vec<f64>,
}

impl PooledKernel {
    pub fn new(k: Array2<f64>) -> PooledKernel {
        let total = k.sum();
        let diag = k.diag().to_vec();
        PooledKernel { k, total, diag }
    }

    /// Unbiased MMD² of the split `labels` (`false`: first sample, `true`: second).
    pub fn mmd2(&self, labels: &[bool]) -> f64 {
        let y: ndarray::Array1<f64> = labels.iter().map(|&l| if l { 1.0 } else { 0.0 }).collect();
        let v = self.k.dot(&y);
        let syy_full = y.dot(&v);
        let sxy = v.sum() - syy_full;
        let sxx_full = self.total - 2.0 * sxy - syy_full;
        let diag_y: f64 = self.diag.iter().zip(labels).filter(|(_, l)| **l).map(|(d, _)| d).sum();
        let diag_x: f64 = self.diag.iter().sum::<f64>() - diag_y;
        let n = labels.iter().filter(|&&l| l).count() as f64;
        let m = labels.len() as f64 - n;
        (sxx_full - diag_x) / (m * (m - 1.0)) + (syy_full - diag_y) / (n * (n - 1.0)) - 2.0 * sxy / (m * n)
    }
}

/// Unbiased MMD² of a kernel matrix over a pooled sample split by `labels` (`false`: first sample,
/// `true`: second): the two within-sample means exclude the diagonal.
pub fn mmd2_unbiased(k: &Array2<f64>, labels: &[bool]) -> f64 {
    let (mut sxx, mut syy, mut sxy) = (0.0, 0.0, 0.0);
    let n_all = labels.len();
    for i in 0..n_all {
        let row = k.row(i);
        let li = labels[i];
        let (mut same, mut cross) = (0.0, 0.0);
        for j in i + 1..n_all {
            if labels[j] == li { same += row[j] } else { cross += row[j] }
        }
        if li {
            syy += same
        } else {
            sxx += same
        }
        sxy += cross;
    }
    let n = labels.iter().filter(|&&l| l).count() as f64;
    let m = n_all as f64 - n;
    2.0 * sxx / (m * (m - 1.0)) + 2.0 * syy / (n * (n - 1.0)) - 2.0 * sxy / (m * n)
}

/// Unbiased MMD² of the rows `x` and the rows `y` of one kernel matrix over a pool (indices may
/// repeat across the two sets, not within one set's diagonal: `k[i, i]` terms are left out by position).
pub fn mmd2_indexed(k: &Array2<f64>, x: &[usize], y: &[usize]) -> f64 {
    let within = |s: &[usize]| {
        let mut t = 0.0;
        for (a, &i) in s.iter().enumerate() {
            for &j in &s[a + 1..] {
                t += k[[i, j]];
            }
        }
        2.0 * t / (s.len() * (s.len() - 1)) as f64
    };
    let cross: f64 = x.iter().map(|&i| y.iter().map(|&j| k[[i, j]]).sum::<f64>()).sum();
    within(x) + within(y) - 2.0 * cross / (x.len() * y.len()) as f64
}

fn median(v: &mut [f64]) -> f64 {
    let mid = v.len() / 2;
    let (_, hi, _) = v.select_nth_unstable_by(mid, f64::total_cmp);
    let hi = *hi;
    if v.len() % 2 == 1 {
        return hi;
    }
    let lo = v[..mid].iter().copied().fold(f64::MIN, f64::max);
    0.5 * (lo + hi)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::reference_values::*;
    use crate::detectors::testdata;

    fn all(max: usize) -> MmdConfig {
        MmdConfig { max_samples: max, ..MmdConfig::default() }
    }

    /// Expected values: `tools/detectors_reference.py` (numpy), written into
    /// `detectors/reference_values.rs` — median-heuristic `2σ²` and the unbiased MMD² on
    /// `testdata::reference(40, 6)` against `testdata::window(30, 6, shift)`.
    #[test]
    fn matches_numpy() {
        let r = testdata::reference(40, 6);
        let det = Mmd::fit(r.view(), all(0)).unwrap();
        assert!((det.two_sigma2 - REF_TWO_SIGMA2).abs() < 1e-10 * REF_TWO_SIGMA2, "{}", det.two_sigma2);
        for (shift, want) in [(0.0, REF_MMD2_SHIFT0), (0.5, REF_MMD2_SHIFT05)] {
            let res = det.test(testdata::window(30, 6, shift).view()).unwrap();
            assert!((res.statistic - want).abs() < 1e-10, "shift {shift}: {} vs {want}", res.statistic);
        }
    }

    /// The exact permutation p-value over all 70 splits of a 4 + 4 sample (numpy, enumerated) against
    /// the Monte-Carlo estimate with many permutations.
    #[test]
    fn permutation_p_value_matches_the_exact_one() {
        let r = testdata::reference(4, 3);
        let w = testdata::window(4, 3, 0.3);
        let cfg = MmdConfig { max_samples: 0, permutations: 20_000, alpha: 0.05, seed: 9 };
        let res = Mmd::fit(r.view(), cfg).unwrap().test(w.view()).unwrap();
        let p = res.p_value.unwrap();
        // Monte-Carlo standard error at 20000 draws is below 0.004.
        assert!((p - REF_EXACT_P_4X4).abs() < 0.015, "{p} vs exact {REF_EXACT_P_4X4}");
    }

    #[test]
    fn p_value_is_never_zero_and_flags_a_clear_shift() {
        let r = testdata::reference(60, 5);
        let det = Mmd::fit(r.view(), MmdConfig { permutations: 99, ..all(0) }).unwrap();
        let far = det.test(testdata::window(40, 5, 3.0).view()).unwrap();
        assert_eq!(far.p_value, Some(0.01)); // (1 + 0)/(1 + 99)
        assert!(far.drift && far.statistic > far.threshold);
        // The reference against itself: the statistic is below the null's bulk, no drift.
        let same = det.test(r.view()).unwrap();
        assert!(!same.drift && same.p_value.unwrap() > 0.5, "{same:?}");
    }

    #[test]
    fn caps_bound_the_sample_and_results_are_seeded() {
        let r = testdata::reference(300, 4);
        let det = Mmd::fit(r.view(), all(50)).unwrap();
        assert_eq!(det.reference.nrows(), 50);
        let w = testdata::window(200, 4, 0.2);
        assert_eq!(det.test(w.view()).unwrap(), det.test(w.view()).unwrap());
        assert!(det.test(testdata::window(1, 4, 0.0).view()).unwrap_err().contains("at least 2"));
        assert!(
            Mmd::fit(ndarray::Array2::<f32>::zeros((5, 2)).view(), all(0)).unwrap_err().contains("identical")
        );
    }

    #[test]
    fn matrix_vector_form_equals_the_direct_sums() {
        let r = testdata::reference(25, 4);
        let w = testdata::window(15, 4, 0.3);
        let det = Mmd::fit(r.view(), all(0)).unwrap();
        let pool = ndarray::concatenate(ndarray::Axis(0), &[r.view(), w.view()]).unwrap();
        let k = det.kernel_matrix(pool.view(), pool.view()).unwrap();
        let pooled = PooledKernel::new(k.clone());
        let mut labels: Vec<bool> = (0..40).map(|i| i >= 25).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..5 {
            assert!((pooled.mmd2(&labels) - mmd2_unbiased(&k, &labels)).abs() < 1e-12);
            labels.shuffle(&mut rng);
        }
    }

    #[test]
    fn indexed_statistic_equals_the_pooled_one() {
        let r = testdata::reference(40, 6);
        let w = testdata::window(30, 6, 0.5);
        let det = Mmd::fit(r.view(), all(0)).unwrap();
        let pool = ndarray::concatenate(ndarray::Axis(0), &[r.view(), w.view()]).unwrap();
        let k = det.kernel_matrix(pool.view(), pool.view()).unwrap();
        let (x, y): (Vec<usize>, Vec<usize>) = ((0..40).collect(), (40..70).collect());
        assert!((mmd2_indexed(&k, &x, &y) - REF_MMD2_SHIFT05).abs() < 1e-10);
    }

    #[test]
    fn median_of_even_and_odd() {
        assert_eq!(median(&mut [3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&mut [4.0, 1.0, 3.0, 2.0]), 2.5);
    }
}
