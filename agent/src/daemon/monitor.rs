//! Drift bookkeeping: the window of recent per-sample scores and the reference baseline.
//!
//! SEAM (merge): `agent::drift` provides the real statistics. `RecentWindow` is replaced by
//! `drift::Window` (count/time bounded, Welford), `ReferenceBaseline` by `drift::Baseline` (serde JSON
//! with hashes, `check_compatible`), and [`Monitor::snapshot`] fills `ks` from `drift::ks`. Everything
//! else in the daemon talks to [`Monitor`] only, so the swap stays inside this file.

use std::collections::VecDeque;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::WindowConfig;
use crate::engine::{LayerScores, SampleScores, ScoreKey};

/// Mean, standard deviation and a uniform sample of one score over the reference data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    pub n: u64,
    pub mean: f64,
    pub std: f64,
    /// Up to `reservoir_samples` per-sample scores (reservoir sampling), for the distribution test.
    pub reservoir: Vec<f64>,
}

/// The reference statistics of one (layer, method) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyReference {
    pub layer: String,
    pub method: crate::scores::Method,
    pub noise_benchmark: f64,
    pub noise: Summary,
    pub variance: Summary,
}

/// A stored baseline (interim format until `drift::Baseline` lands; JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceBaseline {
    pub created_unix_secs: f64,
    pub model_sha256: String,
    /// `Engine::settings_hash`: the model and every setting that changes a score.
    pub settings_hash: String,
    pub samples: u64,
    pub keys: Vec<KeyReference>,
}

impl ReferenceBaseline {
    pub fn load(path: &Path) -> Result<ReferenceBaseline> {
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading baseline {}", path.display()))?;
        serde_json::from_str(&text)
            .with_context(|| format!("baseline {} is not a valid baseline file", path.display()))
    }

    /// Writes atomically (temporary file, fsync, rename).
    pub fn save(&self, path: &Path) -> Result<()> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        }
        let tmp = path.with_extension("json.tmp");
        let text = serde_json::to_string_pretty(self)?;
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path).with_context(|| format!("writing baseline {}", path.display()))?;
        Ok(())
    }

    /// Refuses a baseline computed with another model or other score settings.
    pub fn check_compatible(&self, settings_hash: &str, keys: &[ScoreKey], rebuild_hint: &str) -> Result<()> {
        if self.settings_hash != settings_hash {
            bail!(
                "the baseline was computed with another model or other score settings (settings hash {} ≠ {}); \
                 rebuild it: {rebuild_hint}",
                short(&self.settings_hash),
                short(settings_hash)
            );
        }
        let ours: Vec<(&str, _)> = keys.iter().map(|k| (k.layer.as_str(), k.method)).collect();
        let theirs: Vec<(&str, _)> = self.keys.iter().map(|k| (k.layer.as_str(), k.method)).collect();
        if ours != theirs {
            bail!(
                "the baseline covers {theirs:?}, the configuration scores {ours:?}; rebuild it: {rebuild_hint}"
            );
        }
        Ok(())
    }
}

fn short(h: &str) -> &str {
    &h[..h.len().min(12)]
}

/// Accumulates reference scores into a [`ReferenceBaseline`]. SEAM: `drift::Welford` at merge.
pub struct BaselineBuilder {
    keys: Vec<ScoreKey>,
    acc: Vec<[Acc; 2]>,
    reservoir_samples: usize,
    rng: rand_chacha::ChaCha8Rng,
    seen: u64,
}

#[derive(Clone, Default)]
struct Acc {
    n: u64,
    mean: f64,
    m2: f64,
    reservoir: Vec<f64>,
}

impl BaselineBuilder {
    pub fn new(keys: &[ScoreKey], reservoir_samples: usize) -> BaselineBuilder {
        BaselineBuilder {
            keys: keys.to_vec(),
            acc: vec![[Acc::default(), Acc::default()]; keys.len()],
            reservoir_samples,
            rng: rand_chacha::ChaCha8Rng::seed_from_u64(0),
            seen: 0,
        }
    }

    pub fn add(&mut self, s: &SampleScores) {
        self.seen += 1;
        // One reservoir slot decision per sample keeps the pairs (NS, VS) of a sample together.
        let slot = if (self.seen as usize) <= self.reservoir_samples {
            None
        } else {
            let j = self.rng.random_range(0..self.seen);
            Some(j as usize).filter(|j| *j < self.reservoir_samples)
        };
        for (acc, sc) in self.acc.iter_mut().zip(&s.scores) {
            for (a, v) in acc.iter_mut().zip([sc.noise_score, sc.variance_score]) {
                a.n += 1;
                let d = v - a.mean;
                a.mean += d / a.n as f64;
                a.m2 += d * (v - a.mean);
                if a.reservoir.len() < self.reservoir_samples {
                    a.reservoir.push(v);
                } else if let Some(j) = slot {
                    a.reservoir[j] = v;
                }
            }
        }
    }

    pub fn samples(&self) -> u64 {
        self.seen
    }

    pub fn finish(self, model_sha256: &str, settings_hash: &str) -> ReferenceBaseline {
        let summary = |a: &Acc| Summary {
            n: a.n,
            mean: a.mean,
            std: if a.n > 0 { (a.m2 / a.n as f64).sqrt() } else { 0.0 },
            reservoir: a.reservoir.clone(),
        };
        ReferenceBaseline {
            created_unix_secs: unix_now(),
            model_sha256: model_sha256.to_string(),
            settings_hash: settings_hash.to_string(),
            samples: self.seen,
            keys: self
                .keys
                .iter()
                .zip(&self.acc)
                .map(|(k, [ns, vs])| KeyReference {
                    layer: k.layer.clone(),
                    method: k.method,
                    noise_benchmark: k.noise_benchmark,
                    noise: summary(ns),
                    variance: summary(vs),
                })
                .collect(),
        }
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// The last `samples` samples and/or those of the last `secs` seconds. SEAM: `drift::Window` at merge.
struct RecentWindow {
    max_samples: Option<usize>,
    max_age: Option<Duration>,
    items: VecDeque<(Instant, Vec<LayerScores>)>,
}

impl RecentWindow {
    fn push(&mut self, now: Instant, s: &SampleScores) {
        self.items.push_back((now, s.scores.clone()));
        self.expire(now);
    }

    fn expire(&mut self, now: Instant) {
        if let Some(n) = self.max_samples {
            while self.items.len() > n {
                self.items.pop_front();
            }
        }
        if let Some(age) = self.max_age {
            while self.items.front().is_some_and(|(t, _)| now.duration_since(*t) > age) {
                self.items.pop_front();
            }
        }
    }

    fn mean(&self, key: usize, pick: fn(&LayerScores) -> f64) -> Option<f64> {
        if self.items.is_empty() {
            return None;
        }
        let sum: f64 = self.items.iter().map(|(_, s)| pick(&s[key])).sum();
        Some(sum / self.items.len() as f64)
    }
}

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
    /// `(statistic, p-value)` for noise and variance scores. SEAM: filled by `drift::ks` at merge.
    pub ks_noise: Option<(f64, f64)>,
    pub ks_variance: Option<(f64, f64)>,
}

/// The daemon's drift state: never shared between threads (it lives on the engine thread).
pub struct Monitor {
    keys: Vec<ScoreKey>,
    window: RecentWindow,
    baseline: Option<ReferenceBaseline>,
}

impl Monitor {
    pub fn new(keys: &[ScoreKey], window: &WindowConfig, baseline: Option<ReferenceBaseline>) -> Monitor {
        Monitor {
            keys: keys.to_vec(),
            window: RecentWindow {
                max_samples: window.samples,
                max_age: window.secs.map(Duration::from_secs),
                items: VecDeque::new(),
            },
            baseline,
        }
    }

    pub fn record(&mut self, now: Instant, s: &SampleScores) {
        self.window.push(now, s);
    }

    pub fn baseline(&self) -> Option<&ReferenceBaseline> {
        self.baseline.as_ref()
    }

    pub fn window_len(&mut self, now: Instant) -> usize {
        self.window.expire(now);
        self.window.items.len()
    }

    pub fn snapshot(&mut self, now: Instant) -> Vec<KeyView> {
        self.window.expire(now);
        let drift = |r: Option<f64>, w: Option<f64>| match (r, w) {
            (Some(r), Some(w)) if r != 0.0 => Some((r - w) / r),
            _ => None,
        };
        self.keys
            .iter()
            .enumerate()
            .map(|(i, k)| {
                let reference = self.baseline.as_ref().and_then(|b| b.keys.get(i));
                let ns = self.window.mean(i, |s| s.noise_score);
                let vs = self.window.mean(i, |s| s.variance_score);
                let bns = reference.map(|r| r.noise.mean);
                let bvs = reference.map(|r| r.variance.mean);
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
                    ks_noise: None,
                    ks_variance: None,
                }
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scores::Method;

    fn key() -> Vec<ScoreKey> {
        vec![ScoreKey { layer: "l".into(), method: Method::Vanilla, noise_benchmark: 0.1 }]
    }

    fn s(ns: f64, vs: f64) -> SampleScores {
        SampleScores { scores: vec![LayerScores { noise_score: ns, variance_score: vs }] }
    }

    #[test]
    fn baseline_mean_std_and_drift() {
        let mut b = BaselineBuilder::new(&key(), 2);
        for v in [0.2, 0.4, 0.6] {
            b.add(&s(v, v / 4.0));
        }
        let base = b.finish("m", "h");
        assert!((base.keys[0].noise.mean - 0.4).abs() < 1e-12);
        assert!((base.keys[0].noise.std - (0.08f64 / 3.0).sqrt()).abs() < 1e-12);
        assert_eq!(base.keys[0].noise.reservoir.len(), 2);
        assert!(base.check_compatible("h", &key(), "x").is_ok());
        assert!(
            base.check_compatible("other", &key(), "agent baseline …")
                .unwrap_err()
                .to_string()
                .contains("agent baseline")
        );
        let w = WindowConfig { samples: Some(2), secs: None };
        let mut m = Monitor::new(&key(), &w, Some(base));
        let t = Instant::now();
        for v in [0.9, 0.3, 0.3] {
            m.record(t, &s(v, 0.1));
        }
        let v = &m.snapshot(t)[0];
        assert_eq!(v.noise_score, Some(0.3));
        assert!((v.noise_score_drift.unwrap() - 0.25).abs() < 1e-12);
        assert_eq!(m.window_len(t), 2);
    }

    #[test]
    fn time_bound_expires() {
        let w = WindowConfig { samples: None, secs: Some(1) };
        let mut m = Monitor::new(&key(), &w, None);
        let t = Instant::now();
        m.record(t, &s(0.5, 0.1));
        assert_eq!(m.window_len(t + Duration::from_secs(2)), 0);
        assert_eq!(m.snapshot(t)[0].noise_score_drift, None);
    }
}
