use serde_json::json;

use super::*;
use crate::decode::Normalization;
use crate::limits::Limits;

fn opts() -> DecodeOptions {
    DecodeOptions { input_shape: vec![1, 2, 3], ..Default::default() }
}

fn tensor(v: Value) -> InferTensor {
    serde_json::from_value(v).unwrap()
}

fn decode(v: Value) -> Result<ArrayD<f32>, Rejection> {
    decode_tensor("req", &tensor(v), None, &opts())
}

#[test]
fn fp32_flat_with_and_without_batch_axis() {
    let data: Vec<f32> = (0..6).map(|i| i as f32 / 10.0).collect();
    let one = decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": data})).unwrap();
    assert_eq!(one.shape(), &[1, 1, 2, 3]);
    assert_eq!(one[[0, 0, 1, 2]], 0.5);
    let two: Vec<f32> = (0..12).map(|i| i as f32).collect();
    let b = decode(json!({"name": "x", "shape": [2, 1, 2, 3], "datatype": "FP32", "data": two})).unwrap();
    assert_eq!(b.shape(), &[2, 1, 2, 3]);
    assert_eq!(b[[1, 0, 0, 0]], 6.0);
}

#[test]
fn nested_data_is_row_major() {
    let t = json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP64", "data": [[[1, 2, 3], [4, 5, 6]]]});
    let a = decode(t).unwrap();
    assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0]);
}

#[test]
fn integer_types_are_cast_and_range_checked() {
    for dt in ["INT8", "INT16", "INT32", "INT64", "UINT16", "UINT32", "UINT64"] {
        let a =
            decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": dt, "data": [0, 1, 2, 3, 4, 100]}))
                .unwrap_or_else(|e| panic!("{dt}: {e}"));
        assert_eq!(a[[0, 0, 1, 2]], 100.0, "{dt}");
    }
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "INT8", "data": [0, 1, 2, 3, 4, 200]}))
            .unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    assert!(e.message.contains("element 5 (200) is not a INT8"), "{}", e.message);
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "INT32", "data": [0.5, 1, 2, 3, 4, 5]}))
            .unwrap_err();
    assert!(e.message.contains("element 0"), "{}", e.message);
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "UINT32", "data": [-1, 1, 2, 3, 4, 5]}))
            .unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
}

#[test]
fn uint8_is_scaled_then_normalised() {
    let t =
        json!({"name": "x", "shape": [1, 2, 3], "datatype": "UINT8", "data": [0, 51, 102, 153, 204, 255]});
    let a = decode(t.clone()).unwrap();
    assert_eq!(a[[0, 0, 1, 2]], 1.0);
    assert!((a[[0, 0, 0, 1]] - 0.2).abs() < 1e-6);
    let o = DecodeOptions {
        normalization: Normalization { mean: vec![0.5], std: vec![0.5], ..Default::default() },
        ..opts()
    };
    let a = decode_tensor("req", &tensor(t), None, &o).unwrap();
    assert_eq!(a[[0, 0, 1, 2]], 1.0);
    assert_eq!(a[[0, 0, 0, 0]], -1.0);
}

#[test]
fn unsupported_datatypes_are_dtype_rejections() {
    for dt in ["BOOL", "BYTES", "FP16", "BF16", "COMPLEX"] {
        let e = decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": dt, "data": [0, 0, 0, 0, 0, 0]}))
            .unwrap_err();
        assert_eq!(e.reason, RejectReason::Dtype, "{dt}");
        assert!(e.message.contains(dt), "{}", e.message);
    }
}

#[test]
fn shape_must_match_data_and_model() {
    let e = decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5]}))
        .unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("holds 6 values; data has 5"), "{}", e.message);
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6, 7]}))
            .unwrap_err();
    assert!(e.message.contains("more than 6"), "{}", e.message);
    let e = decode(json!({"name": "x", "shape": [1, 3, 2], "datatype": "FP32", "data": [1, 2, 3, 4, 5, 6]}))
        .unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("[1, 3, 2]"), "{}", e.message);
    let e = decode(json!({"name": "x", "shape": [1, -2, 3], "datatype": "FP32", "data": []})).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP32", "data": [1, 2, "3", 4, 5, 6]}))
            .unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    let e =
        decode(json!({"name": "x", "shape": [1, 2, 3], "datatype": "FP64", "data": [1, 2, 3, 4, 5, 1e300]}))
            .unwrap_err();
    assert_eq!(e.reason, RejectReason::NonFinite);
}

#[test]
fn requests_parse_and_select_an_input() {
    let body = br#"{"id": "r1", "inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32",
        "data": [1, 2, 3, 4, 5, 6]}], "outputs": [{"name": "y"}], "parameters": {"binary_data_output": true}}"#;
    let p = parse_request("req", body, None, &Limits::default()).unwrap();
    assert_eq!(p.request.id.as_deref(), Some("r1"));
    assert_eq!(select_input("req", &p.request, None).unwrap(), 0);
    assert_eq!(select_input("req", &p.request, Some("input")).unwrap(), 0);
    assert_eq!(select_input("req", &p.request, Some("other")).unwrap_err().reason, RejectReason::Shape);
    let two = br#"{"inputs": [{"name": "a", "shape": [1], "datatype": "FP32", "data": [1]},
        {"name": "b", "shape": [1], "datatype": "FP32", "data": [1]}]}"#;
    let p = parse_request("req", two, None, &Limits::default()).unwrap();
    assert!(select_input("req", &p.request, None).unwrap_err().message.contains("\"a\", \"b\""));
    assert_eq!(select_input("req", &p.request, Some("b")).unwrap(), 1);
    for bad in [&b"{"[..], b"[]", b"{\"inputs\": 3}", b"{\"instances\": [[1]]}"] {
        assert_eq!(
            parse_request("req", bad, None, &Limits::default()).unwrap_err().reason,
            RejectReason::Decode
        );
    }
}

#[test]
fn binary_extension() {
    let json = br#"{"inputs": [{"name": "input", "shape": [1, 2, 3], "datatype": "FP32",
        "parameters": {"binary_data_size": 24}}]}"#;
    let mut body = json.to_vec();
    for i in 0..6 {
        body.extend_from_slice(&(i as f32 * 0.5).to_le_bytes());
    }
    let p = parse_request("req", &body, Some(json.len()), &Limits::default()).unwrap();
    let a = decode_tensor("req", &p.request.inputs[0], p.binary[0], &opts()).unwrap();
    assert_eq!(a[[0, 0, 1, 2]], 2.5);
    // Too few bytes for the shape, or more than the header claims.
    assert!(parse_request("req", &body[..body.len() - 4], Some(json.len()), &Limits::default()).is_err());
    let mut extra = body.clone();
    extra.push(0);
    assert!(parse_request("req", &extra, Some(json.len()), &Limits::default()).is_err());
    assert!(parse_request("req", &body, Some(body.len() + 1), &Limits::default()).is_err());
    let t = tensor(json!({"name": "x", "shape": [1, 2, 3], "datatype": "INT16"}));
    let bytes: Vec<u8> = [-3i16, 2, 1, 0, 7, 9].iter().flat_map(|v| v.to_le_bytes()).collect();
    let a = decode_tensor("req", &t, Some(&bytes), &opts()).unwrap();
    assert_eq!(a[[0, 0, 0, 0]], -3.0);
    assert_eq!(
        decode_tensor("req", &t, Some(&bytes[..10]), &opts()).unwrap_err().reason,
        RejectReason::Shape
    );
}

#[test]
fn declared_shapes_and_binary_sizes_are_checked_before_allocation() {
    // 2**62 × 4 elements: refused by the limit, not multiplied into an allocation.
    let e =
        decode(json!({"name": "x", "shape": [4611686018427387904i64, 4], "datatype": "FP32", "data": [1]}))
            .unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge, "{}", e.message);
    let e = decode(json!({"name": "x", "shape": [1099511627776i64, 4], "datatype": "FP32", "data": [1]}))
        .unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge, "{}", e.message);
    assert!(e.message.contains("limits.max_elements_per_file"), "{}", e.message);
    // The binary extension's `count * size` overflowing usize is a shape error, not a panic.
    let small = DecodeOptions {
        limits: Limits {
            max_elements_per_file: u64::MAX,
            max_elements_per_sample: u64::MAX,
            ..Limits::default()
        },
        input_shape: vec![],
        ..opts()
    };
    let t = tensor(json!({"name": "x", "shape": [4611686018427387904i64, 1], "datatype": "FP64"}));
    let e = decode_tensor("req", &t, Some(&[0u8; 8]), &small).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("overflowing bytes"), "{}", e.message);
    // Nesting deeper than max_json_depth is refused from the bytes, before parsing.
    let deep = format!(
        r#"{{"inputs": [{{"name": "x", "shape": [1], "datatype": "FP32", "data": {}1{}}}]}}"#,
        "[".repeat(40),
        "]".repeat(40)
    );
    let e = parse_request("req", deep.as_bytes(), None, &Limits::default()).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
    assert!(e.message.contains("limits.max_json_depth"), "{}", e.message);
}
