//! ONNX models as data: decoding, encoding, and small builders for nodes, attributes and constants.
//!
//! The compiler edits graphs through these helpers; nothing here runs a model (that is `runtime`).

pub mod proto;

use std::path::Path;

use anyhow::{Context, Result, bail};
use prost::Message;
use proto::*;

/// Reads and decodes an ONNX model file.
pub fn load(path: &Path) -> Result<ModelProto> {
    let bytes = std::fs::read(path).with_context(|| format!("reading ONNX model {}", path.display()))?;
    decode(&bytes).with_context(|| format!("{} is not a valid ONNX model", path.display()))
}

/// Decodes an ONNX model from bytes and checks that it has a graph.
pub fn decode(bytes: &[u8]) -> Result<ModelProto> {
    let model = ModelProto::decode(bytes).context("protobuf decoding failed")?;
    if model.graph.is_none() {
        bail!("the model has no graph");
    }
    Ok(model)
}

/// Encodes a model to bytes.
pub fn encode(model: &ModelProto) -> Vec<u8> {
    model.encode_to_vec()
}

/// The opset version the model imports for the default (`ai.onnx`) domain.
pub fn default_opset(model: &ModelProto) -> Option<i64> {
    model.opset_import.iter().find(|o| o.domain.is_empty() || o.domain == "ai.onnx").map(|o| o.version)
}

/// Looks up a string metadata property.
pub fn metadata<'a>(model: &'a ModelProto, key: &str) -> Option<&'a str> {
    model.metadata_props.iter().find(|p| p.key == key).map(|p| p.value.as_str())
}

/// Sets (or replaces) a string metadata property.
pub fn set_metadata(model: &mut ModelProto, key: &str, value: impl Into<String>) {
    let value = value.into();
    match model.metadata_props.iter_mut().find(|p| p.key == key) {
        Some(p) => p.value = value,
        None => model.metadata_props.push(StringStringEntryProto { key: key.to_string(), value }),
    }
}

impl NodeProto {
    /// The attribute called `name`, if present.
    pub fn attr(&self, name: &str) -> Option<&AttributeProto> {
        self.attribute.iter().find(|a| a.name == name)
    }

    pub fn attr_int(&self, name: &str) -> Option<i64> {
        self.attr(name).map(|a| a.i)
    }

    pub fn attr_float(&self, name: &str) -> Option<f32> {
        self.attr(name).map(|a| a.f)
    }

    pub fn attr_ints(&self, name: &str) -> Option<&[i64]> {
        self.attr(name).map(|a| a.ints.as_slice())
    }

    pub fn attr_string(&self, name: &str) -> Option<String> {
        self.attr(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }

    /// Its name for messages: the node name when it has one, else its first output.
    pub fn display_name(&self) -> String {
        if !self.name.is_empty() {
            self.name.clone()
        } else {
            format!("<unnamed, output {}>", self.output.first().map(String::as_str).unwrap_or("?"))
        }
    }
}

/// Attribute constructors.
pub mod attr {
    use super::proto::{AttributeProto, TensorProto, attr_type};

    pub fn int(name: &str, i: i64) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::INT, i, ..Default::default() }
    }
    pub fn float(name: &str, f: f32) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::FLOAT, f, ..Default::default() }
    }
    pub fn ints(name: &str, ints: &[i64]) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attr_type::INTS,
            ints: ints.to_vec(),
            ..Default::default()
        }
    }
    pub fn string(name: &str, s: &str) -> AttributeProto {
        AttributeProto {
            name: name.into(),
            r#type: attr_type::STRING,
            s: s.as_bytes().to_vec(),
            ..Default::default()
        }
    }
    pub fn tensor(name: &str, t: TensorProto) -> AttributeProto {
        AttributeProto { name: name.into(), r#type: attr_type::TENSOR, t: Some(t), ..Default::default() }
    }
}

/// A float32 tensor constant with the given dims.
pub fn tensor_f32(name: &str, dims: &[i64], values: &[f32]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, values.len());
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::FLOAT,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// An int64 tensor constant with the given dims.
pub fn tensor_i64(name: &str, dims: &[i64], values: &[i64]) -> TensorProto {
    debug_assert_eq!(dims.iter().product::<i64>() as usize, values.len());
    TensorProto {
        name: name.into(),
        dims: dims.to_vec(),
        data_type: data_type::INT64,
        raw_data: values.iter().flat_map(|v| v.to_le_bytes()).collect(),
        ..Default::default()
    }
}

/// Reads a float32 initializer's values (raw or typed storage). External data is not supported.
pub fn tensor_to_f32(t: &TensorProto) -> Result<Vec<f32>> {
    if t.data_location == 1 || !t.external_data.is_empty() {
        bail!("tensor {} keeps its data in an external file, which the agent does not read", t.name);
    }
    match t.data_type {
        data_type::FLOAT if !t.raw_data.is_empty() => {
            Ok(t.raw_data.chunks_exact(4).map(|c| f32::from_le_bytes(c.try_into().unwrap())).collect())
        }
        data_type::FLOAT => Ok(t.float_data.clone()),
        data_type::DOUBLE if !t.raw_data.is_empty() => {
            Ok(t.raw_data.chunks_exact(8).map(|c| f64::from_le_bytes(c.try_into().unwrap()) as f32).collect())
        }
        data_type::DOUBLE => Ok(t.double_data.iter().map(|&v| v as f32).collect()),
        other => bail!("tensor {} has data type {other}, expected float", t.name),
    }
}

/// Reads an int64 (or int32) initializer's values.
pub fn tensor_to_i64(t: &TensorProto) -> Result<Vec<i64>> {
    match t.data_type {
        data_type::INT64 if !t.raw_data.is_empty() => {
            Ok(t.raw_data.chunks_exact(8).map(|c| i64::from_le_bytes(c.try_into().unwrap())).collect())
        }
        data_type::INT64 => Ok(t.int64_data.clone()),
        data_type::INT32 if !t.raw_data.is_empty() => {
            Ok(t.raw_data.chunks_exact(4).map(|c| i32::from_le_bytes(c.try_into().unwrap()) as i64).collect())
        }
        data_type::INT32 => Ok(t.int32_data.iter().map(|&v| v as i64).collect()),
        other => bail!("tensor {} has data type {other}, expected an integer type", t.name),
    }
}

/// A `ValueInfoProto` for a tensor of the given element type and dims (`None` = symbolic `name`).
pub fn value_info(name: &str, elem_type: i32, dims: &[Result<i64, &str>]) -> ValueInfoProto {
    ValueInfoProto {
        name: name.into(),
        r#type: Some(TypeProto {
            tensor_type: Some(TensorTypeProto {
                elem_type,
                shape: Some(TensorShapeProto {
                    dim: dims
                        .iter()
                        .map(|d| match d {
                            Ok(v) => Dimension { dim_value: Some(*v), ..Default::default() },
                            Err(p) => Dimension { dim_param: Some((*p).to_string()), ..Default::default() },
                        })
                        .collect(),
                }),
            }),
            ..Default::default()
        }),
        ..Default::default()
    }
}

/// Element type and dims of a value info (dims: `None` where symbolic or unknown).
pub fn value_info_shape(v: &ValueInfoProto) -> Option<(i32, Vec<Option<i64>>)> {
    let tt = v.r#type.as_ref()?.tensor_type.as_ref()?;
    let dims = tt.shape.as_ref().map(|s| s.dim.iter().map(|d| d.dim_value).collect()).unwrap_or_default();
    Some((tt.elem_type, dims))
}
