//! Open Inference Protocol ("V2", KServe and Triton) request bodies: JSON tensors.
//!
//! ```json
//! {"id": "42", "inputs": [{"name": "input", "shape": [1, 1, 28, 28], "datatype": "FP32", "data": [0.0, …]}]}
//! ```
//!
//! - `data` is row-major, flat or nested to any depth; its element count must equal the product of
//!   `shape` (`shape`), and `shape` must be the model's input with or without the batch axis.
//! - Datatypes: `FP32`, `FP64` are model-ready floats; `INT8/16/32/64` and `UINT16/32/64` are cast
//!   to `f32` as they are; `UINT8` is taken as pixels: `/ 255`, then the configured mean/std (as for
//!   `uint8` `.npy` files). `BOOL`, `BYTES`, `FP16` and `BF16` are refused (`dtype`).
//! - Triton's binary tensor extension: with the `Inference-Header-Content-Length: N` header the JSON is
//!   the body's first `N` bytes, and a tensor with `"parameters": {"binary_data_size": n}` takes the
//!   next `n` bytes (little-endian, row-major) instead of `data`.
//! - Other keys (`outputs`, `parameters`) are accepted and ignored.
//! - A text model takes a `BYTES` tensor of texts or its `INT64` token inputs by name ([`tokens`]).

use std::fmt;

use ndarray::{ArrayD, IxDyn};
use serde::Deserialize;
use serde_json::Value;

use super::{DecodeOptions, RawArray, RejectReason, Rejection, finish};

mod tokens;
use crate::limits::Limits;
pub use tokens::decode_token_request;

/// An inference request; only what the agent uses is kept.
#[derive(Debug, Clone, Deserialize)]
pub struct InferRequest {
    #[serde(default)]
    pub id: Option<String>,
    pub inputs: Vec<InferTensor>,
}

/// One input tensor of a request.
#[derive(Debug, Clone, Deserialize)]
pub struct InferTensor {
    pub name: String,
    pub shape: Vec<i64>,
    pub datatype: String,
    #[serde(default)]
    pub data: Option<Value>,
    #[serde(default)]
    pub parameters: Option<serde_json::Map<String, Value>>,
}

/// The element types of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Datatype {
    Bool,
    U8,
    U16,
    U32,
    U64,
    I8,
    I16,
    I32,
    I64,
    F16,
    F32,
    F64,
    Bf16,
    Bytes,
}

impl Datatype {
    pub fn parse(s: &str) -> Option<Datatype> {
        Some(match s {
            "BOOL" => Datatype::Bool,
            "UINT8" => Datatype::U8,
            "UINT16" => Datatype::U16,
            "UINT32" => Datatype::U32,
            "UINT64" => Datatype::U64,
            "INT8" => Datatype::I8,
            "INT16" => Datatype::I16,
            "INT32" => Datatype::I32,
            "INT64" => Datatype::I64,
            "FP16" => Datatype::F16,
            "FP32" => Datatype::F32,
            "FP64" => Datatype::F64,
            "BF16" => Datatype::Bf16,
            "BYTES" => Datatype::Bytes,
            _ => return None,
        })
    }

    /// Bytes per element in the binary extension (`None`: not a fixed-size type).
    fn size(self) -> Option<usize> {
        Some(match self {
            Datatype::Bool | Datatype::U8 | Datatype::I8 => 1,
            Datatype::U16 | Datatype::I16 | Datatype::F16 | Datatype::Bf16 => 2,
            Datatype::U32 | Datatype::I32 | Datatype::F32 => 4,
            Datatype::U64 | Datatype::I64 | Datatype::F64 => 8,
            Datatype::Bytes => return None,
        })
    }

    /// The integer range of an integer type.
    fn int_range(self) -> Option<(i128, i128)> {
        Some(match self {
            Datatype::U8 => (0, u8::MAX.into()),
            Datatype::U16 => (0, u16::MAX.into()),
            Datatype::U32 => (0, u32::MAX.into()),
            Datatype::U64 => (0, u64::MAX.into()),
            Datatype::I8 => (i8::MIN.into(), i8::MAX.into()),
            Datatype::I16 => (i16::MIN.into(), i16::MAX.into()),
            Datatype::I32 => (i32::MIN.into(), i32::MAX.into()),
            Datatype::I64 => (i64::MIN.into(), i64::MAX.into()),
            _ => return None,
        })
    }

    fn supported(self) -> bool {
        !matches!(self, Datatype::Bool | Datatype::F16 | Datatype::Bf16 | Datatype::Bytes)
    }
}

impl fmt::Display for Datatype {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Datatype::Bool => "BOOL",
            Datatype::U8 => "UINT8",
            Datatype::U16 => "UINT16",
            Datatype::U32 => "UINT32",
            Datatype::U64 => "UINT64",
            Datatype::I8 => "INT8",
            Datatype::I16 => "INT16",
            Datatype::I32 => "INT32",
            Datatype::I64 => "INT64",
            Datatype::F16 => "FP16",
            Datatype::F32 => "FP32",
            Datatype::F64 => "FP64",
            Datatype::Bf16 => "BF16",
            Datatype::Bytes => "BYTES",
        };
        f.write_str(s)
    }
}

/// A parsed request with each input's binary data (the extension), when it has some.
#[derive(Debug)]
pub struct Parsed<'a> {
    pub request: InferRequest,
    pub binary: Vec<Option<&'a [u8]>>,
}

/// Parses a request body; `json_len` is the `Inference-Header-Content-Length` header's value.
pub fn parse_request<'a>(
    name: &str,
    body: &'a [u8],
    json_len: Option<usize>,
    limits: &Limits,
) -> Result<Parsed<'a>, Rejection> {
    let (json, mut rest) = match json_len {
        Some(n) if n > body.len() => {
            return Err(Rejection::new(
                RejectReason::Decode,
                name,
                format!("Inference-Header-Content-Length {n} exceeds the body's {} bytes", body.len()),
            ));
        }
        Some(n) => body.split_at(n),
        None => (body, &[][..]),
    };
    limits.check_depth(name, json)?;
    let request: InferRequest = serde_json::from_slice(json)
        .map_err(|e| Rejection::new(RejectReason::Decode, name, format!("not an inference request: {e}")))?;
    let mut binary = Vec::with_capacity(request.inputs.len());
    for t in &request.inputs {
        let size = t.parameters.as_ref().and_then(|p| p.get("binary_data_size"));
        match size {
            None => binary.push(None),
            Some(v) => {
                let n = v.as_u64().ok_or_else(|| {
                    Rejection::new(
                        RejectReason::Decode,
                        name,
                        format!("input {:?}: binary_data_size {v}", t.name),
                    )
                })? as usize;
                if n > rest.len() {
                    return Err(Rejection::new(
                        RejectReason::Decode,
                        name,
                        format!(
                            "input {:?}: binary_data_size {n} exceeds the {} bytes left",
                            t.name,
                            rest.len()
                        ),
                    ));
                }
                let (data, tail) = rest.split_at(n);
                binary.push(Some(data));
                rest = tail;
            }
        }
    }
    if !rest.is_empty() {
        return Err(Rejection::new(
            RejectReason::Decode,
            name,
            format!("{} bytes after the request that no input claims", rest.len()),
        ));
    }
    Ok(Parsed { request, binary })
}

/// The index of the input to score: the one named `wanted`, or the only one.
pub fn select_input(name: &str, request: &InferRequest, wanted: Option<&str>) -> Result<usize, Rejection> {
    let names = || request.inputs.iter().map(|t| t.name.as_str()).collect::<Vec<_>>();
    match (wanted, request.inputs.len()) {
        (_, 0) => Err(Rejection::new(RejectReason::Shape, name, "the request has no input")),
        (Some(w), _) => request.inputs.iter().position(|t| t.name == w).ok_or_else(|| {
            Rejection::new(RejectReason::Shape, name, format!("no input named {w:?} among {:?}", names()))
        }),
        (None, 1) => Ok(0),
        (None, n) => Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!("{n} inputs {:?}; configure which one the model takes (`input`)", names()),
        )),
    }
}

/// Decodes one tensor into a batch `[B, ..input_shape]` of finite `f32`.
pub fn decode_tensor(
    name: &str,
    t: &InferTensor,
    binary: Option<&[u8]>,
    opts: &DecodeOptions,
) -> Result<ArrayD<f32>, Rejection> {
    let name = format!("{name}: input {:?}", t.name);
    let name = name.as_str();
    let dtype = Datatype::parse(&t.datatype).ok_or_else(|| {
        Rejection::new(RejectReason::Dtype, name, format!("unknown datatype {:?}", t.datatype))
    })?;
    if !dtype.supported() {
        return Err(Rejection::new(
            RejectReason::Dtype,
            name,
            format!("datatype {dtype} is not supported (FP32, FP64, INT8-64, UINT8-64)"),
        ));
    }
    let shape = checked_shape(name, &t.shape)?;
    // Bounded by the limit, so the product and the buffers below fit.
    let count = opts.limits.check_shape(name, &shape, &opts.input_shape)? as usize;
    let values = match (binary, &t.data) {
        (Some(bytes), _) => from_binary(name, dtype, bytes, count)?,
        (None, Some(data)) => from_json(name, dtype, data, count)?,
        (None, None) => return Err(Rejection::new(RejectReason::Decode, name, "the tensor has no data")),
    };
    let raw = if dtype == Datatype::U8 {
        RawArray::U8(
            ArrayD::from_shape_vec(IxDyn(&shape), values.iter().map(|v| *v as u8).collect())
                .map_err(|e| Rejection::new(RejectReason::Shape, name, e))?,
        )
    } else {
        RawArray::F32(
            ArrayD::from_shape_vec(IxDyn(&shape), values.iter().map(|v| *v as f32).collect())
                .map_err(|e| Rejection::new(RejectReason::Shape, name, e))?,
        )
    };
    finish(name, raw.into_f32(opts), opts)
}

fn checked_shape(name: &str, shape: &[i64]) -> Result<Vec<usize>, Rejection> {
    let mut count: usize = 1;
    let mut out = Vec::with_capacity(shape.len());
    for &d in shape {
        let d = usize::try_from(d).map_err(|_| {
            Rejection::new(RejectReason::Shape, name, format!("negative dimension in shape {shape:?}"))
        })?;
        count = count.checked_mul(d).ok_or_else(|| {
            Rejection::new(RejectReason::TooLarge, name, format!("shape {shape:?} overflows"))
        })?;
        out.push(d);
    }
    Ok(out)
}

/// Flattens nested JSON arrays row-major, checking each element against the datatype.
fn from_json(name: &str, dtype: Datatype, data: &Value, count: usize) -> Result<Vec<f64>, Rejection> {
    // The shape is a claim; the data may be much shorter, so grow from a small start.
    let mut out = Vec::with_capacity(count.min(1 << 16));
    let mut stack = vec![data];
    // Depth-first, left to right: push children in reverse.
    while let Some(v) = stack.pop() {
        match v {
            Value::Array(items) => stack.extend(items.iter().rev()),
            Value::Number(n) => {
                let i = out.len();
                out.push(number(name, dtype, n, i)?);
                if out.len() > count {
                    break;
                }
            }
            other => {
                return Err(Rejection::new(
                    RejectReason::Decode,
                    name,
                    format!("element {} is {other}, not a number", out.len()),
                ));
            }
        }
    }
    if out.len() != count {
        let got = if out.len() > count { format!("more than {count}") } else { out.len().to_string() };
        return Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!("the shape holds {count} values; data has {got}"),
        ));
    }
    Ok(out)
}

fn number(name: &str, dtype: Datatype, n: &serde_json::Number, i: usize) -> Result<f64, Rejection> {
    match dtype.int_range() {
        None => n.as_f64().ok_or_else(|| {
            Rejection::new(RejectReason::Decode, name, format!("element {i} ({n}) is not a number"))
        }),
        Some((lo, hi)) => {
            let v = n.as_i64().map(i128::from).or_else(|| n.as_u64().map(i128::from));
            match v {
                Some(v) if (lo..=hi).contains(&v) => Ok(v as f64),
                _ => Err(Rejection::new(
                    RejectReason::Decode,
                    name,
                    format!("element {i} ({n}) is not a {dtype} value"),
                )),
            }
        }
    }
}

/// Little-endian elements of the binary extension.
fn from_binary(name: &str, dtype: Datatype, bytes: &[u8], count: usize) -> Result<Vec<f64>, Rejection> {
    let size = dtype.size().unwrap_or(1);
    let expected = count.checked_mul(size);
    if expected != Some(bytes.len()) {
        let expected = expected.map_or_else(|| "overflowing".to_string(), |n| n.to_string());
        return Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!(
                "the shape holds {count} {dtype} values ({expected} bytes); the binary data has {} bytes",
                bytes.len()
            ),
        ));
    }
    let out = bytes
        .chunks_exact(size)
        .map(|c| {
            let mut b = [0u8; 8];
            b[..size].copy_from_slice(c);
            match dtype {
                Datatype::U8 => f64::from(c[0]),
                Datatype::I8 => f64::from(c[0] as i8),
                Datatype::U16 => f64::from(u16::from_le_bytes([c[0], c[1]])),
                Datatype::I16 => f64::from(i16::from_le_bytes([c[0], c[1]])),
                Datatype::U32 => f64::from(u32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Datatype::I32 => f64::from(i32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Datatype::F32 => f64::from(f32::from_le_bytes([c[0], c[1], c[2], c[3]])),
                Datatype::U64 => u64::from_le_bytes(b) as f64,
                Datatype::I64 => i64::from_le_bytes(b) as f64,
                _ => f64::from_le_bytes(b),
            }
        })
        .collect();
    Ok(out)
}

#[cfg(test)]
mod tests;
