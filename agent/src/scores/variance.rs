//! The variance score (conciseness), paper eq. (3): `VS = mean_p Var_j [N(M_j)(p)]`.

use ndarray::{ArrayView3, Axis};

use super::ScoreError;
use super::embedding::check_chunk;
use super::moments::PixelMoments;
use super::normalize::{binarize_in_place, normalize_into};
use super::subset::subset_variance_factor;

/// Streams `[k, H, W]` chunks of raw per-component maps into `VS`.
///
/// Every row is min–max normalised (always, docs/spec/scores.md#normalisation), optionally binarised, and
/// folded into per-pixel Welford moments; `VS` is the mean over pixels of the population variance over
/// components. Since every normalised value lies in `[0, 1]`, Popoviciu's inequality bounds each per-pixel
/// variance, and hence `VS`, by `1/4`, independently of `D`.
#[derive(Debug, Clone)]
pub struct VarianceAccumulator {
    height: usize,
    width: usize,
    binarize: Option<f32>,
    population: Option<usize>,
    moments: PixelMoments,
    normalized: Vec<f32>,
    binarized: Vec<f32>,
}

impl VarianceAccumulator {
    /// `binarize = Some(t)`: after normalisation a value `≥ t` becomes 1, any other 0 (paper Fig. 5).
    pub fn new(height: usize, width: usize, binarize: Option<f32>) -> Self {
        VarianceAccumulator {
            height,
            width,
            binarize,
            population: None,
            moments: PixelMoments::new(height * width),
            normalized: Vec::new(),
            binarized: Vec::new(),
        }
    }

    /// Declares the rows a random subset of `d` components (docs/spec/scores.md#cost):
    /// [`finish`](Self::finish) applies [`subset_variance_factor`], which makes `VS` an unbiased estimate of
    /// the all-components score.
    pub fn subset_of(mut self, d: usize) -> Self {
        self.population = Some(d);
        self
    }

    /// Folds in a `[k, H, W]` chunk of raw (unnormalised) per-component maps.
    pub fn push(&mut self, chunk: ArrayView3<f32>) -> Result<(), ScoreError> {
        check_chunk(chunk, self.height, self.width)?;
        let mut normalized = std::mem::take(&mut self.normalized);
        for row in chunk.axis_iter(Axis(0)) {
            normalize_into(row, &mut normalized);
            self.add_normalized_row(&normalized);
        }
        self.normalized = normalized;
        Ok(())
    }

    /// Adds one row already min–max normalised by `normalize_into`.
    pub(crate) fn add_normalized_row(&mut self, normalized: &[f32]) {
        match self.binarize {
            None => self.moments.push(normalized.iter().copied()),
            Some(t) => {
                self.binarized.clear();
                self.binarized.extend_from_slice(normalized);
                binarize_in_place(&mut self.binarized, t);
                self.moments.push(self.binarized.iter().copied());
            }
        }
    }

    pub fn rows(&self) -> usize {
        self.moments.rows()
    }

    /// `VS`; errors with no rows, no pixels, or a declared subset too small for a variance.
    pub fn finish(&self) -> Result<f64, ScoreError> {
        if self.moments.rows() == 0 {
            return Err(ScoreError::Empty("embedding components"));
        }
        let pixels = self.height * self.width;
        if pixels == 0 {
            return Err(ScoreError::Empty("pixels"));
        }
        let factor = match self.population {
            Some(d) => subset_variance_factor(d, self.moments.rows())?,
            None => 1.0,
        };
        // Popoviciu bounds each exact per-pixel variance of values in [0, 1] by 1/4; clamping removes
        // the last-bit overshoot of floating-point rounding (seen as 0.25000000000000006 on
        // complementary binary maps), before the subset factor, which may legitimately lift an
        // unbiased estimate above 1/4.
        let sum: f64 = self.moments.variances().map(|v| v.min(0.25)).sum();
        Ok(sum / pixels as f64 * factor)
    }

    pub fn reset(&mut self) {
        self.moments.reset();
    }
}

/// `VS` of one sample's `[D, H, W]` raw per-component maps (whole-array form of
/// [`VarianceAccumulator`], bit-identical to it).
pub fn variance_score(maps: ArrayView3<f32>, binarize: Option<f32>) -> Result<f64, ScoreError> {
    let (_, h, w) = maps.dim();
    let mut acc = VarianceAccumulator::new(h, w, binarize);
    acc.push(maps)?;
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    #[test]
    fn hand_computed_score() {
        // Normalised maps (1×3 pixels): [0, 0.5, 1], [1, 0.5, 0] (from [2,3,4] and [9,5,1]).
        // Per-pixel population variances: 0.25, 0, 0.25 → VS = 1/6.
        let m = array![[[2.0f32, 3.0, 4.0]], [[9.0, 5.0, 1.0]]];
        let vs = variance_score(m.view(), None).unwrap();
        assert!((vs - 1.0 / 6.0).abs() < 1e-12, "{vs}");
    }

    #[test]
    fn binarised_score() {
        // Normalised [0, .25, 1] and [1, .75, 0]; ≥ 0.5 → [0, 0, 1] and [1, 1, 0]; variances 1/4 each.
        let m = array![[[0.0f32, 1.0, 4.0]], [[4.0, 3.0, 0.0]]];
        assert_eq!(variance_score(m.view(), Some(0.5)).unwrap(), 0.25);
        // Without binarisation: variances 1/4, 1/16, 1/4 → 9/48.
        assert!((variance_score(m.view(), None).unwrap() - 9.0 / 48.0).abs() < 1e-12);
    }

    #[test]
    fn identical_components_score_zero() {
        let m = Array3::from_shape_fn((5, 2, 2), |(_, y, x)| (y * 2 + x) as f32);
        assert_eq!(variance_score(m.view(), None).unwrap(), 0.0);
    }

    #[test]
    fn single_component_scores_zero() {
        let m = array![[[1.0f32, 2.0], [3.0, 4.0]]];
        assert_eq!(variance_score(m.view(), None).unwrap(), 0.0);
    }

    #[test]
    fn constant_maps_score_zero_not_nan() {
        let m = Array3::<f32>::zeros((4, 3, 3));
        assert_eq!(variance_score(m.view(), None).unwrap(), 0.0);
    }

    #[test]
    fn popoviciu_bound_is_reached_by_complementary_binary_maps() {
        let m = array![[[0.0f32, 1.0]], [[1.0, 0.0]], [[0.0, 1.0]], [[1.0, 0.0]]];
        assert_eq!(variance_score(m.view(), None).unwrap(), 0.25);
    }

    #[test]
    fn empty_inputs_are_errors() {
        assert!(variance_score(Array3::<f32>::zeros((0, 2, 2)).view(), None).is_err());
        assert!(variance_score(Array3::<f32>::zeros((2, 0, 2)).view(), None).is_err());
    }
}
