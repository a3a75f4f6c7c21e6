//! Min–max normalisation of one map (docs/spec/scores.md#normalisation) and the variance score's optional
//! binarisation.

use ndarray::{Array2, ArrayView2};

/// `N(M) = (M − min M) / (max M − min M)` over the pixels of one map.
///
/// A constant map (`max = min`, e.g. the all-zero map of a dead ReLU) becomes all zeros, never NaN:
/// such a map carries no spatial information, and zeros keep every score finite. The arithmetic is done
/// in `f64` and rounded once to `f32`, so maps with a tiny but non-zero range are still spread over
/// `[0, 1]` rather than lost to cancellation. NaN pixels are not filtered: they come out NaN (they
/// would mean a broken attribution graph, which must not be hidden by the scores).
pub fn normalize_map(map: ArrayView2<f32>) -> Array2<f32> {
    let mut out = Vec::with_capacity(map.len());
    normalize_into(map, &mut out);
    Array2::from_shape_vec(map.raw_dim(), out).expect("normalize_into writes one value per pixel")
}

/// The one implementation behind every normalisation in this module, so that the whole-array and the
/// streaming paths produce bit-identical normalised values. Writes the pixels in logical (row-major)
/// order into `out`, which is cleared first.
pub(crate) fn normalize_into(map: ArrayView2<f32>, out: &mut Vec<f32>) {
    out.clear();
    let (lo, hi) = min_max(map.iter().copied());
    let range = f64::from(hi) - f64::from(lo);
    if range > 0.0 && range.is_finite() {
        let lo = f64::from(lo);
        out.extend(map.iter().map(|&v| ((f64::from(v) - lo) / range) as f32));
    } else {
        // Constant map (or one whose only non-NaN pixels are ±inf: equally meaningless).
        out.extend(map.iter().map(|&v| if v.is_nan() { f32::NAN } else { 0.0 }));
    }
}

/// Minimum and maximum ignoring NaN; `(+inf, −inf)` for an empty or all-NaN map, which then takes the
/// constant-map branch above.
fn min_max(values: impl Iterator<Item = f32>) -> (f32, f32) {
    values.fold((f32::INFINITY, f32::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)))
}

/// Paper Fig. 5: a normalised value `≥ threshold` becomes 1, any other 0. Applied after normalisation,
/// so the threshold is a fraction of each map's own range.
pub(crate) fn binarize_in_place(values: &mut [f32], threshold: f32) {
    for v in values {
        *v = if *v >= threshold { 1.0 } else { 0.0 };
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn spreads_a_map_over_unit_interval() {
        let m = array![[2.0f32, 4.0], [6.0, 10.0]];
        assert_eq!(normalize_map(m.view()), array![[0.0f32, 0.25], [0.5, 1.0]]);
    }

    #[test]
    fn negative_values_are_shifted() {
        let m = array![[-1.0f32, 0.0], [1.0, 3.0]];
        assert_eq!(normalize_map(m.view()), array![[0.0f32, 0.25], [0.5, 1.0]]);
    }

    #[test]
    fn constant_map_becomes_zeros_not_nan() {
        for c in [0.0f32, 7.5, -3.0] {
            let m = Array2::from_elem((3, 2), c);
            assert_eq!(normalize_map(m.view()), Array2::<f32>::zeros((3, 2)));
        }
    }

    #[test]
    fn single_pixel_map_is_constant() {
        assert_eq!(normalize_map(array![[5.0f32]].view()), array![[0.0f32]]);
    }

    #[test]
    fn tiny_range_is_still_spread() {
        let m = array![[1.0f32, 1.0 + f32::EPSILON]];
        assert_eq!(normalize_map(m.view()), array![[0.0f32, 1.0]]);
    }

    #[test]
    fn binarisation_threshold_is_inclusive() {
        let mut v = [0.0f32, 0.49, 0.5, 0.51, 1.0];
        binarize_in_place(&mut v, 0.5);
        assert_eq!(v, [0.0, 0.0, 1.0, 1.0, 1.0]);
    }
}
