//! The watermark: which records are finished, and the position up to which all of them are.
//!
//! Records are admitted in feed order and finish in any order (a rejected record finishes at once,
//! a scored one when the engine gets to it). The durable position only moves over a prefix of
//! finished records, so a restart never skips an unfinished one; the finished ids past it are
//! remembered, so a restart never counts one twice.

use std::collections::{HashSet, VecDeque};

use super::journal::{State, Validators};
use crate::sources::Outcome;

struct Entry {
    seq: u64,
    cursor: Option<String>,
    validators: Option<Validators>,
    done: bool,
}

/// What [`Progress::admit`] decided.
#[derive(Debug, PartialEq, Eq)]
pub enum Admit {
    /// Deliver it; acknowledge with this sequence number.
    New(u64),
    /// Finished before, or in flight: skip it.
    Duplicate,
}

pub struct Progress {
    state: State,
    pending: VecDeque<Entry>,
    next_seq: u64,
    in_flight: HashSet<String>,
}

impl Progress {
    pub fn new(state: State) -> Progress {
        Progress { state, pending: VecDeque::new(), next_seq: 0, in_flight: HashSet::new() }
    }

    /// The durable state as of the last finish or advance (plus remembered ids).
    pub fn state(&self) -> &State {
        &self.state
    }

    /// Admits a record in feed order. A duplicate leaves the position alone: a feed replaying an
    /// in-flight record may carry an older cursor, and the next new record moves it anyway.
    pub fn admit(&mut self, id: &str, cursor: Option<String>) -> Admit {
        if self.state.finished.contains(id) || self.in_flight.contains(id) {
            return Admit::Duplicate;
        }
        self.in_flight.insert(id.to_string());
        Admit::New(self.push(cursor, None, false))
    }

    /// A position or validators with no record of their own (they count once everything before is
    /// finished).
    pub fn marker(&mut self, cursor: Option<String>, validators: Option<Validators>) {
        self.push(cursor, validators, true);
    }

    fn push(&mut self, cursor: Option<String>, validators: Option<Validators>, done: bool) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.pending.push_back(Entry { seq, cursor, validators, done });
        seq
    }

    /// Marks an admitted record finished; returns the new durable position and validators when they
    /// moved. An unknown `seq` (already finished) changes nothing but the totals.
    pub fn finish(&mut self, seq: u64, id: &str, outcome: &Outcome) -> (Option<String>, Option<Validators>) {
        self.state.totals.record(outcome);
        self.state.finished.insert(id);
        self.in_flight.remove(id);
        if let Some(front) = self.pending.front()
            && seq >= front.seq
            && let Some(e) = self.pending.get_mut((seq - front.seq) as usize)
        {
            e.done = true;
        }
        self.advance()
    }

    /// Drops the finished prefix; returns the position and validators it reached, when they moved.
    pub fn advance(&mut self) -> (Option<String>, Option<Validators>) {
        let (mut cursor, mut validators) = (None, None);
        while self.pending.front().is_some_and(|e| e.done) {
            let e = self.pending.pop_front().expect("a front entry");
            if e.cursor.is_some() {
                cursor = e.cursor;
            }
            if e.validators.is_some() {
                validators = e.validators;
            }
        }
        if let Some(c) = &cursor {
            if self.state.cursor.as_ref() == Some(c) {
                cursor = None;
            } else {
                self.state.cursor = Some(c.clone());
            }
        }
        if let Some(v) = &validators {
            if self.state.validators == *v {
                validators = None;
            } else {
                self.state.validators = v.clone();
            }
        }
        (cursor, validators)
    }
}
