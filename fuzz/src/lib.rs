//! Fuzz targets for the agent; see README.md.

pub mod cap;
pub mod targets;
