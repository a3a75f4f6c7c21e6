//! Limits on what an input may *declare*: an `.npy` header, a V2 shape, a zip member's size or a
//! JSON document's nesting can ask for far more memory (or stack) than the input itself occupies, so
//! every decoder checks the declaration against these limits before it allocates anything. A
//! refusal is a [`Rejection`] with reason `too_large`, counted like every other rejection.
//!
//! The image limit (`max_image_pixels`) predates this section and stays in
//! `[model.preprocessing]`, next to the geometry it bounds.

use serde::{Deserialize, Serialize};

use crate::decode::{RejectReason, Rejection};

/// `[limits]`: caps checked before allocation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Elements (values, not bytes) of one sample: the array itself when it is one sample, one row
    /// of the leading axis when it is a batch.
    #[serde(default = "default_max_elements_per_sample")]
    pub max_elements_per_sample: u64,
    /// Elements of one input as a whole (a file, a request, a feed record), every sample together.
    #[serde(default = "default_max_elements_per_file")]
    pub max_elements_per_file: u64,
    /// Bytes an `.npz` member may decompress to; a zip bomb stops here, whatever its header claims.
    #[serde(default = "default_max_decompressed_bytes")]
    pub max_decompressed_bytes: u64,
    /// Nesting depth of a JSON document (a V2 request, a feed record) or an `.npy` header, checked
    /// on the raw bytes before parsing. At most 128, the JSON parser's own recursion limit.
    #[serde(default = "default_max_json_depth")]
    pub max_json_depth: u32,
}

/// 4 Mi values: a 3 × 1024 × 1024 image fits.
pub const fn default_max_elements_per_sample() -> u64 {
    4 * 1024 * 1024
}

/// 16 Mi values: 64 MiB as `f32`, e.g. a batch of 100 3 × 224 × 224 images.
pub const fn default_max_elements_per_file() -> u64 {
    16 * 1024 * 1024
}

/// 256 MiB: 16 Mi `float64` values and room to spare.
pub const fn default_max_decompressed_bytes() -> u64 {
    256 * 1024 * 1024
}

/// 32 levels: a rank-8 nested tensor inside a request needs about 12.
pub const fn default_max_json_depth() -> u32 {
    32
}

/// The JSON parser (`serde_json`) refuses deeper documents by itself.
pub const MAX_JSON_DEPTH_CEILING: u32 = 128;

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_elements_per_sample: default_max_elements_per_sample(),
            max_elements_per_file: default_max_elements_per_file(),
            max_decompressed_bytes: default_max_decompressed_bytes(),
            max_json_depth: default_max_json_depth(),
        }
    }
}

impl Limits {
    /// Every problem with these limits, as `(key, why)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (key, v) in [
            ("max_elements_per_sample", self.max_elements_per_sample),
            ("max_elements_per_file", self.max_elements_per_file),
            ("max_decompressed_bytes", self.max_decompressed_bytes),
        ] {
            if v == 0 {
                out.push((key.to_string(), "must be at least 1".to_string()));
            }
        }
        if self.max_elements_per_sample > self.max_elements_per_file {
            out.push((
                "max_elements_per_sample".into(),
                format!(
                    "{} exceeds max_elements_per_file = {}",
                    self.max_elements_per_sample, self.max_elements_per_file
                ),
            ));
        }
        if self.max_json_depth == 0 || self.max_json_depth > MAX_JSON_DEPTH_CEILING {
            out.push((
                "max_json_depth".into(),
                format!("{} is outside 1..={MAX_JSON_DEPTH_CEILING}", self.max_json_depth),
            ));
        }
        out
    }

    /// Checks a declared shape before anything of that size exists; returns the element count.
    /// `input_shape` is one sample's shape (empty: unknown, then the leading axis is the batch).
    pub fn check_shape(&self, name: &str, shape: &[usize], input_shape: &[usize]) -> Result<u64, Rejection> {
        let too_large = |what: String| Rejection::new(RejectReason::TooLarge, name, what);
        let total = shape.iter().try_fold(1u64, |acc, &d| acc.checked_mul(d as u64)).ok_or_else(|| {
            too_large(format!("shape {shape:?} declares more elements than fit in 64 bits"))
        })?;
        if total > self.max_elements_per_file {
            return Err(too_large(format!(
                "shape {shape:?} declares {total} elements; the limit is {} (limits.max_elements_per_file)",
                self.max_elements_per_file
            )));
        }
        let batched =
            if input_shape.is_empty() { !shape.is_empty() } else { shape.len() == input_shape.len() + 1 };
        let per_sample = match shape.first() {
            Some(&b) if batched && b > 0 => total / b as u64,
            _ => total,
        };
        if per_sample > self.max_elements_per_sample {
            return Err(too_large(format!(
                "shape {shape:?} declares {per_sample} elements per sample; the limit is {} \
                 (limits.max_elements_per_sample)",
                self.max_elements_per_sample
            )));
        }
        Ok(total)
    }

    /// Refuses a document nested deeper than `max_json_depth`, from its bytes (no parsing).
    pub fn check_depth(&self, name: &str, bytes: &[u8]) -> Result<(), Rejection> {
        match nesting_exceeds(bytes, self.max_json_depth as usize) {
            false => Ok(()),
            true => Err(Rejection::new(
                RejectReason::TooLarge,
                name,
                format!("nested deeper than {} levels (limits.max_json_depth)", self.max_json_depth),
            )),
        }
    }
}

/// Whether brackets (`[`, `{`, `(`) outside string literals nest deeper than `max`. Strings are
/// `"…"` or `'…'` with backslash escapes, which covers JSON and the Python literal of `.npy`
/// headers; unbalanced input is not this function's business (the parser after it refuses it).
pub fn nesting_exceeds(bytes: &[u8], max: usize) -> bool {
    let mut depth = 0usize;
    let mut quote: Option<u8> = None;
    let mut escaped = false;
    for &b in bytes {
        match quote {
            Some(q) => {
                if escaped {
                    escaped = false;
                } else if b == b'\\' {
                    escaped = true;
                } else if b == q {
                    quote = None;
                }
            }
            None => match b {
                b'"' | b'\'' => quote = Some(b),
                b'[' | b'{' | b'(' => {
                    depth += 1;
                    if depth > max {
                        return true;
                    }
                }
                b']' | b'}' | b')' => depth = depth.saturating_sub(1),
                _ => {}
            },
        }
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_bad_values_are_named() {
        assert!(Limits::default().validate().is_empty());
        let bad = Limits {
            max_elements_per_sample: 10,
            max_elements_per_file: 5,
            max_decompressed_bytes: 0,
            max_json_depth: 129,
        };
        let keys: Vec<String> = bad.validate().into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["max_decompressed_bytes", "max_elements_per_sample", "max_json_depth"]);
    }

    #[test]
    fn shapes_are_checked_in_total_and_per_sample_without_overflow() {
        let l = Limits { max_elements_per_sample: 100, max_elements_per_file: 1000, ..Limits::default() };
        assert_eq!(l.check_shape("x", &[10, 10], &[10]), Ok(100));
        // One sample of 200 elements (input shape known) is over the per-sample cap.
        let e = l.check_shape("x", &[200], &[200]).unwrap_err();
        assert_eq!(e.reason, RejectReason::TooLarge);
        assert!(e.message.contains("per sample"), "{}", e.message);
        // A batch of 5 × 200 fits the file cap but not the sample cap.
        assert!(l.check_shape("x", &[5, 200], &[]).unwrap_err().message.contains("per sample"));
        let e = l.check_shape("x", &[1_000_000_000_000, 1, 28, 28], &[1, 28, 28]).unwrap_err();
        assert!(e.message.contains("784000000000000 elements"), "{}", e.message);
        let e = l.check_shape("x", &[usize::MAX, usize::MAX], &[]).unwrap_err();
        assert!(e.message.contains("64 bits"), "{}", e.message);
        // A zero-length batch declares nothing.
        assert_eq!(l.check_shape("x", &[0, 10], &[10]), Ok(0));
    }

    #[test]
    fn depth_counts_brackets_outside_strings_only() {
        assert!(!nesting_exceeds(br#"{"a": [[1, 2], [3]]}"#, 3));
        assert!(nesting_exceeds(br#"{"a": [[1, 2], [3]]}"#, 2));
        assert!(!nesting_exceeds(br#"{"a": "[[[[[[[[\"[[[["}"#, 1));
        assert!(!nesting_exceeds(b"{'descr': '<f4', 'shape': (3, 4), }", 2));
        assert!(nesting_exceeds(&[b'['; 10_000], 128));
        let l = Limits { max_json_depth: 2, ..Limits::default() };
        let e = l.check_depth("req", b"[[[0]]]").unwrap_err();
        assert_eq!(
            (e.reason, e.message.as_str()),
            (RejectReason::TooLarge, "req: nested deeper than 2 levels (limits.max_json_depth)")
        );
    }
}
