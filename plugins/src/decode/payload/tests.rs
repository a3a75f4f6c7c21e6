use std::io::Write;
use std::path::{Path, PathBuf};

use ndarray::{ArrayD, IxDyn, array};
use ndarray_npy::WriteNpyExt;

use super::*;
use crate::decode::v2::parse_request;
use crate::limits::Limits;

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

fn text_opts() -> DecodeOptions {
    let tok = TextTokenizer::from_file(&root().join("models/text/tokenizer.json"), 32, false).unwrap();
    DecodeOptions { tokens: Some(TokenOptions::new(Some(Arc::new(tok)))), ..Default::default() }
}

fn npz(members: &[(&str, ArrayD<i64>)]) -> Vec<u8> {
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        for (name, a) in members {
            zip.start_file(format!("{name}.npy"), zip::write::SimpleFileOptions::default()).unwrap();
            let mut bytes = Vec::new();
            a.write_npy(&mut bytes).unwrap();
            zip.write_all(&bytes).unwrap();
        }
        zip.finish().unwrap();
    }
    buf.into_inner()
}

#[test]
fn npz_rows_keep_their_masked_positions_only() {
    let ids = array![[2i64, 50, 60, 3, 0, 0], [2, 70, 3, 0, 0, 0]].into_dyn();
    let mask = array![[1i64, 1, 1, 1, 0, 0], [1, 1, 1, 0, 0, 0]].into_dyn();
    let bytes = npz(&[("input_ids", ids.clone()), ("attention_mask", mask)]);
    let p = decode_payload_bytes("t.npz", "npz", &bytes, &text_opts()).unwrap();
    let t = p.as_tokens().unwrap();
    assert_eq!(t[0].ids, vec![2, 50, 60, 3]);
    assert_eq!(t[1].ids, vec![2, 70, 3]);
    assert_eq!(p.samples(), 2);
    // No mask: every position is a token; one [T] row is one sample.
    let bytes = npz(&[("input_ids", array![2i64, 9, 3].into_dyn())]);
    let p = decode_payload_bytes("one.npz", "npz", &bytes, &text_opts()).unwrap();
    assert_eq!(p.as_tokens().unwrap()[0].ids, vec![2, 9, 3]);
    assert_eq!(p.select(&[0, 0]).samples(), 2);
}

#[test]
fn bad_token_inputs_are_refused_with_a_reason() {
    let o = text_opts();
    let ids = array![[2i64, 50, 3]].into_dyn();
    let cases = [
        (npz(&[("ids", ids.clone())]), RejectReason::Shape, "\"input_ids\""),
        (
            npz(&[("input_ids", ids.clone()), ("attention_mask", array![[1i64, 1]].into_dyn())]),
            RejectReason::Shape,
            "attention mask",
        ),
        (
            npz(&[("input_ids", ids.clone()), ("attention_mask", array![[1i64, 2, 1]].into_dyn())]),
            RejectReason::Decode,
            "mask value 2",
        ),
        (
            npz(&[("input_ids", ids.clone()), ("attention_mask", array![[0i64, 0, 0]].into_dyn())]),
            RejectReason::Shape,
            "no tokens",
        ),
        (npz(&[("input_ids", array![[2i64, 99_999, 3]].into_dyn())]), RejectReason::Decode, "vocabulary"),
        (npz(&[("input_ids", array![[2i64, -1, 3]].into_dyn())]), RejectReason::Decode, "vocabulary"),
        (npz(&[("input_ids", ArrayD::<i64>::zeros(IxDyn(&[2, 2, 2])))]), RejectReason::Shape, "[B, T]"),
    ];
    for (bytes, reason, needle) in cases {
        let e = decode_payload_bytes("bad.npz", "npz", &bytes, &o).unwrap_err();
        assert_eq!(e.reason, reason, "{}", e.message);
        assert!(e.message.contains(needle) && e.message.starts_with("bad.npz"), "{}", e.message);
    }
    // Float ids are a dtype error.
    let mut buf = std::io::Cursor::new(Vec::new());
    {
        let mut zip = zip::ZipWriter::new(&mut buf);
        zip.start_file("input_ids.npy", zip::write::SimpleFileOptions::default()).unwrap();
        let mut bytes = Vec::new();
        array![[1.0f32, 2.0]].write_npy(&mut bytes).unwrap();
        zip.write_all(&bytes).unwrap();
        zip.finish().unwrap();
    }
    let e = decode_payload_bytes("f.npz", "npz", &buf.into_inner(), &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Dtype, "{}", e.message);
    // An image is not a text model's input; text is not an image model's.
    let e = decode_payload_bytes("x.png", "png", b"\x89PNG", &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Unsupported);
    let e = decode_payload_bytes("x.txt", "txt", b"hello", &DecodeOptions::default()).unwrap_err();
    assert_eq!(e.reason, RejectReason::Unsupported);
    // A text model without a tokenizer takes ids, not text.
    let ids_only = DecodeOptions { tokens: Some(TokenOptions::new(None)), ..Default::default() };
    let e = decode_payload_bytes("x.txt", "txt", b"hello", &ids_only).unwrap_err();
    assert!(e.reason == RejectReason::Unsupported && e.message.contains("tokenizer"), "{}", e.message);
}

#[test]
fn files_decode_by_extension_for_text_and_dense_models() {
    let d = tempfile::tempdir().unwrap();
    let txt = d.path().join("a.txt");
    std::fs::write(&txt, "one\ntwo\n").unwrap();
    assert_eq!(decode_payload_file(&txt, "a.txt", &text_opts()).unwrap().samples(), 2);
    let big = DecodeOptions { max_bytes: 3, ..text_opts() };
    assert_eq!(decode_payload_file(&txt, "a.txt", &big).unwrap_err().reason, RejectReason::TooLarge);
    let npy = d.path().join("a.npy");
    ArrayD::<f32>::zeros(IxDyn(&[2, 3])).write_npy(std::fs::File::create(&npy).unwrap()).unwrap();
    let dense = DecodeOptions { input_shape: vec![3], ..Default::default() };
    let p = decode_payload_file(&npy, "a.npy", &dense).unwrap();
    assert_eq!(p.as_dense().unwrap().shape(), &[2, 3]);
    assert_eq!(p.select(&[1]).samples(), 1);
}

#[test]
fn v2_requests_with_texts_or_token_ids() {
    let o = text_opts();
    let limits = Limits::default();
    let texts = br#"{"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["hello world", "Se\u00f1or"]}]}"#;
    let parsed = parse_request("r", texts, None, &limits).unwrap();
    let s = crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap();
    assert_eq!(s.len(), 2);
    let direct =
        o.tokens.as_ref().unwrap().tokenizer.as_ref().unwrap().encode("x", "hello world", &limits).unwrap();
    assert_eq!(s[0], direct);
    let ids = br#"{"inputs": [
        {"name": "input_ids", "shape": [2, 3], "datatype": "INT64", "data": [[2, 40, 3], [2, 3, 0]]},
        {"name": "attention_mask", "shape": [2, 3], "datatype": "INT64", "data": [1, 1, 1, 1, 1, 0]}]}"#;
    let parsed = parse_request("r", ids, None, &limits).unwrap();
    let s = crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap();
    assert_eq!(s[0].ids, vec![2, 40, 3]);
    assert_eq!(s[1].ids, vec![2, 3]);
    // Binary extension: INT64 little-endian, then a BYTES tensor of length-prefixed strings.
    let header = br#"{"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "INT64", "parameters": {"binary_data_size": 16}}]}"#;
    let mut body = header.to_vec();
    body.extend(2i64.to_le_bytes());
    body.extend(3i64.to_le_bytes());
    let parsed = parse_request("r", &body, Some(header.len()), &limits).unwrap();
    let s = crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap();
    assert_eq!(s[0].ids, vec![2, 3]);
    let header = br#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 9}}]}"#;
    let mut body = header.to_vec();
    body.extend(5u32.to_le_bytes());
    body.extend(b"hello");
    let parsed = parse_request("r", &body, Some(header.len()), &limits).unwrap();
    let s = crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap();
    assert_eq!(s.len(), 1);
    // Refusals: wrong dtype, a number in a BYTES tensor, invalid UTF-8, a shape the data does not fill.
    for (body, reason) in [
        (&br#"{"inputs": [{"name": "input_ids", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]}]}"#[..], RejectReason::Dtype),
        (&br#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "data": [5]}]}"#[..], RejectReason::Decode),
        (&br#"{"inputs": [{"name": "t", "shape": [3], "datatype": "BYTES", "data": ["a"]}]}"#[..], RejectReason::Shape),
    ] {
        let parsed = parse_request("r", body, None, &limits).unwrap();
        let e = crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap_err();
        assert_eq!(e.reason, reason, "{}", e.message);
    }
    let header = br#"{"inputs": [{"name": "t", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]}"#;
    let mut body = header.to_vec();
    body.extend(2u32.to_le_bytes());
    body.extend(b"\xff\xfe");
    let parsed = parse_request("r", &body, Some(header.len()), &limits).unwrap();
    let e =
        crate::decode::v2::decode_token_request("r", &parsed, o.tokens.as_ref().unwrap(), &o).unwrap_err();
    assert!(e.reason == RejectReason::Decode && e.message.contains("UTF-8"), "{}", e.message);
}

#[test]
fn text_records_from_the_feed_and_the_samples_endpoint() {
    use crate::sources::http::record::parse_line;
    use crate::sources::ingest::decode_request;
    let o = text_opts();
    let limits = Limits::default();
    let r = parse_line(br#"{"id": "7", "text": "Never trust a computer."}"#, &limits).unwrap();
    assert_eq!(r.decode("feed", None, &o).unwrap().samples(), 1);
    let r = parse_line(br#"{"id": "8", "text": 5}"#, &limits).unwrap();
    assert_eq!(r.decode("feed", None, &o).unwrap_err().reason, RejectReason::Decode);
    // A dense model refuses a text record.
    let r = parse_line(br#"{"id": "9", "text": "hi"}"#, &limits).unwrap();
    assert_eq!(
        r.decode("feed", None, &DecodeOptions::default()).unwrap_err().reason,
        RejectReason::Unsupported
    );
    let (id, p) = decode_request("api/1", br#"{"id": "abc", "text": "Hello"}"#, None, None, &o).unwrap();
    assert_eq!(id.as_deref(), Some("abc"));
    assert_eq!(p.samples(), 1);
    let e = decode_request("api/2", br#"{"text": ["a"]}"#, None, None, &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    let e = decode_request("api/3", b"\xff not json", None, None, &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    let too_long = format!(r#"{{"text": "{}"}}"#, "a".repeat(100));
    let small = DecodeOptions { limits: Limits { max_elements_per_sample: 50, ..Limits::default() }, ..o };
    let e = decode_request("api/4", too_long.as_bytes(), None, None, &small).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
}
