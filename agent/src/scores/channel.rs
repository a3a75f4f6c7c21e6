//! Channel aggregation `φ_C` (docs/spec/scores.md#channel-aggregation): one `[H, W]` map per embedding
//! component.
//!
//! In production the attribution graph folds the channels itself; this is the reference path that tests
//! and tools use to check the graph against.

use ndarray::{Array3, ArrayView4, Axis};

use super::Aggregation;

/// `[D, C, H, W]` attributions → `[D, H, W]` maps, folding the channel axis with `agg`.
///
/// Accumulates in `f64`; `var` is the population variance over channels (ddof = 0), computed in two
/// passes (mean, then squared deviations) so large channel means do not cancel the spread. `C = 0`
/// gives all-zero maps (an empty sum), not NaN.
pub fn channel_aggregate(a: ArrayView4<f32>, agg: Aggregation) -> Array3<f32> {
    let (d, c, h, w) = a.dim();
    let mut out = Array3::<f32>::zeros((d, h, w));
    if c == 0 {
        return out;
    }
    let inv_c = 1.0 / c as f64;
    for (component, mut map) in a.axis_iter(Axis(0)).zip(out.axis_iter_mut(Axis(0))) {
        for ((y, x), v) in map.indexed_iter_mut() {
            let channels = component.index_axis(Axis(1), y).index_axis_move(Axis(1), x);
            let value = match agg {
                Aggregation::Mean => channels.iter().map(|&a| f64::from(a)).sum::<f64>() * inv_c,
                Aggregation::Abs => channels.iter().map(|&a| f64::from(a).abs()).sum::<f64>() * inv_c,
                Aggregation::Var => {
                    let mean = channels.iter().map(|&a| f64::from(a)).sum::<f64>() * inv_c;
                    channels.iter().map(|&a| (f64::from(a) - mean).powi(2)).sum::<f64>() * inv_c
                }
            };
            *v = value as f32;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{Array4, array};

    /// The channels of component `d` at pixel `(0, x)`.
    fn pixel(a: &mut Array4<f32>, d: usize, x: usize) -> ndarray::ArrayViewMut1<'_, f32> {
        a.index_axis_mut(Axis(0), d).index_axis_move(Axis(1), 0).index_axis_move(Axis(1), x)
    }

    /// D = 2, C = 3, H = 1, W = 2; values chosen so every result is exact in binary.
    fn sample() -> Array4<f32> {
        let mut a = Array4::<f32>::zeros((2, 3, 1, 2));
        // component 0, pixel (0,0): channels 1, -3, 5; pixel (0,1): 2, 2, 2
        pixel(&mut a, 0, 0).assign(&array![1.0, -3.0, 5.0]);
        pixel(&mut a, 0, 1).assign(&array![2.0, 2.0, 2.0]);
        // component 1, pixel (0,0): -6, 0, 0; pixel (0,1): 0, 3, -3
        pixel(&mut a, 1, 0).assign(&array![-6.0, 0.0, 0.0]);
        pixel(&mut a, 1, 1).assign(&array![0.0, 3.0, -3.0]);
        a
    }

    #[test]
    fn mean_over_channels() {
        let m = channel_aggregate(sample().view(), Aggregation::Mean);
        assert_eq!(m, array![[[1.0f32, 2.0]], [[-2.0, 0.0]]]);
    }

    #[test]
    fn abs_over_channels() {
        let m = channel_aggregate(sample().view(), Aggregation::Abs);
        assert_eq!(m, array![[[3.0f32, 2.0]], [[2.0, 2.0]]]);
    }

    #[test]
    fn population_variance_over_channels() {
        // (0² + 4² + 4²)/3 = 32/3; 0; (4² + 2² + 2²)/3 = 8; (0 + 9 + 9)/3 = 6
        let m = channel_aggregate(sample().view(), Aggregation::Var);
        assert_eq!(m, array![[[(32.0f64 / 3.0) as f32, 0.0]], [[8.0, 6.0]]]);
    }

    #[test]
    fn no_channels_gives_zeros() {
        let a = Array4::<f32>::zeros((2, 0, 2, 2));
        assert_eq!(channel_aggregate(a.view(), Aggregation::Var), Array3::<f32>::zeros((2, 2, 2)));
    }
}
