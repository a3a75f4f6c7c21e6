use std::path::PathBuf;

use ndarray::{Array, ArrayD, IxDyn};
use ndarray_npy::{NpzWriter, WriteNpyExt};

use super::*;
use crate::limits::Limits;

fn opts() -> DecodeOptions {
    DecodeOptions { input_shape: vec![1, 4, 4], ..Default::default() }
}

fn write_npy<T: ndarray_npy::WritableElement>(dir: &Path, name: &str, a: &ArrayD<T>) -> PathBuf {
    let p = dir.join(name);
    a.write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    p
}

fn ramp(shape: &[usize]) -> ArrayD<f32> {
    let n: usize = shape.iter().product();
    Array::from_shape_vec(IxDyn(shape), (0..n).map(|i| i as f32 / n as f32).collect()).unwrap()
}

#[test]
fn one_sample_gets_a_batch_axis() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "one.npy", &ramp(&[1, 4, 4]));
    let b = decode_file(&p, &opts()).unwrap();
    assert_eq!(b.shape(), &[1, 1, 4, 4]);
    assert_eq!(b[[0, 0, 0, 1]], 1.0 / 16.0);
}

#[test]
fn a_batch_is_kept() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "batch.npy", &ramp(&[3, 1, 4, 4]));
    assert_eq!(decode_file(&p, &opts()).unwrap().shape(), &[3, 1, 4, 4]);
}

#[test]
fn float64_is_cast_and_uint8_scaled_and_normalised() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "f64.npy", &ramp(&[1, 4, 4]).mapv(f64::from));
    assert_eq!(decode_file(&p, &opts()).unwrap()[[0, 0, 0, 2]], 2.0 / 16.0);
    let u = ArrayD::<u8>::from_elem(IxDyn(&[2, 1, 4, 4]), 255);
    let p = write_npy(d.path(), "u8.npy", &u);
    assert_eq!(decode_file(&p, &opts()).unwrap()[[1, 0, 3, 3]], 1.0);
    let o = DecodeOptions {
        normalization: Normalization { mean: vec![0.5], std: vec![0.25], ..Default::default() },
        ..opts()
    };
    assert_eq!(decode_file(&p, &o).unwrap()[[1, 0, 3, 3]], 2.0);
}

#[test]
fn npz_with_one_array_or_x() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("a.npz");
    let mut w = NpzWriter::new_compressed(std::fs::File::create(&p).unwrap());
    w.add_array("x", &ramp(&[2, 1, 4, 4])).unwrap();
    w.add_array("labels", &ndarray::arr1(&[1i64, 2])).unwrap();
    w.finish().unwrap();
    assert_eq!(decode_file(&p, &opts()).unwrap().shape(), &[2, 1, 4, 4]);
    let p2 = d.path().join("b.npz");
    let mut w = NpzWriter::new(std::fs::File::create(&p2).unwrap());
    w.add_array("a", &ramp(&[1, 4, 4])).unwrap();
    w.add_array("b", &ramp(&[1, 4, 4])).unwrap();
    w.finish().unwrap();
    assert_eq!(decode_file(&p2, &opts()).unwrap_err().reason, RejectReason::Shape);
}

#[test]
fn truncated_file_is_a_decode_error() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "t.npy", &ramp(&[1, 4, 4]));
    let bytes = std::fs::read(&p).unwrap();
    std::fs::write(&p, &bytes[..bytes.len() - 10]).unwrap();
    let e = decode_file(&p, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    assert!(e.message.starts_with("t.npy: "), "{}", e.message);
    assert!(e.message.contains("truncated"), "{}", e.message);
}

#[test]
fn garbage_is_a_decode_error() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("g.npy");
    std::fs::write(&p, b"this is not numpy at all").unwrap();
    assert_eq!(decode_file(&p, &opts()).unwrap_err().reason, RejectReason::Decode);
    let p = d.path().join("g.npz");
    std::fs::write(&p, b"PK garbage").unwrap();
    assert_eq!(decode_file(&p, &opts()).unwrap_err().reason, RejectReason::Decode);
}

#[test]
fn wrong_dtype_is_named() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "i.npy", &ArrayD::<i32>::zeros(IxDyn(&[1, 4, 4])));
    let e = decode_file(&p, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::Dtype);
    assert!(e.message.contains("i4"), "{}", e.message);
}

#[test]
fn nan_and_inf_are_rejected() {
    let d = tempfile::tempdir().unwrap();
    let mut a = ramp(&[1, 4, 4]);
    a[[0, 2, 2]] = f32::NAN;
    let p = write_npy(d.path(), "nan.npy", &a);
    let e = decode_file(&p, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::NonFinite);
    assert!(e.message.contains("index 10"), "{}", e.message);
    let big = ArrayD::<f64>::from_elem(IxDyn(&[1, 4, 4]), 1e300);
    let p = write_npy(d.path(), "big.npy", &big);
    assert_eq!(decode_file(&p, &opts()).unwrap_err().reason, RejectReason::NonFinite);
}

#[test]
fn wrong_shape_and_empty_batch() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "s.npy", &ramp(&[1, 5, 4]));
    let e = decode_file(&p, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::Shape);
    assert!(e.message.contains("[1, 5, 4]"), "{}", e.message);
    let p = write_npy(d.path(), "e.npy", &ramp(&[0, 1, 4, 4]));
    assert_eq!(decode_file(&p, &opts()).unwrap_err().reason, RejectReason::Shape);
}

#[test]
fn size_limit_and_extension() {
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "l.npy", &ramp(&[1, 4, 4]));
    let o = DecodeOptions { max_bytes: 10, ..opts() };
    assert_eq!(decode_file(&p, &o).unwrap_err().reason, RejectReason::TooLarge);
    let p = d.path().join("x.csv");
    std::fs::write(&p, "1,2,3").unwrap();
    assert_eq!(decode_file(&p, &opts()).unwrap_err().reason, RejectReason::Unsupported);
}

#[test]
fn reasons_round_trip() {
    for r in RejectReason::ALL {
        assert_eq!(RejectReason::parse(r.as_str()), Some(r));
    }
}

#[test]
fn normalisation_follows_the_layout() {
    let n = |layout| Normalization { mean: vec![0.0, 1.0], std: vec![1.0, 2.0], layout };
    // NCHW, one sample [2, 1, 2]: channel 1 is the second plane.
    let mut a = ArrayD::<f32>::from_elem(IxDyn(&[2, 1, 2]), 3.0);
    normalize(&mut a, false, &n(Layout::Nchw));
    assert_eq!(a.iter().copied().collect::<Vec<_>>(), vec![3.0, 3.0, 1.0, 1.0]);
    // The same values as a batch [1, 2, 1, 2].
    let mut b = ArrayD::<f32>::from_elem(IxDyn(&[1, 2, 1, 2]), 3.0);
    normalize(&mut b, true, &n(Layout::Nchw));
    assert_eq!(b.iter().copied().collect::<Vec<_>>(), vec![3.0, 3.0, 1.0, 1.0]);
    // NHWC [1, 2, 2]: channels alternate.
    let mut c = ArrayD::<f32>::from_elem(IxDyn(&[1, 2, 2]), 3.0);
    normalize(&mut c, false, &n(Layout::Nhwc));
    assert_eq!(c.iter().copied().collect::<Vec<_>>(), vec![3.0, 1.0, 3.0, 1.0]);
    // The default layout is not serialised (settings hashes of existing baselines do not change).
    let json = serde_json::to_string(&n(Layout::Nchw)).unwrap();
    assert_eq!(json, r#"{"mean":[0.0,1.0],"std":[1.0,2.0]}"#);
    assert!(serde_json::to_string(&n(Layout::Nhwc)).unwrap().contains("nhwc"));
}

/// An `.npy` header by hand: numpy's layout, any shape.
fn npy_header(shape: &str) -> Vec<u8> {
    let mut h = format!("{{'descr': '<f4', 'fortran_order': False, 'shape': {shape}, }}");
    while (10 + h.len() + 1) % 64 != 0 {
        h.push(' ');
    }
    h.push('\n');
    let mut out = b"\x93NUMPY\x01\x00".to_vec();
    out.extend((h.len() as u16).to_le_bytes());
    out.extend(h.as_bytes());
    out
}

#[test]
fn declared_sizes_are_refused_before_allocation() {
    // The issue's file: 10**12 samples declared, 64 bytes present. Refused by the limit (this would
    // abort the process if anything were allocated from the header).
    let mut bytes = npy_header("(1000000000000, 1, 4, 4)");
    bytes.extend([0u8; 64]);
    let e = decode_bytes("huge.npy", "npy", &bytes, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge, "{}", e.message);
    assert!(e.message.contains("limits.max_elements_per_file"), "{}", e.message);
    // Within the limits but more than the file holds: truncated, nothing allocated.
    let mut bytes = npy_header("(1000, 1, 4, 4)");
    bytes.extend([0u8; 64]);
    let e = decode_bytes("short.npy", "npy", &bytes, &opts()).unwrap_err();
    assert_eq!(e.reason, RejectReason::Decode);
    assert!(e.message.contains("truncated: the header declares 64000 bytes of data, the file holds 64"));
    // Per sample: one [1, 4, 4] sample is 16 elements.
    let small =
        DecodeOptions { limits: Limits { max_elements_per_sample: 15, ..Limits::default() }, ..opts() };
    let d = tempfile::tempdir().unwrap();
    let p = write_npy(d.path(), "s.npy", &ramp(&[3, 1, 4, 4]));
    let e = decode_file(&p, &small).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
    assert!(e.message.contains("16 elements per sample"), "{}", e.message);
    // A header length beyond the file, and a deeply nested header.
    let mut bytes = b"\x93NUMPY\x02\x00".to_vec();
    bytes.extend(u32::MAX.to_le_bytes());
    assert_eq!(decode_bytes("h.npy", "npy", &bytes, &opts()).unwrap_err().reason, RejectReason::Decode);
    let deep = npy_header(&format!("{}1{}", "(".repeat(100), ")".repeat(100)));
    assert_eq!(decode_bytes("d.npy", "npy", &deep, &opts()).unwrap_err().reason, RejectReason::TooLarge);
    // Every byte short of a whole file is a decode error, never a panic.
    let whole = std::fs::read(write_npy(d.path(), "w.npy", &ramp(&[1, 4, 4]))).unwrap();
    for n in 0..whole.len() {
        assert_eq!(
            decode_bytes("p.npy", "npy", &whole[..n], &opts()).unwrap_err().reason,
            RejectReason::Decode
        );
    }
}

#[test]
fn npz_members_inflate_only_up_to_the_limit() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path().join("bomb.npz");
    let mut w = NpzWriter::new_compressed(std::fs::File::create(&p).unwrap());
    // 4 MiB of zeros, a few KB compressed.
    w.add_array("x", &ArrayD::<f32>::zeros(IxDyn(&[1024, 1, 32, 32]))).unwrap();
    w.finish().unwrap();
    assert!(std::fs::metadata(&p).unwrap().len() < 64 * 1024);
    let o = DecodeOptions {
        limits: Limits { max_decompressed_bytes: 1 << 20, ..Limits::default() },
        input_shape: vec![1, 32, 32],
        ..opts()
    };
    let e = decode_file(&p, &o).unwrap_err();
    assert_eq!(e.reason, RejectReason::TooLarge);
    assert!(e.message.contains("limits.max_decompressed_bytes"), "{}", e.message);
    let o = DecodeOptions { limits: Limits::default(), ..o };
    assert_eq!(decode_file(&p, &o).unwrap().shape(), &[1024, 1, 32, 32]);
}
