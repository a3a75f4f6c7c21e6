//! The feed's durable state: an append-only, fsync'd journal in `<state_dir>/journal`.
//!
//! Lines (tab-separated, fields escaped with `\\`, `\t`, `\n`, `\r`):
//! - `T …`: totals carried over by compaction (the dir ledger's format);
//! - `P <cursor>`: every record up to this position is finished;
//! - `V <etag> <last-modified>`: validators of the last response whose records are all finished;
//! - `I <id>`: a finished record remembered for deduplication (written by compaction);
//! - `S <id> <samples>` / `R <id> <reason> <message>`: a record was scored / rejected.
//!
//! A torn last line (a crash mid-write) is ignored: its record was never acknowledged and is fetched
//! again. The journal is compacted at start-up and every [`COMPACT_EVERY`] lines.

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use crate::decode::{RejectReason, Rejection};
use crate::sources::{Outcome, Totals};

/// Appended lines between two compactions.
pub const COMPACT_EVERY: usize = 10_000;

/// HTTP cache validators of a response.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Validators {
    pub etag: Option<String>,
    pub last_modified: Option<String>,
}

/// Ids of finished records, the most recent `cap` of them.
#[derive(Debug, Clone)]
pub struct RecentIds {
    set: HashSet<String>,
    order: VecDeque<String>,
    cap: usize,
}

impl RecentIds {
    pub fn new(cap: usize) -> RecentIds {
        RecentIds { set: HashSet::new(), order: VecDeque::new(), cap: cap.max(1) }
    }

    pub fn contains(&self, id: &str) -> bool {
        self.set.contains(id)
    }

    pub fn insert(&mut self, id: &str) {
        if !self.set.insert(id.to_string()) {
            return;
        }
        self.order.push_back(id.to_string());
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub fn len(&self) -> usize {
        self.order.len()
    }

    fn iter(&self) -> impl Iterator<Item = &String> {
        self.order.iter()
    }
}

/// What the journal remembers.
#[derive(Debug, Clone)]
pub struct State {
    pub totals: Totals,
    pub cursor: Option<String>,
    pub validators: Validators,
    pub finished: RecentIds,
}

pub struct Journal {
    path: PathBuf,
    file: File,
    appended: usize,
}

impl Journal {
    /// Reads the journal (missing = empty state), compacts it, and opens it for appending.
    pub fn open(path: &Path, remember: usize) -> io::Result<(Journal, State)> {
        let state = read(path, remember)?;
        let journal = compact(path, &state)?;
        Ok((journal, state))
    }

    /// Appends a finished record (and the new position or validators when they moved), then waits
    /// until it is on disk. Every [`COMPACT_EVERY`] lines the journal is rewritten from `state`.
    pub fn append(
        &mut self,
        id: &str,
        outcome: &Outcome,
        cursor: Option<&str>,
        validators: Option<&Validators>,
        state: &State,
    ) -> io::Result<()> {
        let mut text = match outcome {
            Outcome::Scored { samples } => format!("S\t{}\t{samples}\n", escape(id)),
            Outcome::Rejected(r) => {
                format!("R\t{}\t{}\t{}\n", escape(id), r.reason.as_str(), escape(&r.message))
            }
        };
        if let Some(c) = cursor {
            text.push_str(&format!("P\t{}\n", escape(c)));
        }
        if let Some(v) = validators {
            text.push_str(&validators_line(v));
        }
        self.write(&text, state)
    }

    /// Records a position and validators reached without a new record (skipped duplicates, an
    /// empty page).
    pub fn advance(
        &mut self,
        cursor: Option<&str>,
        validators: Option<&Validators>,
        state: &State,
    ) -> io::Result<()> {
        let mut text = String::new();
        if let Some(c) = cursor {
            text.push_str(&format!("P\t{}\n", escape(c)));
        }
        if let Some(v) = validators {
            text.push_str(&validators_line(v));
        }
        if text.is_empty() {
            return Ok(());
        }
        self.write(&text, state)
    }

    fn write(&mut self, text: &str, state: &State) -> io::Result<()> {
        self.file.write_all(text.as_bytes())?;
        self.file.sync_data()?;
        self.appended += text.lines().count();
        if self.appended >= COMPACT_EVERY {
            *self = compact(&self.path, state)?;
        }
        Ok(())
    }
}

fn validators_line(v: &Validators) -> String {
    format!(
        "V\t{}\t{}\n",
        escape(v.etag.as_deref().unwrap_or("")),
        escape(v.last_modified.as_deref().unwrap_or(""))
    )
}

fn read(path: &Path, remember: usize) -> io::Result<State> {
    let text = match std::fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e),
    };
    let mut state = State {
        totals: Totals::default(),
        cursor: None,
        validators: Validators::default(),
        finished: RecentIds::new(remember),
    };
    // Only complete lines count: a torn tail was never acknowledged.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    for line in complete.lines() {
        if let Some(rest) = line.strip_prefix("T\t") {
            state.totals.add(&Totals::from_fields(rest));
            continue;
        }
        let f: Vec<&str> = line.splitn(4, '\t').collect();
        match f.as_slice() {
            ["P", c] => state.cursor = Some(unescape(c)),
            ["V", etag, modified] => {
                let some = |s: &str| Some(unescape(s)).filter(|s| !s.is_empty());
                state.validators = Validators { etag: some(etag), last_modified: some(modified) };
            }
            ["I", id] => state.finished.insert(&unescape(id)),
            ["S", id, samples] => {
                state.totals.record(&Outcome::Scored { samples: samples.parse().unwrap_or(1) });
                state.finished.insert(&unescape(id));
            }
            ["R", id, reason, message] => {
                let reason = RejectReason::parse(reason).unwrap_or(RejectReason::Decode);
                state.totals.record(&Outcome::Rejected(Rejection { reason, message: unescape(message) }));
                state.finished.insert(&unescape(id));
            }
            _ => tracing::warn!(journal = %path.display(), line, "ignoring an unreadable journal line"),
        }
    }
    Ok(state)
}

/// Rewrites the journal from `state` (atomically: a temporary file, fsync, rename, fsync of the
/// directory), then opens it for appending.
fn compact(path: &Path, state: &State) -> io::Result<Journal> {
    let tmp = path.with_extension("compact.tmp");
    {
        let mut text = format!("{}\n", state.totals.to_line());
        if let Some(c) = &state.cursor {
            text.push_str(&format!("P\t{}\n", escape(c)));
        }
        if state.validators != Validators::default() {
            text.push_str(&validators_line(&state.validators));
        }
        for id in state.finished.iter() {
            text.push_str(&format!("I\t{}\n", escape(id)));
        }
        let mut f = File::create(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        File::open(dir)?.sync_all()?;
    }
    let file = OpenOptions::new().append(true).open(path)?;
    Ok(Journal { path: path.to_path_buf(), file, appended: 0 })
}

fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\t' => out.push_str("\\t"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            c => out.push(c),
        }
    }
    out
}

fn unescape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    let mut chars = s.chars();
    while let Some(c) = chars.next() {
        if c != '\\' {
            out.push(c);
            continue;
        }
        match chars.next() {
            Some('t') => out.push('\t'),
            Some('n') => out.push('\n'),
            Some('r') => out.push('\r'),
            Some(other) => out.push(other),
            None => out.push('\\'),
        }
    }
    out
}
