//! The `dir` source: inputs are files dropped into a directory.
//!
//! Protocol for producers: write `name.tmp` (or `.name`), then rename it to `name.npy`; names ending in
//! `.tmp` or starting with `.` are never touched.
//!
//! Life of a file (all moves are `rename(2)` within one file system, so each is atomic):
//! `inbox/x.npy` → claimed: `state_dir/processing/<claim-id>~x.npy` → decoded → delivered to the engine →
//! outcome appended to the fsync'd ledger (`state_dir/ledger`) → `done/x.npy`, or `rejected/x.npy` with
//! `rejected/x.npy.reason.txt` beside it.
//!
//! Guarantee, also after `kill -9` at any point: every file ends in `done/` or `rejected/` exactly
//! once, and is counted exactly once. A file still in `processing/` at start-up whose claim the ledger
//! lists was finished but not moved: it is moved, not counted again. Any other file in `processing/`
//! was never acknowledged: it is delivered again (so its scores may enter a window twice, once before the
//! crash — windows are not persisted, so in practice only the second time is seen). Claim ids are
//! unique per process start, so a producer reusing a file name is never mistaken for a finished file.
//!
//! Watching: `notify` (inotify) events, or polling every `poll_interval_ms` for network file systems;
//! every wake-up (including an inotify queue overflow or a watcher error) triggers a full rescan, so no
//! event is load-bearing. The directory is also rescanned at start-up and every 30 s.
//!
//! A file is claimed only once its writer is done (closed it, or renamed it in; else unchanged for
//! `settle_ms`): see [`ready`]. A claimed file that still fails to decode while its size or mtime keeps
//! changing (a writer the checks missed) is read again rather than rejected.

mod ready;

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use notify::Watcher;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use self::ready::{Readiness, stamp};
use super::ledger::{Ledger, Totals};
use super::{Ack, Acknowledge, Delivery, Observer, Outcome};
use crate::decode::{DecodeOptions, RejectReason, decode_payload_file};

/// Reads of a claimed file that keeps growing, each a settle period apart, before it is judged as is.
const GROWING_RETRIES: u32 = 30;

/// How the directory is watched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum WatchMethod {
    /// Kernel notifications (inotify): immediate, local file systems only.
    #[default]
    Notify,
    /// Periodic listing: works on NFS/SMB, where inotify sees nothing written by other hosts.
    Poll,
}

/// `[[sources]]` with `type = "dir"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DirConfig {
    /// Source name, used as the `source` metric label (bounded: one per configured source).
    #[serde(default = "default_name")]
    pub name: String,
    /// The inbox directory; it must exist.
    pub path: PathBuf,
    /// `notify` (default) or `poll`.
    #[serde(default)]
    pub method: WatchMethod,
    /// Polling period with `method = "poll"`.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Where scored files go (default `<path>/done`); must be on the same file system as `path`.
    #[serde(default)]
    pub done_dir: Option<PathBuf>,
    /// Where rejected files and their `.reason.txt` go (default `<path>/rejected`).
    #[serde(default)]
    pub rejected_dir: Option<PathBuf>,
    /// Claimed files (`processing/`) and the ledger (default `<path>/.agent`); same file system.
    #[serde(default)]
    pub state_dir: Option<PathBuf>,
    /// A file no inotify event vouches for (polling, a network file system, present at start-up) is
    /// claimed once its size and mtime have stayed the same this long; 0 = at first sight (only for
    /// producers that write `.tmp` and rename).
    #[serde(default = "default_settle_ms")]
    pub settle_ms: u64,
    /// Larger files are rejected (`too_large`) without being read.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
    /// Create `path` at start-up when it is missing (default false: a missing inbox is a
    /// configuration error, which catches typos).
    #[serde(default)]
    pub create_dirs: bool,
}

fn default_name() -> String {
    "dir".to_string()
}
const fn default_poll_interval_ms() -> u64 {
    1000
}
const fn default_settle_ms() -> u64 {
    1000
}
const fn default_max_file_bytes() -> u64 {
    64 * 1024 * 1024
}

impl DirConfig {
    pub fn new(path: impl Into<PathBuf>) -> DirConfig {
        DirConfig {
            name: default_name(),
            path: path.into(),
            method: WatchMethod::Notify,
            poll_interval_ms: default_poll_interval_ms(),
            settle_ms: default_settle_ms(),
            done_dir: None,
            rejected_dir: None,
            state_dir: None,
            max_file_bytes: default_max_file_bytes(),
            create_dirs: false,
        }
    }

    pub fn done_dir(&self) -> PathBuf {
        self.done_dir.clone().unwrap_or_else(|| self.path.join("done"))
    }
    pub fn rejected_dir(&self) -> PathBuf {
        self.rejected_dir.clone().unwrap_or_else(|| self.path.join("rejected"))
    }
    pub fn state_dir(&self) -> PathBuf {
        self.state_dir.clone().unwrap_or_else(|| self.path.join(".agent"))
    }
    pub fn processing_dir(&self) -> PathBuf {
        self.state_dir().join("processing")
    }

    /// Every problem with this configuration, as `(key, why)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if !self.path.is_dir() && !self.create_dirs {
            out.push(("path".into(), format!("directory {} does not exist", self.path.display())));
        }
        if self.name.is_empty() {
            out.push(("name".into(), "must not be empty".into()));
        }
        if self.method == WatchMethod::Poll && self.poll_interval_ms == 0 {
            out.push(("poll_interval_ms".into(), "must be at least 1".into()));
        }
        if self.max_file_bytes == 0 {
            out.push(("max_file_bytes".into(), "must be at least 1".into()));
        }
        out
    }
}

/// Whether a directory entry is an input: not a temporary or hidden file.
pub fn is_candidate(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.ends_with(".tmp")
}

struct Shared {
    cfg: DirConfig,
    ledger: Mutex<Ledger>,
}

/// Moves a claimed file out of `processing/` according to its (durable) outcome.
fn settle(cfg: &DirConfig, claim: &str, outcome: &Outcome) -> std::io::Result<()> {
    let from = cfg.processing_dir().join(claim);
    let original = original_name(claim);
    match outcome {
        Outcome::Scored { .. } => {
            let to = free_name(&cfg.done_dir(), original);
            std::fs::rename(&from, to)
        }
        Outcome::Rejected(r) => {
            let to = free_name(&cfg.rejected_dir(), original);
            let mut reason_path = to.clone().into_os_string();
            reason_path.push(".reason.txt");
            std::fs::write(&reason_path, format!("reason: {}\n{}\n", r.reason.as_str(), r.message))?;
            std::fs::rename(&from, to)
        }
    }
}

/// The file name a producer gave, from a claim id (`<id>~<name>`).
fn original_name(claim: &str) -> &str {
    claim.split_once('~').map(|(_, n)| n).unwrap_or(claim)
}

/// `dir/name`, or `dir/name.1`, `dir/name.2`, … when a file of that name is already there.
fn free_name(dir: &Path, name: &str) -> PathBuf {
    let first = dir.join(name);
    if !first.exists() {
        return first;
    }
    (1..).map(|i| dir.join(format!("{name}.{i}"))).find(|p| !p.exists()).expect("an unused name")
}

struct DirAck {
    shared: Arc<Shared>,
    claim: String,
}

impl Acknowledge for DirAck {
    fn finish(self: Box<Self>, outcome: &Outcome) -> std::io::Result<()> {
        self.shared.ledger.lock().unwrap_or_else(|e| e.into_inner()).append(&self.claim, outcome)?;
        settle(&self.shared.cfg, &self.claim, outcome)
    }
}

/// An opened `dir` source: directories created, ledger read and compacted, finished leftovers moved.
pub struct DirSource {
    shared: Arc<Shared>,
    run_id: String,
    seq: AtomicU64,
}

impl DirSource {
    /// Opens the source and returns the totals its ledger holds (to seed the daemon's counters).
    pub fn open(cfg: &DirConfig) -> std::io::Result<(DirSource, Totals)> {
        for d in [cfg.path.clone(), cfg.done_dir(), cfg.rejected_dir(), cfg.processing_dir()] {
            std::fs::create_dir_all(&d)?;
        }
        let ledger_path = cfg.state_dir().join("ledger");
        let (totals, finished) = Ledger::read(&ledger_path)?;
        // Finished before the crash but not moved: move now, count nothing.
        let mut settled = Vec::new();
        for claim in list_names(&cfg.processing_dir())? {
            if let Some(outcome) = finished.get(&claim) {
                settled.push((claim, outcome.clone()));
            }
        }
        // Settle first, compact second: a crash in between leaves the ledger lines that still count the
        // moved files, while compacting first could forget a claim whose file is still in processing/.
        for (claim, outcome) in &settled {
            tracing::info!(source = %cfg.name, file = original_name(claim), "finishing a file scored before a restart");
            settle(cfg, claim, outcome)?;
        }
        let ledger = Ledger::compact(&ledger_path, &totals)?;
        let shared = Arc::new(Shared { cfg: cfg.clone(), ledger: Mutex::new(ledger) });
        let run_id = format!(
            "{:x}",
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().as_nanos()
        );
        Ok((DirSource { shared, run_id, seq: AtomicU64::new(0) }, totals))
    }

    pub fn config(&self) -> &DirConfig {
        &self.shared.cfg
    }

    /// Runs until `shutdown` turns true or the engine's queue closes. Blocking: call it from a
    /// dedicated thread (`spawn_blocking`). Files left in `processing/` are delivered first.
    pub fn run(
        self,
        decode: DecodeOptions,
        tx: mpsc::Sender<Delivery>,
        observer: Arc<dyn Observer>,
        shutdown: watch::Receiver<bool>,
    ) {
        let cfg = self.shared.cfg.clone();
        let decode = DecodeOptions { max_bytes: cfg.max_file_bytes, ..decode };
        let stop = || *shutdown.borrow();
        let (ev_tx, ev_rx) = std::sync::mpsc::channel::<notify::Result<notify::Event>>();
        let mut watcher = None;
        if cfg.method == WatchMethod::Notify {
            match notify::recommended_watcher(move |ev| {
                let _ = ev_tx.send(ev);
            }) {
                Ok(mut w) => match w.watch(&cfg.path, notify::RecursiveMode::NonRecursive) {
                    Ok(()) => watcher = Some(w),
                    Err(e) => {
                        tracing::error!(source = %cfg.name, error = %e, "cannot watch; polling instead");
                        observer.error(&cfg.name, "watch");
                    }
                },
                Err(e) => {
                    tracing::error!(source = %cfg.name, error = %e, "cannot create a watcher; polling instead");
                    observer.error(&cfg.name, "watch");
                }
            }
        }
        let ctx = InboxScanner { src: &self, decode: &decode, tx: &tx, observer: observer.as_ref() };
        // Leftovers first: claimed before a crash, never acknowledged.
        match list_names(&cfg.processing_dir()) {
            Ok(names) => {
                for claim in names {
                    if stop() || !ctx.deliver(&claim) {
                        return;
                    }
                }
            }
            Err(e) => {
                tracing::error!(source = %cfg.name, error = %e, "cannot list processing/");
                observer.error(&cfg.name, "io");
            }
        }
        let poll = Duration::from_millis(cfg.poll_interval_ms.max(1));
        // While files wait to settle, look again this often.
        let recheck = (ctx.settle() / 4).clamp(Duration::from_millis(20), poll);
        let safety = Duration::from_secs(30);
        let mut last_scan = Instant::now() - safety;
        let mut dirty = true;
        let mut readiness = Readiness::default();
        while !stop() {
            let waiting = readiness.waiting() > 0 && last_scan.elapsed() >= recheck;
            if dirty || waiting || last_scan.elapsed() >= safety {
                dirty = false;
                last_scan = Instant::now();
                if !ctx.scan(&stop, &mut readiness) {
                    return;
                }
                continue;
            }
            if watcher.is_some() {
                let wait = if readiness.waiting() > 0 { recheck } else { Duration::from_millis(200) };
                match ev_rx.recv_timeout(wait) {
                    Ok(Ok(ev)) => {
                        readiness.event(&ev);
                        dirty = true;
                    }
                    Ok(Err(e)) => {
                        tracing::warn!(source = %cfg.name, error = %e, "watcher error; rescanning");
                        observer.error(&cfg.name, "watch");
                        dirty = true;
                    }
                    Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                    Err(std::sync::mpsc::RecvTimeoutError::Disconnected) => {
                        observer.error(&cfg.name, "watch");
                        watcher = None;
                    }
                }
                // Coalesce a burst of events into one rescan.
                while let Ok(ev) = ev_rx.try_recv() {
                    match ev {
                        Ok(ev) => readiness.event(&ev),
                        Err(_) => observer.error(&cfg.name, "watch"),
                    }
                }
            } else {
                let period = if readiness.waiting() > 0 { recheck } else { poll };
                let until = Instant::now() + period;
                while Instant::now() < until && !stop() {
                    std::thread::sleep(Duration::from_millis(50).min(poll));
                }
                dirty = true;
            }
        }
    }

    fn next_claim(&self, name: &str) -> String {
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        format!("{}-{n:06}~{name}", self.run_id)
    }
}

/// What one running inbox watch borrows for its whole life: the source (its settings, directories
/// and claim counter), how records are decoded, and where they go. Held apart from `DirSource` so
/// the scan and claim code need not thread four arguments through every call.
struct InboxScanner<'a> {
    src: &'a DirSource,
    decode: &'a DecodeOptions,
    tx: &'a mpsc::Sender<Delivery>,
    observer: &'a dyn Observer,
}

impl InboxScanner<'_> {
    fn settle(&self) -> Duration {
        Duration::from_millis(self.src.shared.cfg.settle_ms)
    }

    /// Claims and delivers every finished input in the inbox (see [`ready`]); false when the
    /// engine's queue is gone.
    fn scan(&self, stop: &dyn Fn() -> bool, readiness: &mut Readiness) -> bool {
        let cfg = &self.src.shared.cfg;
        let names = match list_names(&cfg.path) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(source = %cfg.name, error = %e, "cannot list the inbox");
                self.observer.error(&cfg.name, "io");
                return true;
            }
        };
        readiness.retain(&names);
        for name in names {
            if stop() {
                return true;
            }
            match std::fs::metadata(cfg.path.join(&name)) {
                Ok(meta) if readiness.ready(&name, &meta, self.settle()) => readiness.forget(&name),
                Ok(_) => continue,
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                    readiness.forget(&name);
                    continue;
                }
                Err(e) => {
                    tracing::warn!(source = %cfg.name, file = %name, error = %e, "cannot stat");
                    self.observer.error(&cfg.name, "io");
                    continue;
                }
            }
            let claim = self.src.next_claim(&name);
            match std::fs::rename(cfg.path.join(&name), cfg.processing_dir().join(&claim)) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => {
                    tracing::warn!(source = %cfg.name, file = %name, error = %e, "cannot claim");
                    self.observer.error(&cfg.name, "io");
                    continue;
                }
            }
            if !self.deliver(&claim) {
                return false;
            }
        }
        true
    }

    /// Decodes a claimed file and sends it to the engine (blocking while the queue is full), or rejects
    /// it. False when the engine's queue is gone.
    fn deliver(&self, claim: &str) -> bool {
        let shared = &self.src.shared;
        let name = original_name(claim).to_string();
        let path = shared.cfg.processing_dir().join(claim);
        let mut before = std::fs::metadata(&path).ok().map(|m| stamp(&m));
        let mut retries = 0;
        let decoded = loop {
            let result = decode_payload_file(&path, &name, self.decode);
            match &result {
                Err(r)
                    if matches!(r.reason, RejectReason::Decode | RejectReason::Io)
                        && retries < GROWING_RETRIES
                        && self.still_growing(&path, &mut before) =>
                {
                    retries += 1;
                    tracing::info!(source = %shared.cfg.name, file = %name, "still being written; reading it again");
                }
                _ => break result,
            }
        };
        match decoded {
            Ok(batch) => {
                let ack = Ack::new(DirAck { shared: shared.clone(), claim: claim.to_string() });
                let d = Delivery { source: shared.cfg.name.clone(), input: name, batch, ack };
                self.tx.blocking_send(d).is_ok()
            }
            Err(rejection) => {
                let outcome = Outcome::Rejected(rejection.clone());
                let ack = DirAck { shared: shared.clone(), claim: claim.to_string() };
                if let Err(e) = Box::new(ack).finish(&outcome) {
                    tracing::error!(source = %shared.cfg.name, file = %name, error = %e, "cannot move a rejected file");
                    self.observer.error(&shared.cfg.name, "io");
                }
                self.observer.rejected(&shared.cfg.name, &rejection);
                true
            }
        }
    }
}

impl InboxScanner<'_> {
    /// Waits one settle period and tells whether the file's size or mtime moved since `before`
    /// (updated to the new stamp).
    fn still_growing(&self, path: &Path, before: &mut Option<(u64, Option<std::time::SystemTime>)>) -> bool {
        std::thread::sleep(self.settle().max(Duration::from_millis(20)));
        let now = std::fs::metadata(path).ok().map(|m| stamp(&m));
        let moved = now != *before;
        *before = now;
        moved
    }
}

/// Sorted names of the input files (regular, not temporary or hidden) in a directory.
fn list_names(dir: &Path) -> std::io::Result<Vec<String>> {
    let mut names = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if !entry.file_type().map(|t| t.is_file()).unwrap_or(false) {
            continue;
        }
        if let Some(name) = entry.file_name().to_str()
            && is_candidate(name)
        {
            names.push(name.to_string());
        }
    }
    names.sort();
    Ok(names)
}

#[cfg(test)]
mod tests;
