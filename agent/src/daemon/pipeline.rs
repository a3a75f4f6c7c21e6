//! One running configuration's lifecycle: start (engine thread with its baseline, then the sources
//! and the ingest endpoint) and drain. Data flows one way: the configuration goes in here; the engine
//! thread ([`super::engine_loop`]) scores, records and acknowledges; [`super::publish`] writes
//! metrics and status; [`super::baseline`] provides the reference. A reload drains one pipeline and
//! starts the next.

use std::sync::Arc;

use anyhow::{Context, Result, anyhow, bail};
use tokio::sync::{mpsc, oneshot, watch};

use super::endpoint::{IngestEndpoint, IngestState};
use super::engine_loop::serve;
use super::monitor::Monitor;
use super::publish::publish_static;
use super::state::AppState;
use super::{Scorer, ScorerFactory, baseline, unix_now};
use crate::config::{Config, SourceConfig};
use plugins::decode::{DecodeOptions, Rejection};
use plugins::sources::dir::DirSource;
use plugins::sources::http::HttpSource;
use plugins::sources::{Delivery, Observer, Totals};

pub struct Pipeline {
    stop: watch::Sender<bool>,
    sources: Vec<tokio::task::JoinHandle<()>>,
    /// The budget stage, when `engine.max_samples_per_sec` is set ([`super::budget`]).
    budget: Option<std::thread::JoinHandle<()>>,
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
        // Before any thread starts, so that a tokenizer that fails to load leaves nothing running.
        let tokens = cfg.token_options()?;
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
                    let embeds = cfg2.detectors.active()
                        && scorer.enable_embeddings().context("the embedding detectors' forward session")?;
                    let base = baseline::obtain(&mut *scorer, &cfg2)?;
                    let monitor = Monitor::new(scorer.keys(), &cfg2.window, Some(base))?.with_detectors(
                        &cfg2.detectors,
                        &cfg2.window,
                        embeds,
                    );
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
        // With a budget, the sources feed the budget stage, which feeds the engine's queue.
        let (tx, budget) = match cfg.engine.max_samples_per_sec {
            None => (tx, None),
            Some(per_sec) => {
                let (source_tx, source_rx) = mpsc::channel::<Delivery>(cfg.engine.queue_capacity);
                let (state2, model2) = (state.clone(), model.clone());
                let seed = rand::random::<u64>();
                let sampler = super::budget::Sampler::new(per_sec, seed, std::time::Instant::now());
                let spawned = std::thread::Builder::new()
                    .name("budget".into())
                    .spawn(move || super::budget::serve(sampler, source_rx, tx, &state2, &model2));
                match spawned {
                    Ok(h) => (source_tx, Some(h)),
                    Err(e) => {
                        drop(source_tx);
                        let _ = tokio::task::spawn_blocking(move || engine.join()).await;
                        return Err(anyhow!("starting the budget thread: {e}"));
                    }
                }
            }
        };
        let (stop, stop_rx) = watch::channel(false);
        let observer: Arc<dyn Observer> =
            Arc::new(MetricsObserver { state: state.clone(), model: model.clone() });
        let opts = DecodeOptions { tokens, ..baseline::decode_options_dense(cfg, &input_shape) };
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
                    let _ = tokio::task::spawn_blocking(move || {
                        if let Some(b) = budget {
                            let _ = b.join();
                        }
                        engine.join()
                    })
                    .await;
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
            *super::locks::write(&state.ingest) = IngestState::Open(Arc::new(endpoint));
        }
        drop(tx);
        state.telemetry.ready.set(1);
        super::locks::write(&state.status).ready = true;
        tracing::info!(model = %model, "pipeline ready");
        Ok(Pipeline { stop, sources, budget, engine: Some(engine) })
    }

    /// Stops the sources, lets the engine score what is queued, and waits for both.
    pub async fn drain(mut self, state: &AppState) {
        state.telemetry.ready.set(0);
        super::locks::write(&state.status).ready = false;
        // The endpoint holds a sender of the queue: the engine ends only once it is gone.
        {
            let mut ingest = super::locks::write(&state.ingest);
            if let IngestState::Open(e) = &*ingest {
                e.close();
                *ingest = IngestState::Starting { name: e.cfg.name.clone() };
            }
        }
        let _ = self.stop.send(true);
        for s in self.sources.drain(..) {
            let _ = s.await;
        }
        if let Some(budget) = self.budget.take() {
            let _ = tokio::task::spawn_blocking(move || budget.join()).await;
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
