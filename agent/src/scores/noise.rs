//! The noise score (informativeness), paper eq. (1), and its benchmark, eq. (2).

use ndarray::{Array2, ArrayView2};

use super::ScoreError;
use super::normalize::normalize_map;

/// The noise side of the noise score, prepared once at start-up: the normalised embedding-aggregated
/// maps `N(E(x̃_i))` of the noise inputs, and their benchmark.
///
/// The engine scores every monitored sample against the same noise inputs (drawn once from
/// `noise_seed`), so normalising their maps once saves `n_noise` normalisations per sample.
#[derive(Debug, Clone, PartialEq)]
pub struct NoiseReference {
    normalized: Vec<Array2<f32>>,
}

impl NoiseReference {
    /// Errors when `noise_e` is empty (the score would be a mean over nothing) or the maps differ in
    /// shape.
    pub fn new(noise_e: &[Array2<f32>]) -> Result<Self, ScoreError> {
        let first = noise_e.first().ok_or(ScoreError::Empty("noise inputs"))?;
        for e in noise_e {
            check_same_shape(first.view(), e.view())?;
        }
        Ok(NoiseReference { normalized: noise_e.iter().map(|e| normalize_map(e.view())).collect() })
    }

    /// `NS(x) = mean_i mean_p |N(E(x))_p − N(E(x̃_i))_p|`, in `[0, 1]`.
    pub fn score(&self, e_x: ArrayView2<f32>) -> Result<f64, ScoreError> {
        check_same_shape(self.normalized[0].view(), e_x)?;
        let x = normalize_map(e_x);
        let total: f64 = self.normalized.iter().map(|n| mean_abs_diff(x.view(), n.view())).sum();
        Ok(total / self.normalized.len() as f64)
    }

    /// `NS_bench`: the mean over the `n(n − 1)/2` unordered pairs of distinct noise inputs of the MAE
    /// of their normalised maps. The MAE is symmetric, so ordered pairs would give the same value;
    /// pairing a map with itself would add zeros, so it is excluded.
    ///
    /// With fewer than two noise inputs there is no pair and no benchmark: a typed error
    /// ([`ScoreError::TooFewNoiseInputs`]) rather than NaN, so that a configuration with
    /// `n_noise = 1` fails loudly where the benchmark is needed instead of exporting NaN.
    pub fn benchmark(&self) -> Result<f64, ScoreError> {
        let n = self.normalized.len();
        if n < 2 {
            return Err(ScoreError::TooFewNoiseInputs(n));
        }
        let mut total = 0.0;
        for (i, a) in self.normalized.iter().enumerate() {
            for b in &self.normalized[i + 1..] {
                total += mean_abs_diff(a.view(), b.view());
            }
        }
        Ok(total / (n * (n - 1) / 2) as f64)
    }

    pub fn len(&self) -> usize {
        self.normalized.len()
    }

    pub fn is_empty(&self) -> bool {
        self.normalized.is_empty()
    }
}

/// `NS` of one sample from its map `E(x)` and the noise inputs' maps (see [`NoiseReference::score`];
/// use [`NoiseReference`] directly to normalise the noise maps only once).
pub fn noise_score(e_x: ArrayView2<f32>, noise_e: &[Array2<f32>]) -> Result<f64, ScoreError> {
    NoiseReference::new(noise_e)?.score(e_x)
}

/// `NS_bench` of the noise inputs' maps (see [`NoiseReference::benchmark`]).
pub fn noise_benchmark(noise_e: &[Array2<f32>]) -> Result<f64, ScoreError> {
    NoiseReference::new(noise_e)?.benchmark()
}

/// Mean absolute difference of two equally shaped maps, accumulated in `f64`; 0 for empty maps.
fn mean_abs_diff(a: ArrayView2<f32>, b: ArrayView2<f32>) -> f64 {
    if a.is_empty() {
        return 0.0;
    }
    let sum: f64 = a.iter().zip(b.iter()).map(|(&p, &q)| (f64::from(p) - f64::from(q)).abs()).sum();
    sum / a.len() as f64
}

fn check_same_shape(expected: ArrayView2<f32>, got: ArrayView2<f32>) -> Result<(), ScoreError> {
    if expected.dim() != got.dim() {
        return Err(ScoreError::ShapeMismatch {
            expected: expected.shape().to_vec(),
            got: got.shape().to_vec(),
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    #[test]
    fn hand_computed_noise_score() {
        // N(E(x)) = [0, .5, 1, 1] (from [0, 1, 2, 2]); noise maps normalise to [1, .5, 0, 0]
        // (MAE = (1 + 0 + 1 + 1)/4 = .75) and [0, 0, 0, 1] (MAE = (0 + .5 + 1 + 0)/4 = .375).
        let e_x = array![[0.0f32, 1.0], [2.0, 2.0]];
        let noise = vec![array![[4.0f32, 3.0], [2.0, 2.0]], array![[5.0f32, 5.0], [5.0, 6.0]]];
        let ns = noise_score(e_x.view(), &noise).unwrap();
        assert!((ns - (0.75 + 0.375) / 2.0).abs() < 1e-12, "{ns}");
    }

    #[test]
    fn hand_computed_benchmark() {
        // Normalised: a = [1, .5, 0, 0], b = [0, 0, 0, 1], c = [0, 0, 0, 0] (constant).
        // MAE(a,b) = (1 + .5 + 0 + 1)/4 = .625; MAE(a,c) = 1.5/4 = .375; MAE(b,c) = .25.
        let noise = vec![
            array![[4.0f32, 3.0], [2.0, 2.0]],
            array![[5.0f32, 5.0], [5.0, 6.0]],
            array![[7.0f32, 7.0], [7.0, 7.0]],
        ];
        let bench = noise_benchmark(&noise).unwrap();
        assert!((bench - (0.625 + 0.375 + 0.25) / 3.0).abs() < 1e-12, "{bench}");
    }

    #[test]
    fn identical_maps_score_zero() {
        let e = array![[0.1f32, 0.7], [0.3, 0.2]];
        assert_eq!(noise_score(e.view(), &[e.clone(), e.clone()]).unwrap(), 0.0);
        assert_eq!(noise_benchmark(&[e.clone(), e]).unwrap(), 0.0);
    }

    #[test]
    fn too_few_noise_inputs_are_typed_errors() {
        let e = array![[0.1f32, 0.7]];
        assert_eq!(noise_score(e.view(), &[]), Err(ScoreError::Empty("noise inputs")));
        assert_eq!(noise_benchmark(&[]), Err(ScoreError::Empty("noise inputs")));
        assert_eq!(noise_benchmark(std::slice::from_ref(&e)), Err(ScoreError::TooFewNoiseInputs(1)));
        // One noise input still gives a noise score.
        assert!(noise_score(e.view(), std::slice::from_ref(&e)).is_ok());
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let e = array![[0.1f32, 0.7]];
        let other = array![[0.1f32], [0.7]];
        assert!(noise_score(e.view(), std::slice::from_ref(&other)).is_err());
        assert!(noise_benchmark(&[e, other]).is_err());
    }
}
