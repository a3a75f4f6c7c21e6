//! Drift bookkeeping on the engine thread: one window of recent per-sample scores per (layer, method,
//! score) against the reference baseline (docs/spec/scores.md#drift), all statistics from `agent::drift`;
//! the window's embeddings and the embedding detectors beside it ([`super::detect`]).

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use super::detect::{DetectorsView, EmbeddingMonitor};
use crate::config::{DetectorsConfig, WindowConfig};
use crate::drift::{self, Baseline, Window};
use crate::engine::{SampleScores, ScoreKey};

/// What the metrics and the status page show for one (layer, method) pair.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct KeyView {
    pub layer: String,
    pub method: crate::scores::Method,
    pub noise_benchmark: f64,
    pub noise_score: Option<f64>,
    pub variance_score: Option<f64>,
    pub baseline_noise_score: Option<f64>,
    pub baseline_variance_score: Option<f64>,
    pub noise_score_drift: Option<f64>,
    pub variance_score_drift: Option<f64>,
    /// `|Δ|` beyond which the window's drift is unusual at the configured false-alarm rate, for a
    /// window of the size at the last calibration ([`drift::abs_drift_threshold`]).
    pub noise_score_drift_threshold: Option<f64>,
    pub variance_score_drift_threshold: Option<f64>,
    /// Two-sample KS `(statistic, p-value)`, window vs reference, for the noise and variance scores.
    pub ks_noise: Option<(f64, f64)>,
    pub ks_variance: Option<(f64, f64)>,
}

/// The daemon's drift state: never shared between threads (it lives on the engine thread).
pub struct Monitor {
    keys: Vec<ScoreKey>,
    /// Per key: windows of the noise and the variance score.
    windows: Vec<[Window; 2]>,
    baseline: Option<Baseline>,
    /// Monotonic origin of the windows' timestamps.
    origin: Instant,
    embeddings: Option<EmbeddingMonitor>,
    /// Why the embedding detectors do not run, when they were asked for and do not.
    detectors_note: Option<String>,
    calibration: Calibration,
}

/// The calibrated `|Δ|` thresholds, per key `[noise, variance]`, for windows of `n`.
struct Calibration {
    alpha: f64,
    /// Seconds between recalibrations while the window size keeps changing.
    interval: f64,
    n: usize,
    at: Option<f64>,
    thresholds: Vec<[Option<f64>; 2]>,
}

/// Resampled reference windows per calibration: the 99th percentile then rests on 10 draws beyond it.
const CALIBRATION_RESAMPLES: usize = 1000;

impl Monitor {
    pub fn new(keys: &[ScoreKey], window: &WindowConfig, baseline: Option<Baseline>) -> Result<Monitor> {
        let make = || Window::new(window.samples, window.secs.map(|s| s as f64));
        let windows =
            keys.iter().map(|_| Ok([make()?, make()?])).collect::<Result<Vec<_>, drift::WindowError>>()?;
        let calibration = Calibration {
            alpha: DetectorsConfig::default().alpha,
            interval: DetectorsConfig::default().interval_secs,
            n: 0,
            at: None,
            thresholds: vec![[None, None]; keys.len()],
        };
        Ok(Monitor {
            keys: keys.to_vec(),
            windows,
            baseline,
            origin: Instant::now(),
            embeddings: None,
            detectors_note: None,
            calibration,
        })
    }

    /// Adds the embedding detectors, fitted on the baseline's reference embeddings. `embeds`: whether
    /// the scorer gives embeddings. Without embeddings on either side, or with reference embeddings
    /// the detectors cannot be fitted on, they stay off, with a warning and a note on the status page
    /// (an old baseline must keep working).
    pub fn with_detectors(mut self, cfg: &DetectorsConfig, window: &WindowConfig, embeds: bool) -> Monitor {
        self.calibration.alpha = cfg.alpha;
        self.calibration.interval = cfg.interval_secs;
        if !cfg.active() {
            return self;
        }
        let reference = self.baseline.as_ref().and_then(|b| b.embeddings.as_ref());
        let note = match (embeds, reference) {
            (false, _) => Some("the scorer gives no embeddings".to_string()),
            (true, None) => Some(
                "the baseline has no reference embeddings (built by an older agent or with [detectors] \
                 enabled = []); rebuild it with `agent baseline` to run the embedding detectors"
                    .to_string(),
            ),
            // A reference the detectors cannot use (e.g. all embeddings identical) leaves them off
            // rather than stopping the daemon: the scores still work.
            (true, Some(r)) => match EmbeddingMonitor::fit(r, cfg, window) {
                Ok(m) => {
                    self.embeddings = Some(m);
                    None
                }
                Err(e) => Some(format!("{e:#}")),
            },
        };
        if let Some(n) = &note {
            tracing::warn!("embedding detectors off: {n}");
        }
        self.detectors_note = note;
        self
    }

    /// Whether the window keeps embeddings (the engine loop asks the scorer for them only then).
    pub fn wants_embeddings(&self) -> bool {
        self.embeddings.is_some()
    }

    /// A sample's rank in the baseline's reservoir per key, `[noise, variance]`
    /// ([`drift::ScoreSummary::rank`]): the per-sample histograms that add up across replicas.
    pub fn ranks(&self, s: &SampleScores) -> Vec<[Option<f64>; 2]> {
        let Some(b) = &self.baseline else { return vec![[None, None]; s.scores.len()] };
        s.scores
            .iter()
            .enumerate()
            .map(|(i, sc)| match b.entries.get(i) {
                Some(e) => [e.noise_score.rank(sc.noise_score), e.variance_score.rank(sc.variance_score)],
                None => [None, None],
            })
            .collect()
    }

    /// The embedding detectors: runs them when due ([`EmbeddingMonitor::update`]) and returns their
    /// view; `None` when they are off (see [`Monitor::detectors_note`]).
    pub fn detectors(&mut self, now: Instant) -> Option<DetectorsView> {
        let t = self.secs(now);
        let e = self.embeddings.as_mut()?;
        e.update(t);
        Some(e.view())
    }

    pub fn detectors_note(&self) -> Option<&str> {
        self.detectors_note.as_deref()
    }

    /// Recomputes the `|Δ|` thresholds when the window's size changed and the last calibration is
    /// `interval` old (at once the first time).
    fn calibrate(&mut self, now: f64, n: usize) {
        let c = &mut self.calibration;
        let Some(b) = &self.baseline else { return };
        if n == c.n || c.at.is_some_and(|t| now - t < c.interval) {
            return;
        }
        c.n = n;
        c.at = Some(now);
        for (i, k) in self.keys.iter().enumerate() {
            // Per key its own stream of draws, so adding a layer does not move the others' thresholds.
            let seed = i as u64;
            c.thresholds[i] = match b.entry(&k.layer, k.method) {
                Some(e) => [
                    drift::abs_drift_threshold(&e.noise_score, n, c.alpha, CALIBRATION_RESAMPLES, 2 * seed),
                    drift::abs_drift_threshold(
                        &e.variance_score,
                        n,
                        c.alpha,
                        CALIBRATION_RESAMPLES,
                        2 * seed + 1,
                    ),
                ],
                None => [None, None],
            };
        }
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Records a sample's scores and, when the detectors run, its embedding `z`.
    pub fn record(&mut self, now: Instant, s: &SampleScores, z: Option<&[f32]>) {
        let t = self.secs(now);
        for (w, sc) in self.windows.iter_mut().zip(&s.scores) {
            w[0].push(t, sc.noise_score);
            w[1].push(t, sc.variance_score);
        }
        if let (Some(e), Some(z)) = (&mut self.embeddings, z) {
            e.push(t, z);
        }
    }

    pub fn baseline(&self) -> Option<&Baseline> {
        self.baseline.as_ref()
    }

    fn expire(&mut self, now: Instant) {
        let t = self.secs(now);
        for w in self.windows.iter_mut().flatten() {
            w.expire(t);
        }
        if let Some(e) = &mut self.embeddings {
            e.expire(t);
        }
    }

    pub fn window_len(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.windows.first().map(|w| w[0].len()).unwrap_or(0)
    }

    pub fn snapshot(&mut self, now: Instant) -> Vec<KeyView> {
        self.expire(now);
        let n = self.windows.first().map(|w| w[0].len()).unwrap_or(0);
        if n > 0 {
            self.calibrate(self.secs(now), n);
        }
        self.keys
            .iter()
            .zip(&self.windows)
            .zip(&self.calibration.thresholds)
            .map(|((k, [wn, wv]), [tn, tv])| {
                let reference = self.baseline.as_ref().and_then(|b| b.entry(&k.layer, k.method));
                let (ns, vs) = (wn.mean(), wv.mean());
                let bns = reference.map(|r| r.noise_score.mean);
                let bvs = reference.map(|r| r.variance_score.mean);
                let drift = |r: Option<f64>, w: Option<f64>| drift::relative_drift(r?, w?);
                let ks = |w: &Window, reference: Option<&[f64]>| {
                    let r = drift::ks_two_sample(&w.sorted_values(), reference?)?;
                    Some((r.statistic, r.p_value))
                };
                KeyView {
                    layer: k.layer.clone(),
                    method: k.method,
                    noise_benchmark: k.noise_benchmark,
                    noise_score: ns,
                    variance_score: vs,
                    baseline_noise_score: bns,
                    baseline_variance_score: bvs,
                    noise_score_drift: drift(bns, ns),
                    variance_score_drift: drift(bvs, vs),
                    noise_score_drift_threshold: if n > 0 { *tn } else { None },
                    variance_score_drift_threshold: if n > 0 { *tv } else { None },
                    ks_noise: ks(wn, reference.map(|r| r.noise_score.reservoir.as_slice())),
                    ks_variance: ks(wv, reference.map(|r| r.variance_score.reservoir.as_slice())),
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::baseline::{check as check_baseline, samples as baseline_samples};
    use crate::drift::{BaselineBuilder, BaselineMeta};
    use crate::engine::LayerScores;
    use crate::scores::Method;
    use std::time::Duration;

    fn key() -> Vec<ScoreKey> {
        vec![ScoreKey { layer: "l".into(), method: Method::Vanilla, noise_benchmark: 0.1 }]
    }

    fn s(ns: f64, vs: f64) -> SampleScores {
        SampleScores { scores: vec![LayerScores { noise_score: ns, variance_score: vs }] }
    }

    fn baseline(values: &[f64]) -> Baseline {
        let meta = BaselineMeta { model_sha256: "m".into(), settings_hash: "h".into(), created_unix_secs: 0 };
        let mut b = BaselineBuilder::new(meta, &key(), 128, 0);
        for &v in values {
            b.push(&s(v, v / 4.0)).unwrap();
        }
        b.finish().unwrap()
    }

    #[test]
    fn drift_ks_and_compatibility() {
        let base = baseline(&[0.2, 0.4, 0.6]);
        assert_eq!(baseline_samples(&base), 3);
        assert!(check_baseline(&base, "m", "h", &key(), "x").is_ok());
        let e = check_baseline(&base, "m", "other", &key(), "x").unwrap_err().to_string();
        assert!(e.contains("agent baseline"), "{e}");
        assert!(
            e.contains("stale") && e.contains("agent baseline --config FILE --reference DIR --out BASELINE"),
            "{e}"
        );
        let w = WindowConfig { samples: Some(2), secs: None };
        let mut m = Monitor::new(&key(), &w, Some(base)).unwrap();
        let t = Instant::now();
        for v in [0.9, 0.3, 0.3] {
            m.record(t, &s(v, 0.1), None);
        }
        let v = &m.snapshot(t)[0];
        assert_eq!(v.noise_score, Some(0.3));
        // ΔNS = (0.4 − 0.3) / 0.4
        assert!((v.noise_score_drift.unwrap() - 0.25).abs() < 1e-12);
        // Window {0.3, 0.3} vs reference {0.2, 0.4, 0.6}: the largest CDF gap is 2/3 (just past 0.3).
        let (d, p) = v.ks_noise.unwrap();
        assert!((d - 2.0 / 3.0).abs() < 1e-12 && (0.0..=1.0).contains(&p));
        assert_eq!(m.window_len(t), 2);
    }

    /// A baseline file of another format is refused with the rebuild command.
    #[test]
    fn unknown_format_is_refused_with_the_rebuild_command() {
        let d = tempfile::tempdir().unwrap();
        let path = d.path().join("baseline.json");
        crate::daemon::baseline::save(&baseline(&[0.5]), &path).unwrap();
        let future = std::fs::read_to_string(&path).unwrap().replace("\"format\": 1", "\"format\": 99");
        std::fs::write(&path, future).unwrap();
        let e = crate::daemon::baseline::load(&path).unwrap_err().to_string();
        assert!(e.contains("agent baseline") && e.contains("format 99"), "{e}");
    }

    #[test]
    fn time_bound_expires() {
        let w = WindowConfig { samples: None, secs: Some(1) };
        let mut m = Monitor::new(&key(), &w, None).unwrap();
        let t = Instant::now();
        m.record(t, &s(0.5, 0.1), None);
        assert_eq!(m.window_len(t + Duration::from_secs(2)), 0);
        assert_eq!(m.snapshot(t)[0].noise_score_drift, None);
    }

    /// Ranks against the baseline's reservoir, the calibrated `|Δ|` thresholds beside ΔNS/ΔVS
    /// (absent with an empty window), and the detectors: off with a note when the baseline has no
    /// reference embeddings; on, fed and run when it has.
    #[test]
    fn ranks_thresholds_and_detectors() {
        let values: Vec<f64> = (1..=100).map(|i| f64::from(i) / 100.0).collect();
        let w = WindowConfig { samples: Some(50), secs: None };
        let mut m = Monitor::new(&key(), &w, Some(baseline(&values))).unwrap();
        // 0.505 lies above 50 of the 100 reference scores; 0.5 is one of them (49 below, 1 tie).
        assert_eq!(m.ranks(&s(0.505, 0.0))[0][0], Some(0.5));
        assert_eq!(m.ranks(&s(0.5, 0.0))[0][0], Some(0.495));
        let t = Instant::now();
        assert_eq!(m.snapshot(t)[0].noise_score_drift_threshold, None, "empty window");
        for v in &values[..50] {
            m.record(t, &s(*v + 0.5, 0.1), None);
        }
        let v = &m.snapshot(t)[0];
        let expected = drift::abs_drift_threshold(
            &m.baseline().unwrap().entries[0].noise_score,
            50,
            0.01,
            CALIBRATION_RESAMPLES,
            0,
        );
        assert_eq!(v.noise_score_drift_threshold, expected);
        assert!(v.noise_score_drift_threshold.unwrap() < v.noise_score_drift.unwrap().abs());

        // Detectors asked for, baseline without embeddings: off, with the reason.
        let cfg = DetectorsConfig { min_window_samples: 5, ..DetectorsConfig::default() };
        let mut m = Monitor::new(&key(), &w, Some(baseline(&values))).unwrap().with_detectors(&cfg, &w, true);
        assert!(!m.wants_embeddings() && m.detectors(t).is_none());
        assert!(m.detectors_note().unwrap().contains("no reference embeddings"));

        // With reference embeddings: the window keeps them and the detectors run on it.
        let meta = BaselineMeta { model_sha256: "m".into(), settings_hash: "h".into(), created_unix_secs: 0 };
        let mut b = BaselineBuilder::new(meta, &key(), 16, 0).with_embeddings(200, 0);
        for i in 0..200 {
            b.push(&s(0.5, 0.1)).unwrap();
            let x = i as f32;
            b.push_embedding(&[(x * 0.7).sin() + 2.0, (x * 1.3).cos(), (x * 0.2).sin()]).unwrap();
        }
        let base = b.finish().unwrap();
        let mut m = Monitor::new(&key(), &w, Some(base)).unwrap().with_detectors(&cfg, &w, true);
        assert!(m.wants_embeddings() && m.detectors_note().is_none());
        for i in 0..30 {
            let x = i as f32;
            m.record(t, &s(0.5, 0.1), Some(&[(x * 0.7).sin() + 4.0, (x * 1.3).cos(), (x * 0.2).sin()]));
        }
        let d = m.detectors(t).unwrap();
        assert_eq!(d.window_samples, 30);
        let names: Vec<&str> = d.results.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(
            names,
            ["embedding_mmd", "embedding_centroid_cosine", "embedding_centroid_euclidean", "embedding_pca"]
        );
        assert!(d.results[0].drift && d.results[2].drift, "{:?}", d.results);
    }
}
