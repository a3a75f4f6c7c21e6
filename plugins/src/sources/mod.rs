//! Sources: where inputs come from. Each hands decoded batches to the daemon over a bounded channel
//! (so a source never reads faster than the engine scores) together with an [`Ack`], and the daemon
//! finishes the ack once the scores are recorded.
//!
//! Delivery guarantee (all sources): an input is acknowledged only after its outcome is durable, so a
//! crash between "scored" and "acknowledged" re-delivers it (at-least-once processing), and the
//! source's own durable record keeps it from being counted twice (see [`dir`] for the ledger).

pub mod dir;
pub mod http;
pub mod ingest;
mod ledger;

use crate::decode::{Payload, RejectReason, Rejection};

pub use ledger::Totals;

/// A decoded input on its way to the engine.
pub struct Delivery {
    /// The configured source name (a metric label).
    pub source: String,
    /// The input's name, for logs only (never a metric label).
    pub input: String,
    /// `[B, ..input_shape]` finite `f32`, or a text model's token samples.
    pub batch: Payload,
    pub ack: Ack,
}

/// What became of a delivered input.
#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Scored and recorded; `samples` is the batch size of the input.
    Scored {
        samples: u64,
    },
    Rejected(Rejection),
}

/// The source-specific half of an acknowledgement.
pub trait Acknowledge: Send {
    /// Makes the outcome durable, then releases the input (e.g. moves the file to `done/`).
    fn finish(self: Box<Self>, outcome: &Outcome) -> std::io::Result<()>;
}

/// Acknowledges one delivered input. Dropping it unfinished leaves the input to be re-delivered after
/// a restart (this is what happens to in-flight inputs on `kill -9`).
pub struct Ack(Box<dyn Acknowledge>);

impl Ack {
    pub fn new(inner: impl Acknowledge + 'static) -> Ack {
        Ack(Box::new(inner))
    }

    pub fn finish(self, outcome: &Outcome) -> std::io::Result<()> {
        self.0.finish(outcome)
    }
}

/// What a source reports besides deliveries, for metrics and logs. Never called concurrently for one
/// source, but shared between sources, so implementations use atomics.
pub trait Observer: Send + Sync {
    /// An input was rejected by the source (its outcome is already durable).
    fn rejected(&self, source: &str, rejection: &Rejection);
    /// A source-level failure (`kind`: `watch`, `io`, …), counted in `agent_source_errors_total`.
    fn error(&self, source: &str, kind: &'static str);
    /// A feed answered (`agent_feed_last_success_timestamp_seconds`).
    fn feed_ok(&self, _source: &str) {}
}

/// An observer that only logs, for tools and tests.
pub struct LogObserver;

impl Observer for LogObserver {
    fn rejected(&self, source: &str, rejection: &Rejection) {
        tracing::warn!(source, reason = rejection.reason.as_str(), "{}", rejection.message);
    }
    fn error(&self, source: &str, kind: &'static str) {
        tracing::warn!(source, kind, "source error");
    }
}

/// Index of a reason in [`RejectReason::ALL`], for fixed-size per-reason tables.
pub(crate) fn reason_index(r: RejectReason) -> usize {
    RejectReason::ALL.iter().position(|x| *x == r).unwrap_or(0)
}
