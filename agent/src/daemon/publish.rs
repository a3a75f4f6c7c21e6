//! What the engine thread publishes: the metrics and status fields fixed for a pipeline's life, and
//! after each batch the window gauges and the status page's per-layer view.

use super::Scorer;
use std::time::Instant;

use super::baseline;
use super::monitor::Monitor;
use super::state::{AppState, BaselineInfo};
use crate::config::Config;
use crate::drift::Baseline;

/// Metrics that do not change while a pipeline runs.
pub(super) fn publish_static(state: &AppState, cfg: &Config, scorer: &dyn Scorer, base: Option<&Baseline>) {
    let t = &state.telemetry;
    let model = cfg.model.name.as_str();
    let (provider, requested) = (scorer.provider().as_str(), scorer.requested_provider().as_str());
    t.execution_provider_info.reset();
    t.execution_provider_info.with_label_values(&[model, provider, requested]).set(1);
    // A reload starts a new window and may change the model, layers or methods: no per-key gauge of
    // the previous pipeline survives it (counters and histograms do).
    for g in [
        &t.noise_score,
        &t.variance_score,
        &t.noise_benchmark,
        &t.baseline_noise_score,
        &t.baseline_variance_score,
        &t.noise_score_drift,
        &t.variance_score_drift,
        &t.drift_ks_statistic,
        &t.drift_ks_pvalue,
        &t.baseline_created_timestamp_seconds,
        &t.noise_score_drift_threshold,
        &t.variance_score_drift_threshold,
        &t.embedding_drift_statistic,
        &t.embedding_drift_pvalue,
        &t.embedding_drift_threshold,
        &t.embedding_drift,
        &t.embedding_detectors_run_seconds,
    ] {
        g.reset();
    }
    t.embedding_window_samples.reset();
    if provider != requested {
        tracing::warn!(
            provider,
            requested,
            "running on another execution provider than the first preference"
        );
    } else {
        tracing::info!(provider, "execution provider");
    }
    t.queue_capacity.with_label_values(&[model]).set(cfg.engine.queue_capacity as i64);
    if let Some(b) = base {
        t.baseline_created_timestamp_seconds.with_label_values(&[model]).set(b.meta.created_unix_secs as f64);
        for k in &b.entries {
            let l = [model, k.layer.as_str(), k.method.as_str()];
            t.baseline_noise_score.with_label_values(&l).set(k.noise_score.mean);
            t.baseline_variance_score.with_label_values(&l).set(k.variance_score.mean);
        }
    }
    for k in scorer.keys() {
        t.noise_benchmark
            .with_label_values(&[model, k.layer.as_str(), k.method.as_str()])
            .set(k.noise_benchmark);
    }
    let mut st = super::locks::write(&state.status);
    st.provider = Some(provider.to_string());
    st.requested_provider = Some(requested.to_string());
    st.queue_capacity = cfg.engine.queue_capacity;
    st.baseline = base.map(|b| BaselineInfo {
        path: cfg.baseline.path.clone(),
        created_unix_secs: b.meta.created_unix_secs as f64,
        samples: baseline::samples(b),
        settings_hash: b.meta.settings_hash.clone(),
    });
}

/// Window gauges and the status page's per-layer view.
pub(super) fn publish_window(state: &AppState, model: &str, monitor: &mut Monitor) {
    let now = Instant::now();
    let view = monitor.snapshot(now);
    let t = &state.telemetry;
    for k in &view {
        let l = [model, k.layer.as_str(), k.method.as_str()];
        let set = |g: &prometheus::GaugeVec, v: Option<f64>| match v {
            Some(v) => g.with_label_values(&l).set(v),
            None => {
                let _ = g.remove_label_values(&l);
            }
        };
        set(&t.noise_score, k.noise_score);
        set(&t.variance_score, k.variance_score);
        set(&t.noise_score_drift, k.noise_score_drift);
        set(&t.variance_score_drift, k.variance_score_drift);
        set(&t.noise_score_drift_threshold, k.noise_score_drift_threshold);
        set(&t.variance_score_drift_threshold, k.variance_score_drift_threshold);
        // Without a test result (empty window: after a reload, or when a time-bounded window
        // expires) the series go away, like the other window gauges, instead of keeping an old
        // p-value that would hold a distribution-drift alert firing.
        for (score, ks) in [("noise", k.ks_noise), ("variance", k.ks_variance)] {
            let l4 = [model, k.layer.as_str(), k.method.as_str(), score];
            match ks {
                Some((stat, p)) => {
                    t.drift_ks_statistic.with_label_values(&l4).set(stat);
                    t.drift_ks_pvalue.with_label_values(&l4).set(p);
                }
                None => {
                    let _ = t.drift_ks_statistic.remove_label_values(&l4);
                    let _ = t.drift_ks_pvalue.remove_label_values(&l4);
                }
            }
        }
    }
    let detectors = monitor.detectors(now);
    if let Some(d) = &detectors {
        publish_detectors(t, model, d);
    }
    let n = monitor.window_len(now);
    t.window_samples.with_label_values(&[model]).set(n as i64);
    let mut st = super::locks::write(&state.status);
    st.layers = view;
    st.window_samples = n;
    st.embedding_detectors = detectors;
    st.embedding_detectors_note = monitor.detectors_note().map(str::to_string);
}

/// The embedding detectors' gauges: one series per detector while it has a verdict; none below the
/// detectors' minimum window (as the KS gauges, so no old verdict holds an alert).
fn publish_detectors(t: &crate::telemetry::Telemetry, model: &str, d: &super::detect::DetectorsView) {
    t.embedding_window_samples.with_label_values(&[model]).set(d.window_samples as i64);
    if let Some(s) = d.last_run_seconds {
        t.embedding_detectors_run_seconds.with_label_values(&[model]).set(s);
    }
    for name in &d.detectors {
        let l = [model, *name];
        match d.results.iter().find(|r| r.name == *name) {
            Some(r) => {
                t.embedding_drift_statistic.with_label_values(&l).set(r.statistic);
                t.embedding_drift_threshold.with_label_values(&l).set(r.threshold);
                t.embedding_drift.with_label_values(&l).set(if r.drift { 1.0 } else { 0.0 });
                match r.p_value {
                    Some(p) => t.embedding_drift_pvalue.with_label_values(&l).set(p),
                    None => {
                        let _ = t.embedding_drift_pvalue.remove_label_values(&l);
                    }
                }
            }
            None => {
                for g in [
                    &t.embedding_drift_statistic,
                    &t.embedding_drift_pvalue,
                    &t.embedding_drift_threshold,
                    &t.embedding_drift,
                ] {
                    let _ = g.remove_label_values(&l);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::daemon::detect::DetectorsView;
    use crate::detectors::DetectorResult;
    use crate::telemetry::Telemetry;

    fn result(name: &str, p: Option<f64>, drift: bool) -> DetectorResult {
        DetectorResult { name: name.into(), statistic: 2.0, p_value: p, threshold: 1.5, drift }
    }

    /// One series per detector with a verdict, none for a p-value a detector does not have, and none
    /// left once the verdicts are gone (an old verdict must not hold an alert).
    #[test]
    fn detector_gauges_follow_the_verdicts() {
        let t = Telemetry::new();
        let mut view = DetectorsView {
            detectors: vec!["embedding_mmd", "embedding_pca"],
            window_samples: 40,
            results: vec![result("embedding_mmd", Some(0.004), true), result("embedding_pca", None, false)],
            last_run_seconds: Some(0.25),
        };
        publish_detectors(&t, "m", &view);
        let text = t.encode();
        for line in [
            "agent_embedding_drift{detector=\"embedding_mmd\",model=\"m\"} 1",
            "agent_embedding_drift{detector=\"embedding_pca\",model=\"m\"} 0",
            "agent_embedding_drift_pvalue{detector=\"embedding_mmd\",model=\"m\"} 0.004",
            "agent_embedding_drift_statistic{detector=\"embedding_pca\",model=\"m\"} 2",
            "agent_embedding_drift_threshold{detector=\"embedding_mmd\",model=\"m\"} 1.5",
            "agent_embedding_window_samples{model=\"m\"} 40",
            "agent_embedding_detectors_run_seconds{model=\"m\"} 0.25",
        ] {
            assert!(text.contains(line), "{line} not in\n{text}");
        }
        assert!(!text.contains("agent_embedding_drift_pvalue{detector=\"embedding_pca\""), "{text}");
        view.results.clear();
        view.window_samples = 3;
        publish_detectors(&t, "m", &view);
        let text = t.encode();
        assert!(!text.contains("agent_embedding_drift{"), "{text}");
        assert!(!text.contains("agent_embedding_drift_statistic{"), "{text}");
        assert!(text.contains("agent_embedding_window_samples{model=\"m\"} 3"), "{text}");
    }
}
