#![doc = include_str!("README.md")]

mod journal;
mod progress;
pub mod record;

use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use reqwest::header::{AUTHORIZATION, ETAG, HeaderMap, IF_MODIFIED_SINCE, IF_NONE_MATCH, LAST_MODIFIED};
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, watch};

use self::journal::{Journal, Validators};
use self::progress::{Admit, Progress};
use self::record::{Lines, Piece, parse_line};
use super::{Ack, Acknowledge, Delivery, Observer, Outcome, Totals};
use crate::decode::DecodeOptions;

/// How the feed is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum FeedMode {
    /// Repeated requests; the next one follows at once while there are records.
    #[default]
    Poll,
    /// One long-lived response whose lines arrive as they happen.
    Stream,
}

/// `[[sources]]` with `type = "http"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Source name, the `source` metric label.
    #[serde(default = "default_name")]
    pub name: String,
    /// The feed (`http://` or `https://`).
    pub url: String,
    #[serde(default)]
    pub mode: FeedMode,
    /// The journal (position, validators, finished ids, totals); created when missing.
    pub state_dir: PathBuf,
    /// Query parameter carrying the cursor.
    #[serde(default = "default_cursor_param")]
    pub cursor_param: String,
    /// Wait after an empty response (poll) or before reconnecting to an ended stream.
    #[serde(default = "default_poll_interval_ms")]
    pub poll_interval_ms: u64,
    /// Longest wait to connect.
    #[serde(default = "default_connect_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Longest wait for the response headers (the body is bounded by `idle_timeout_ms` instead).
    /// Read from the old name `timeout_ms` too, which the agent's configuration flags as deprecated.
    #[serde(default = "default_header_timeout_ms", alias = "timeout_ms")]
    pub header_timeout_ms: u64,
    /// Longest silence between two chunks of a response body.
    #[serde(default = "default_idle_timeout_ms")]
    pub idle_timeout_ms: u64,
    /// First retry delay after an error; doubles per consecutive error.
    #[serde(default = "default_backoff_initial_ms")]
    pub backoff_initial_ms: u64,
    /// Cap of the retry delay.
    #[serde(default = "default_backoff_max_ms")]
    pub backoff_max_ms: u64,
    /// Longer lines are skipped as protocol errors.
    #[serde(default = "default_max_record_bytes")]
    pub max_record_bytes: u64,
    /// Finished ids remembered for deduplication.
    #[serde(default = "default_dedupe_ids")]
    pub dedupe_ids: usize,
    /// Sent as `Authorization: Bearer <token>` when set.
    #[serde(default)]
    pub auth_token: Option<String>,
    /// The V2 input to score when a record holds several tensors.
    #[serde(default)]
    pub input: Option<String>,
}

fn default_name() -> String {
    "http".to_string()
}
fn default_cursor_param() -> String {
    "after".to_string()
}
const fn default_poll_interval_ms() -> u64 {
    1000
}
const fn default_connect_timeout_ms() -> u64 {
    5000
}
const fn default_header_timeout_ms() -> u64 {
    10_000
}
const fn default_idle_timeout_ms() -> u64 {
    30_000
}
const fn default_backoff_initial_ms() -> u64 {
    500
}
const fn default_backoff_max_ms() -> u64 {
    30_000
}
const fn default_max_record_bytes() -> u64 {
    16 * 1024 * 1024
}
const fn default_dedupe_ids() -> usize {
    100_000
}

impl HttpConfig {
    pub fn new(url: impl Into<String>, state_dir: impl Into<PathBuf>) -> HttpConfig {
        HttpConfig {
            name: default_name(),
            url: url.into(),
            mode: FeedMode::Poll,
            state_dir: state_dir.into(),
            cursor_param: default_cursor_param(),
            poll_interval_ms: default_poll_interval_ms(),
            connect_timeout_ms: default_connect_timeout_ms(),
            header_timeout_ms: default_header_timeout_ms(),
            idle_timeout_ms: default_idle_timeout_ms(),
            backoff_initial_ms: default_backoff_initial_ms(),
            backoff_max_ms: default_backoff_max_ms(),
            max_record_bytes: default_max_record_bytes(),
            dedupe_ids: default_dedupe_ids(),
            auth_token: None,
            input: None,
        }
    }

    /// Every problem with this configuration, as `(key, why)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out: Vec<(String, String)> = Vec::new();
        let mut add = |k: &str, why: String| out.push((k.to_string(), why));
        if self.name.is_empty() {
            add("name", "must not be empty".into());
        }
        match reqwest::Url::parse(&self.url) {
            Ok(u) if matches!(u.scheme(), "http" | "https") => {}
            Ok(u) => add("url", format!("scheme {:?}; use http or https", u.scheme())),
            Err(e) => add("url", format!("{:?} is not a URL ({e})", self.url)),
        }
        if self.state_dir.as_os_str().is_empty() {
            add("state_dir", "must name a directory".into());
        } else if self.state_dir.exists() && !self.state_dir.is_dir() {
            add("state_dir", format!("{} is not a directory", self.state_dir.display()));
        }
        if self.cursor_param.is_empty() {
            add("cursor_param", "must not be empty".into());
        }
        for (k, v) in [
            ("poll_interval_ms", self.poll_interval_ms),
            ("connect_timeout_ms", self.connect_timeout_ms),
            ("header_timeout_ms", self.header_timeout_ms),
            ("idle_timeout_ms", self.idle_timeout_ms),
            ("backoff_initial_ms", self.backoff_initial_ms),
            ("max_record_bytes", self.max_record_bytes),
        ] {
            if v == 0 {
                add(k, "must be at least 1".into());
            }
        }
        if self.backoff_max_ms < self.backoff_initial_ms {
            add(
                "backoff_max_ms",
                format!("must be at least backoff_initial_ms ({})", self.backoff_initial_ms),
            );
        }
        if self.dedupe_ids == 0 {
            add("dedupe_ids", "must be at least 1".into());
        }
        if self.auth_token.as_deref() == Some("") {
            add("auth_token", "empty; remove the key to send no token".into());
        }
        out
    }
}

/// The retry delay after `attempt` consecutive errors (0 = the first): `initial · 2^attempt`, capped
/// at `max`, scaled into `[½, 1]` of that by `unit ∈ [0, 1]` (the jitter).
pub fn backoff(attempt: u32, initial: Duration, max: Duration, unit: f64) -> Duration {
    let exp = initial.saturating_mul(2u32.saturating_pow(attempt.min(30)));
    exp.min(max).mul_f64(0.5 + 0.5 * unit.clamp(0.0, 1.0))
}

struct Inner {
    progress: Progress,
    journal: Journal,
}

struct Shared {
    cfg: HttpConfig,
    inner: Mutex<Inner>,
}

impl Shared {
    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records a finished record durably (with the position it lets the watermark reach).
    fn finish(&self, seq: u64, id: &str, outcome: &Outcome) -> std::io::Result<()> {
        let mut g = self.lock();
        let Inner { progress, journal } = &mut *g;
        let (cursor, validators) = progress.finish(seq, id, outcome);
        journal.append(id, outcome, cursor.as_deref(), validators.as_ref(), progress.state())
    }

    /// Records a position reached without a new record.
    fn advance(&self) -> std::io::Result<()> {
        let mut g = self.lock();
        let Inner { progress, journal } = &mut *g;
        let (cursor, validators) = progress.advance();
        journal.advance(cursor.as_deref(), validators.as_ref(), progress.state())
    }
}

struct HttpAck {
    shared: Arc<Shared>,
    seq: u64,
    id: String,
}

impl Acknowledge for HttpAck {
    fn finish(self: Box<Self>, outcome: &Outcome) -> std::io::Result<()> {
        self.shared.finish(self.seq, &self.id, outcome)
    }
}

/// An opened `http` source: journal read and compacted, client built.
pub struct HttpSource {
    shared: Arc<Shared>,
    client: reqwest::Client,
}

/// Why a fetch ended.
enum Fetched {
    /// The response ended; it held this many records.
    Ended(usize),
    /// Shutdown, or the engine's queue is gone.
    Stopped,
}

/// A failed fetch: the `kind` label and a message.
struct Failure(&'static str, String);

impl From<reqwest::Error> for Failure {
    fn from(e: reqwest::Error) -> Failure {
        let kind = if e.is_timeout() {
            "timeout"
        } else if e.is_connect() {
            "connect"
        } else {
            "body"
        };
        Failure(kind, format!("{e}"))
    }
}

impl HttpSource {
    /// Opens the source and returns the totals its journal holds (to seed the daemon's counters).
    pub fn open(cfg: &HttpConfig) -> std::io::Result<(HttpSource, Totals)> {
        std::fs::create_dir_all(&cfg.state_dir)?;
        let (journal, state) = Journal::open(&cfg.state_dir.join("journal"), cfg.dedupe_ids)?;
        let totals = state.totals.clone();
        // reqwest is built with rustls and no provider of its own: ring is installed once per process.
        let _ = rustls::crypto::ring::default_provider().install_default();
        let client = reqwest::Client::builder()
            .connect_timeout(Duration::from_millis(cfg.connect_timeout_ms.max(1)))
            .user_agent(concat!("agent/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(std::io::Error::other)?;
        let inner = Inner { progress: Progress::new(state), journal };
        let shared = Arc::new(Shared { cfg: cfg.clone(), inner: Mutex::new(inner) });
        Ok((HttpSource { shared, client }, totals))
    }

    pub fn config(&self) -> &HttpConfig {
        &self.shared.cfg
    }

    /// Reads the feed until `shutdown` turns true or the engine's queue closes.
    pub async fn run(
        self,
        decode: DecodeOptions,
        tx: mpsc::Sender<Delivery>,
        observer: Arc<dyn Observer>,
        mut shutdown: watch::Receiver<bool>,
    ) {
        let cfg = self.shared.cfg.clone();
        let decode = DecodeOptions { max_bytes: cfg.max_record_bytes, ..decode };
        let (mut cursor, mut validators) = {
            let g = self.shared.lock();
            (g.progress.state().cursor.clone(), g.progress.state().validators.clone())
        };
        let ctx = FeedReader { src: &self, decode: &decode, tx: &tx, observer: observer.as_ref() };
        let mut attempt = 0u32;
        tracing::info!(source = %cfg.name, url = %cfg.url, mode = ?cfg.mode, cursor = ?cursor, "reading the feed");
        loop {
            if *shutdown.borrow() {
                break;
            }
            let wait = match ctx.fetch(&mut cursor, &mut validators, &mut shutdown).await {
                Ok(Fetched::Stopped) => break,
                Ok(Fetched::Ended(n)) => {
                    attempt = 0;
                    if n > 0 && cfg.mode == FeedMode::Poll {
                        continue;
                    }
                    Duration::from_millis(cfg.poll_interval_ms)
                }
                Err(Failure(kind, message)) => {
                    observer.error(&cfg.name, kind);
                    let d = backoff(
                        attempt,
                        Duration::from_millis(cfg.backoff_initial_ms),
                        Duration::from_millis(cfg.backoff_max_ms),
                        rand::random::<f64>(),
                    );
                    attempt = attempt.saturating_add(1);
                    tracing::warn!(source = %cfg.name, kind, attempt, retry_in_ms = d.as_millis() as u64, "feed: {message}");
                    d
                }
            };
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                _ = shutdown.changed() => {}
            }
        }
        tracing::info!(source = %cfg.name, "feed stopped");
    }
}

/// What one running feed loop borrows for its whole life: the source (its settings and
/// progress), how records are decoded, and where they go. Held apart from `HttpSource` so the
/// request code need not thread four arguments through every call.
struct FeedReader<'a> {
    src: &'a HttpSource,
    decode: &'a DecodeOptions,
    tx: &'a mpsc::Sender<Delivery>,
    observer: &'a dyn Observer,
}

/// `fut`, or `None` once `shutdown` turns true.
async fn unless_stopped<F: std::future::Future>(
    fut: F,
    shutdown: &mut watch::Receiver<bool>,
) -> Option<F::Output> {
    if *shutdown.borrow() {
        return None;
    }
    tokio::select! {
        v = fut => Some(v),
        _ = shutdown.wait_for(|s| *s) => None,
    }
}

impl FeedReader<'_> {
    fn cfg(&self) -> &HttpConfig {
        &self.src.shared.cfg
    }

    /// One request: sends it, reads its lines, delivers its records.
    async fn fetch(
        &self,
        cursor: &mut Option<String>,
        validators: &mut Validators,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<Fetched, Failure> {
        let cfg = self.cfg();
        let mut url =
            reqwest::Url::parse(&cfg.url).map_err(|e| Failure("status", format!("bad url: {e}")))?;
        if let Some(c) = cursor.as_deref() {
            url.query_pairs_mut().append_pair(&cfg.cursor_param, c);
        }
        let mut headers = HeaderMap::new();
        if let Some(t) = &cfg.auth_token
            && let Ok(v) = format!("Bearer {t}").parse()
        {
            headers.insert(AUTHORIZATION, v);
        }
        if cfg.mode == FeedMode::Poll {
            if let Some(v) = validators.etag.as_deref().and_then(|e| e.parse().ok()) {
                headers.insert(IF_NONE_MATCH, v);
            }
            if let Some(v) = validators.last_modified.as_deref().and_then(|e| e.parse().ok()) {
                headers.insert(IF_MODIFIED_SINCE, v);
            }
        }
        let request = self.src.client.get(url).headers(headers).send();
        let timeout = Duration::from_millis(cfg.header_timeout_ms);
        let mut resp = match unless_stopped(tokio::time::timeout(timeout, request), shutdown).await {
            None => return Ok(Fetched::Stopped),
            Some(Err(_)) => {
                return Err(Failure("timeout", format!("no response within {} ms", cfg.header_timeout_ms)));
            }
            Some(Ok(r)) => r?,
        };
        let status = resp.status();
        if status == reqwest::StatusCode::NOT_MODIFIED || status == reqwest::StatusCode::NO_CONTENT {
            self.observer.feed_ok(&cfg.name);
            return Ok(Fetched::Ended(0));
        }
        if !status.is_success() {
            return Err(Failure("status", format!("HTTP {status} from {}", cfg.url)));
        }
        self.observer.feed_ok(&cfg.name);
        let fresh = Validators {
            etag: header_text(resp.headers(), ETAG),
            last_modified: header_text(resp.headers(), LAST_MODIFIED),
        };
        let idle = Duration::from_millis(cfg.idle_timeout_ms);
        let mut lines = Lines::new(cfg.max_record_bytes as usize);
        let mut records = 0usize;
        loop {
            let chunk = match unless_stopped(tokio::time::timeout(idle, resp.chunk()), shutdown).await {
                None => return Ok(Fetched::Stopped),
                Some(Err(_)) => {
                    return Err(Failure("timeout", format!("no data for {} ms", cfg.idle_timeout_ms)));
                }
                Some(Ok(c)) => c?,
            };
            let (pieces, end) = match chunk {
                Some(bytes) => {
                    if cfg.mode == FeedMode::Stream {
                        self.observer.feed_ok(&cfg.name);
                    }
                    (lines.push(&bytes), false)
                }
                None => (lines.finish(), true),
            };
            for piece in pieces {
                match self.line(piece, cursor, shutdown).await {
                    Some(n) => records += n,
                    None => return Ok(Fetched::Stopped),
                }
            }
            if end {
                break;
            }
        }
        // The response's validators count once every record it held is finished.
        if cfg.mode == FeedMode::Poll && (fresh.etag.is_some() || fresh.last_modified.is_some()) {
            *validators = fresh.clone();
            self.src.shared.lock().progress.marker(None, Some(fresh));
            self.advance();
        }
        Ok(Fetched::Ended(records))
    }

    /// Handles one line; the number of new records it held (0 or 1: a duplicate is not new, so a
    /// snapshot feed repeating itself is polled every `poll_interval_ms`, not in a tight loop), `None`
    /// when the source must stop.
    async fn line(
        &self,
        piece: Piece,
        cursor: &mut Option<String>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Option<usize> {
        let cfg = self.cfg();
        let line = match piece {
            Piece::Line(l) => l,
            Piece::TooLong => {
                tracing::warn!(source = %cfg.name, max = cfg.max_record_bytes, "feed: skipping a line longer than max_record_bytes");
                self.observer.error(&cfg.name, "protocol");
                return Some(0);
            }
        };
        let record = match parse_line(&line, &self.decode.limits) {
            Ok(r) => r,
            Err(why) => {
                tracing::warn!(source = %cfg.name, "feed: skipping a line: {why}");
                self.observer.error(&cfg.name, "protocol");
                return Some(0);
            }
        };
        if let Some(c) = &record.cursor {
            *cursor = Some(c.clone());
        }
        let admit = self.src.shared.lock().progress.admit(&record.id, record.cursor.clone());
        let seq = match admit {
            Admit::Duplicate => {
                tracing::debug!(source = %cfg.name, id = %record.id, "feed: already finished; skipped");
                return Some(0);
            }
            Admit::New(seq) => seq,
        };
        match record.decode(&cfg.name, cfg.input.as_deref(), self.decode) {
            Ok(batch) => {
                let ack = Ack::new(HttpAck { shared: self.src.shared.clone(), seq, id: record.id.clone() });
                let input = format!("{}/{}", cfg.name, record.id);
                let d = Delivery { source: cfg.name.clone(), input, batch, ack };
                match unless_stopped(self.tx.send(d), shutdown).await {
                    Some(Ok(())) => Some(1),
                    _ => None,
                }
            }
            Err(rejection) => {
                if let Err(e) = self.src.shared.finish(seq, &record.id, &Outcome::Rejected(rejection.clone()))
                {
                    tracing::error!(source = %cfg.name, error = %e, "cannot write the journal");
                    self.observer.error(&cfg.name, "io");
                }
                self.observer.rejected(&cfg.name, &rejection);
                Some(1)
            }
        }
    }

    fn advance(&self) {
        if let Err(e) = self.src.shared.advance() {
            tracing::error!(source = %self.cfg().name, error = %e, "cannot write the journal");
            self.observer.error(&self.cfg().name, "io");
        }
    }
}

fn header_text(h: &HeaderMap, name: reqwest::header::HeaderName) -> Option<String> {
    h.get(name).and_then(|v| v.to_str().ok()).map(str::to_string)
}

#[cfg(test)]
mod tests;
