//! Decoders: bytes → a batch `[B, ..input_shape]` of finite `f32`, or a [`Rejection`].
//!
//! Conversions (documented contract):
//! - `float32`: used as is (the values are model inputs, already preprocessed).
//! - `float64`: cast to `f32`; a value outside the `f32` range becomes infinite and is rejected.
//! - `uint8`: raw pixels, scaled to `[0, 1]` by `/ 255`, then the configured mean/std normalisation is
//!   applied (the same preprocessing the noise inputs get), because `uint8` data cannot be preprocessed.
//! - PNG/JPEG ([`image`]): converted to the model's channels, resized and centre-cropped as configured,
//!   scaled to `[0, 1]`, normalised like `uint8` data, laid out as the model's input (NCHW or NHWC).
//! - V2 JSON tensors ([`v2`]): `FP32`/`FP64` as floats, other integer types cast, `UINT8` as pixels.
//!
//! Every raw `[0, 1]` input — noise inputs drawn by the engine, `uint8` arrays, images — is
//! normalised by the one function [`normalize`], so data and noise see the same preprocessing.
//!
//! An input holds one sample (the model's input shape without the batch axis) or a batch (with it).
//!
//! A text model's inputs (raw text, named integer arrays) become token samples instead: [`payload`].

pub mod image;
mod npy;
pub mod payload;
pub mod text;
pub mod tokens;
pub mod v2;

pub use payload::{Payload, TokenOptions, decode_payload_bytes, decode_payload_file};

use std::path::Path;

use ndarray::{ArrayD, Axis};
use serde::{Deserialize, Serialize};

use crate::limits::Limits;

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

/// The axis order of one sample of a rank-3 image input: channels first (`[C, H, W]`, PyTorch) or last
/// (`[H, W, C]`, TensorFlow). It decides which axis the per-channel mean/std applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Layout {
    #[default]
    Nchw,
    Nhwc,
}

impl Layout {
    pub fn is_nchw(&self) -> bool {
        *self == Layout::Nchw
    }
}

/// Mean/std normalisation of raw `[0, 1]` values, per channel (a length-1 list applies to every
/// channel; empty lists = none). `layout` is skipped when serialised as the default, so that the
/// settings hash of existing baselines does not change.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Normalization {
    pub mean: Vec<f32>,
    pub std: Vec<f32>,
    #[serde(default, skip_serializing_if = "Layout::is_nchw")]
    pub layout: Layout,
}

impl Normalization {
    pub fn is_identity(&self) -> bool {
        self.mean.is_empty() && self.std.is_empty()
    }
}

/// `(x - mean[c]) / std[c]` in place, `c` being the channel axis of a sample (the first axis for
/// NCHW, the last for NHWC); `batched` says whether `x` carries a leading batch axis. The engine's
/// noise inputs, `uint8` arrays and images all go through this one function.
pub fn normalize(x: &mut ArrayD<f32>, batched: bool, n: &Normalization) {
    if n.is_identity() || x.ndim() == 0 {
        return;
    }
    let axis = match n.layout {
        Layout::Nchw => usize::from(batched).min(x.ndim() - 1),
        Layout::Nhwc => x.ndim() - 1,
    };
    for (c, mut plane) in x.axis_iter_mut(Axis(axis)).enumerate() {
        let m = pick(&n.mean, c, 0.0);
        let s = pick(&n.std, c, 1.0);
        plane.mapv_inplace(|v| (v - m) / s);
    }
}

fn pick(v: &[f32], c: usize, default: f32) -> f32 {
    match v.len() {
        0 => default,
        1 => v[0],
        _ => v.get(c).copied().unwrap_or(v[0]),
    }
}

/// Geometry of PNG/JPEG inputs (`[model.preprocessing]`); see [`image`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageOptions {
    /// Resize to `[height, width]` first; `None` with `crop` also `None` = resize to the model's input.
    pub resize: Option<[u32; 2]>,
    /// Then keep the centre `[height, width]`.
    pub crop: Option<[u32; 2]>,
    /// 1 (grey) or 3 (RGB); `None` = the model's channel count.
    pub channels: Option<u32>,
    /// Images declaring more pixels (width × height) are refused from their header, before decoding.
    pub max_pixels: u64,
}

/// Default cap on decoded image size: 64 megapixels (a 256 MiB RGBA8 buffer).
pub const DEFAULT_MAX_IMAGE_PIXELS: u64 = 64 * 1024 * 1024;

impl Default for ImageOptions {
    fn default() -> Self {
        ImageOptions { resize: None, crop: None, channels: None, max_pixels: DEFAULT_MAX_IMAGE_PIXELS }
    }
}

/// What a decoder needs to know about the model's input.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct DecodeOptions {
    /// One sample's shape, without the batch axis.
    pub input_shape: Vec<usize>,
    /// Inputs larger than this are rejected as `too_large` before being read (0 = no limit).
    pub max_bytes: u64,
    /// Applied to raw `[0, 1]` inputs (`uint8` data, images) after scaling.
    pub normalization: Normalization,
    pub image: ImageOptions,
    /// Caps on declared sizes, checked before allocation.
    pub limits: Limits,
    /// Set for a text model: its inputs are token ids ([`payload`]).
    pub tokens: Option<TokenOptions>,
}

/// The formats [`decode_bytes`] reads, by lower-case extension.
pub const EXTENSIONS: [&str; 5] = ["npy", "npz", "png", "jpg", "jpeg"];

/// Decodes a file by its extension (`.npy`, `.npz`, `.png`, `.jpg`, `.jpeg`).
pub fn decode_file(path: &Path, opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
    let name = path.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    decode_file_as(path, &name, opts)
}

/// Like [`decode_file`], naming the input `name` in messages (a source may have renamed the file).
pub fn decode_file_as(path: &Path, name: &str, opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
    let name = name.to_string();
    let ext = path.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
    if !EXTENSIONS.contains(&ext.as_str()) {
        return Err(Rejection::new(
            RejectReason::Unsupported,
            &name,
            format!("unsupported file type {ext:?} (expected .npy, .npz, .png, .jpg or .jpeg)"),
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

/// Refuses input bytes over `opts.max_bytes` (0: no limit) before anything is decoded.
pub(crate) fn check_size(name: &str, bytes: &[u8], opts: &DecodeOptions) -> Result<(), Rejection> {
    if opts.max_bytes > 0 && bytes.len() as u64 > opts.max_bytes {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!("{} bytes exceeds the limit of {} bytes", bytes.len(), opts.max_bytes),
        ));
    }
    Ok(())
}

/// Decodes in-memory bytes of the given format (one of [`EXTENSIONS`]); `name` only labels messages.
pub fn decode_bytes(
    name: &str,
    ext: &str,
    bytes: &[u8],
    opts: &DecodeOptions,
) -> Result<ArrayD<f32>, Rejection> {
    check_size(name, bytes, opts)?;
    let raw = match ext {
        "npy" => npy::read_npy(name, bytes, opts)?,
        "npz" => npy::read_npz(name, bytes, opts)?,
        "png" | "jpg" | "jpeg" => return finish(name, image::read_image(name, bytes, opts)?, opts),
        other => {
            return Err(Rejection::new(
                RejectReason::Unsupported,
                name,
                format!("unsupported format {other:?}"),
            ));
        }
    };
    finish(name, raw.into_f32(opts), opts)
}

/// The checks every decoder ends with: the batch axis, the shape, finite values.
pub(crate) fn finish(name: &str, array: ArrayD<f32>, opts: &DecodeOptions) -> Result<ArrayD<f32>, Rejection> {
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
    pub(crate) fn into_f32(self, opts: &DecodeOptions) -> ArrayD<f32> {
        match self {
            RawArray::F32(a) => a,
            RawArray::F64(a) => a.mapv(|v| v as f32),
            RawArray::U8(a) => normalize_u8(a, opts),
        }
    }
}

fn normalize_u8(a: ArrayD<u8>, opts: &DecodeOptions) -> ArrayD<f32> {
    let mut out = a.mapv(|v| f32::from(v) / 255.0);
    // A batch has one axis more than a sample.
    let batched = out.ndim() == opts.input_shape.len() + 1;
    normalize(&mut out, batched, &opts.normalization);
    out
}

#[cfg(test)]
mod tests;
