//! One accumulator for both per-sample maps the engine needs from the same chunks: the embedding map
//! `E` (for the noise score) and the variance score.

use ndarray::{Array2, ArrayView3, Axis};

use super::embedding::{EmbeddingAccumulator, check_chunk};
use super::normalize::normalize_into;
use super::variance::VarianceAccumulator;
use super::{Aggregation, ScoreError};

/// Pushed each `[k, H, W]` chunk once; normalises each row once and feeds both the embedding
/// aggregation and the variance score. Results are bit-identical to [`super::embedding_aggregate`]
/// and [`super::variance_score`] on the whole `[D, H, W]` array, whatever the chunk sizes.
#[derive(Debug, Clone)]
pub struct ScoreAccumulator {
    height: usize,
    width: usize,
    embedding: EmbeddingAccumulator,
    variance: VarianceAccumulator,
    normalized: Vec<f32>,
}

/// What one sample's rows reduce to.
#[derive(Debug, Clone, PartialEq)]
pub struct SampleMaps {
    /// `E(x)`, ready for [`super::NoiseReference::score`].
    pub embedding: Array2<f32>,
    pub variance_score: f64,
}

impl ScoreAccumulator {
    pub fn new(
        height: usize,
        width: usize,
        embedding_agg: Aggregation,
        normalize_dims: bool,
        binarize: Option<f32>,
    ) -> Self {
        ScoreAccumulator {
            height,
            width,
            embedding: EmbeddingAccumulator::new(height, width, embedding_agg, normalize_dims),
            variance: VarianceAccumulator::new(height, width, binarize),
            normalized: Vec::new(),
        }
    }

    /// The rows pushed are a random subset of `d` components (docs/spec/scores.md#cost); see
    /// [`super::subset_variance_factor`].
    pub fn subset_of(self, d: usize) -> Self {
        ScoreAccumulator {
            embedding: self.embedding.subset_of(d),
            variance: self.variance.subset_of(d),
            ..self
        }
    }

    pub fn push(&mut self, chunk: ArrayView3<f32>) -> Result<(), ScoreError> {
        check_chunk(chunk, self.height, self.width)?;
        let mut normalized = std::mem::take(&mut self.normalized);
        for row in chunk.axis_iter(Axis(0)) {
            normalize_into(row, &mut normalized);
            self.variance.add_normalized_row(&normalized);
            if self.embedding.normalize_dims() {
                self.embedding.add_row(normalized.iter().copied());
            } else {
                self.embedding.add_row(row.iter().copied());
            }
        }
        self.normalized = normalized;
        Ok(())
    }

    pub fn rows(&self) -> usize {
        self.variance.rows()
    }

    pub fn finish(&self) -> Result<SampleMaps, ScoreError> {
        Ok(SampleMaps { embedding: self.embedding.finish()?, variance_score: self.variance.finish()? })
    }

    pub fn reset(&mut self) {
        self.embedding.reset();
        self.variance.reset();
    }
}

#[cfg(test)]
mod tests {
    use super::super::{embedding_aggregate, noise_score, variance_score};
    use super::*;
    use ndarray::Array3;
    use proptest::prelude::*;

    const AGGS: [Aggregation; 3] = [Aggregation::Mean, Aggregation::Abs, Aggregation::Var];

    /// `[D, H, W]` maps with small dimensions and values of mixed sign and magnitude.
    fn maps_strategy() -> impl Strategy<Value = Array3<f32>> {
        (1usize..7, 1usize..5, 1usize..5).prop_flat_map(|(d, h, w)| {
            proptest::collection::vec(-100.0f32..100.0, d * h * w)
                .prop_map(move |v| Array3::from_shape_vec((d, h, w), v).unwrap())
        })
    }

    fn chunked(maps: &Array3<f32>, k: usize, agg: Aggregation, norm: bool, bin: Option<f32>) -> SampleMaps {
        let (d, h, w) = maps.dim();
        let mut acc = ScoreAccumulator::new(h, w, agg, norm, bin);
        let mut start = 0;
        while start < d {
            let end = (start + k).min(d);
            acc.push(maps.slice_axis(Axis(0), (start..end).into())).unwrap();
            start = end;
        }
        acc.finish().unwrap()
    }

    fn close(a: f64, b: f64, tol: f64) -> bool {
        (a - b).abs() <= tol
    }

    proptest! {
        #[test]
        fn chunked_equals_whole(maps in maps_strategy(), k in 1usize..8, norm: bool, bin: bool) {
            let bin = bin.then_some(0.5);
            for agg in AGGS {
                let got = chunked(&maps, k, agg, norm, bin);
                prop_assert_eq!(&got.embedding, &embedding_aggregate(maps.view(), agg, norm).unwrap());
                prop_assert_eq!(got.variance_score, variance_score(maps.view(), bin).unwrap());
                // The single-purpose accumulators agree too.
                let (_, h, w) = maps.dim();
                let mut e = EmbeddingAccumulator::new(h, w, agg, norm);
                let mut v = VarianceAccumulator::new(h, w, bin);
                for c in maps.axis_chunks_iter(Axis(0), k) {
                    e.push(c).unwrap();
                    v.push(c).unwrap();
                }
                prop_assert_eq!(e.finish().unwrap(), got.embedding);
                prop_assert_eq!(v.finish().unwrap(), got.variance_score);
            }
        }

        #[test]
        fn scores_are_bounded(x in maps_strategy(), n1 in maps_strategy(), bin: bool) {
            let vs = variance_score(x.view(), bin.then_some(0.5)).unwrap();
            prop_assert!((0.0..=0.25).contains(&vs), "VS = {}", vs);
            let (_, h, w) = x.dim();
            // Reuse the second array's values reshaped to the first one's pixels as a noise map.
            let noise: Vec<Array2<f32>> = n1.iter().cycle().take(2 * h * w).copied().collect::<Vec<_>>()
                .chunks(h * w).map(|c| Array2::from_shape_vec((h, w), c.to_vec()).unwrap()).collect();
            for agg in AGGS {
                let e = embedding_aggregate(x.view(), agg, false).unwrap();
                let ns = noise_score(e.view(), &noise).unwrap();
                prop_assert!((0.0..=1.0).contains(&ns), "NS = {}", ns);
            }
        }

        /// Scaling every per-component map by `c > 0` or adding a constant leaves every score unchanged
        /// (up to `f32` rounding of the transformed inputs). Shifts: `mean` shifts `E` by the same
        /// constant and `var` ignores it, so min–max normalisation of `E` removes both; `abs` does not
        /// commute with a shift (`|x + b| ≠ |x| + b`), so for `abs` the shift is checked only with
        /// `normalize_dims`, where each map is normalised before aggregation.
        #[test]
        fn scale_and_shift_change_no_score(
            x in maps_strategy(), noise in maps_strategy(), c in 0.01f32..100.0, b in -50.0f32..50.0,
        ) {
            let (_, h, w) = x.dim();
            let noise: Vec<Array2<f32>> = noise.outer_iter().take(2)
                .map(|m| Array2::from_shape_fn((h, w), |(i, j)| m[[i % m.nrows(), j % m.ncols()]]))
                .collect();
            let vs = variance_score(x.view(), None).unwrap();
            let scaled = x.mapv(|v| v * c);
            let shifted = x.mapv(|v| v + b);
            prop_assert!(close(variance_score(scaled.view(), None).unwrap(), vs, 1e-4));
            prop_assert!(close(variance_score(shifted.view(), None).unwrap(), vs, 1e-4));
            for agg in AGGS {
                let ns = |m: &Array3<f32>, norm| {
                    noise_score(embedding_aggregate(m.view(), agg, norm).unwrap().view(), &noise).unwrap()
                };
                prop_assert!(close(ns(&scaled, false), ns(&x, false), 1e-4), "{:?} scaled", agg);
                prop_assert!(close(ns(&shifted, true), ns(&x, true), 1e-4), "{:?} shifted", agg);
                if agg != Aggregation::Abs {
                    prop_assert!(close(ns(&shifted, false), ns(&x, false), 1e-4), "{:?} shifted", agg);
                }
            }
        }
    }

    #[test]
    fn shape_mismatch_is_rejected() {
        let mut acc = ScoreAccumulator::new(2, 2, Aggregation::Var, false, None);
        assert!(acc.push(Array3::<f32>::zeros((1, 3, 2)).view()).is_err());
        assert!(acc.finish().is_err());
    }
}
