//! Embedding aggregation `φ_E` (docs/spec/scores.md#embedding-aggregation): `D` per-component maps → one map
//! `E` per input.

use ndarray::{Array2, ArrayView2, ArrayView3, Axis};

use super::moments::PixelMoments;
use super::normalize::normalize_into;
use super::subset::subset_variance_factor;
use super::{Aggregation, ScoreError};

/// Per-pixel state of one aggregation.
#[derive(Debug, Clone)]
enum State {
    /// Running `Σ_j M_j(p)` (for `mean`) or `Σ_j |M_j(p)|` (for `abs`), in `f64`.
    Sum {
        values: Vec<f64>,
        abs: bool,
    },
    Var(PixelMoments),
}

/// Streams `[k, H, W]` chunks of per-component maps into the embedding-aggregated map `E` (`[H, W]`).
///
/// The attribution graph hands rows over in chunks of `K`; each row is folded in on arrival, so memory
/// is `O(H·W)` whatever `D` is, and the result does not depend on `K` (bit-identical to
/// [`embedding_aggregate`]). With `normalize_dims` every row is min–max normalised first
/// (docs/spec/scores.md#normalisation).
#[derive(Debug, Clone)]
pub struct EmbeddingAccumulator {
    height: usize,
    width: usize,
    normalize_dims: bool,
    population: Option<usize>,
    state: State,
    rows: usize,
    scratch: Vec<f32>,
}

impl EmbeddingAccumulator {
    pub fn new(height: usize, width: usize, agg: Aggregation, normalize_dims: bool) -> Self {
        let pixels = height * width;
        let state = match agg {
            Aggregation::Mean => State::Sum { values: vec![0.0; pixels], abs: false },
            Aggregation::Abs => State::Sum { values: vec![0.0; pixels], abs: true },
            Aggregation::Var => State::Var(PixelMoments::new(pixels)),
        };
        EmbeddingAccumulator {
            height,
            width,
            normalize_dims,
            population: None,
            state,
            rows: 0,
            scratch: Vec::new(),
        }
    }

    /// Declares that the rows pushed are a random subset (docs/spec/scores.md#cost, [`super::choose_dims`])
    /// of `d` components: `var` then applies [`subset_variance_factor`] at [`finish`](Self::finish);
    /// `mean` and `abs` need no correction.
    pub fn subset_of(mut self, d: usize) -> Self {
        self.population = Some(d);
        self
    }

    /// Folds in a `[k, H, W]` chunk of per-component maps (`k` may be 0).
    pub fn push(&mut self, chunk: ArrayView3<f32>) -> Result<(), ScoreError> {
        check_chunk(chunk, self.height, self.width)?;
        let mut scratch = std::mem::take(&mut self.scratch);
        for row in chunk.axis_iter(Axis(0)) {
            if self.normalize_dims {
                normalize_into(row, &mut scratch);
                self.add_row(scratch.iter().copied());
            } else {
                self.add_row(row.iter().copied());
            }
        }
        self.scratch = scratch;
        Ok(())
    }

    pub(crate) fn normalize_dims(&self) -> bool {
        self.normalize_dims
    }

    /// Adds one row that the caller has already normalised when `normalize_dims` is set.
    pub(crate) fn add_row(&mut self, values: impl Iterator<Item = f32>) {
        self.rows += 1;
        match &mut self.state {
            State::Sum { values: sums, abs } => {
                for (s, v) in sums.iter_mut().zip(values) {
                    let v = f64::from(v);
                    *s += if *abs { v.abs() } else { v };
                }
            }
            State::Var(m) => m.push(values),
        }
    }

    /// Rows (components) folded in since creation or the last [`reset`](Self::reset).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The map `E`; errors when no row was pushed (an aggregate of nothing) or when the subset
    /// declared with [`subset_of`](Self::subset_of) is too small for a variance.
    pub fn finish(&self) -> Result<Array2<f32>, ScoreError> {
        if self.rows == 0 {
            return Err(ScoreError::Empty("embedding components"));
        }
        let n = self.rows as f64;
        let values: Vec<f32> = match &self.state {
            State::Sum { values, .. } => values.iter().map(|s| (s / n) as f32).collect(),
            State::Var(m) => {
                let factor = match self.population {
                    Some(d) => subset_variance_factor(d, self.rows)?,
                    None => 1.0,
                };
                m.variances().map(|v| (v * factor) as f32).collect()
            }
        };
        Ok(Array2::from_shape_vec((self.height, self.width), values).expect("one value per pixel"))
    }

    /// Starts over for the next sample, keeping the allocations.
    pub fn reset(&mut self) {
        self.rows = 0;
        match &mut self.state {
            State::Sum { values, .. } => values.fill(0.0),
            State::Var(m) => m.reset(),
        }
    }
}

/// A chunk must be `[k, H, W]` with the accumulator's `H` and `W`.
pub(crate) fn check_chunk(chunk: ArrayView3<f32>, height: usize, width: usize) -> Result<(), ScoreError> {
    let (k, h, w) = chunk.dim();
    if (h, w) != (height, width) {
        return Err(ScoreError::ShapeMismatch { expected: vec![k, height, width], got: vec![k, h, w] });
    }
    Ok(())
}

/// `[D, H, W]` maps → `E` (`[H, W]`): `mean`, `abs` or `var` (population variance, ddof = 0) over
/// `j`, after per-map normalisation when `normalize_dims`. Accumulated in `f64`. Errors when `D = 0`.
pub fn embedding_aggregate(
    maps: ArrayView3<f32>,
    agg: Aggregation,
    normalize_dims: bool,
) -> Result<Array2<f32>, ScoreError> {
    let (_, h, w) = maps.dim();
    let mut acc = EmbeddingAccumulator::new(h, w, agg, normalize_dims);
    acc.push(maps)?;
    acc.finish()
}

/// Convenience for callers that hold maps one by one (e.g. Grad-CAM per component).
pub fn embedding_aggregate_maps(
    maps: &[ArrayView2<f32>],
    agg: Aggregation,
    normalize_dims: bool,
) -> Result<Array2<f32>, ScoreError> {
    let first = maps.first().ok_or(ScoreError::Empty("embedding components"))?;
    let (h, w) = first.dim();
    let mut acc = EmbeddingAccumulator::new(h, w, agg, normalize_dims);
    for m in maps {
        acc.push(m.view().insert_axis(Axis(0)))?;
    }
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array3, array};

    /// D = 3 maps of 1×2 pixels.
    fn maps() -> Array3<f32> {
        array![[[1.0f32, -2.0]], [[3.0, 0.0]], [[-1.0, 8.0]]]
    }

    #[test]
    fn mean_over_components() {
        let e = embedding_aggregate(maps().view(), Aggregation::Mean, false).unwrap();
        assert_eq!(e, array![[1.0f32, 2.0]]);
    }

    #[test]
    fn abs_over_components() {
        let e = embedding_aggregate(maps().view(), Aggregation::Abs, false).unwrap();
        assert_eq!(e, array![[5.0f32 / 3.0, 10.0 / 3.0]]);
    }

    #[test]
    fn population_variance_over_components() {
        // pixel 0: mean 1, deviations 0, 2, -2 → 8/3; pixel 1: mean 2, deviations -4, -2, 6 → 56/3
        let e = embedding_aggregate(maps().view(), Aggregation::Var, false).unwrap();
        let expected = array![[8.0f32 / 3.0, 56.0 / 3.0]];
        assert!((&e - &expected).iter().all(|d| d.abs() < 1e-5), "{e}");
    }

    #[test]
    fn normalize_dims_normalises_each_map_first() {
        // normalised maps: [1, 0], [1, 0], [0, 1] → mean [2/3, 1/3]; var [2/9, 2/9]
        let e = embedding_aggregate(maps().view(), Aggregation::Mean, true).unwrap();
        assert_eq!(e, array![[2.0f32 / 3.0, 1.0 / 3.0]]);
        let v = embedding_aggregate(maps().view(), Aggregation::Var, true).unwrap();
        assert!((&v - &array![[2.0f32 / 9.0, 2.0 / 9.0]]).iter().all(|d| d.abs() < 1e-6), "{v}");
    }

    #[test]
    fn single_maps_api_matches() {
        let m = maps();
        let views: Vec<_> = m.axis_iter(Axis(0)).collect();
        for agg in [Aggregation::Mean, Aggregation::Abs, Aggregation::Var] {
            assert_eq!(
                embedding_aggregate_maps(&views, agg, true).unwrap(),
                embedding_aggregate(m.view(), agg, true).unwrap()
            );
        }
    }

    #[test]
    fn empty_and_mismatched_inputs_are_errors() {
        let none = Array3::<f32>::zeros((0, 2, 2));
        assert!(embedding_aggregate(none.view(), Aggregation::Var, false).is_err());
        let mut acc = EmbeddingAccumulator::new(2, 2, Aggregation::Mean, false);
        assert!(acc.push(Array3::<f32>::zeros((1, 2, 3)).view()).is_err());
    }

    #[test]
    fn reset_starts_over() {
        let mut acc = EmbeddingAccumulator::new(1, 2, Aggregation::Var, false);
        acc.push(Array3::<f32>::from_elem((2, 1, 2), 9.0).view()).unwrap();
        acc.reset();
        acc.push(maps().view()).unwrap();
        assert_eq!(
            acc.finish().unwrap(),
            embedding_aggregate(maps().view(), Aggregation::Var, false).unwrap()
        );
    }
}
