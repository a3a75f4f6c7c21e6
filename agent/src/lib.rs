//! The agent library: attribution graphs, scores, drift, and the daemon around them.
//!
//! Data flows sources → decoders (crate `plugins`) → engine → scores → drift windows → telemetry;
//! see ARCHITECTURE.md for the map.

// `deny`, not `forbid`: ndarray's `s![]` macro expands to `#[allow(unsafe_code)] unsafe { … }`, which a
// `forbid` refuses (E0453; engine/session.rs, scores/channel.rs). Our own code holds no `unsafe`.
#![deny(unsafe_code)]

pub mod cli;
pub mod compiler;
pub mod config;
pub mod daemon;
pub mod drift;
pub mod engine;
pub mod onnx;
pub mod runtime;
pub mod scores;
pub mod telemetry;
