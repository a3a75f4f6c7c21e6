//! The digits, their drifted and resized forms, the noise inputs, and engine specifications.

use super::*;

pub(crate) fn load_digits() -> Result<ArrayD<f32>> {
    let a: ArrayD<f32> = ndarray_npy::read_npy(REFERENCE).with_context(|| format!("reading {REFERENCE}"))?;
    if a.shape()[1..] != [1, 28, 28] {
        bail!("{REFERENCE} has shape {:?}", a.shape());
    }
    Ok(a)
}

/// `n` of the reference digits, a seeded simple random sample (sorted indices).
pub(crate) fn digit_subset(reference: &ArrayD<f32>, n: usize) -> ArrayD<f32> {
    let idx = choose_dims(reference.shape()[0], n, DIGIT_SUBSET_SEED);
    reference.select(Axis(0), &idx)
}

pub(crate) fn spec(model: &Path, layers: &[(&str, &str)], methods: &[Method], threads: usize) -> EngineSpec {
    let mut spec = EngineSpec {
        layers: layers
            .iter()
            .map(|(n, t)| LayerSpec { name: (*n).into(), tensor: (*t).into(), ..Default::default() })
            .collect(),
        ..EngineSpec::new(model, "embedding")
    };
    spec.score.methods = Some(methods.to_vec());
    spec.runtime.threads = Some(threads);
    spec
}

/// Digits resized (bilinear, half-pixel centres, edges clamped) to `h × w` and repeated over
/// `channels`: structured inputs for the random-weight models, which have no data of their own.
pub(crate) fn resized_digits(digits: ArrayViewD<f32>, channels: usize, h: usize, w: usize) -> ArrayD<f32> {
    let n = digits.shape()[0];
    let (sh, sw) = (digits.shape()[2], digits.shape()[3]);
    let mut out = ArrayD::<f32>::zeros(IxDyn(&[n, channels, h, w]));
    for i in 0..n {
        let src = digits.slice(s![i, 0, .., ..]);
        let img = Array2::from_shape_fn((h, w), |(y, x)| {
            let fy = ((y as f64 + 0.5) * sh as f64 / h as f64 - 0.5).clamp(0.0, (sh - 1) as f64);
            let fx = ((x as f64 + 0.5) * sw as f64 / w as f64 - 0.5).clamp(0.0, (sw - 1) as f64);
            let (y0, x0) = (fy.floor() as usize, fx.floor() as usize);
            let (y1, x1) = ((y0 + 1).min(sh - 1), (x0 + 1).min(sw - 1));
            let (ty, tx) = (fy - y0 as f64, fx - x0 as f64);
            let v = |yy: usize, xx: usize| f64::from(src[[yy, xx]]);
            let top = v(y0, x0) * (1.0 - tx) + v(y0, x1) * tx;
            let bottom = v(y1, x0) * (1.0 - tx) + v(y1, x1) * tx;
            (top * (1.0 - ty) + bottom * ty) as f32
        });
        for c in 0..channels {
            out.slice_mut(s![i, c, .., ..]).assign(&img);
        }
    }
    out
}

/// `x_λ = clip(x + λ·ε, 0, 1)`, `ε ~ N(0, I)` drawn afresh for every sample from ChaCha8(`seed`).
pub(crate) fn drifted(x: ArrayViewD<f32>, lambda: f32, seed: u64) -> ArrayD<f32> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let lambda = f64::from(lambda);
    x.mapv(|v| {
        let e: f64 = StandardNormal.sample(&mut rng);
        (f64::from(v) + lambda * e).clamp(0.0, 1.0) as f32
    })
}

/// The noise inputs an engine with `n_noise`/`noise_seed` draws (no normalisation on our models).
pub(crate) fn engine_noise(shape: &[usize], n: usize, seed: u64) -> ArrayD<f32> {
    let v = scores::noise_inputs(shape, n, seed);
    let views: Vec<_> = v.iter().map(|x| x.view()).collect();
    ndarray::stack(Axis(0), &views).expect("same shapes")
}
