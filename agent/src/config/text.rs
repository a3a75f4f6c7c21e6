//! `[tokenizer]`: how a text model's raw text becomes token ids. Its own section, so that an image
//! model's configuration never mentions it; the length it truncates to is the engine's
//! `[model] max_length` (one length for the tokenizer and the compiled graph).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use serde::{Deserialize, Serialize};

use super::Config;
use crate::compiler::InputRole;
use crate::engine::{TextModel, TextSettings};
use plugins::decode::TokenOptions;
use plugins::decode::text::TextTokenizer;

/// `[tokenizer]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenizerConfig {
    /// The model's `tokenizer.json` (Hugging Face `tokenizers` format), as the serving code uses it.
    pub path: PathBuf,
}

/// The decoders' view of a text model: its inputs' names, vocabulary and length from the engine's
/// decision, and the tokenizer at `tokenizer` (raw text refused without one).
pub fn token_options(text: &TextModel, tokenizer: Option<&Path>) -> Result<TokenOptions> {
    let tok = match tokenizer {
        Some(p) => Some(Arc::new(TextTokenizer::from_file(p, text.length, false)?)),
        None => None,
    };
    let name = |role: InputRole| text.inputs.iter().find(|i| i.role == role).map(|i| i.name.clone());
    let mut opts = TokenOptions::new(tok);
    opts.ids_input = name(InputRole::Ids).context("a text model has an ids input")?;
    opts.mask_input = name(InputRole::Mask);
    opts.type_ids_input = name(InputRole::TokenTypes);
    opts.vocab_size = text.vocab_size;
    if let Some(t) = &opts.tokenizer
        && opts.type_ids_input.is_some()
    {
        // The tokenizer must hand out type ids when the model takes them.
        let typed = TextTokenizer::from_file(t.path(), text.length, true)?;
        opts.tokenizer = Some(Arc::new(typed));
    }
    Ok(opts)
}

impl Config {
    /// The text model the configured model file is, decided as the engine decides it (`None` for a
    /// model with one float input).
    pub fn text_model(&self) -> Result<Option<TextModel>> {
        let bytes = std::fs::read(&self.model.path)
            .with_context(|| format!("reading model {}", self.model.path.display()))?;
        let model = crate::onnx::decode(&bytes)?;
        TextModel::decide(&model, &self.text_settings())
    }

    /// The decoders' options for a text model; `None` for other models.
    /// Without `[tokenizer]`, a model file that does not load counts as not a text model: the engine
    /// loads the same file and says what is wrong with it.
    pub fn token_options(&self) -> Result<Option<TokenOptions>> {
        let text = match self.text_model() {
            Ok(t) => t,
            Err(_) if self.tokenizer.is_none() => None,
            Err(e) => return Err(e),
        };
        match (text, &self.tokenizer) {
            (None, None) => Ok(None),
            (None, Some(_)) => bail!("[tokenizer] is set, but the model takes a float input, not token ids"),
            (Some(text), t) => Ok(Some(token_options(&text, t.as_ref().map(|t| t.path.as_path()))?)),
        }
    }

    /// `[model]`'s text settings, with what the tokenizer knows filled in where the configuration
    /// leaves it out: the pad id and the special tokens (never drawn for noise inputs). A tokenizer
    /// that does not load leaves them as configured ([`problems`] reports it).
    pub fn text_settings(&self) -> TextSettings {
        let mut s = self.model.text.clone();
        let Some(t) = &self.tokenizer else { return s };
        let Ok(tok) = TextTokenizer::from_file(&t.path, s.max_length(), false) else { return s };
        if s.pad_id.is_none() {
            s.pad_id = tok.pad_id();
        }
        if s.noise_exclude_ids.is_none() {
            s.noise_exclude_ids = Some(tok.special_ids());
        }
        s
    }
}

/// Problems of `[tokenizer]`, as `(key, why)`: the file must exist and load, and its ids must index
/// the model's embedding table.
pub(super) fn problems(cfg: &Config) -> Vec<(String, String)> {
    let Some(t) = &cfg.tokenizer else { return Vec::new() };
    let mut out = Vec::new();
    let key = "tokenizer.path".to_string();
    if !t.path.is_file() {
        out.push((key, format!("tokenizer file {} does not exist", t.path.display())));
        return out;
    }
    let tok = match TextTokenizer::from_file(&t.path, cfg.model.text.max_length().max(2), false) {
        Ok(tok) => tok,
        Err(e) => {
            out.push((key, format!("{e:#}")));
            return out;
        }
    };
    if !cfg.model.path.is_file() {
        return out;
    }
    match cfg.text_model() {
        Ok(None) => {
            out.push((key, "the model takes a float input, not token ids: remove [tokenizer]".into()))
        }
        Ok(Some(text)) if tok.vocab_size() > text.vocab_size => out.push((
            key,
            format!(
                "the tokenizer's vocabulary has {} tokens, the model's {} ({}): ids past it would index \
                 beyond the embedding table",
                tok.vocab_size(),
                text.vocab_size,
                text.vocab_from
            ),
        )),
        _ => {}
    }
    out
}
