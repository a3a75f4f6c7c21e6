//! One running configuration: sources → bounded queue → engine thread (micro-batches) → monitor,
//! metrics and acknowledgements. A reload drains one pipeline and starts the next.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, anyhow, bail};
use ndarray::{Axis, concatenate};
use tokio::sync::{mpsc, oneshot, watch};

use super::ingest::{IngestEndpoint, IngestState};
use super::monitor::{Monitor, baseline_samples, check_baseline, load_baseline, save_baseline, unix_now};
use super::state::AppState;
use super::{Scorer, ScorerFactory, baseline};
use crate::config::{Config, SourceConfig};
use crate::drift::Baseline;
use plugins::decode::{RejectReason, Rejection};
use plugins::sources::dir::DirSource;
use plugins::sources::http::HttpSource;
use plugins::sources::{Delivery, Observer, Outcome, Totals};

pub struct Pipeline {
    stop: watch::Sender<bool>,
    sources: Vec<tokio::task::JoinHandle<()>>,
    engine: Option<std::thread::JoinHandle<()>>,
}

/// Counts source-side rejections and errors.
struct MetricsObserver {
    state: Arc<AppState>,
    model: String,
}

impl Observer for MetricsObserver {
    fn rejected(&self, source: &str, r: &Rejection) {
        tracing::warn!(source, reason = r.reason.as_str(), "rejected: {}", r.message);
        self.state.telemetry.rejected(&self.model, r.reason);
    }
    fn error(&self, source: &str, kind: &'static str) {
        self.state.telemetry.source_errors.with_label_values(&[source, kind]).inc();
    }
    fn feed_ok(&self, source: &str) {
        self.state.telemetry.feed_last_success_timestamp_seconds.with_label_values(&[source]).set(unix_now());
    }
}

/// A source opened and not yet running.
enum Opened {
    Dir(DirSource),
    Http(HttpSource),
}

impl Pipeline {
    /// Loads the engine and the baseline (building it when configured), then starts the sources.
    pub async fn start(cfg: &Config, state: Arc<AppState>, factory: ScorerFactory) -> Result<Pipeline> {
        let model = cfg.model.name.clone();
        state.set_model(cfg);
        let (tx, rx) = mpsc::channel::<Delivery>(cfg.engine.queue_capacity);
        let (ready_tx, ready_rx) = oneshot::channel::<Result<Vec<usize>>>();
        let handle = tokio::runtime::Handle::current();
        let (cfg2, state2) = (cfg.clone(), state.clone());
        let engine = std::thread::Builder::new()
            .name("engine".into())
            .spawn(move || {
                let started = (|| -> Result<(Box<dyn Scorer>, Monitor)> {
                    let mut scorer = factory(&cfg2.to_engine_spec()).context("loading the engine")?;
                    let base = obtain_baseline(&mut *scorer, &cfg2)?;
                    let monitor = Monitor::new(scorer.keys(), &cfg2.window, Some(base))?;
                    Ok((scorer, monitor))
                })();
                match started {
                    Ok((scorer, monitor)) => {
                        publish_static(&state2, &cfg2, &*scorer, monitor.baseline());
                        let _ = ready_tx.send(Ok(scorer.input_shape().to_vec()));
                        serve(scorer, monitor, rx, handle, &state2, &cfg2);
                    }
                    Err(e) => {
                        let _ = ready_tx.send(Err(e));
                    }
                }
            })
            .context("starting the engine thread")?;
        let input_shape = match ready_rx.await {
            Ok(Ok(shape)) => shape,
            Ok(Err(e)) => {
                let _ = engine.join();
                return Err(e);
            }
            Err(_) => {
                let _ = engine.join();
                bail!("the engine thread ended while starting");
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let observer: Arc<dyn Observer> =
            Arc::new(MetricsObserver { state: state.clone(), model: model.clone() });
        let opts = baseline::decode_options(cfg, &input_shape);
        // Open every source before starting any, so that a failure leaves nothing running.
        let mut opened: Vec<(Opened, Totals)> = Vec::new();
        for s in &cfg.sources {
            let result = match s {
                SourceConfig::Dir(d) => DirSource::open(d)
                    .map(|(src, t)| (Opened::Dir(src), t))
                    .map_err(|e| anyhow!("opening source {:?} ({}): {e}", d.name, d.path.display())),
                SourceConfig::Http(h) => HttpSource::open(h)
                    .map(|(src, t)| (Opened::Http(src), t))
                    .map_err(|e| anyhow!("opening source {:?} ({}): {e}", h.name, h.state_dir.display())),
                SourceConfig::Ingest(_) => continue,
            };
            match result {
                Ok(pair) => opened.push(pair),
                Err(e) => {
                    drop(tx);
                    let _ = tokio::task::spawn_blocking(move || engine.join()).await;
                    return Err(e);
                }
            }
        }
        let mut sources = Vec::new();
        for (src, totals) in opened {
            let (opts, tx, observer, stop_rx) = (opts.clone(), tx.clone(), observer.clone(), stop_rx.clone());
            match src {
                Opened::Dir(src) => {
                    state.seed_counters(&model, &src.config().name, &totals);
                    sources.push(tokio::task::spawn_blocking(move || src.run(opts, tx, observer, stop_rx)));
                }
                Opened::Http(src) => {
                    state.seed_counters(&model, &src.config().name, &totals);
                    state.telemetry.init_feed(&src.config().name);
                    sources.push(tokio::spawn(src.run(opts, tx, observer, stop_rx)));
                }
            }
        }
        if let Some(i) = cfg.sources.iter().find_map(|s| s.as_ingest()) {
            state.telemetry.init_ingest(&i.name);
            if i.auth_token.is_none() && cfg.server.auth_token.is_none() && !loopback(&cfg.server.listen) {
                tracing::warn!(source = %i.name, listen = %cfg.server.listen, "the ingest endpoint accepts anyone: set server.auth_token or the source's auth_token");
            }
            let endpoint = IngestEndpoint::new(i.clone(), model.clone(), tx.clone(), opts.clone());
            *state.ingest.write().expect("ingest lock") = IngestState::Open(Arc::new(endpoint));
        }
        drop(tx);
        state.telemetry.ready.set(1);
        state.status.write().expect("status lock").ready = true;
        tracing::info!(model = %model, "pipeline ready");
        Ok(Pipeline { stop, sources, engine: Some(engine) })
    }

    /// Stops the sources, lets the engine score what is queued, and waits for both.
    pub async fn drain(mut self, state: &AppState) {
        state.telemetry.ready.set(0);
        state.status.write().expect("status lock").ready = false;
        // The endpoint holds a sender of the queue: the engine ends only once it is gone.
        {
            let mut ingest = state.ingest.write().expect("ingest lock");
            if let IngestState::Open(e) = &*ingest {
                e.close();
                *ingest = IngestState::Starting { name: e.cfg.name.clone() };
            }
        }
        let _ = self.stop.send(true);
        for s in self.sources.drain(..) {
            let _ = s.await;
        }
        if let Some(engine) = self.engine.take() {
            let _ = tokio::task::spawn_blocking(move || engine.join()).await;
        }
    }
}

/// Whether a listen address is on the loopback interface.
fn loopback(listen: &str) -> bool {
    listen.parse::<std::net::SocketAddr>().is_ok_and(|a| a.ip().is_loopback())
}

/// Loads `baseline.path` (refusing a stale one) or builds it from `baseline.reference_dir`.
fn obtain_baseline(scorer: &mut dyn Scorer, cfg: &Config) -> Result<Baseline> {
    let b = &cfg.baseline;
    if let Some(path) = &b.path
        && path.is_file()
    {
        let hint = format!(
            "`agent baseline --config {} --reference DIR --out {}`{}",
            cfg.file.display(),
            path.display(),
            if b.reference_dir.is_some() {
                ", or delete the file to rebuild it from baseline.reference_dir"
            } else {
                ""
            }
        );
        let base = load_baseline(path)?;
        check_baseline(&base, scorer.model_sha256(), scorer.settings_hash(), scorer.keys(), &hint)
            .with_context(|| format!("baseline {}", path.display()))?;
        tracing::info!(path = %path.display(), samples = baseline_samples(&base), "baseline loaded");
        return Ok(base);
    }
    let Some(reference) = &b.reference_dir else {
        bail!("no baseline: set baseline.path to an existing file or baseline.reference_dir");
    };
    tracing::info!(reference = %reference.display(), "building the baseline from reference data");
    let opts = baseline::decode_options(cfg, scorer.input_shape());
    let mut last_log = Instant::now();
    let base = baseline::build(
        scorer,
        reference,
        &opts,
        cfg.engine.batch_size,
        b.reservoir_samples,
        &mut |d, t| {
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(done = d, total = t, "scoring reference data");
            }
        },
    )?;
    if let Some(path) = &b.path {
        save_baseline(&base, path)?;
        tracing::info!(path = %path.display(), samples = baseline_samples(&base), "baseline built and saved");
    }
    Ok(base)
}

/// Metrics that do not change while a pipeline runs.
fn publish_static(state: &AppState, cfg: &Config, scorer: &dyn Scorer, base: Option<&Baseline>) {
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
    ] {
        g.reset();
    }
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
    let mut st = state.status.write().expect("status lock");
    st.provider = Some(provider.to_string());
    st.requested_provider = Some(requested.to_string());
    st.queue_capacity = cfg.engine.queue_capacity;
    st.baseline = base.map(|b| super::state::BaselineInfo {
        path: cfg.baseline.path.clone(),
        created_unix_secs: b.meta.created_unix_secs as f64,
        samples: baseline_samples(b),
        settings_hash: b.meta.settings_hash.clone(),
    });
}

/// The engine thread's loop: micro-batches until every source is gone and the queue is empty.
fn serve(
    mut scorer: Box<dyn Scorer>,
    mut monitor: Monitor,
    mut rx: mpsc::Receiver<Delivery>,
    rt: tokio::runtime::Handle,
    state: &AppState,
    cfg: &Config,
) {
    let model = cfg.model.name.as_str();
    let batch_size = cfg.engine.batch_size.max(1);
    let delay = Duration::from_millis(cfg.engine.max_batch_delay_ms);
    loop {
        // Wake up at least every second so that a time-bounded window expires on the gauges too.
        let first = match rt.block_on(async { tokio::time::timeout(Duration::from_secs(1), rx.recv()).await })
        {
            Ok(Some(d)) => d,
            Ok(None) => break,
            Err(_) => {
                publish_window(state, model, &mut monitor);
                continue;
            }
        };
        let mut items = vec![first];
        let mut n: usize = items[0].batch.len_of(Axis(0));
        let deadline = tokio::time::Instant::now() + delay;
        while n < batch_size {
            match rt.block_on(async { tokio::time::timeout_at(deadline, rx.recv()).await }) {
                Ok(Some(d)) => {
                    n += d.batch.len_of(Axis(0));
                    items.push(d);
                }
                _ => break,
            }
        }
        state.telemetry.queue_depth.with_label_values(&[model]).set(rx.len() as i64);
        process(&mut *scorer, &mut monitor, items, state, model, batch_size);
        publish_window(state, model, &mut monitor);
    }
    state.telemetry.queue_depth.with_label_values(&[model]).set(0);
    tracing::info!("engine queue drained");
}

/// Scores `items` together; when that fails, each alone, so one bad input does not reject the others.
fn process(
    scorer: &mut dyn Scorer,
    monitor: &mut Monitor,
    items: Vec<Delivery>,
    state: &AppState,
    model: &str,
    batch_size: usize,
) {
    let views: Vec<_> = items.iter().map(|d| d.batch.view()).collect();
    let joined = concatenate(Axis(0), &views).map_err(|e| anyhow!("{e}"));
    let scored = joined.and_then(|b| score_chunks(scorer, &b, batch_size, state, model));
    match scored {
        Ok(all) => {
            let mut it = all.into_iter();
            for d in items {
                let n = d.batch.len_of(Axis(0));
                let scores: Vec<_> = it.by_ref().take(n).collect();
                finish_scored(monitor, d, &scores, state, model);
            }
        }
        Err(e) if items.len() > 1 => {
            tracing::warn!(error = %e, "batch failed; scoring its inputs one by one");
            for d in items {
                process(scorer, monitor, vec![d], state, model, batch_size);
            }
        }
        Err(e) => {
            let d = items.into_iter().next().expect("one item");
            let r = Rejection::new(RejectReason::Engine, &d.input, format!("{e:#}"));
            tracing::warn!(source = %d.source, reason = "engine", "rejected: {}", r.message);
            if let Err(e) = d.ack.finish(&Outcome::Rejected(r)) {
                tracing::error!(source = %d.source, error = %e, "cannot acknowledge a rejected input");
                state.telemetry.source_errors.with_label_values(&[&d.source, "io"]).inc();
            }
            state.telemetry.rejected(model, RejectReason::Engine);
        }
    }
}

fn score_chunks(
    scorer: &mut dyn Scorer,
    batch: &ndarray::ArrayD<f32>,
    batch_size: usize,
    state: &AppState,
    model: &str,
) -> Result<Vec<crate::engine::SampleScores>> {
    let n = batch.len_of(Axis(0));
    let mut out = Vec::with_capacity(n);
    let mut start = 0;
    while start < n {
        let end = (start + batch_size).min(n);
        let t0 = Instant::now();
        let s = scorer.score_batch(batch.slice_axis(Axis(0), (start..end).into()))?;
        if s.len() != end - start {
            bail!("the engine returned {} results for {} samples", s.len(), end - start);
        }
        state
            .telemetry
            .inference_duration_seconds
            .with_label_values(&[model])
            .observe(t0.elapsed().as_secs_f64());
        state.telemetry.batch_size.with_label_values(&[model]).observe((end - start) as f64);
        out.extend(s);
        start = end;
    }
    Ok(out)
}

/// Records an input's scores, then acknowledges it (durably), then counts it.
fn finish_scored(
    monitor: &mut Monitor,
    d: Delivery,
    scores: &[crate::engine::SampleScores],
    state: &AppState,
    model: &str,
) {
    let now = Instant::now();
    let keys: Vec<(String, &'static str)> = {
        let snap = monitor.snapshot(now);
        snap.iter().map(|k| (k.layer.clone(), k.method.as_str())).collect()
    };
    for s in scores {
        monitor.record(now, s);
        for ((layer, method), v) in keys.iter().zip(&s.scores) {
            let l = [model, layer.as_str(), method];
            state.telemetry.noise_score_per_sample.with_label_values(&l).observe(v.noise_score);
            state.telemetry.variance_score_per_sample.with_label_values(&l).observe(v.variance_score);
        }
    }
    let samples = scores.len() as u64;
    if let Err(e) = d.ack.finish(&Outcome::Scored { samples }) {
        tracing::error!(source = %d.source, input = %d.input, error = %e, "cannot acknowledge a scored input");
        state.telemetry.source_errors.with_label_values(&[&d.source, "io"]).inc();
    }
    state.telemetry.samples_scored.with_label_values(&[model]).inc_by(samples);
    state.telemetry.last_sample_timestamp_seconds.with_label_values(&[model]).set(unix_now());
    tracing::debug!(source = %d.source, input = %d.input, samples, "scored");
}

/// Window gauges and the status page's per-layer view.
fn publish_window(state: &AppState, model: &str, monitor: &mut Monitor) {
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
    let n = monitor.window_len(now);
    t.window_samples.with_label_values(&[model]).set(n as i64);
    let mut st = state.status.write().expect("status lock");
    st.layers = view;
    st.window_samples = n;
}
