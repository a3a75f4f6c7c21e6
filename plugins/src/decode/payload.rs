//! What a decoder hands the engine: a dense `[B, …]` float batch (image and tensor models) or token
//! samples (text models), and the decoding of a file or a byte buffer into one of them.
//!
//! A text model (the daemon sets [`DecodeOptions::tokens`]) takes `.txt` and `.jsonl` files through
//! its tokenizer ([`super::text`]) and `.npz` archives holding its named integer inputs; every other
//! model takes the dense formats of [`super::EXTENSIONS`].

use std::path::Path;
use std::sync::Arc;

use ndarray::{ArrayD, Axis};

use super::text::{TEXT_EXTENSIONS, TextTokenizer};
use super::tokens::TokenSample;
use super::{DecodeOptions, EXTENSIONS, RejectReason, Rejection, decode_bytes, npy};

/// A decoded input.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// `[B, ..input_shape]`, finite `f32`.
    Dense(ArrayD<f32>),
    /// One unpadded sample per entry, never empty.
    Tokens(Vec<TokenSample>),
}

impl Payload {
    /// The number of samples.
    pub fn samples(&self) -> usize {
        match self {
            Payload::Dense(a) => a.len_of(Axis(0)),
            Payload::Tokens(t) => t.len(),
        }
    }

    /// The samples at `rows`, in that order.
    pub fn select(&self, rows: &[usize]) -> Payload {
        match self {
            Payload::Dense(a) => Payload::Dense(a.select(Axis(0), rows)),
            Payload::Tokens(t) => Payload::Tokens(rows.iter().map(|&r| t[r].clone()).collect()),
        }
    }

    pub fn as_dense(&self) -> Option<&ArrayD<f32>> {
        match self {
            Payload::Dense(a) => Some(a),
            Payload::Tokens(_) => None,
        }
    }

    pub fn as_tokens(&self) -> Option<&[TokenSample]> {
        match self {
            Payload::Dense(_) => None,
            Payload::Tokens(t) => Some(t),
        }
    }
}

/// How a text model's inputs are read: the tokenizer for raw text, and the names of the model's
/// integer inputs as `.npz` members (and V2 tensors) carry them.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenOptions {
    /// `None`: the model takes token ids only (`.npz`, V2 `INT64`); raw text is refused.
    pub tokenizer: Option<Arc<TextTokenizer>>,
    pub ids_input: String,
    /// The attention mask input, when the model has one; its zeros drop positions of a row.
    pub mask_input: Option<String>,
    /// The token-type input, when the model has one.
    pub type_ids_input: Option<String>,
    /// Ids must lie in `0..vocab_size` (the model's embedding rows); 0 = unknown, unchecked.
    pub vocab_size: usize,
}

impl TokenOptions {
    pub fn new(tokenizer: Option<Arc<TextTokenizer>>) -> TokenOptions {
        let vocab_size = tokenizer.as_ref().map(|t| t.vocab_size()).unwrap_or(0);
        TokenOptions {
            tokenizer,
            ids_input: "input_ids".into(),
            mask_input: Some("attention_mask".into()),
            type_ids_input: None,
            vocab_size,
        }
    }
}

/// Like [`super::decode_file_as`], for any model: the formats depend on [`DecodeOptions::tokens`].
pub fn decode_payload_file(path: &Path, name: &str, opts: &DecodeOptions) -> Result<Payload, Rejection> {
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if !accepted(opts).contains(&ext.as_str()) {
        return Err(unsupported(name, &ext, opts));
    }
    let len = std::fs::metadata(path).map_err(|e| Rejection::new(RejectReason::Io, name, e))?.len();
    if opts.max_bytes > 0 && len > opts.max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!("{len} bytes exceeds the limit of {} bytes", opts.max_bytes),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Rejection::new(RejectReason::Io, name, e))?;
    decode_payload_bytes(name, &ext, &bytes, opts)
}

/// Like [`super::decode_bytes`], for any model.
pub fn decode_payload_bytes(
    name: &str,
    ext: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<Payload, Rejection> {
    let Some(tokens) = &opts.tokens else {
        if TEXT_EXTENSIONS.contains(&ext) {
            return Err(unsupported(name, ext, opts));
        }
        return decode_bytes(name, ext, bytes, opts).map(Payload::Dense);
    };
    super::check_size(name, bytes, opts)?;
    let samples = match ext {
        "txt" | "jsonl" => match &tokens.tokenizer {
            Some(t) => t.decode(name, ext, bytes, &opts.limits)?,
            None => {
                return Err(Rejection::new(
                    RejectReason::Unsupported,
                    name,
                    "raw text needs a tokenizer ([model] tokenizer); this model has none configured",
                ));
            }
        },
        "npz" => token_npz(name, bytes, tokens, opts)?,
        _ => return Err(unsupported(name, ext, opts)),
    };
    check_ids(name, &samples, tokens)?;
    Ok(Payload::Tokens(samples))
}

/// Encodes one text (a feed record's or a sample request's `"text"`).
pub fn decode_text(name: &str, text: &str, opts: &DecodeOptions) -> Result<Payload, Rejection> {
    let Some(tok) = opts.tokens.as_ref().and_then(|t| t.tokenizer.as_ref()) else {
        return Err(Rejection::new(
            RejectReason::Unsupported,
            name,
            "a text record needs a text model with a tokenizer ([model] tokenizer)",
        ));
    };
    let s = tok.encode(name, text, &opts.limits)?;
    Ok(Payload::Tokens(vec![s]))
}

/// Rows of `[B, T]` (or one `[T]`) integer inputs → samples; a row keeps the positions where its
/// mask is 1, so a padded export reads back as the unpadded samples it was made from.
pub fn token_rows(
    name: &str,
    ids: ArrayD<i64>,
    mask: Option<ArrayD<i64>>,
    type_ids: Option<ArrayD<i64>>,
) -> Result<Vec<TokenSample>, Rejection> {
    let as_rows = |a: ArrayD<i64>, what: &str| -> Result<ndarray::Array2<i64>, Rejection> {
        let a = if a.ndim() == 1 { a.insert_axis(Axis(0)) } else { a };
        a.into_dimensionality::<ndarray::Ix2>()
            .map_err(|_| Rejection::new(RejectReason::Shape, name, format!("{what} must be [T] or [B, T]")))
    };
    let ids = as_rows(ids, "the ids")?;
    let mask = mask.map(|m| as_rows(m, "the attention mask")).transpose()?;
    let types = type_ids.map(|t| as_rows(t, "the token-type ids")).transpose()?;
    for (what, other) in [("attention mask", mask.as_ref()), ("token-type ids", types.as_ref())] {
        if let Some(o) = other
            && o.dim() != ids.dim()
        {
            return Err(Rejection::new(
                RejectReason::Shape,
                name,
                format!("the {what} has shape {:?}, the ids {:?}", o.shape(), ids.shape()),
            ));
        }
    }
    if ids.nrows() == 0 {
        return Err(Rejection::new(RejectReason::Shape, name, "empty batch (0 samples)"));
    }
    let mut out = Vec::with_capacity(ids.nrows());
    for (r, row) in ids.outer_iter().enumerate() {
        let keep: Vec<usize> = match &mask {
            None => (0..row.len()).collect(),
            Some(m) => {
                let m = m.row(r);
                if let Some(v) = m.iter().find(|&&v| v != 0 && v != 1) {
                    return Err(Rejection::new(
                        RejectReason::Decode,
                        name,
                        format!("attention mask value {v} in row {r} (expected 0 or 1)"),
                    ));
                }
                (0..row.len()).filter(|&j| m[j] == 1).collect()
            }
        };
        if keep.is_empty() {
            return Err(Rejection::new(RejectReason::Shape, name, format!("row {r} has no tokens")));
        }
        let sample_ids = keep.iter().map(|&j| row[j]).collect();
        let sample_types = types.as_ref().map(|t| keep.iter().map(|&j| t[[r, j]]).collect());
        out.push(TokenSample { ids: sample_ids, type_ids: sample_types });
    }
    Ok(out)
}

fn token_npz(
    name: &str,
    bytes: &[u8],
    t: &TokenOptions,
    opts: &DecodeOptions,
) -> Result<Vec<TokenSample>, Rejection> {
    let mut members = vec![t.ids_input.as_str()];
    members.extend(t.mask_input.as_deref());
    members.extend(t.type_ids_input.as_deref());
    let mut arrays = npy::read_npz_ints(name, bytes, &members, opts)?.into_iter();
    let ids = arrays.next().flatten().ok_or_else(|| {
        Rejection::new(
            RejectReason::Shape,
            name,
            format!("the .npz archive has no {:?} array (the model's token ids)", t.ids_input),
        )
    })?;
    let mask = if t.mask_input.is_some() { arrays.next().flatten() } else { None };
    let types = if t.type_ids_input.is_some() { arrays.next().flatten() } else { None };
    token_rows(name, ids, mask, types)
}

/// Ids outside the model's vocabulary would index past its embedding table.
pub(crate) fn check_ids(name: &str, samples: &[TokenSample], t: &TokenOptions) -> Result<(), Rejection> {
    let vocab = t.vocab_size as i64;
    for (r, s) in samples.iter().enumerate() {
        if let Some(id) = s.ids.iter().find(|&&i| i < 0 || (vocab > 0 && i >= vocab)) {
            return Err(Rejection::new(
                RejectReason::Decode,
                name,
                format!("token id {id} in sample {r} is outside the vocabulary 0..{vocab}"),
            ));
        }
        if let Some(types) = &s.type_ids
            && let Some(v) = types.iter().find(|&&v| v < 0)
        {
            return Err(Rejection::new(
                RejectReason::Decode,
                name,
                format!("token-type id {v} in sample {r}"),
            ));
        }
    }
    Ok(())
}

/// The extensions a model takes.
pub fn accepted(opts: &DecodeOptions) -> &'static [&'static str] {
    match &opts.tokens {
        Some(_) => &["txt", "jsonl", "npz"],
        None => &EXTENSIONS,
    }
}

fn unsupported(name: &str, ext: &str, opts: &DecodeOptions) -> Rejection {
    let what = match &opts.tokens {
        Some(_) => "a text model takes .txt, .jsonl or .npz",
        None => "expected .npy, .npz, .png, .jpg or .jpeg",
    };
    Rejection::new(RejectReason::Unsupported, name, format!("unsupported file type {ext:?} ({what})"))
}

#[cfg(test)]
mod tests;
