//! Estimator (b) of docs/spec/scores.md#cost for large `D`: Hutchinson probes for the per-pixel variance over
//! `j`.
//!
//! Instead of `D` identity cotangents the engine runs the graph with `K` probe rows `u_k` and gets one
//! map `m_k = Σ_j u_{k,j} M_j` per probe (the graph is linear in the cotangent). With
//! `u = (I − 11ᵀ/D) v`, `v` Rademacher: `E[(uᵀy)²] = E[vᵀ P y yᵀ P v] = tr(P y yᵀ P) = ‖y − ȳ1‖²`
//! (`P` the centring projector, `E[vvᵀ] = I`), i.e. `D` times the population variance of the
//! per-component values `y_j = M_j(p)`. So `(1/(D·K)) Σ_k m_k(p)²` is unbiased for `Var_j M_j(p)`.
//!
//! **Limitations.** (1) It estimates the variance of the *raw* per-component maps: the per-component
//! min–max normalisation is not linear in the cotangent, so it serves the `var` embedding aggregation
//! with `normalize_dims = false` only, never the variance score (use [`super::choose_dims`] there).
//! (2) The maps must be linear in the cotangent: `vanilla` or `actgrad` with `mean` channel
//! aggregation (or a layer with `C = 1`); not `abs`/`var` channel aggregation and not `gradcam`
//! (ReLU). (3) Its variance is `2(‖w‖⁴ − Σ_j w_j⁴)/(D²K)` per pixel (`w = Py`), i.e. a relative standard
//! error of about `√(2/K)` per pixel.
//!
//! Measured on synthetic maps (`D = 512`, `8 × 8` pixels, three smooth patterns mixed per component
//! plus 30 % pixel noise; test `measured_error_on_synthetic_maps`, 20 seeds, averages): mean relative
//! error per pixel 0.28 at `K = 16`, 0.13 at `K = 64`, 0.077 at `K = 256`; relative error of the
//! pixel-mean of the variance map 0.15, 0.067, 0.049; absolute error of the noise score computed from
//! the estimated `E` map (against 4 noise maps; NS in `[0, 1]`, 0.144 on average here) 0.028, 0.014, 0.0072.
//! On the real models (docs/REPRODUCTION.md, "Estimator errors"; digit encoder D = 32 and the
//! ResNet-18 layout D = 512): per-pixel relative error 0.34–0.41 at `K = 8`, 0.25–0.28 at `K = 16`,
//! 0.12–0.14 at `K = 64` (just under `√(2/K)`), and the noise score from the estimated map off by
//! 0.018, 0.014, 0.0085 (absolute) on a digit NS of 0.153.

use ndarray::{Array2, ArrayView3, Axis};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::ScoreError;
use super::embedding::check_chunk;

/// `[K, D]` probe rows `u_k = v_k − mean(v_k)·1`, `v_k` Rademacher (±1) from ChaCha8 seeded with
/// `seed`, drawn row by row. Centred in `f64` and rounded once to `f32` (the graph's cotangent type),
/// so a row sums to zero up to that rounding (relative `6·10⁻⁸`), which adds a negligible
/// `O(10⁻¹⁵)`-relative share of the squared mean map to the estimate.
pub fn hutchinson_probes(d: usize, k: usize, seed: u64) -> Array2<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let mut probes = Array2::<f32>::zeros((k, d));
    for mut row in probes.axis_iter_mut(Axis(0)) {
        let v: Vec<f64> = (0..d).map(|_| if rng.random::<bool>() { 1.0 } else { -1.0 }).collect();
        let mean = v.iter().sum::<f64>() / d.max(1) as f64;
        for (u, v) in row.iter_mut().zip(v) {
            *u = (v - mean) as f32;
        }
    }
    probes
}

/// Streams the graph's `[k, H, W]` per-probe maps into the per-pixel variance estimate.
#[derive(Debug, Clone)]
pub struct HutchinsonAccumulator {
    height: usize,
    width: usize,
    d: usize,
    probes: usize,
    sum_sq: Vec<f64>,
}

impl HutchinsonAccumulator {
    /// `d`: the embedding size the probes were drawn for.
    pub fn new(height: usize, width: usize, d: usize) -> Self {
        HutchinsonAccumulator { height, width, d, probes: 0, sum_sq: vec![0.0; height * width] }
    }

    pub fn push(&mut self, chunk: ArrayView3<f32>) -> Result<(), ScoreError> {
        check_chunk(chunk, self.height, self.width)?;
        for map in chunk.axis_iter(Axis(0)) {
            self.probes += 1;
            for (s, &m) in self.sum_sq.iter_mut().zip(map.iter()) {
                *s += f64::from(m) * f64::from(m);
            }
        }
        Ok(())
    }

    /// `(1/(D·K)) Σ_k m_k(p)²` for every pixel.
    pub fn finish(&self) -> Result<Array2<f32>, ScoreError> {
        if self.probes == 0 {
            return Err(ScoreError::Empty("probe maps"));
        }
        if self.d == 0 {
            return Err(ScoreError::Empty("embedding components"));
        }
        let scale = 1.0 / (self.d as f64 * self.probes as f64);
        let values = self.sum_sq.iter().map(|s| (s * scale) as f32).collect();
        Ok(Array2::from_shape_vec((self.height, self.width), values).expect("one value per pixel"))
    }

    pub fn reset(&mut self) {
        self.probes = 0;
        self.sum_sq.fill(0.0);
    }
}

/// Whole-array form of [`HutchinsonAccumulator`]: `[K, H, W]` per-probe maps of an embedding of size
/// `d` → estimated `Var_j M_j(p)` (`[H, W]`).
pub fn hutchinson_variance(probe_maps: ArrayView3<f32>, d: usize) -> Result<Array2<f32>, ScoreError> {
    let (_, h, w) = probe_maps.dim();
    let mut acc = HutchinsonAccumulator::new(h, w, d);
    acc.push(probe_maps)?;
    acc.finish()
}

#[cfg(test)]
mod tests {
    use super::super::synthetic::{probe_maps, synthetic_maps, synthetic_noise_maps};
    use super::super::{Aggregation, embedding_aggregate, noise_score};
    use super::*;
    use ndarray::{Array3, array};

    #[test]
    fn probes_are_centred_and_seeded() {
        let p = hutchinson_probes(7, 5, 3);
        assert_eq!(p.dim(), (5, 7));
        for row in p.outer_iter() {
            assert!(row.iter().map(|&u| f64::from(u)).sum::<f64>().abs() < 1e-6);
            // v ∈ {±1}, so u ∈ {1 − mean, −1 − mean}: entries differ by exactly 0 or 2.
            assert!(
                row.iter().all(|&u| ((u - row[0]).abs() < 1e-6) || ((u - row[0]).abs() - 2.0).abs() < 1e-6)
            );
        }
        assert_eq!(p, hutchinson_probes(7, 5, 3));
        assert_ne!(p, hutchinson_probes(7, 5, 4));
    }

    /// Averaging over all `2^D` Rademacher vectors gives the exact population variance.
    #[test]
    fn exactly_unbiased_over_all_sign_vectors() {
        let maps = array![[[1.0f32, 0.0]], [[3.0, 0.0]], [[-2.0, 0.5]], [[4.0, 0.5]]];
        let d = 4;
        let mut probes = Array2::<f32>::zeros((1 << d, d));
        for (mask, mut row) in probes.outer_iter_mut().enumerate() {
            let v: Vec<f32> = (0..d).map(|i| if mask & (1 << i) != 0 { 1.0 } else { -1.0 }).collect();
            let mean = v.iter().sum::<f32>() / d as f32;
            row.iter_mut().zip(&v).for_each(|(u, v)| *u = v - mean);
        }
        let est = hutchinson_variance(probe_maps(&probes, &maps).view(), d).unwrap();
        let exact = embedding_aggregate(maps.view(), Aggregation::Var, false).unwrap();
        assert!((&est - &exact).iter().all(|e| e.abs() < 1e-5), "{est} vs {exact}");
    }

    #[test]
    fn chunked_equals_whole_and_errors() {
        let maps = Array3::from_shape_fn((6, 2, 3), |(k, y, x)| (k as f32 - 2.5) * (y + x) as f32);
        let whole = hutchinson_variance(maps.view(), 10).unwrap();
        let mut acc = HutchinsonAccumulator::new(2, 3, 10);
        for c in maps.axis_chunks_iter(Axis(0), 4) {
            acc.push(c).unwrap();
        }
        assert_eq!(acc.finish().unwrap(), whole);
        acc.reset();
        assert!(acc.finish().is_err());
        assert!(acc.push(Array3::<f32>::zeros((1, 3, 2)).view()).is_err());
    }

    /// The figures quoted in the module documentation come from this test
    /// (`cargo test -p agent --lib hutchinson -- --nocapture` prints them).
    #[test]
    fn measured_error_on_synthetic_maps() {
        let (d, h, w) = (512, 8, 8);
        let noise_e = synthetic_noise_maps(d, h, w);
        for (k, bound) in [(16, 0.45), (64, 0.22), (256, 0.11)] {
            let (mut pixel_err, mut mean_err, mut ns_err) = (0.0, 0.0, 0.0);
            let seeds = 20;
            for seed in 0..seeds {
                let maps = synthetic_maps(d, h, w, seed);
                let exact = embedding_aggregate(maps.view(), Aggregation::Var, false).unwrap();
                let probes = hutchinson_probes(d, k, seed + 77);
                let est = hutchinson_variance(probe_maps(&probes, &maps).view(), d).unwrap();
                pixel_err += exact.iter().zip(&est).map(|(e, s)| ((s - e) / e).abs() as f64).sum::<f64>()
                    / exact.len() as f64;
                let (me, ms) = (exact.mean().unwrap() as f64, est.mean().unwrap() as f64);
                mean_err += ((ms - me) / me).abs();
                let ns_exact = noise_score(exact.view(), &noise_e).unwrap();
                ns_err += (noise_score(est.view(), &noise_e).unwrap() - ns_exact).abs();
            }
            let n = seeds as f64;
            let (pixel_err, mean_err, ns_err) = (pixel_err / n, mean_err / n, ns_err / n);
            eprintln!(
                "hutchinson K={k}: pixel rel err {pixel_err:.3}, pixel-mean rel err {mean_err:.3}, NS abs err {ns_err:.4}"
            );
            assert!(pixel_err < bound, "K = {k}: {pixel_err}");
        }
    }
}
