//! Decoders: bytes on disk → a batch `[B, ..input_shape]` of finite `f32`, or a [`Rejection`].
//!
//! Conversions (documented contract):
//! - `float32`: used as is (the values are model inputs, already preprocessed).
//! - `float64`: cast to `f32`; a value outside the `f32` range becomes infinite and is rejected.
//! - `uint8`: raw pixels, scaled to `[0, 1]` by `/ 255`, then the configured mean/std normalisation is
//!   applied (the same preprocessing the noise inputs get), because `uint8` data cannot be preprocessed.
//!
//! An input holds one sample (the model's input shape without the batch axis) or a batch (with it).

mod npy;

use std::path::Path;

use ndarray::{ArrayD, Axis, Dimension, IxDyn};

/// Why an input was rejected; the values are the `reason` label of `agent_samples_rejected_total`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RejectReason {
    /// Malformed or truncated file.
    Decode,
    /// Well-formed, but not the model's input shape (with or without a batch axis).
    Shape,
    /// An element type the agent does not convert.
    Dtype,
    /// NaN or ±Inf among the values.
    NonFinite,
    /// Larger than the configured limit.
    TooLarge,
    /// A format (file extension) no decoder handles.
    Unsupported,
    /// The file could not be read or moved.
    Io,
    /// The engine failed on the batch holding this input.
    Engine,
}

impl RejectReason {
    pub const ALL: [RejectReason; 8] = [
        RejectReason::Decode,
        RejectReason::Shape,
        RejectReason::Dtype,
        RejectReason::NonFinite,
        RejectReason::TooLarge,
        RejectReason::Unsupported,
        RejectReason::Io,
        RejectReason::Engine,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            RejectReason::Decode => "decode",
            RejectReason::Shape => "shape",
            RejectReason::Dtype => "dtype",
            RejectReason::NonFinite => "non_finite",
            RejectReason::TooLarge => "too_large",
            RejectReason::Unsupported => "unsupported",
            RejectReason::Io => "io",
            RejectReason::Engine => "engine",
        }
    }

    pub fn parse(s: &str) -> Option<RejectReason> {
        RejectReason::ALL.into_iter().find(|r| r.as_str() == s)
    }
}

/// A rejected input: the reason (a metric label) and a message naming the input and the problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct Rejection {
    pub reason: RejectReason,
    pub message: String,
}

impl Rejection {
    pub fn new(reason: RejectReason, input: &str, problem: impl std::fmt::Display) -> Rejection {
        Rejection { reason, message: format!("{input}: {problem}") }
    }
}

/// What a decoder needs to know about the model's input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodeOptions {
    /// One sample's shape, without the batch axis.
    pub input_shape: Vec<usize>,
    /// Inputs larger than this are rejected as `too_large` before being read (0 = no limit).
    pub max_bytes: u64,
    /// Per-channel mean/std (channel = first axis of a sample) applied to `uint8` inputs after `/255`;
    /// a length-1 list applies to every channel; empty = none.
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
}

/// Decodes a file by its extension (`.npy`, `.npz`).
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    decode_file_as(path, &name, opts)
}

/// Like [`decode_file`], naming the input `name` in messages (a source may have renamed the file).
pub fn decode_file_as(path: &Path, name: &str, opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
    let name = name.to_string();
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if ext != "npy" && ext != "npz" {
        return Err(Rejection::new(
            RejectReason::Unsupported,
            &name,
            format!("unsupported file type {:?} (expected .npy or .npz)", ext),
        ));
    }
    let len = std::fs::metadata(path).map_err(|e| Rejection::new(RejectReason::Io, &name, e))?.len();
    if opts.max_bytes > 0 && len > opts.max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            &name,
            format!("{len} bytes exceeds the limit of {} bytes", opts.max_bytes),
        ));
    }
    let bytes = std::fs::read(path).map_err(|e| Rejection::new(RejectReason::Io, &name, e))?;
    decode_bytes(&name, &ext, &bytes, opts)
}

/// Decodes in-memory bytes of the given format (`npy` or `npz`); `name` only labels messages.
pub fn decode_bytes(
    name: &str,
    ext: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<ArrayD<f32>, Rejection> {
    let raw = match ext {
        "npy" => npy::read_npy(name, bytes)?,
        "npz" => npy::read_npz(name, bytes)?,
        other => {
            return Err(Rejection::new(
                RejectReason::Unsupported,
                name,
                format!("unsupported format {other:?}"),
            ));
        }
    };
    let array = raw.into_f32(opts);
    let batch = to_batch(name, array, &opts.input_shape)?;
    if let Some(pos) = batch.iter().position(|v| !v.is_finite()) {
        let v = batch.iter().nth(pos).copied().unwrap_or(f32::NAN);
        return Err(Rejection::new(RejectReason::NonFinite, name, format!("value {v} at flat index {pos}")));
    }
    Ok(batch)
}

/// Adds the batch axis to one sample, checks a batch's sample shape.
fn to_batch(name: &str, array: ArrayD<f32>, input_shape: &[usize]) -> Result<ArrayD<f32>, Rejection> {
    if input_shape.is_empty() {
        // Unknown input shape (engine not loaded): accept as a batch when it has at least one axis.
        if array.ndim() == 0 {
            return Err(Rejection::new(RejectReason::Shape, name, "a scalar is not a sample"));
        }
        return Ok(array);
    }
    if array.shape() == input_shape {
        return Ok(array.insert_axis(Axis(0)));
    }
    if array.ndim() == input_shape.len() + 1 && &array.shape()[1..] == input_shape {
        if array.shape()[0] == 0 {
            return Err(Rejection::new(RejectReason::Shape, name, "empty batch (0 samples)"));
        }
        return Ok(array);
    }
    Err(Rejection::new(
        RejectReason::Shape,
        name,
        format!(
            "shape {:?} is neither one sample {:?} nor a batch [B, {}]",
            array.shape(),
            input_shape,
            input_shape.iter().map(|d| d.to_string()).collect::<Vec<_>>().join(", ")
        ),
    ))
}

/// A decoded array before conversion to `f32`.
pub(crate) enum RawArray {
    F32(ArrayD<f32>),
    F64(ArrayD<f64>),
    U8(ArrayD<u8>),
}

impl RawArray {
    fn into_f32(self, opts: &DecodeOptions) -> ArrayD<f32> {
        match self {
            RawArray::F32(a) => a,
            RawArray::F64(a) => a.mapv(|v| v as f32),
            RawArray::U8(a) => normalize_u8(a, opts),
        }
    }
}

fn normalize_u8(a: ArrayD<u8>, opts: &DecodeOptions) -> ArrayD<f32> {
    let mut out = a.mapv(|v| f32::from(v) / 255.0);
    if opts.mean.is_empty() || opts.std.is_empty() {
        return out;
    }
    // The channel axis is the first axis of a sample: axis 1 for a batch, axis 0 for one sample.
    let sample_ndim = opts.input_shape.len();
    let channel_axis = if out.ndim() == sample_ndim + 1 { 1 } else { 0 };
    for (idx, v) in out.indexed_iter_mut() {
        let c = idx_channel(&idx, channel_axis);
        let m = pick(&opts.mean, c);
        let s = pick(&opts.std, c);
        *v = (*v - m) / s;
    }
    out
}

fn idx_channel(idx: &IxDyn, axis: usize) -> usize {
    idx.slice().get(axis).copied().unwrap_or(0)
}

fn pick(v: &[f32], c: usize) -> f32 {
    if v.len() == 1 { v[0] } else { v.get(c).copied().unwrap_or(v[0]) }
}

#[cfg(test)]
mod tests;
