//! What the HTTP server reads: the metrics registry and a status snapshot the engine thread updates.

use std::collections::{BTreeMap, HashSet};
use std::path::PathBuf;
use std::sync::{Mutex, RwLock};

use serde::Serialize;

use super::endpoint::IngestState;
use super::locks::{lock, read, write};
use super::monitor::KeyView;
use crate::config::Config;
use crate::telemetry::Telemetry;
use plugins::decode::RejectReason;
use plugins::sources::Totals;

#[derive(Debug, Clone, Serialize)]
pub struct BaselineInfo {
    pub path: Option<PathBuf>,
    pub created_unix_secs: f64,
    pub samples: u64,
    pub settings_hash: String,
}

/// `GET /api/v1/status` (counters are read from the registry when answering).
#[derive(Debug, Clone, Default, Serialize)]
pub struct Status {
    pub model: String,
    pub provider: Option<String>,
    pub requested_provider: Option<String>,
    pub ready: bool,
    pub layers: Vec<KeyView>,
    pub window_samples: usize,
    /// The embedding detectors' last verdicts (absent when they are off).
    pub embedding_detectors: Option<super::detect::DetectorsView>,
    /// Why the embedding detectors are off although configured.
    pub embedding_detectors_note: Option<String>,
    pub baseline: Option<BaselineInfo>,
    pub samples_scored: u64,
    pub samples_rejected: BTreeMap<&'static str, u64>,
    pub queue_depth: i64,
    pub queue_capacity: usize,
    pub sources: Vec<String>,
}

pub struct AppState {
    pub telemetry: Telemetry,
    pub status: RwLock<Status>,
    pub auth_token: RwLock<Option<String>>,
    /// Where the ingest endpoint's requests go.
    pub ingest: RwLock<IngestState>,
    /// Sources whose ledger totals were already added to the counters (once per process).
    seeded: Mutex<HashSet<String>>,
    /// The running pipeline's reference and window maps (`/api/v1/maps`, the landing page).
    pub maps: Mutex<Option<super::maps::LiveMaps>>,
}

impl AppState {
    pub fn new() -> AppState {
        AppState {
            telemetry: Telemetry::new(),
            status: RwLock::new(Status::default()),
            auth_token: RwLock::new(None),
            ingest: RwLock::new(IngestState::Off),
            seeded: Mutex::new(HashSet::new()),
            maps: Mutex::new(None),
        }
    }

    pub fn set_model(&self, cfg: &Config) {
        let onnxruntime = crate::runtime::EXPECTED_VERSION;
        self.telemetry.init_model(&cfg.model.name, onnxruntime);
        *write(&self.auth_token) = cfg.server.auth_token.clone();
        *write(&self.ingest) = match cfg.sources.iter().find_map(|s| s.as_ingest()) {
            Some(i) => IngestState::Starting { name: i.name.clone() },
            None => IngestState::Off,
        };
        let mut st = write(&self.status);
        st.model = cfg.model.name.clone();
        st.sources = cfg.sources.iter().map(|s| s.name().to_string()).collect();
    }

    /// Adds a source's durable totals to the counters the first time this process opens it, so the
    /// counters continue across restarts (a reload reopens the source but must not add them again).
    pub fn seed_counters(&self, model: &str, source: &str, totals: &Totals) {
        if !lock(&self.seeded).insert(source.to_string()) {
            return;
        }
        let t = &self.telemetry;
        t.samples_scored.with_label_values(&[model]).inc_by(totals.scored_samples);
        for r in RejectReason::ALL {
            t.samples_rejected.with_label_values(&[model, r.as_str()]).inc_by(totals.rejected_by(r));
        }
    }

    pub fn status(&self) -> Status {
        let mut st = read(&self.status).clone();
        let t = &self.telemetry;
        st.samples_scored = t.samples_scored.with_label_values(&[&st.model]).get();
        st.samples_rejected = RejectReason::ALL
            .iter()
            .map(|r| (r.as_str(), t.samples_rejected.with_label_values(&[&st.model, r.as_str()]).get()))
            .collect();
        st.queue_depth = t.queue_depth.with_label_values(&[&st.model]).get();
        st
    }
}

impl Default for AppState {
    fn default() -> Self {
        AppState::new()
    }
}
