//! `[tokenizer]`: how a text model's raw text becomes token ids. Kept in its own section (not in
//! `[model]`) so that an image model's configuration never mentions it.

use std::path::PathBuf;
use std::sync::Arc;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::Config;
use plugins::decode::TokenOptions;
use plugins::decode::text::TextTokenizer;

/// `[tokenizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// The model's `tokenizer.json` (Hugging Face `tokenizers` format), as the serving code uses it.
    pub path: PathBuf,
    /// Longest encoding in tokens, special tokens included; longer texts are truncated (at most the
    /// model's position embeddings, which the agent cannot always read from the graph).
    #[serde(default = "default_max_length")]
    pub max_length: usize,
}

fn default_max_length() -> usize {
    128
}

impl Config {
    /// The decoders' view of a text model: `None` for a model without `[tokenizer]`.
    pub fn token_options(&self) -> Result<Option<TokenOptions>> {
        let Some(t) = &self.tokenizer else { return Ok(None) };
        let tok = TextTokenizer::from_file(&t.path, t.max_length, false)?;
        Ok(Some(TokenOptions::new(Some(Arc::new(tok)))))
    }
}

/// Problems of `[tokenizer]`, as `(key, why)`: the file must exist and load, `max_length` fit.
pub(super) fn problems(cfg: &Config) -> Vec<(String, String)> {
    let Some(t) = &cfg.tokenizer else { return Vec::new() };
    let mut out = Vec::new();
    if t.max_length < 2 {
        out.push(("tokenizer.max_length".into(), format!("{} leaves no room for the special tokens; at least 2", t.max_length)));
        return out;
    }
    if !t.path.is_file() {
        out.push(("tokenizer.path".into(), format!("tokenizer file {} does not exist", t.path.display())));
        return out;
    }
    if let Err(e) = TextTokenizer::from_file(&t.path, t.max_length, false) {
        out.push(("tokenizer.path".into(), format!("{e:#}")));
    }
    out
}
