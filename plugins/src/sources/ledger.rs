//! The durable record of finished inputs: an append-only, fsync'd text file.
//!
//! Lines (tab-separated):
//! - `T <scored_inputs> <scored_samples> <rejected per reason, in RejectReason::ALL order…>`: totals
//!   carried over by compaction;
//! - `S <claim> <samples>`: a claimed input was scored;
//! - `R <claim> <reason> <message>`: a claimed input was rejected.
//!
//! A torn last line (crash mid-write) was never acknowledged and is ignored: its input is still in
//! `processing/` and is delivered again. Compaction at start-up folds every line into one `T` line once
//! the inputs they name have been moved out of `processing/`, so the file stays small.

use std::collections::HashMap;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::Path;

use super::{Outcome, reason_index};
use crate::decode::{RejectReason, Rejection};

/// Counts of finished inputs recorded in a ledger: the daemon seeds its counters with them so that
/// `agent_samples_scored_total` and `agent_samples_rejected_total` survive restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Totals {
    pub scored_inputs: u64,
    pub scored_samples: u64,
    /// Rejected inputs, indexed like [`RejectReason::ALL`].
    pub rejected: [u64; 8],
}

impl Totals {
    pub fn rejected_by(&self, r: RejectReason) -> u64 {
        self.rejected[reason_index(r)]
    }

    pub fn rejected_total(&self) -> u64 {
        self.rejected.iter().sum()
    }

    pub fn add(&mut self, other: &Totals) {
        self.scored_inputs += other.scored_inputs;
        self.scored_samples += other.scored_samples;
        for (a, b) in self.rejected.iter_mut().zip(other.rejected) {
            *a += b;
        }
    }

    /// The `T` line that carries these totals (without the newline).
    pub(crate) fn to_line(&self) -> String {
        let mut line = format!("T\t{}\t{}", self.scored_inputs, self.scored_samples);
        for v in self.rejected {
            line.push_str(&format!("\t{v}"));
        }
        line
    }

    /// Totals from the fields after `T` (tab-separated numbers; missing ones are 0).
    pub(crate) fn from_fields(rest: &str) -> Totals {
        let nums: Vec<u64> = rest.split('\t').filter_map(|s| s.parse().ok()).collect();
        let mut t = Totals {
            scored_inputs: nums.first().copied().unwrap_or(0),
            scored_samples: nums.get(1).copied().unwrap_or(0),
            ..Totals::default()
        };
        for (i, v) in nums.iter().skip(2).take(8).enumerate() {
            t.rejected[i] = *v;
        }
        t
    }

    pub(crate) fn record(&mut self, outcome: &Outcome) {
        match outcome {
            Outcome::Scored { samples } => {
                self.scored_inputs += 1;
                self.scored_samples += samples;
            }
            Outcome::Rejected(r) => self.rejected[reason_index(r.reason)] += 1,
        }
    }
}

pub(crate) struct Ledger {
    file: File,
}

impl Ledger {
    /// Reads the ledger: totals so far and the outcomes of individual claims still listed.
    pub(crate) fn read(path: &Path) -> io::Result<(Totals, HashMap<String, Outcome>)> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(e),
        };
        let mut totals = Totals::default();
        let mut claims = HashMap::new();
        // Only complete lines count: a torn tail was never acknowledged.
        let complete = match text.rfind('\n') {
            Some(i) => &text[..=i],
            None => "",
        };
        for line in complete.lines() {
            if let Some(rest) = line.strip_prefix("T\t") {
                totals.add(&Totals::from_fields(rest));
                continue;
            }
            let f: Vec<&str> = line.splitn(4, '\t').collect();
            match f.as_slice() {
                ["S", claim, samples] => {
                    let o = Outcome::Scored { samples: samples.parse().unwrap_or(1) };
                    totals.record(&o);
                    claims.insert(claim.to_string(), o);
                }
                ["R", claim, reason, message] => {
                    let reason = RejectReason::parse(reason).unwrap_or(RejectReason::Decode);
                    let o = Outcome::Rejected(Rejection { reason, message: message.to_string() });
                    totals.record(&o);
                    claims.insert(claim.to_string(), o);
                }
                _ => tracing::warn!(ledger = %path.display(), line, "ignoring an unreadable ledger line"),
            }
        }
        Ok((totals, claims))
    }

    /// Rewrites the ledger as one totals line (atomically), then opens it for appending.
    pub(crate) fn compact(path: &Path, totals: &Totals) -> io::Result<Ledger> {
        let tmp = path.with_extension("compact.tmp");
        {
            let mut f = File::create(&tmp)?;
            writeln!(f, "{}", totals.to_line())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, path)?;
        if let Some(dir) = path.parent() {
            File::open(dir)?.sync_all()?;
        }
        let file = OpenOptions::new().append(true).open(path)?;
        Ok(Ledger { file })
    }

    /// Appends one outcome and waits until it is on disk.
    pub(crate) fn append(&mut self, claim: &str, outcome: &Outcome) -> io::Result<()> {
        let line = match outcome {
            Outcome::Scored { samples } => format!("S\t{claim}\t{samples}\n"),
            Outcome::Rejected(r) => {
                let msg = r.message.replace(['\n', '\r', '\t'], " ");
                format!("R\t{claim}\t{}\t{msg}\n", r.reason.as_str())
            }
        };
        self.file.write_all(line.as_bytes())?;
        self.file.sync_data()?;
        Ok(())
    }
}
