//! V2 requests for a text model: a `BYTES` tensor of texts (tokenized with the model's tokenizer),
//! or the model's integer inputs by name (`input_ids`, and `attention_mask`, `token_type_ids` when the
//! model has them) as `INT64`/`INT32` tensors `[B, T]` or `[T]`.

use ndarray::{ArrayD, IxDyn};

use super::{Datatype, Parsed, checked_shape, from_binary, from_json};
use crate::decode::payload::{TokenOptions, check_ids, token_rows};
use crate::decode::tokens::TokenSample;
use crate::decode::{DecodeOptions, RejectReason, Rejection};

/// The samples of a parsed request for a text model.
pub fn decode_token_request(
    name: &str,
    parsed: &Parsed<'_>,
    tokens: &TokenOptions,
    opts: &DecodeOptions,
) -> Result<Vec<TokenSample>, Rejection> {
    let inputs = &parsed.request.inputs;
    if inputs.is_empty() {
        return Err(Rejection::new(RejectReason::Shape, name, "the request has no input"));
    }
    if let Some(i) = inputs.iter().position(|t| t.datatype == "BYTES") {
        let tok = tokens.tokenizer.as_ref().ok_or_else(|| {
            Rejection::new(
                RejectReason::Unsupported,
                name,
                "a BYTES (text) input needs a tokenizer ([tokenizer] path); this model has none",
            )
        })?;
        let texts =
            strings(&format!("{name}: input {:?}", inputs[i].name), &inputs[i], parsed.binary[i], opts)?;
        let samples: Vec<TokenSample> = texts
            .iter()
            .enumerate()
            .map(|(j, t)| tok.encode(&format!("{name} (text {})", j + 1), t, &opts.limits))
            .collect::<Result<_, _>>()?;
        return Ok(samples);
    }
    let find = |wanted: &str| inputs.iter().position(|t| t.name == wanted);
    let ids_at = match (find(&tokens.ids_input), inputs.len()) {
        (Some(i), _) => i,
        (None, 1) => 0,
        (None, _) => {
            let names: Vec<&str> = inputs.iter().map(|t| t.name.as_str()).collect();
            return Err(Rejection::new(
                RejectReason::Shape,
                name,
                format!("no input named {:?} (the token ids) among {names:?}", tokens.ids_input),
            ));
        }
    };
    let ints = |i: usize| integers(name, parsed, i, opts);
    let ids = ints(ids_at)?;
    let mask = tokens.mask_input.as_deref().and_then(find).map(ints).transpose()?;
    let types = tokens.type_ids_input.as_deref().and_then(find).map(ints).transpose()?;
    let samples = token_rows(name, ids, mask, types)?;
    check_ids(name, &samples, tokens)?;
    Ok(samples)
}

/// An integer tensor's values as `i64`.
fn integers(
    name: &str,
    parsed: &Parsed<'_>,
    i: usize,
    opts: &DecodeOptions,
) -> Result<ArrayD<i64>, Rejection> {
    let t = &parsed.request.inputs[i];
    let name = format!("{name}: input {:?}", t.name);
    let dtype = Datatype::parse(&t.datatype)
        .filter(|d| {
            matches!(
                d,
                Datatype::I64
                    | Datatype::I32
                    | Datatype::I16
                    | Datatype::I8
                    | Datatype::U8
                    | Datatype::U16
                    | Datatype::U32
            )
        })
        .ok_or_else(|| {
            Rejection::new(
                RejectReason::Dtype,
                &name,
                format!("datatype {:?} for token ids (expected INT64 or INT32)", t.datatype),
            )
        })?;
    let shape = checked_shape(&name, &t.shape)?;
    let count = opts.limits.check_shape(&name, &shape, &[])? as usize;
    let values = match (parsed.binary[i], &t.data) {
        (Some(bytes), _) if dtype == Datatype::I64 => {
            // Exact: f64 would round ids above 2^53.
            if bytes.len() != count * 8 {
                return Err(Rejection::new(
                    RejectReason::Shape,
                    &name,
                    format!(
                        "the shape holds {count} INT64 values; the binary data has {} bytes",
                        bytes.len()
                    ),
                ));
            }
            bytes.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().expect("8 bytes"))).collect()
        }
        (Some(bytes), _) => from_binary(&name, dtype, bytes, count)?.into_iter().map(|v| v as i64).collect(),
        (None, Some(data)) => from_json(&name, dtype, data, count)?.into_iter().map(|v| v as i64).collect(),
        (None, None) => return Err(Rejection::new(RejectReason::Decode, &name, "the tensor has no data")),
    };
    ArrayD::from_shape_vec(IxDyn(&shape), values).map_err(|e| Rejection::new(RejectReason::Shape, &name, e))
}

/// A `BYTES` tensor's elements as UTF-8 strings: JSON strings, or the binary extension's
/// 4-byte little-endian length-prefixed elements.
fn strings(
    name: &str,
    t: &super::InferTensor,
    binary: Option<&[u8]>,
    opts: &DecodeOptions,
) -> Result<Vec<String>, Rejection> {
    let shape = checked_shape(name, &t.shape)?;
    let count = opts.limits.check_shape(name, &shape, &[])? as usize;
    let mut out = Vec::with_capacity(count.min(1 << 12));
    match (binary, &t.data) {
        (Some(mut bytes), _) => {
            while !bytes.is_empty() {
                let Some((len, rest)) = bytes.split_first_chunk::<4>() else {
                    return Err(Rejection::new(
                        RejectReason::Decode,
                        name,
                        "a BYTES element's length is cut off",
                    ));
                };
                let len = u32::from_le_bytes(*len) as usize;
                if len > rest.len() {
                    return Err(Rejection::new(RejectReason::Decode, name, "a BYTES element is cut off"));
                }
                let s = std::str::from_utf8(&rest[..len]).map_err(|_| {
                    Rejection::new(
                        RejectReason::Decode,
                        name,
                        format!("element {} is not UTF-8 text", out.len()),
                    )
                })?;
                out.push(s.to_string());
                bytes = &rest[len..];
            }
        }
        (None, Some(data)) => {
            let mut stack = vec![data];
            while let Some(v) = stack.pop() {
                match v {
                    serde_json::Value::Array(items) => stack.extend(items.iter().rev()),
                    serde_json::Value::String(s) => out.push(s.clone()),
                    other => {
                        return Err(Rejection::new(
                            RejectReason::Decode,
                            name,
                            format!("element {} is {other}, not a string", out.len()),
                        ));
                    }
                }
            }
        }
        (None, None) => return Err(Rejection::new(RejectReason::Decode, name, "the tensor has no data")),
    }
    if out.len() != count {
        return Err(Rejection::new(
            RejectReason::Shape,
            name,
            format!("the shape holds {count} texts; data has {}", out.len()),
        ));
    }
    if out.is_empty() {
        return Err(Rejection::new(RejectReason::Shape, name, "empty batch (0 texts)"));
    }
    Ok(out)
}
