//! The embedding detectors on the daemon's window: the window's embeddings (at most
//! `[detectors] max_window_samples` of the newest, within the window's own bounds) and the fitted
//! detectors ([`crate::detectors::OnlineDetectors`]), run at most every `interval_secs` and only when
//! the window changed — the detectors cost up to about a second at `D = 2048` (docs/BENCHMARKS.md),
//! far more than a batch's bookkeeping, so they never run per sample.

use std::collections::VecDeque;
use std::time::Instant;

use anyhow::{Result, anyhow};
use ndarray::Array2;
use serde::Serialize;

use crate::config::{DetectorsConfig, WindowConfig};
use crate::detectors::{DetectorResult, OnlineDetectors};
use crate::drift::EmbeddingSample;

/// What the metrics and the status page show of the embedding detectors.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct DetectorsView {
    /// The `detector` label values that can appear.
    pub detectors: Vec<&'static str>,
    /// Embeddings in the detectors' window.
    pub window_samples: usize,
    /// The last run's verdicts; empty below `min_window_samples` or before the first run.
    pub results: Vec<DetectorResult>,
    /// Wall time of the last run.
    pub last_run_seconds: Option<f64>,
}

pub struct EmbeddingMonitor {
    detectors: OnlineDetectors,
    names: Vec<&'static str>,
    dim: usize,
    /// (time, embedding), oldest first.
    window: VecDeque<(f64, Vec<f32>)>,
    max_samples: usize,
    secs: Option<f64>,
    min_samples: usize,
    interval: f64,
    last_run: Option<f64>,
    changed: bool,
    results: Vec<DetectorResult>,
    last_run_seconds: Option<f64>,
    /// Embeddings not kept: a non-finite component or another width than the reference's.
    pub skipped: u64,
}

impl EmbeddingMonitor {
    /// Fits the enabled detectors on the baseline's reference embeddings (seed 0: the same baseline
    /// gives the same thresholds on every start).
    pub fn fit(
        reference: &EmbeddingSample,
        cfg: &DetectorsConfig,
        window: &WindowConfig,
    ) -> Result<EmbeddingMonitor> {
        let detectors = OnlineDetectors::fit(reference.matrix().view(), &cfg.online()).map_err(|e| {
            anyhow!("fitting the embedding detectors on the baseline's reference embeddings: {e}")
        })?;
        Ok(EmbeddingMonitor {
            detectors,
            names: cfg.enabled.iter().flat_map(|k| k.names().iter().copied()).collect(),
            dim: reference.dim,
            window: VecDeque::new(),
            max_samples: window.samples.unwrap_or(usize::MAX).min(cfg.max_window_samples),
            secs: window.secs.map(|s| s as f64),
            min_samples: cfg.min_window_samples,
            interval: cfg.interval_secs,
            last_run: None,
            changed: false,
            results: Vec::new(),
            last_run_seconds: None,
            skipped: 0,
        })
    }

    /// Adds a sample's embedding at time `t` (seconds on the monitor's clock).
    pub fn push(&mut self, t: f64, z: &[f32]) {
        if z.len() != self.dim || z.iter().any(|v| !v.is_finite()) {
            self.skipped += 1;
            return;
        }
        self.window.push_back((t, z.to_vec()));
        while self.window.len() > self.max_samples {
            self.window.pop_front();
        }
        self.changed = true;
        self.expire(t);
    }

    pub fn expire(&mut self, now: f64) {
        if let Some(secs) = self.secs {
            while self.window.front().is_some_and(|&(t, _)| now - t > secs) {
                self.window.pop_front();
                self.changed = true;
            }
        }
    }

    pub fn len(&self) -> usize {
        self.window.len()
    }

    pub fn is_empty(&self) -> bool {
        self.window.is_empty()
    }

    /// Runs the detectors when due: the window changed, the last run is `interval` old, and the
    /// window holds `min_window_samples`. Below that the verdicts are dropped (their series go away
    /// rather than keep an old verdict). A detector error (none is expected: the embeddings are
    /// checked on the way in) is logged and drops the verdicts.
    pub fn update(&mut self, now: f64) -> bool {
        self.expire(now);
        if self.window.len() < self.min_samples {
            self.results.clear();
            return false;
        }
        let due = self.last_run.is_none_or(|t| now - t >= self.interval);
        if !(self.changed && due) {
            return false;
        }
        let flat: Vec<f32> = self.window.iter().flat_map(|(_, z)| z.iter().copied()).collect();
        let x = Array2::from_shape_vec((self.window.len(), self.dim), flat).expect("rows of width dim");
        let started = Instant::now();
        match self.detectors.test(x.view()) {
            Ok(r) => self.results = r,
            Err(e) => {
                tracing::warn!(error = %e, "the embedding detectors failed on the window");
                self.results.clear();
            }
        }
        self.last_run_seconds = Some(started.elapsed().as_secs_f64());
        self.last_run = Some(now);
        self.changed = false;
        true
    }

    pub fn view(&self) -> DetectorsView {
        DetectorsView {
            detectors: self.names.clone(),
            window_samples: self.window.len(),
            results: self.results.clone(),
            last_run_seconds: self.last_run_seconds,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::detectors::DetectorKind;

    fn reference(n: usize) -> EmbeddingSample {
        // Two components, a fixed irregular cloud around (2, 0).
        let rows: Vec<Vec<f32>> =
            (0..n).map(|i| vec![(i as f32 * 0.7).sin() + 2.0, (i as f32 * 1.3).cos() * 0.5]).collect();
        EmbeddingSample { count: n as u64, non_finite: 0, dim: 2, capacity: n, rows }
    }

    fn cfg() -> DetectorsConfig {
        DetectorsConfig {
            enabled: DetectorKind::ALL.to_vec(),
            interval_secs: 10.0,
            min_window_samples: 5,
            max_window_samples: 50,
            permutations: 99,
            ..DetectorsConfig::default()
        }
    }

    /// The window is bounded by `max_window_samples` and by the window's own time bound; runs happen
    /// at the interval and only on a changed window; a shifted window is drift, the reference's own
    /// rows are not; below the minimum the verdicts go away.
    #[test]
    fn window_schedule_and_verdicts() {
        let w = WindowConfig { samples: Some(100), secs: Some(60) };
        let mut m = EmbeddingMonitor::fit(&reference(200), &cfg(), &w).unwrap();
        assert_eq!(m.view().detectors.len(), 5);
        for i in 0..4 {
            m.push(0.0, &[i as f32 * 0.1, 0.0]);
        }
        assert!(!m.update(0.0) && m.view().results.is_empty(), "below min_window_samples");
        let shifted: Vec<[f32; 2]> =
            (0..60).map(|i| [(i as f32 * 0.7).sin() + 2.0, (i as f32 * 1.3).cos() * 0.5 + 3.0]).collect();
        for z in &shifted {
            m.push(1.0, z);
        }
        assert_eq!(m.len(), 50, "bounded by max_window_samples");
        assert!(m.update(1.0));
        let v = m.view();
        assert_eq!(v.results.len(), 5);
        // Every test with a p-value sees the shift (PCA keeps both of the two components here, so its
        // reconstruction error is 0 whatever the window).
        for r in v.results.iter().filter(|r| r.p_value.is_some()) {
            assert!(r.drift, "{r:?}");
        }
        assert!(!m.update(5.0), "not due before the interval");
        assert!(!m.update(20.0), "due, but the window did not change");
        m.push(20.0, &[f32::NAN, 0.0]);
        m.push(20.0, &[1.0]);
        assert_eq!(m.skipped, 2);
        // The reference's own rows replace the shifted ones: no drift.
        for z in reference(200).rows.iter().skip(7).take(50) {
            m.push(21.0, z);
        }
        assert!(m.update(31.0));
        let v = m.view();
        for r in v.results.iter().filter(|r| r.p_value.is_some()) {
            assert!(!r.drift, "{r:?}");
        }
        // 60 s later everything has expired: no verdict.
        assert!(!m.update(200.0));
        assert_eq!((m.len(), m.view().results.len()), (0, 0));
    }
}
