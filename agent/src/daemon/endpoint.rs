//! Where the ingest routes send a request: the running pipeline's endpoint, or why there is none.
//! Its own module so that the shared state ([`super::state`]) holds it without depending on the
//! HTTP handlers ([`super::ingest`]), which depend on the state.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, RwLock};

use tokio::sync::mpsc;

use plugins::decode::DecodeOptions;
use plugins::sources::Delivery;
use plugins::sources::ingest::IngestConfig;

/// A running pipeline's ingest endpoint.
pub struct IngestEndpoint {
    pub cfg: IngestConfig,
    /// `[model] name`, always accepted in `/v2/models/{name}/infer`.
    pub model: String,
    /// The engine's queue; taken away by [`IngestEndpoint::close`], so that a request still reading
    /// its body does not keep a draining engine waiting.
    pub(super) tx: RwLock<Option<mpsc::Sender<Delivery>>>,
    pub opts: DecodeOptions,
    pub(super) seq: AtomicU64,
}

impl IngestEndpoint {
    pub fn new(cfg: IngestConfig, model: String, tx: mpsc::Sender<Delivery>, opts: DecodeOptions) -> Self {
        IngestEndpoint { cfg, model, tx: RwLock::new(Some(tx)), opts, seq: AtomicU64::new(0) }
    }

    /// Drops the endpoint's sender: later requests are answered 503.
    pub fn close(&self) {
        super::locks::write(&self.tx).take();
    }

    pub(super) fn accepts(&self, name: &str) -> bool {
        name == self.model || self.cfg.models.iter().any(|m| m == name)
    }
}

/// What the routes answer with.
#[derive(Default)]
pub enum IngestState {
    /// No ingest source configured: 404.
    #[default]
    Off,
    /// Configured, its pipeline starting or reloading: 503.
    Starting {
        name: String,
    },
    Open(Arc<IngestEndpoint>),
}
