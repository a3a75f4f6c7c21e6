//! The agent library: attribution graphs, scores, drift, and the daemon around them.
//!
//! Data flows sources → decoders (crate `plugins`) → engine → scores → drift windows → telemetry;
//! see ARCHITECTURE.md for the map.

pub mod cli;
pub mod compiler;
pub mod config;
pub mod daemon;
pub mod detectors;
pub mod drift;
pub mod engine;
pub mod onnx;
pub mod runtime;
pub mod scores;
pub mod telemetry;
