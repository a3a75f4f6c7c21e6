//! Feed records: NDJSON lines → ids, cursors and decoded batches. Pure (no I/O), so tests feed it
//! literals.

use base64::Engine as _;
use serde::Deserialize;
use serde_json::Value;

use crate::decode::payload::{accepted, decode_text};
use crate::decode::v2::{InferTensor, Parsed, decode_tensor, decode_token_request, select_input};
use crate::decode::{DecodeOptions, Payload, RejectReason, Rejection, decode_payload_bytes};
use crate::limits::Limits;

/// One line of the feed, before decoding its payload.
#[derive(Debug, Clone, PartialEq)]
pub struct Record {
    /// Unique per sample; the key of deduplication.
    pub id: String,
    /// The feed's position after this record, when the feed has positions.
    pub cursor: Option<String>,
    payload: Body,
}

#[derive(Debug, Clone, PartialEq)]
enum Body {
    Tensors(Vec<Value>),
    File {
        format: String,
        base64: String,
    },
    /// A text model's raw text.
    Text(String),
    Invalid(String),
}

#[derive(Deserialize)]
struct Line {
    #[serde(default)]
    id: Option<Value>,
    #[serde(default)]
    cursor: Option<Value>,
    #[serde(default)]
    inputs: Option<Vec<Value>>,
    #[serde(default)]
    format: Option<String>,
    #[serde(default)]
    base64: Option<String>,
    #[serde(default)]
    text: Option<Value>,
}

/// A string or a number as a string (feeds write ids and cursors either way).
fn text(v: Value) -> Option<String> {
    match v {
        Value::String(s) => Some(s),
        Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

/// Parses one non-blank line. `Err` (a protocol error, not a sample) when the line is not JSON or
/// names neither an `id` nor a `cursor`; a record whose payload is wrong parses, and is rejected by
/// [`Record::decode`] under its id.
pub fn parse_line(line: &[u8], limits: &Limits) -> Result<Record, String> {
    limits.check_depth("feed record", line).map_err(|r| r.message)?;
    let l: Line = serde_json::from_slice(line).map_err(|e| format!("not a feed record: {e}"))?;
    let cursor = l.cursor.and_then(text);
    let id = match l.id.and_then(text).or_else(|| cursor.clone()) {
        Some(id) if !id.is_empty() => id,
        _ => return Err("a feed record needs an `id` (or a `cursor`)".into()),
    };
    let payload = match (l.inputs, l.format, l.base64, l.text) {
        (Some(inputs), None, None, None) => Body::Tensors(inputs),
        (None, Some(format), Some(base64), None) => Body::File { format, base64 },
        (None, None, None, Some(Value::String(text))) => Body::Text(text),
        (None, None, None, Some(_)) => Body::Invalid("`text` must be a string".into()),
        _ => Body::Invalid(
            "a record holds either `inputs` (V2 tensors), `format` and `base64`, or `text`".into(),
        ),
    };
    Ok(Record { id, cursor, payload })
}

impl Record {
    /// Decodes the payload; `input` picks a tensor when a record holds several.
    pub fn decode(
        &self,
        source: &str,
        input: Option<&str>,
        opts: &DecodeOptions,
    ) -> Result<Payload, Rejection> {
        let name = format!("{source}/{}", self.id);
        match &self.payload {
            Body::Invalid(why) => Err(Rejection::new(RejectReason::Decode, &name, why)),
            Body::Text(text) => decode_text(&name, text, opts),
            Body::Tensors(values) => {
                let tensors: Vec<InferTensor> = values
                    .iter()
                    .map(|v| serde_json::from_value(v.clone()))
                    .collect::<Result<_, _>>()
                    .map_err(|e| {
                        Rejection::new(RejectReason::Decode, &name, format!("not a V2 tensor: {e}"))
                    })?;
                let request = crate::decode::v2::InferRequest { id: None, inputs: tensors };
                if let Some(tokens) = &opts.tokens {
                    let binary = vec![None; request.inputs.len()];
                    let parsed = Parsed { request, binary };
                    return decode_token_request(&name, &parsed, tokens, opts).map(Payload::Tokens);
                }
                let i = select_input(&name, &request, input)?;
                decode_tensor(&name, &request.inputs[i], None, opts).map(Payload::Dense)
            }
            Body::File { format, base64 } => {
                let ext = format.to_ascii_lowercase();
                let formats = accepted(opts);
                if !formats.contains(&ext.as_str()) {
                    return Err(Rejection::new(
                        RejectReason::Unsupported,
                        &name,
                        format!("format {format:?} (expected one of {formats:?})"),
                    ));
                }
                if opts.max_bytes > 0 && (base64.len() as u64 / 4) * 3 > opts.max_bytes {
                    return Err(Rejection::new(
                        RejectReason::TooLarge,
                        &name,
                        format!("the payload exceeds the limit of {} bytes", opts.max_bytes),
                    ));
                }
                let bytes = base64::engine::general_purpose::STANDARD
                    .decode(base64.as_bytes())
                    .map_err(|e| Rejection::new(RejectReason::Decode, &name, format!("base64: {e}")))?;
                decode_payload_bytes(&name, &ext, &bytes, opts)
            }
        }
    }
}

/// Splits a byte stream into lines, bounding each: a line longer than `max` is dropped (reported once)
/// up to its newline, so one oversized record cannot exhaust memory.
pub struct Lines {
    buf: Vec<u8>,
    max: usize,
    skipping: bool,
}

/// What [`Lines::push`] found.
#[derive(Debug, PartialEq)]
pub enum Piece {
    Line(Vec<u8>),
    TooLong,
}

impl Lines {
    pub fn new(max: usize) -> Lines {
        Lines { buf: Vec::new(), max: max.max(1), skipping: false }
    }

    /// Adds bytes; returns the complete non-blank lines (without `\n` or `\r\n`) and oversize marks.
    pub fn push(&mut self, mut bytes: &[u8]) -> Vec<Piece> {
        let mut out = Vec::new();
        while !bytes.is_empty() {
            match bytes.iter().position(|b| *b == b'\n') {
                Some(i) => {
                    if !self.skipping {
                        self.buf.extend_from_slice(&bytes[..i]);
                        self.emit(&mut out);
                    }
                    self.buf.clear();
                    self.skipping = false;
                    bytes = &bytes[i + 1..];
                }
                None => {
                    if !self.skipping {
                        self.buf.extend_from_slice(bytes);
                        if self.buf.len() > self.max {
                            self.buf.clear();
                            self.skipping = true;
                            out.push(Piece::TooLong);
                        }
                    }
                    bytes = &[];
                }
            }
        }
        out
    }

    /// The last line when the stream ends without a newline.
    pub fn finish(&mut self) -> Vec<Piece> {
        let mut out = Vec::new();
        if !self.skipping {
            self.emit(&mut out);
        }
        self.buf.clear();
        self.skipping = false;
        out
    }

    fn emit(&mut self, out: &mut Vec<Piece>) {
        if self.buf.len() > self.max {
            out.push(Piece::TooLong);
            return;
        }
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        if !line.iter().all(u8::is_ascii_whitespace) {
            out.push(Piece::Line(line.to_vec()));
        }
    }
}
