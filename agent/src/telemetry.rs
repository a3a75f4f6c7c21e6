//! Every metric the agent exports (the contract is `docs/metrics.md`), in one private registry.
//!
//! Labels are bounded: `model`, `layer`, `method`, `score`, `detector`, `reason`, `source`,
//! `provider`, `kind`, `code`, `result` — never a file name or a sample id.

use prometheus::{
    Encoder, GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry,
    TextEncoder,
};

use plugins::decode::RejectReason;

/// The Prometheus text format's content type, as `GET /metrics` answers it.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

const KEY: &[&str] = &["model", "layer", "method"];
const DETECTOR: &[&str] = &["model", "detector"];

/// The `kind` values of `agent_source_errors_total` for an `http` source.
pub const FEED_ERROR_KINDS: [&str; 6] = ["connect", "timeout", "status", "body", "protocol", "io"];

pub struct Telemetry {
    registry: Registry,
    pub build_info: IntGaugeVec,
    pub execution_provider_info: IntGaugeVec,
    pub ready: IntGauge,
    pub samples_scored: IntCounterVec,
    pub samples_rejected: IntCounterVec,
    pub samples_skipped: IntCounterVec,
    pub noise_score: GaugeVec,
    pub variance_score: GaugeVec,
    pub noise_benchmark: GaugeVec,
    pub baseline_noise_score: GaugeVec,
    pub baseline_variance_score: GaugeVec,
    pub noise_score_drift: GaugeVec,
    pub variance_score_drift: GaugeVec,
    pub drift_ks_statistic: GaugeVec,
    pub drift_ks_pvalue: GaugeVec,
    pub noise_score_drift_threshold: GaugeVec,
    pub variance_score_drift_threshold: GaugeVec,
    pub embedding_drift_statistic: GaugeVec,
    pub embedding_drift_pvalue: GaugeVec,
    pub embedding_drift_threshold: GaugeVec,
    pub embedding_drift: GaugeVec,
    pub embedding_window_samples: IntGaugeVec,
    pub embedding_detectors_run_seconds: GaugeVec,
    pub window_samples: IntGaugeVec,
    pub noise_score_per_sample: HistogramVec,
    pub variance_score_per_sample: HistogramVec,
    pub noise_score_rank: HistogramVec,
    pub variance_score_rank: HistogramVec,
    pub inference_duration_seconds: HistogramVec,
    pub batch_size: HistogramVec,
    pub queue_depth: IntGaugeVec,
    pub queue_capacity: IntGaugeVec,
    pub baseline_created_timestamp_seconds: GaugeVec,
    pub last_sample_timestamp_seconds: GaugeVec,
    pub source_errors: IntCounterVec,
    pub feed_last_success_timestamp_seconds: GaugeVec,
    pub ingest_requests: IntCounterVec,
    pub config_reloads: IntCounterVec,
}

/// `1/n, 2/n, …, 1`: each bound the nearest double to the fraction, so the `le` labels print as
/// `0.15`, not `0.15000000000000002` (which `0.05·3` gives), and rules can name them.
fn fractions(n: usize) -> Vec<f64> {
    (1..=n).map(|i| i as f64 / n as f64).collect()
}

fn linear(step: f64, n: usize) -> Vec<f64> {
    (1..=n).map(|i| step * i as f64).collect()
}

impl Telemetry {
    pub fn new() -> Telemetry {
        let registry = Registry::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("a valid metric definition");
                registry.register(Box::new(m.clone())).expect("metric names are unique");
                m
            }};
        }
        let g = |name: &str, help: &str, labels: &[&str]| GaugeVec::new(Opts::new(name, help), labels);
        let ig = |name: &str, help: &str, labels: &[&str]| IntGaugeVec::new(Opts::new(name, help), labels);
        let c = |name: &str, help: &str, labels: &[&str]| IntCounterVec::new(Opts::new(name, help), labels);
        let h = |name: &str, help: &str, labels: &[&str], buckets: Vec<f64>| {
            HistogramVec::new(HistogramOpts::new(name, help).buckets(buckets), labels)
        };
        Telemetry {
            build_info: reg!(ig(
                "agent_build_info",
                "Build and runtime versions.",
                &["version", "onnxruntime"]
            )),
            execution_provider_info: reg!(ig(
                "agent_execution_provider_info",
                "Execution provider that actually runs (requested = first preference).",
                &["model", "provider", "requested"]
            )),
            ready: reg!(IntGauge::new("agent_ready", "1 once model, noise maps and baseline are loaded.")),
            samples_scored: reg!(c("agent_samples_scored_total", "Samples scored.", &["model"])),
            samples_rejected: reg!(c(
                "agent_samples_rejected_total",
                "Inputs rejected, by reason.",
                &["model", "reason"]
            )),
            samples_skipped: reg!(c(
                "agent_samples_skipped_total",
                "Samples not scored, by reason (budget: over engine.max_samples_per_sec).",
                &["model", "reason"]
            )),
            noise_score: reg!(g("agent_noise_score", "Window mean of the per-sample noise score.", KEY)),
            variance_score: reg!(g(
                "agent_variance_score",
                "Window mean of the per-sample variance score.",
                KEY
            )),
            noise_benchmark: reg!(g("agent_noise_benchmark", "Noise-vs-noise benchmark NS_bench.", KEY)),
            baseline_noise_score: reg!(g("agent_baseline_noise_score", "Reference mean noise score.", KEY)),
            baseline_variance_score: reg!(g(
                "agent_baseline_variance_score",
                "Reference mean variance score.",
                KEY
            )),
            noise_score_drift: reg!(g(
                "agent_noise_score_drift",
                "Relative drift (NS_ref - NS_window) / NS_ref.",
                KEY
            )),
            variance_score_drift: reg!(g(
                "agent_variance_score_drift",
                "Relative drift (VS_ref - VS_window) / VS_ref.",
                KEY
            )),
            drift_ks_statistic: reg!(g(
                "agent_drift_ks_statistic",
                "Two-sample Kolmogorov-Smirnov statistic, window vs reference.",
                &["model", "layer", "method", "score"]
            )),
            drift_ks_pvalue: reg!(g(
                "agent_drift_ks_pvalue",
                "P-value of the two-sample Kolmogorov-Smirnov test.",
                &["model", "layer", "method", "score"]
            )),
            noise_score_drift_threshold: reg!(g(
                "agent_noise_score_drift_threshold",
                "|dNS| beyond which the window is unusual at the configured false-alarm rate (from the baseline).",
                KEY
            )),
            variance_score_drift_threshold: reg!(g(
                "agent_variance_score_drift_threshold",
                "|dVS| beyond which the window is unusual at the configured false-alarm rate (from the baseline).",
                KEY
            )),
            embedding_drift_statistic: reg!(g(
                "agent_embedding_drift_statistic",
                "Embedding drift detector statistic, window vs reference embeddings.",
                DETECTOR
            )),
            embedding_drift_pvalue: reg!(g(
                "agent_embedding_drift_pvalue",
                "P-value of the embedding drift detector (absent for embedding_pca).",
                DETECTOR
            )),
            embedding_drift_threshold: reg!(g(
                "agent_embedding_drift_threshold",
                "Statistic beyond which the embedding drift detector reports drift.",
                DETECTOR
            )),
            embedding_drift: reg!(g(
                "agent_embedding_drift",
                "1 when the embedding drift detector reports drift, else 0.",
                DETECTOR
            )),
            embedding_window_samples: reg!(ig(
                "agent_embedding_window_samples",
                "Embeddings in the embedding detectors' window.",
                &["model"]
            )),
            embedding_detectors_run_seconds: reg!(g(
                "agent_embedding_detectors_run_seconds",
                "Wall time of the last run of the embedding drift detectors.",
                &["model"]
            )),
            window_samples: reg!(ig("agent_window_samples", "Samples currently in the window.", &["model"])),
            noise_score_per_sample: reg!(h(
                "agent_noise_score_per_sample",
                "Per-sample noise score.",
                KEY,
                linear(0.05, 20)
            )),
            variance_score_per_sample: reg!(h(
                "agent_variance_score_per_sample",
                "Per-sample variance score.",
                KEY,
                linear(0.0125, 20)
            )),
            noise_score_rank: reg!(h(
                "agent_noise_score_rank",
                "Per-sample noise score as its rank in the baseline's reference scores (0..1; uniform without drift).",
                KEY,
                fractions(20)
            )),
            variance_score_rank: reg!(h(
                "agent_variance_score_rank",
                "Per-sample variance score as its rank in the baseline's reference scores (0..1; uniform without drift).",
                KEY,
                fractions(20)
            )),
            inference_duration_seconds: reg!(h(
                "agent_inference_duration_seconds",
                "Wall time of one engine batch.",
                &["model"],
                prometheus::exponential_buckets(0.001, 2.0, 16).expect("valid buckets")
            )),
            batch_size: reg!(h(
                "agent_batch_size",
                "Samples per engine batch.",
                &["model"],
                prometheus::exponential_buckets(1.0, 2.0, 10).expect("valid buckets")
            )),
            queue_depth: reg!(ig("agent_queue_depth", "Inputs waiting for the engine.", &["model"])),
            queue_capacity: reg!(ig(
                "agent_queue_capacity",
                "Bound of the engine's input queue.",
                &["model"]
            )),
            baseline_created_timestamp_seconds: reg!(g(
                "agent_baseline_created_timestamp_seconds",
                "When the baseline in use was computed.",
                &["model"]
            )),
            last_sample_timestamp_seconds: reg!(g(
                "agent_last_sample_timestamp_seconds",
                "When the last sample was scored.",
                &["model"]
            )),
            source_errors: reg!(c(
                "agent_source_errors_total",
                "Source-level failures.",
                &["source", "kind"]
            )),
            feed_last_success_timestamp_seconds: reg!(g(
                "agent_feed_last_success_timestamp_seconds",
                "HTTP feed: last successful fetch.",
                &["source"]
            )),
            ingest_requests: reg!(c(
                "agent_ingest_requests_total",
                "Ingest endpoint requests by HTTP status.",
                &["source", "code"]
            )),
            config_reloads: reg!(c(
                "agent_config_reloads_total",
                "Configuration reloads (SIGHUP).",
                &["result"]
            )),
            registry,
        }
    }

    /// Sets the constant series and creates the counters' zero series for a model, so that rates and
    /// absent-alerts work from the first scrape.
    pub fn init_model(&self, model: &str, onnxruntime: &str) {
        self.build_info.with_label_values(&[env!("CARGO_PKG_VERSION"), onnxruntime]).set(1);
        self.samples_scored.with_label_values(&[model]);
        for r in RejectReason::ALL {
            self.samples_rejected.with_label_values(&[model, r.as_str()]);
        }
        self.samples_skipped.with_label_values(&[model, "budget"]);
        for result in ["success", "failure"] {
            self.config_reloads.with_label_values(&[result]);
        }
    }

    /// Zero series of an HTTP feed's error kinds, so that `increase()` sees the first error.
    pub fn init_feed(&self, source: &str) {
        for kind in FEED_ERROR_KINDS {
            self.source_errors.with_label_values(&[source, kind]);
        }
    }

    /// The zero series of accepted ingest requests.
    pub fn init_ingest(&self, source: &str) {
        self.ingest_requests.with_label_values(&[source, "202"]);
    }

    pub fn rejected(&self, model: &str, reason: RejectReason) {
        self.samples_rejected.with_label_values(&[model, reason.as_str()]).inc();
    }

    /// The Prometheus text exposition of every metric.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        TextEncoder::new().encode(&self.registry.gather(), &mut buf).expect("encoding to memory");
        String::from_utf8(buf).expect("the text format is UTF-8")
    }
}

impl Default for Telemetry {
    fn default() -> Self {
        Telemetry::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_contract_metric_is_exported() {
        let t = Telemetry::new();
        t.init_model("digits", "1.31");
        let k = ["digits", "conv2_in", "vanilla"];
        for gv in [
            &t.noise_score,
            &t.variance_score,
            &t.noise_benchmark,
            &t.baseline_noise_score,
            &t.baseline_variance_score,
            &t.noise_score_drift,
            &t.variance_score_drift,
        ] {
            gv.with_label_values(&k).set(0.5);
        }
        t.drift_ks_statistic.with_label_values(&["digits", "conv2_in", "vanilla", "noise"]).set(0.1);
        t.drift_ks_pvalue.with_label_values(&["digits", "conv2_in", "vanilla", "noise"]).set(0.9);
        t.execution_provider_info.with_label_values(&["digits", "cpu", "cuda"]).set(1);
        t.ready.set(1);
        t.window_samples.with_label_values(&["digits"]).set(3);
        t.noise_score_drift_threshold.with_label_values(&k).set(0.02);
        t.variance_score_drift_threshold.with_label_values(&k).set(0.03);
        let det = ["digits", "embedding_mmd"];
        for gv in [
            &t.embedding_drift_statistic,
            &t.embedding_drift_pvalue,
            &t.embedding_drift_threshold,
            &t.embedding_drift,
        ] {
            gv.with_label_values(&det).set(0.0);
        }
        t.embedding_window_samples.with_label_values(&["digits"]).set(3);
        t.embedding_detectors_run_seconds.with_label_values(&["digits"]).set(0.01);
        t.noise_score_rank.with_label_values(&k).observe(0.5);
        t.variance_score_rank.with_label_values(&k).observe(0.5);
        t.noise_score_per_sample.with_label_values(&k).observe(0.3);
        t.variance_score_per_sample.with_label_values(&k).observe(0.1);
        t.inference_duration_seconds.with_label_values(&["digits"]).observe(0.01);
        t.batch_size.with_label_values(&["digits"]).observe(4.0);
        t.queue_depth.with_label_values(&["digits"]).set(0);
        t.queue_capacity.with_label_values(&["digits"]).set(64);
        t.baseline_created_timestamp_seconds.with_label_values(&["digits"]).set(1.0);
        t.last_sample_timestamp_seconds.with_label_values(&["digits"]).set(1.0);
        t.source_errors.with_label_values(&["inbox", "watch"]).inc();
        t.feed_last_success_timestamp_seconds.with_label_values(&["feed"]).set(1.0);
        t.ingest_requests.with_label_values(&["ingest", "200"]).inc();
        let text = t.encode();
        let contract = include_str!("../../docs/metrics.md");
        for line in contract.lines().filter(|l| l.starts_with("| `agent_")) {
            let name = line.split('`').nth(1).unwrap();
            assert!(text.contains(&format!("# TYPE {name} ")), "{name} is not exported");
        }
        assert!(text.contains("agent_samples_rejected_total{model=\"digits\",reason=\"non_finite\"} 0"));
        assert!(text.contains("agent_samples_skipped_total{model=\"digits\",reason=\"budget\"} 0"));
        // The rank buckets' bounds as the fleet rules name them.
        for le in ["0.05", "0.15", "0.95", "1", "+Inf"] {
            let bucket = format!(
                "agent_noise_score_rank_bucket{{layer=\"conv2_in\",method=\"vanilla\",model=\"digits\",le=\"{le}\"}}"
            );
            assert!(text.contains(&bucket), "{bucket} not in the exposition");
        }
    }
}
