//! The test-model helpers under the name `common` (`mod common;`), for the tests that import them so:
//! one module, `tests/support/models.rs`, holds them (the daemon helpers are the rest of `support`).
#![allow(dead_code)]

#[path = "../support/models.rs"]
mod models;

pub use models::*;
