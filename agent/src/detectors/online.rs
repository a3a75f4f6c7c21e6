//! The embedding detectors as the daemon runs them: fitted once on the baseline's reference
//! embeddings (fixed seeds, so a baseline gives the same thresholds on every start) and run on the
//! window's embeddings at the publish interval, not per sample.
//!
//! Cost per run, bounded whatever the traffic: the window side is at most the window's embeddings
//! (the daemon keeps at most `[detectors] max_window_samples` of them); MMD caps both sides at
//! `mmd_max_samples` rows and permutes the pooled kernel matrix (`permutations` matrix–vector
//! products, no new kernel evaluations); the centroid null is kept per window size, so a full window
//! of fixed size costs two means and two distances; the PCA band resamples the reference's
//! per-sample errors; the KS share sorts the window's columns. At a window of 1000 and `D = 2048`
//! with the defaults a run takes about a second on one core (docs/BENCHMARKS.md), hence the
//! interval.

use ndarray::ArrayView2;
use serde::{Deserialize, Serialize};

use super::{
    Centroid, CentroidConfig, DetectorResult, KsShare, KsShareConfig, Mmd, MmdConfig, Pca, PcaConfig,
    centroid::CentroidNull,
};

/// A detector the daemon can run (`[detectors] enabled`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum DetectorKind {
    /// `embedding_mmd`
    Mmd,
    /// `embedding_ks_share`
    KsShare,
    /// `embedding_centroid_cosine` and `embedding_centroid_euclidean`
    Centroid,
    /// `embedding_pca`
    Pca,
}

impl DetectorKind {
    pub const ALL: [DetectorKind; 4] =
        [DetectorKind::Mmd, DetectorKind::KsShare, DetectorKind::Centroid, DetectorKind::Pca];

    /// The `detector` label values this kind publishes.
    pub fn names(self) -> &'static [&'static str] {
        match self {
            DetectorKind::Mmd => &[super::mmd::NAME],
            DetectorKind::KsShare => &[super::ks_share::NAME],
            DetectorKind::Centroid => &[super::centroid::COSINE, super::centroid::EUCLIDEAN],
            DetectorKind::Pca => &[super::pca::NAME],
        }
    }
}

/// How the daemon's detectors are fitted and run.
#[derive(Debug, Clone, PartialEq)]
pub struct OnlineSettings {
    pub enabled: Vec<DetectorKind>,
    /// False-alarm rate of every test with a p-value (and the centroid's threshold quantile; the
    /// Benjamini–Hochberg level of the KS share). PCA keeps NannyML's ±3σ band.
    pub alpha: f64,
    /// MMD permutations; centroid and PCA resamples.
    pub permutations: usize,
    /// MMD rows per side.
    pub mmd_max_samples: usize,
    pub seed: u64,
}

/// The fitted detectors, with the centroid's null kept for the last window size.
pub struct OnlineDetectors {
    mmd: Option<Mmd>,
    ks_share: Option<KsShare>,
    centroid: Option<(Centroid, Option<CentroidNull>)>,
    pca: Option<Pca>,
}

impl OnlineDetectors {
    /// Fits the enabled detectors on the reference embeddings `[N, D]`.
    pub fn fit(reference: ArrayView2<f32>, s: &OnlineSettings) -> Result<OnlineDetectors, String> {
        let on = |k| s.enabled.contains(&k);
        let (alpha, seed, resamples) = (s.alpha, s.seed, s.permutations);
        Ok(OnlineDetectors {
            mmd: on(DetectorKind::Mmd)
                .then(|| {
                    let cfg =
                        MmdConfig { max_samples: s.mmd_max_samples, permutations: resamples, alpha, seed };
                    Mmd::fit(reference, cfg)
                })
                .transpose()?,
            ks_share: on(DetectorKind::KsShare)
                .then(|| KsShare::fit(reference, KsShareConfig { fdr: alpha, seed, ..Default::default() }))
                .transpose()?,
            centroid: on(DetectorKind::Centroid)
                .then(|| {
                    Centroid::fit(reference, CentroidConfig { resamples, alpha, seed, ..Default::default() })
                })
                .transpose()?
                .map(|c| (c, None)),
            pca: on(DetectorKind::Pca)
                .then(|| Pca::fit(reference, PcaConfig { resamples, seed, ..Default::default() }))
                .transpose()?,
        })
    }

    /// Every enabled detector on one window `[n, D]`, in the order of [`DetectorKind::ALL`].
    pub fn test(&mut self, window: ArrayView2<f32>) -> Result<Vec<DetectorResult>, String> {
        let mut out = Vec::with_capacity(5);
        if let Some(d) = &self.mmd {
            out.push(d.test(window)?);
        }
        if let Some(d) = &self.ks_share {
            out.push(d.test(window)?);
        }
        if let Some((d, null)) = &mut self.centroid {
            if null.as_ref().is_none_or(|n| n.window != window.nrows()) {
                *null = Some(d.null(window.nrows()));
            }
            out.extend(d.test_with(window, null.as_ref().expect("just set"))?);
        }
        if let Some(d) = &self.pca {
            out.push(d.test(window)?);
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::testdata;

    fn settings(enabled: Vec<DetectorKind>) -> OnlineSettings {
        OnlineSettings { enabled, alpha: 0.05, permutations: 99, mmd_max_samples: 500, seed: 0 }
    }

    /// The online runner gives what each detector gives on its own with the same settings, keeps
    /// the centroid null across windows of one size, and runs only what is enabled.
    #[test]
    fn same_results_as_the_detectors_themselves() {
        let r = testdata::reference(60, 5);
        let w = testdata::window(30, 5, 0.5);
        let mut all = OnlineDetectors::fit(r.view(), &settings(DetectorKind::ALL.to_vec())).unwrap();
        let got = all.test(w.view()).unwrap();
        let names: Vec<&str> = got.iter().map(|d| d.name.as_str()).collect();
        let expected: Vec<&str> = DetectorKind::ALL.iter().flat_map(|k| k.names().iter().copied()).collect();
        assert_eq!(names, expected);
        let mmd = Mmd::fit(r.view(), MmdConfig { permutations: 99, ..Default::default() }).unwrap();
        assert_eq!(got[0], mmd.test(w.view()).unwrap());
        let c = Centroid::fit(r.view(), CentroidConfig { resamples: 99, ..Default::default() }).unwrap();
        assert_eq!(got[2..4], c.test(w.view()).unwrap());
        let pca = Pca::fit(r.view(), PcaConfig { resamples: 99, ..Default::default() }).unwrap();
        assert_eq!(got[4], pca.test(w.view()).unwrap());
        // Same window again: the kept null gives the same verdict; another size refits it.
        assert_eq!(all.test(w.view()).unwrap(), got);
        assert_eq!(all.test(w.slice_axis(ndarray::Axis(0), (..20).into())).unwrap()[2], {
            c.test(w.slice_axis(ndarray::Axis(0), (..20).into())).unwrap()[0].clone()
        });
        let mut one = OnlineDetectors::fit(r.view(), &settings(vec![DetectorKind::Pca])).unwrap();
        assert_eq!(one.test(w.view()).unwrap(), vec![got[4].clone()]);
        assert!(one.test(testdata::window(5, 4, 0.0).view()).unwrap_err().contains("4 components"));
    }
}
