//! `.npy` and `.npz` (NumPy) files, read with `ndarray-npy`.

use std::io::Cursor;

use ndarray::ArrayD;
use ndarray_npy::{NpzReader, ReadNpyError, ReadNpyExt, ReadNpzError};

use super::{RawArray, RejectReason, Rejection};

/// Reads one `.npy` array of `float32`, `float64` or `uint8` (any byte order, C or Fortran order).
pub(crate) fn read_npy(name: &str, bytes: &[u8]) -> Result<RawArray, Rejection> {
    match ArrayD::<f32>::read_npy(bytes) {
        Ok(a) => return Ok(RawArray::F32(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(npy_rejection(name, e)),
    }
    match ArrayD::<f64>::read_npy(bytes) {
        Ok(a) => return Ok(RawArray::F64(a)),
        Err(ReadNpyError::WrongDescriptor(_)) => {}
        Err(e) => return Err(npy_rejection(name, e)),
    }
    match ArrayD::<u8>::read_npy(bytes) {
        Ok(a) => Ok(RawArray::U8(a)),
        Err(ReadNpyError::WrongDescriptor(d)) => Err(dtype_rejection(name, &d.to_string())),
        Err(e) => Err(npy_rejection(name, e)),
    }
}

/// Reads an `.npz` archive holding exactly one array, or one named `x` among several.
pub(crate) fn read_npz(name: &str, bytes: &[u8]) -> Result<RawArray, Rejection> {
    let mut npz = NpzReader::new(Cursor::new(bytes)).map_err(|e| npz_rejection(name, e))?;
    let names = npz.names().map_err(|e| npz_rejection(name, e))?;
    let member = match names.as_slice() {
        [only] => only.clone(),
        [] => return Err(Rejection::new(RejectReason::Decode, name, "the .npz archive holds no array")),
        many => match many.iter().find(|n| n.as_str() == "x" || n.as_str() == "x.npy") {
            Some(x) => x.clone(),
            None => {
                return Err(Rejection::new(
                    RejectReason::Shape,
                    name,
                    format!(
                        "the .npz archive holds {} arrays {many:?}; expected one, or one named \"x\"",
                        many.len()
                    ),
                ));
            }
        },
    };
    let as_f32: Result<ArrayD<f32>, _> = npz.by_name(&member);
    match as_f32 {
        Ok(a) => return Ok(RawArray::F32(a)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => {}
        Err(e) => return Err(npz_rejection(name, e)),
    }
    let as_f64: Result<ArrayD<f64>, _> = npz.by_name(&member);
    match as_f64 {
        Ok(a) => return Ok(RawArray::F64(a)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(_))) => {}
        Err(e) => return Err(npz_rejection(name, e)),
    }
    let as_u8: Result<ArrayD<u8>, _> = npz.by_name(&member);
    match as_u8 {
        Ok(a) => Ok(RawArray::U8(a)),
        Err(ReadNpzError::Npy(ReadNpyError::WrongDescriptor(d))) => {
            Err(dtype_rejection(name, &d.to_string()))
        }
        Err(e) => Err(npz_rejection(name, e)),
    }
}

fn dtype_rejection(name: &str, descr: &str) -> Rejection {
    Rejection::new(
        RejectReason::Dtype,
        name,
        format!("element type {descr} is not supported (expected float32, float64 or uint8)"),
    )
}

fn npy_rejection(name: &str, e: ReadNpyError) -> Rejection {
    let problem = match &e {
        ReadNpyError::MissingData => {
            "truncated: the file holds less data than its header describes".to_string()
        }
        ReadNpyError::ExtraBytes(n) => format!("{n} unexpected bytes after the array data"),
        _ => format!("not a valid .npy file ({e})"),
    };
    Rejection::new(RejectReason::Decode, name, problem)
}

fn npz_rejection(name: &str, e: ReadNpzError) -> Rejection {
    match e {
        ReadNpzError::Npy(e) => npy_rejection(name, e),
        ReadNpzError::Zip(e) => {
            Rejection::new(RejectReason::Decode, name, format!("not a valid .npz archive ({e})"))
        }
    }
}
