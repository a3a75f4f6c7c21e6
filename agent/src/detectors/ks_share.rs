//! `embedding_ks_share`: a two-sample KS test per embedding component, the Benjamini–Hochberg
//! procedure over the `D` p-values, and the share of components it flags (Alibi Detect's `KSDrift`
//! with `correction='fdr'`, Evidently's share of drifted columns).
//!
//! The p-value reported is Simes' global p-value, `min_i D·p_(i)/i` — the smallest BH-adjusted
//! p-value — because BH at level `q` flags at least one component exactly when it is `≤ q`. With the
//! default `share_threshold = 0` "drift" is that global test, which keeps its false-alarm rate at `q`
//! when no component moved; a positive threshold asks for a larger part of the embedding to move.
//!
//! Cost: the reference columns are sorted once at fit; a test sorts the window's columns and merges
//! them, `O(D·n·log n)` — at `n = 1000`, `D = 2048` about 2·10⁷ comparisons. The reference is capped
//! at `max_reference` rows (the KS reference side's own error, ≈ 1.36/√m, is then small next to the
//! window's).

use ndarray::{ArrayView2, Axis};

use super::{DetectorResult, check_width, subsample, to_f64};
use crate::drift::ks_two_sample;

pub const NAME: &str = "embedding_ks_share";

#[derive(Debug, Clone, PartialEq)]
pub struct KsShareConfig {
    /// False discovery rate of the BH procedure.
    pub fdr: f64,
    /// Drift when the share of flagged components exceeds this.
    pub share_threshold: f64,
    /// Reference rows kept (seeded uniform subset); 0 keeps all.
    pub max_reference: usize,
    pub seed: u64,
}

impl Default for KsShareConfig {
    fn default() -> Self {
        KsShareConfig { fdr: 0.05, share_threshold: 0.0, max_reference: 4096, seed: 0 }
    }
}

#[derive(Debug, Clone)]
pub struct KsShare {
    /// Per component, the reference's values sorted ascending.
    columns: Vec<Vec<f64>>,
    config: KsShareConfig,
}

/// Per component of a test: the KS statistic and its p-value.
#[derive(Debug, Clone, PartialEq)]
pub struct ComponentTest {
    pub statistic: f64,
    pub p_value: f64,
}

impl KsShare {
    pub fn fit(reference: ArrayView2<f32>, config: KsShareConfig) -> Result<KsShare, String> {
        let r = subsample(to_f64(NAME, reference)?, config.max_reference, config.seed);
        Ok(KsShare { columns: sorted_columns(r.view()), config })
    }

    /// The per-component tests, in component order.
    pub fn components(&self, window: ArrayView2<f32>) -> Result<Vec<ComponentTest>, String> {
        check_width(NAME, self.columns.len(), window)?;
        let w = to_f64(NAME, window)?;
        Ok(self
            .columns
            .iter()
            .zip(sorted_columns(w.view()))
            .map(|(r, w)| {
                let ks = ks_two_sample(r, &w).expect("both sides are non-empty");
                ComponentTest { statistic: ks.statistic, p_value: ks.p_value }
            })
            .collect())
    }

    pub fn test(&self, window: ArrayView2<f32>) -> Result<DetectorResult, String> {
        let p: Vec<f64> = self.components(window)?.into_iter().map(|c| c.p_value).collect();
        let (rejected, adjusted) = benjamini_hochberg(&p, self.config.fdr);
        let share = rejected as f64 / p.len() as f64;
        let simes = adjusted.iter().copied().fold(1.0, f64::min);
        Ok(DetectorResult {
            name: NAME.into(),
            statistic: share,
            p_value: Some(simes),
            threshold: self.config.share_threshold,
            drift: share > self.config.share_threshold,
        })
    }
}

fn sorted_columns(x: ArrayView2<f64>) -> Vec<Vec<f64>> {
    x.axis_iter(Axis(1))
        .map(|c| {
            let mut v = c.to_vec();
            v.sort_by(f64::total_cmp);
            v
        })
        .collect()
}

/// Benjamini–Hochberg at false discovery rate `q`: the number of rejected hypotheses and the adjusted
/// p-values `p̃_(i) = min_{j ≥ i} min(1, m·p_(j)/j)` in the input order (SciPy's
/// `false_discovery_control(p, method='bh')`). Rejected: those with `p̃ ≤ q`.
pub fn benjamini_hochberg(p: &[f64], q: f64) -> (usize, Vec<f64>) {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![1.0; m];
    let mut running = 1.0f64;
    for rank in (0..m).rev() {
        let i = order[rank];
        running = running.min(p[i] * m as f64 / (rank + 1) as f64).min(1.0);
        adjusted[i] = running;
    }
    let rejected = adjusted.iter().filter(|&&a| a <= q).count();
    (rejected, adjusted)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::reference_values::*;
    use crate::detectors::testdata;

    #[test]
    fn bh_matches_scipy() {
        let (rejected, adj) = benjamini_hochberg(&BH_P, 0.05);
        for (a, b) in adj.iter().zip(BH_ADJUSTED) {
            assert!((a - b).abs() < 1e-14, "{a} vs {b}");
        }
        assert_eq!(rejected, BH_REJECTED_AT_005);
    }

    /// Per-component KS statistics and p-values, BH share and Simes p from the reference script
    /// (scipy's `ks_2samp` statistic, the Kolmogorov survival function with Stephens' correction as in
    /// `drift::ks`, scipy's `false_discovery_control`).
    #[test]
    fn matches_scipy() {
        let det = KsShare::fit(testdata::reference(40, 6).view(), KsShareConfig::default()).unwrap();
        let w = testdata::window(30, 6, 1.0);
        let comps = det.components(w.view()).unwrap();
        for (c, (d, p)) in comps.iter().zip(KS_STATISTICS.iter().zip(KS_PVALUES)) {
            assert!((c.statistic - d).abs() < 1e-12 && (c.p_value - p).abs() < 1e-12, "{c:?} vs {d} {p}");
        }
        let res = det.test(w.view()).unwrap();
        assert!((res.statistic - KS_SHARE).abs() < 1e-12, "{}", res.statistic);
        assert!((res.p_value.unwrap() - KS_SIMES_P).abs() < 1e-12);
        assert_eq!(res.drift, KS_SHARE > 0.0);
    }

    #[test]
    fn same_sample_has_no_drift() {
        let r = testdata::reference(50, 4);
        let det = KsShare::fit(r.view(), KsShareConfig::default()).unwrap();
        let res = det.test(r.view()).unwrap();
        assert_eq!((res.statistic, res.p_value, res.drift), (0.0, Some(1.0), false));
        assert!(det.test(testdata::window(5, 3, 0.0).view()).unwrap_err().contains("3 components"));
    }
}
