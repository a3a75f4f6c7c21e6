//! The daemon (`agent run`): a tokio runtime for the sources, the HTTP server and the signals; the
//! engine on its own thread behind a bounded queue.
//!
//! ```text
//! dir (spawn_blocking), http (task) ──bounded queue──▶ engine thread: micro-batch → score → Monitor
//! ingest (HTTP handlers, try_send) ──┘                  → metrics → ack (ledger/journal) → counters
//! HTTP server (axum) ◀── AppState (registry + status snapshot + ingest endpoint)
//! main loop: SIGTERM/SIGINT → drain, exit 0 · SIGHUP → validate, drain, restart · watchdog pings
//! ```

pub mod baseline;
mod budget;
pub mod check;
pub mod detect;
mod endpoint;
mod engine_loop;
mod heatmap;
pub mod ingest;
mod locks;
pub mod maps;
pub mod monitor;
mod pipeline;
mod publish;
pub mod server;
pub mod state;

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayViewD};
use tokio::signal::unix::{SignalKind, signal};

use crate::config::{Config, LogFormat};
use crate::engine::{EmbeddingModel, Engine, EngineSpec, SampleScores, ScoreKey};
use crate::runtime::Provider;
use pipeline::Pipeline;
use plugins::decode::Payload;
use plugins::decode::tokens::TokenSample;
use state::AppState;

/// What the daemon needs from the engine; [`EngineScorer`] implements it, tests wrap it.
pub trait Scorer: Send {
    fn keys(&self) -> &[ScoreKey];
    fn input_shape(&self) -> &[usize];
    fn provider(&self) -> Provider;
    fn requested_provider(&self) -> Provider;
    fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>>;
    /// A text model's samples (unpadded; the engine pads them). A scorer of dense inputs only
    /// refuses them, which rejects the input as `engine`.
    fn score_tokens(&mut self, samples: &[TokenSample]) -> Result<Vec<SampleScores>> {
        let _ = samples;
        anyhow::bail!("this model takes dense tensors, not token ids")
    }
    fn model_sha256(&self) -> &str;
    fn settings_hash(&self) -> &str;
    /// Per sample, per key: the embedding-aggregated map `E` (the reference and window maps,
    /// [`maps`]). A scorer without maps says so; the maps view then shows why it is empty.
    fn embedding_maps(&mut self, _batch: ArrayViewD<f32>) -> Result<Vec<Vec<ndarray::Array2<f32>>>> {
        anyhow::bail!("this scorer computes no attribution maps")
    }
    /// From now on, [`Scorer::score_with_embeddings`] also returns the embeddings `z`; `false` when
    /// this scorer has none to give (the embedding detectors then stay off).
    fn enable_embeddings(&mut self) -> Result<bool> {
        Ok(false)
    }
    /// Scores a batch and, once enabled, its `[B, D]` embeddings.
    fn score_with_embeddings(
        &mut self,
        batch: ArrayViewD<f32>,
    ) -> Result<(Vec<SampleScores>, Option<Array2<f32>>)> {
        Ok((self.score_batch(batch)?, None))
    }
    /// Scores token samples and, once enabled, their `[B, D]` embeddings.
    fn score_tokens_with_embeddings(
        &mut self,
        samples: &[TokenSample],
    ) -> Result<(Vec<SampleScores>, Option<Array2<f32>>)> {
        Ok((self.score_tokens(samples)?, None))
    }
}

/// The daemon's scorer: the engine, and beside it, once enabled, the model cut at the embedding
/// (`engine::embed`) for the embedding detectors.
pub struct EngineScorer {
    engine: Engine,
    forward: Option<EmbeddingModel>,
}

impl EngineScorer {
    pub fn new(spec: &EngineSpec) -> Result<EngineScorer> {
        Ok(EngineScorer { engine: Engine::new(spec)?, forward: None })
    }

    /// The engine itself, for what only it knows (layer views, the text model's decisions).
    pub fn engine(&self) -> &Engine {
        &self.engine
    }
}

impl Scorer for EngineScorer {
    fn keys(&self) -> &[ScoreKey] {
        self.engine.keys()
    }
    fn input_shape(&self) -> &[usize] {
        self.engine.input_shape()
    }
    fn provider(&self) -> Provider {
        self.engine.provider()
    }
    fn requested_provider(&self) -> Provider {
        self.engine.requested_provider()
    }
    fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>> {
        self.engine.score_batch(batch)
    }
    fn model_sha256(&self) -> &str {
        self.engine.model_sha256()
    }
    fn settings_hash(&self) -> &str {
        self.engine.settings_hash()
    }
    fn score_tokens(&mut self, samples: &[TokenSample]) -> Result<Vec<SampleScores>> {
        self.engine.score_tokens(samples)
    }
    fn enable_embeddings(&mut self) -> Result<bool> {
        if self.forward.is_none() {
            let input = self.engine.graph().inputs[0].name.clone();
            self.forward = Some(EmbeddingModel::new(self.engine.spec(), &input)?);
        }
        Ok(true)
    }
    fn score_with_embeddings(
        &mut self,
        batch: ArrayViewD<f32>,
    ) -> Result<(Vec<SampleScores>, Option<Array2<f32>>)> {
        let scores = self.engine.score_batch(batch.view())?;
        let z = match &mut self.forward {
            Some(f) => Some(f.embed(batch).context("the embedding of the batch")?),
            None => None,
        };
        Ok((scores, z))
    }
    fn score_tokens_with_embeddings(
        &mut self,
        samples: &[TokenSample],
    ) -> Result<(Vec<SampleScores>, Option<Array2<f32>>)> {
        let scores = self.engine.score_tokens(samples)?;
        let z = match (&mut self.forward, self.engine.text_model()) {
            (Some(f), Some(text)) => {
                Some(f.embed_tokens(text, samples).context("the embedding of the token samples")?)
            }
            _ => None,
        };
        Ok((scores, z))
    }
    fn embedding_maps(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<Vec<ndarray::Array2<f32>>>> {
        self.engine.embedding_maps(batch)
    }
}

/// Scores a decoded input `batch_size` samples per engine run, in order; `each(scores, seconds, z)`
/// after every run, `z` the run's `[n, D]` embeddings when `embed` asks for them and the scorer has
/// them enabled ([`Scorer::enable_embeddings`]); without `embed` no forward pass is spent on them.
/// The one loop over payloads shared by the daemon, the baseline and `agent score`.
pub fn score_payload(
    scorer: &mut dyn Scorer,
    payload: &Payload,
    batch_size: usize,
    embed: bool,
    each: &mut dyn FnMut(Vec<SampleScores>, f64, Option<Array2<f32>>) -> Result<()>,
) -> Result<()> {
    match payload {
        Payload::Dense(batch) => {
            let secs = std::cell::Cell::new(0.0);
            let pending = std::cell::Cell::new(None);
            crate::engine::score_in_chunks(
                batch.view(),
                batch_size,
                &mut |b| {
                    let t0 = std::time::Instant::now();
                    let scores = if embed {
                        scorer.score_with_embeddings(b).map(|(s, z)| {
                            pending.set(z);
                            s
                        })
                    } else {
                        scorer.score_batch(b)
                    };
                    secs.set(t0.elapsed().as_secs_f64());
                    scores
                },
                &mut |_, scores| {
                    let z = pending.take();
                    if let Some(z) = &z {
                        anyhow::ensure!(
                            z.nrows() == scores.len(),
                            "{} embeddings for {} scored samples",
                            z.nrows(),
                            scores.len()
                        );
                    }
                    each(scores, secs.get(), z)
                },
            )
        }
        Payload::Tokens(samples) => {
            for chunk in samples.chunks(batch_size.max(1)) {
                let t0 = std::time::Instant::now();
                let (scores, z) = if embed {
                    scorer.score_tokens_with_embeddings(chunk)?
                } else {
                    (scorer.score_tokens(chunk)?, None)
                };
                anyhow::ensure!(
                    scores.len() == chunk.len() && z.as_ref().is_none_or(|z| z.nrows() == chunk.len()),
                    "the engine returned {} scores and {} embeddings for {} samples",
                    scores.len(),
                    z.as_ref().map_or(0, |z| z.nrows()),
                    chunk.len()
                );
                each(scores, t0.elapsed().as_secs_f64(), z)?;
            }
            Ok(())
        }
    }
}

pub fn unix_now() -> f64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs_f64()).unwrap_or(0.0)
}

/// Builds a scorer on the engine thread.
pub type ScorerFactory = Arc<dyn Fn(&EngineSpec) -> Result<Box<dyn Scorer>> + Send + Sync>;

/// The real engine.
pub fn engine_factory() -> ScorerFactory {
    Arc::new(|spec: &EngineSpec| Ok(Box::new(EngineScorer::new(spec)?) as Box<dyn Scorer>))
}

type FilterHandle =
    tracing_subscriber::reload::Handle<tracing_subscriber::EnvFilter, tracing_subscriber::Registry>;

static LOG_FILTER: std::sync::OnceLock<FilterHandle> = std::sync::OnceLock::new();

fn log_filter(cfg: &Config) -> tracing_subscriber::EnvFilter {
    tracing_subscriber::EnvFilter::try_from_default_env()
        .or_else(|_| tracing_subscriber::EnvFilter::try_new(&cfg.logging.level))
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"))
}

/// Installs the global `tracing` subscriber (`RUST_LOG` wins over `logging.level`). The level can be
/// changed by a reload; the format (text or json) only by a restart.
pub fn init_logging(cfg: &Config) {
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, handle) = tracing_subscriber::reload::Layer::new(log_filter(cfg));
    let registry = tracing_subscriber::registry().with(filter);
    let fmt = tracing_subscriber::fmt::layer().with_writer(std::io::stderr);
    let installed = match cfg.logging.format {
        LogFormat::Text => registry.with(fmt).try_init(),
        LogFormat::Json => registry.with(fmt.json()).try_init(),
    };
    if installed.is_ok() {
        let _ = LOG_FILTER.set(handle);
    }
}

fn reload_logging(cfg: &Config) {
    if let Some(h) = LOG_FILTER.get()
        && let Err(e) = h.reload(log_filter(cfg))
    {
        tracing::warn!(error = %e, "cannot change the log level");
    }
}

/// `agent run --config FILE`.
pub fn command(config: &Path) -> Result<()> {
    let cfg = Config::load_valid(config)?;
    init_logging(&cfg);
    cfg.warn_deprecated();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("agent-rt")
        .build()
        .context("starting the tokio runtime")?;
    rt.block_on(run(config.to_path_buf(), cfg, engine_factory()))
}

/// The daemon's main loop; returns when a SIGTERM/SIGINT drain has finished.
pub async fn run(path: std::path::PathBuf, cfg: Config, factory: ScorerFactory) -> Result<()> {
    run_with_state(path, cfg, factory, Arc::new(AppState::new())).await
}

/// [`run`] with the state given (tests read its metrics).
pub async fn run_with_state(
    path: std::path::PathBuf,
    mut cfg: Config,
    factory: ScorerFactory,
    state: Arc<AppState>,
) -> Result<()> {
    let mut term = signal(SignalKind::terminate())?;
    let mut int = signal(SignalKind::interrupt())?;
    let mut hup = signal(SignalKind::hangup())?;
    let mut server = Server::start(&cfg, state.clone()).await?;
    let mut pipeline = Pipeline::start(&cfg, state.clone(), factory.clone()).await?;
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Ready]);
    let watchdog = sd_notify::watchdog_enabled().map(|d| d / 2).unwrap_or(Duration::from_secs(3600));
    let mut tick = tokio::time::interval(watchdog);
    loop {
        tokio::select! {
            _ = term.recv() => break,
            _ = int.recv() => break,
            _ = tick.tick() => {
                let _ = sd_notify::notify(&[sd_notify::NotifyState::Watchdog]);
            }
            _ = hup.recv() => {
                let new = match Config::load_valid(&path) {
                    Ok(new) => {
                        new.warn_deprecated();
                        new
                    }
                    Err(e) => {
                        tracing::error!("configuration reload rejected, the running configuration stays:\n{e:#}");
                        state.telemetry.config_reloads.with_label_values(&["failure"]).inc();
                        continue;
                    }
                };
                tracing::info!("reloading the configuration");
                pipeline.drain(&state).await;
                match Pipeline::start(&new, state.clone(), factory.clone()).await {
                    Ok(p) => {
                        pipeline = p;
                        if new.server != cfg.server {
                            server.stop().await;
                            server = Server::start(&new, state.clone()).await?;
                        }
                        reload_logging(&new);
                        cfg = new;
                        state.telemetry.config_reloads.with_label_values(&["success"]).inc();
                    }
                    Err(e) => {
                        tracing::error!("the new configuration failed to start ({e:#}); restarting the previous one");
                        state.telemetry.config_reloads.with_label_values(&["failure"]).inc();
                        pipeline = Pipeline::start(&cfg, state.clone(), factory.clone()).await?;
                    }
                }
            }
        }
    }
    tracing::info!("shutting down: draining in-flight samples");
    let _ = sd_notify::notify(&[sd_notify::NotifyState::Stopping]);
    pipeline.drain(&state).await;
    server.stop().await;
    tracing::info!("stopped");
    Ok(())
}

struct Server {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    async fn start(cfg: &Config, state: Arc<AppState>) -> Result<Server> {
        let listener = tokio::net::TcpListener::bind(&cfg.server.listen)
            .await
            .with_context(|| format!("binding server.listen {}", cfg.server.listen))?;
        tracing::info!(listen = %listener.local_addr()?, "serving /metrics");
        server::warn_if_exposed(listener.local_addr()?, cfg.server.auth_token.as_deref());
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let app = server::router(state);
        let task = tokio::spawn(async move {
            let r = axum::serve(listener, app)
                .with_graceful_shutdown(async {
                    let _ = stopped.await;
                })
                .await;
            if let Err(e) = r {
                tracing::error!(error = %e, "HTTP server failed");
            }
        });
        Ok(Server { stop, task })
    }

    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.task.await;
    }
}

#[cfg(test)]
mod tests;
