//! PLACEHOLDER — DELETE AT MERGE. The engine's agreed API (see the lead's brief), so that the daemon,
//! `agent check` and `agent baseline` compile before the real engine lands. Every constructor fails.

use anyhow::{Result, bail};
use ndarray::ArrayViewD;

use super::{EngineSpec, SampleScores, ScoreKey};
use crate::runtime::Provider;

pub struct Engine {
    keys: Vec<ScoreKey>,
    input_shape: Vec<usize>,
    provider: Provider,
    model_sha256: String,
    settings_hash: String,
}

impl Engine {
    pub fn new(spec: &EngineSpec) -> Result<Engine> {
        let _ = spec;
        bail!("engine not merged yet")
    }
    pub fn keys(&self) -> &[ScoreKey] {
        &self.keys
    }
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    pub fn provider(&self) -> Provider {
        self.provider
    }
    pub fn requested_provider(&self) -> Provider {
        self.provider
    }
    pub fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>> {
        let _ = batch;
        bail!("engine not merged yet")
    }
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }
    pub fn settings_hash(&self) -> &str {
        &self.settings_hash
    }
}
