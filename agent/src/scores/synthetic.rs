//! Test-only synthetic per-component maps for measuring the large-`D` estimators.

use ndarray::{Array2, Array3};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

/// `[D, H, W]` maps shaped like gradient maps: three smooth spatial patterns (a blob, a horizontal and
/// a vertical ramp) mixed with per-component Gaussian weights, plus 30 % independent pixel noise, and
/// passed through `|·|` so the maps are non-negative like `abs`-aggregated attributions.
pub(crate) fn synthetic_maps(d: usize, h: usize, w: usize, seed: u64) -> Array3<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let (cy, cx) = (h as f64 * rng.random::<f64>(), w as f64 * rng.random::<f64>());
    let patterns = [
        Array2::from_shape_fn((h, w), |(y, x)| {
            (-((y as f64 - cy).powi(2) + (x as f64 - cx).powi(2)) / (h as f64)).exp()
        }),
        Array2::from_shape_fn((h, w), |(_, x)| x as f64 / w as f64),
        Array2::from_shape_fn((h, w), |(y, _)| y as f64 / h as f64),
    ];
    let mut maps = Array3::<f32>::zeros((d, h, w));
    for mut m in maps.outer_iter_mut() {
        let weights: Vec<f64> = (0..3).map(|_| rng.sample::<f64, _>(StandardNormal)).collect();
        for ((y, x), v) in m.indexed_iter_mut() {
            let signal: f64 = patterns.iter().zip(&weights).map(|(p, a)| a * p[[y, x]]).sum();
            let noise: f64 = 0.3 * rng.sample::<f64, _>(StandardNormal);
            *v = (signal + noise).abs() as f32;
        }
    }
    maps
}

/// The `var`-aggregated `E` maps of four synthetic "noise inputs" (seeds 1000–1003), the noise side of
/// the estimator measurements.
pub(crate) fn synthetic_noise_maps(d: usize, h: usize, w: usize) -> Vec<Array2<f32>> {
    (0..4)
        .map(|i| {
            super::embedding_aggregate(
                synthetic_maps(d, h, w, 1000 + i).view(),
                super::Aggregation::Var,
                false,
            )
            .expect("synthetic maps aggregate")
        })
        .collect()
}

/// What the graph returns for cotangent rows `probes` (`[K, D]`): `m_k = Σ_j u_{k,j} M_j`.
pub(crate) fn probe_maps(probes: &Array2<f32>, maps: &Array3<f32>) -> Array3<f32> {
    let (d, h, w) = maps.dim();
    let flat = maps.view().into_shape_with_order((d, h * w)).unwrap().mapv(f64::from);
    let out = probes.mapv(f64::from).dot(&flat);
    out.mapv(|v| v as f32).into_shape_with_order((probes.nrows(), h, w)).unwrap()
}
