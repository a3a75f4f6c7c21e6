//! `.npy` and `.npz` (NumPy) files, read with `ndarray-npy`.

use std::io::{Cursor, Read};

use ndarray::ArrayD;
use ndarray_npy::npy::header::Header;
use ndarray_npy::{ReadNpyError, ReadNpyExt};

use super::{DecodeOptions, RawArray, RejectReason, Rejection};

/// numpy refuses to read headers above 10 000 bytes by default (`max_header_size`); six times that
/// still passes anything numpy writes and keeps the header parser's input small.
const MAX_HEADER_BYTES: usize = 64 * 1024;

/// Reads one `.npy` array of `float32`, `float64` or `uint8` (any byte order, C or Fortran order),
/// after checking what its header declares against the limits and the bytes present.
pub(crate) fn read_npy(name: &str, bytes: &[u8], opts: &DecodeOptions) -> Result<RawArray, Rejection> {
    check_declared(name, bytes, opts)?;
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

/// `ndarray-npy` allocates what the header declares (the header buffer, then the data) before it
/// reads; this reads the same header first and refuses a declaration that the limits or the bytes
/// actually present cannot back, so no allocation exceeds the input's own size.
fn check_declared(name: &str, bytes: &[u8], opts: &DecodeOptions) -> Result<(), Rejection> {
    const MAGIC: &[u8] = b"\x93NUMPY";
    let decode = |what: String| Rejection::new(RejectReason::Decode, name, what);
    let truncated = || decode("truncated: the file ends inside the .npy header".to_string());
    if !bytes.starts_with(MAGIC) {
        return Err(if MAGIC.starts_with(bytes) {
            truncated()
        } else {
            decode("not a .npy file (no magic string)".into())
        });
    }
    let (header_len, start) = match bytes.get(6) {
        None => return Err(truncated()),
        Some(1) => (bytes.get(8..10).map(|b| usize::from(u16::from_le_bytes([b[0], b[1]]))), 10),
        Some(2 | 3) => (bytes.get(8..12).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize), 12),
        Some(v) => return Err(decode(format!("not a valid .npy file (format version {v})"))),
    };
    let header_len = header_len.ok_or_else(truncated)?;
    if header_len > MAX_HEADER_BYTES {
        return Err(decode(format!(
            "the .npy header declares {header_len} bytes; at most {MAX_HEADER_BYTES} are read"
        )));
    }
    let header = bytes.get(start..start + header_len).ok_or_else(truncated)?;
    opts.limits.check_depth(name, header)?;
    let parsed =
        Header::from_reader(&mut &bytes[..]).map_err(|e| decode(format!("not a valid .npy file ({e})")))?;
    let elements = opts.limits.check_shape(name, &parsed.shape, &opts.input_shape)?;
    let declared = elements.saturating_mul(item_size(&parsed.type_descriptor.to_string()));
    let present = (bytes.len() - start - header_len) as u64;
    if declared > present {
        return Err(decode(format!(
            "truncated: the header declares {declared} bytes of data, the file holds {present}"
        )));
    }
    Ok(())
}

/// Bytes per element of a descriptor such as `'<f4'` or `'|u1'` (the trailing digits); 1 when it
/// has none (a structured or unknown type, refused later as a dtype).
fn item_size(descr: &str) -> u64 {
    let digits: String = descr
        .trim_end_matches(['\'', '"'])
        .chars()
        .rev()
        .take_while(char::is_ascii_digit)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    digits.parse::<u64>().ok().filter(|&n| n > 0).unwrap_or(1)
}

/// Reads an `.npz` archive holding exactly one array, or one named `x` among several. The member
/// is inflated into memory at most `limits.max_decompressed_bytes` far, whatever its header says.
pub(crate) fn read_npz(name: &str, bytes: &[u8], opts: &DecodeOptions) -> Result<RawArray, Rejection> {
    let zip_error = |e: zip::result::ZipError| {
        Rejection::new(RejectReason::Decode, name, format!("not a valid .npz archive ({e})"))
    };
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes)).map_err(zip_error)?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let member = match names.as_slice() {
        [only] => only.clone(),
        [] => return Err(Rejection::new(RejectReason::Decode, name, "the .npz archive holds no array")),
        many => match many.iter().find(|n| n.as_str() == "x" || n.as_str() == "x.npy") {
            Some(x) => x.clone(),
            None => {
                let shown: Vec<&str> = many.iter().take(16).map(|n| n.trim_end_matches(".npy")).collect();
                return Err(Rejection::new(
                    RejectReason::Shape,
                    name,
                    format!(
                        "the .npz archive holds {} arrays {shown:?}; expected one, or one named \"x\"",
                        many.len()
                    ),
                ));
            }
        },
    };
    let data = inflate_member(name, &mut zip, &member, opts)?;
    read_npy(name, &data, opts)
}

/// A member's bytes, inflated at most `limits.max_decompressed_bytes` far, whatever its header says.
fn inflate_member(
    name: &str,
    zip: &mut zip::ZipArchive<Cursor<&[u8]>>,
    member: &str,
    opts: &DecodeOptions,
) -> Result<Vec<u8>, Rejection> {
    let zip_error = |e: zip::result::ZipError| {
        Rejection::new(RejectReason::Decode, name, format!("not a valid .npz archive ({e})"))
    };
    let max = opts.limits.max_decompressed_bytes;
    let file = zip.by_name(member).map_err(zip_error)?;
    if file.size() > max {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!(
                "member {member:?} declares {} bytes uncompressed; the limit is {max} (limits.max_decompressed_bytes)",
                file.size()
            ),
        ));
    }
    // The declared size may lie: start small and stop one byte past the limit.
    let mut data = Vec::with_capacity(file.size().min(1 << 20) as usize);
    file.take(max.saturating_add(1)).read_to_end(&mut data).map_err(|e| {
        Rejection::new(
            RejectReason::Decode,
            name,
            format!("not a valid .npz archive (member {member:?}: {e})"),
        )
    })?;
    if data.len() as u64 > max {
        return Err(Rejection::new(
            RejectReason::TooLarge,
            name,
            format!("member {member:?} inflates past {max} bytes (limits.max_decompressed_bytes)"),
        ));
    }
    Ok(data)
}

/// Reads the integer arrays named `members` (without `.npy`) of an `.npz` archive, for a text
/// model's named inputs (`input_ids`, `attention_mask`, …): `int64` or `int32`, at most
/// `max_elements_per_file` elements each. A member the archive lacks is `None`.
pub(crate) fn read_npz_ints(
    name: &str,
    bytes: &[u8],
    members: &[&str],
    opts: &DecodeOptions,
) -> Result<Vec<Option<ArrayD<i64>>>, Rejection> {
    let mut zip = zip::ZipArchive::new(Cursor::new(bytes))
        .map_err(|e| Rejection::new(RejectReason::Decode, name, format!("not a valid .npz archive ({e})")))?;
    let names: Vec<String> = zip.file_names().map(str::to_string).collect();
    let mut out = Vec::with_capacity(members.len());
    for wanted in members {
        let Some(member) = names.iter().find(|n| n.trim_end_matches(".npy") == *wanted).cloned() else {
            out.push(None);
            continue;
        };
        let at = format!("{name} ({wanted})");
        let data = inflate_member(&at, &mut zip, &member, opts)?;
        // The sample shape of a token input is open ([T] or [B, T]); the limits still bound it.
        let unknown = DecodeOptions { input_shape: Vec::new(), ..opts.clone() };
        check_declared(&at, &data, &unknown)?;
        let a = match ArrayD::<i64>::read_npy(&data[..]) {
            Ok(a) => a,
            Err(ReadNpyError::WrongDescriptor(_)) => match ArrayD::<i32>::read_npy(&data[..]) {
                Ok(a) => a.mapv(i64::from),
                Err(ReadNpyError::WrongDescriptor(d)) => {
                    return Err(Rejection::new(
                        RejectReason::Dtype,
                        &at,
                        format!(
                            "element type {d} is not supported for token inputs (expected int64 or int32)"
                        ),
                    ));
                }
                Err(e) => return Err(npy_rejection(&at, e)),
            },
            Err(e) => return Err(npy_rejection(&at, e)),
        };
        out.push(Some(a));
    }
    Ok(out)
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
