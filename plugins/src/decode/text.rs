//! Raw text → [`TokenSample`]s through the model's own `tokenizer.json` (Hugging Face `tokenizers`,
//! the library the production service tokenizes with, so the agent sees the ids the model saw).
//!
//! Formats (one sample per line, so that a file of many texts is a batch like a `[B, …]` array):
//! - `.txt`: UTF-8, one text per line; blank lines are skipped.
//! - `.jsonl`: one JSON object per line with a string field `"text"`; other fields are ignored;
//!   blank lines are skipped.
//! - a feed record or a sample request `{"text": "…"}` ([`text_of_record`]).
//!
//! Every text is encoded with the special tokens the tokenizer's post-processor adds (`[CLS] … [SEP]`
//! for BERT) and truncated to `max_length` tokens, special tokens included, as the model's serving
//! code does. No padding here: the engine pads a batch to its longest sample.
//!
//! Sizes: a text longer than `limits.max_elements_per_sample` bytes, or a file with more than
//! `limits.max_elements_per_file` bytes of text, is refused as `too_large` before it is tokenized
//! (a byte is an upper bound on what a text can cost the tokenizer).

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use tokenizers::{Tokenizer, TruncationDirection, TruncationParams, TruncationStrategy};

use super::tokens::TokenSample;
use super::{RejectReason, Rejection};
use crate::limits::Limits;

/// The formats this module reads, by lower-case extension.
pub const TEXT_EXTENSIONS: [&str; 2] = ["txt", "jsonl"];

/// A loaded `tokenizer.json` with the truncation the agent applies.
pub struct TextTokenizer {
    inner: Tokenizer,
    path: PathBuf,
    max_length: usize,
    with_type_ids: bool,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("path", &self.path)
            .field("max_length", &self.max_length)
            .field("vocab_size", &self.vocab_size())
            .finish()
    }
}

/// Two tokenizers are the same when they come from the same file with the same settings (a reload
/// compares configurations, not vocabularies).
impl PartialEq for TextTokenizer {
    fn eq(&self, other: &Self) -> bool {
        self.path == other.path
            && self.max_length == other.max_length
            && self.with_type_ids == other.with_type_ids
    }
}

impl TextTokenizer {
    /// Loads `path`; `max_length` (≥ 2) caps every encoding, special tokens included;
    /// `with_type_ids` when the model takes token-type ids.
    pub fn from_file(path: &Path, max_length: usize, with_type_ids: bool) -> Result<TextTokenizer> {
        let bytes = std::fs::read(path).with_context(|| format!("reading tokenizer {}", path.display()))?;
        TextTokenizer::from_bytes(&bytes, path, max_length, with_type_ids)
    }

    /// Like [`TextTokenizer::from_file`] from the file's bytes; `path` only names it.
    pub fn from_bytes(
        bytes: &[u8],
        path: &Path,
        max_length: usize,
        with_type_ids: bool,
    ) -> Result<TextTokenizer> {
        if max_length < 2 {
            bail!("max_length must be at least 2 (room for the special tokens), got {max_length}");
        }
        let mut inner =
            Tokenizer::from_bytes(bytes).map_err(|e| anyhow::anyhow!("{e}")).with_context(|| {
                format!("{} is not a tokenizer.json the tokenizers library reads", path.display())
            })?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| anyhow::anyhow!("{e}"))
            .with_context(|| format!("{}: truncation to {max_length} tokens", path.display()))?;
        // The engine pads a batch itself, to the batch's longest sample.
        inner.with_padding(None);
        if inner.get_vocab_size(true) == 0 {
            bail!("{}: the tokenizer has an empty vocabulary", path.display());
        }
        Ok(TextTokenizer { inner, path: path.to_path_buf(), max_length, with_type_ids })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn max_length(&self) -> usize {
        self.max_length
    }

    /// Ids are `0..vocab_size()` (added tokens included).
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// The ids of special tokens (`[CLS]`, `[SEP]`, `[PAD]`, `[UNK]`, `[MASK]`, …), sorted: the noise
    /// input of a text sample draws from every other id.
    pub fn special_ids(&self) -> Vec<i64> {
        let mut ids: Vec<i64> = self
            .inner
            .get_added_tokens_decoder()
            .iter()
            .filter(|(_, t)| t.special)
            .map(|(id, _)| i64::from(*id))
            .collect();
        ids.sort_unstable();
        ids
    }

    /// The padding id: the tokenizer's own padding setting when the file has one, else the id of the
    /// first of `[PAD]`, `<pad>`, `<|pad|>` it knows.
    pub fn pad_id(&self) -> Option<i64> {
        if let Some(p) = self.inner.get_padding() {
            return Some(i64::from(p.pad_id));
        }
        ["[PAD]", "<pad>", "<|pad|>"].iter().find_map(|t| self.inner.token_to_id(t)).map(i64::from)
    }

    /// The tokens of `ids` as strings (for `agent explain`); an unknown id prints as `[id]`.
    pub fn tokens(&self, ids: &[i64]) -> Vec<String> {
        ids.iter()
            .map(|&id| {
                u32::try_from(id)
                    .ok()
                    .and_then(|i| self.inner.id_to_token(i))
                    .unwrap_or_else(|| format!("[{id}]"))
            })
            .collect()
    }

    /// Encodes one text; `name` labels a refusal.
    pub fn encode(&self, name: &str, text: &str, limits: &Limits) -> Result<TokenSample, Rejection> {
        if text.len() as u64 > limits.max_elements_per_sample {
            return Err(Rejection::new(
                RejectReason::TooLarge,
                name,
                format!(
                    "a text of {} bytes exceeds limits.max_elements_per_sample = {}",
                    text.len(),
                    limits.max_elements_per_sample
                ),
            ));
        }
        let enc = self
            .inner
            .encode(text, true)
            .map_err(|e| Rejection::new(RejectReason::Decode, name, format!("tokenizer failed: {e}")))?;
        let ids = enc.get_ids().iter().map(|&i| i64::from(i)).collect();
        let type_ids = self.with_type_ids.then(|| enc.get_type_ids().iter().map(|&i| i64::from(i)).collect());
        Ok(TokenSample { ids, type_ids })
    }

    /// Decodes a `.txt` or `.jsonl` file's bytes (`ext` lower case) into one sample per text.
    pub fn decode(
        &self,
        name: &str,
        ext: &str,
        bytes: &[u8],
        limits: &Limits,
    ) -> Result<Vec<TokenSample>, Rejection> {
        let texts = texts_of(name, ext, bytes, limits)?;
        texts
            .iter()
            .enumerate()
            .map(|(i, t)| self.encode(&format!("{name} (text {})", i + 1), t, limits))
            .collect()
    }
}

/// The texts of a `.txt` or `.jsonl` file, one per non-blank line, checked against the limits.
pub fn texts_of(name: &str, ext: &str, bytes: &[u8], limits: &Limits) -> Result<Vec<String>, Rejection> {
    if bytes.len() as u64 > limits.max_elements_per_file {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!(
                "{} bytes of text exceed limits.max_elements_per_file = {}",
                bytes.len(),
                limits.max_elements_per_file
            ),
        ));
    }
    let text = std::str::from_utf8(bytes).map_err(|e| {
        Rejection::new(
            RejectReason::Decode,
            name,
            format!("not UTF-8 text (invalid byte at offset {})", e.valid_up_to()),
        )
    })?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        match ext {
            "txt" => out.push(line.to_string()),
            "jsonl" => {
                let at = format!("{name} line {}", i + 1);
                limits.check_depth(&at, line.as_bytes())?;
                let v: serde_json::Value = serde_json::from_str(line).map_err(|e| {
                    Rejection::new(RejectReason::Decode, &at, format!("not a JSON object ({e})"))
                })?;
                out.push(text_of_record(&at, &v)?);
            }
            other => {
                return Err(Rejection::new(
                    RejectReason::Unsupported,
                    name,
                    format!("unsupported text format {other:?} (expected .txt or .jsonl)"),
                ));
            }
        }
    }
    if out.is_empty() {
        return Err(Rejection::new(RejectReason::Shape, name, "no text in the file (every line is blank)"));
    }
    Ok(out)
}

/// The `"text"` field of a record `{"text": "…", …}`.
pub fn text_of_record(name: &str, v: &serde_json::Value) -> Result<String, Rejection> {
    let obj = v.as_object().ok_or_else(|| {
        Rejection::new(RejectReason::Decode, name, "expected a JSON object with a \"text\" field")
    })?;
    match obj.get("text") {
        Some(serde_json::Value::String(s)) => Ok(s.clone()),
        Some(other) => Err(Rejection::new(
            RejectReason::Decode,
            name,
            format!("\"text\" must be a string, got {}", json_kind(other)),
        )),
        None => Err(Rejection::new(RejectReason::Decode, name, "the record has no \"text\" field")),
    }
}

fn json_kind(v: &serde_json::Value) -> &'static str {
    match v {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

#[cfg(test)]
mod tests;
