//! Drift bookkeeping on the engine thread: one window of recent per-sample scores per (layer, method,
//! score) against the reference baseline (docs/spec/scores.md#drift), all statistics from `agent::drift`.

use std::time::Instant;

use anyhow::Result;
use serde::Serialize;

use crate::config::WindowConfig;
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
}

impl Monitor {
    pub fn new(keys: &[ScoreKey], window: &WindowConfig, baseline: Option<Baseline>) -> Result<Monitor> {
        let make = || Window::new(window.samples, window.secs.map(|s| s as f64));
        let windows =
            keys.iter().map(|_| Ok([make()?, make()?])).collect::<Result<Vec<_>, drift::WindowError>>()?;
        Ok(Monitor { keys: keys.to_vec(), windows, baseline, origin: Instant::now() })
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    pub fn record(&mut self, now: Instant, s: &SampleScores) {
        let t = self.secs(now);
        for (w, sc) in self.windows.iter_mut().zip(&s.scores) {
            w[0].push(t, sc.noise_score);
            w[1].push(t, sc.variance_score);
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
    }

    pub fn window_len(&mut self, now: Instant) -> usize {
        self.expire(now);
        self.windows.first().map(|w| w[0].len()).unwrap_or(0)
    }

    pub fn snapshot(&mut self, now: Instant) -> Vec<KeyView> {
        self.expire(now);
        self.keys
            .iter()
            .zip(&self.windows)
            .map(|(k, [wn, wv])| {
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
        let mut b = BaselineBuilder::new(meta, &key(), 16, 0);
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
            m.record(t, &s(v, 0.1));
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
        m.record(t, &s(0.5, 0.1));
        assert_eq!(m.window_len(t + Duration::from_secs(2)), 0);
        assert_eq!(m.snapshot(t)[0].noise_score_drift, None);
    }
}
