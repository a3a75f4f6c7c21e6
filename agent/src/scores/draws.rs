//! Seeded random inputs: the smoothed estimator's points (docs/spec/scores.md#smoothed-attributions) and the
//! noise inputs (docs/spec/scores.md#scores).
//!
//! Both use ChaCha8 (`rand_chacha`) seeded with `seed_from_u64`, whose stream is fixed by the crate
//! version, so a configured seed reproduces the same draws on every machine.

use ndarray::{ArrayD, ArrayViewD, Axis, IxDyn};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;

use super::ScoreError;

/// `S` points `x̃_s = t_s·(x + σ·ε_s) + (1 − t_s)·x_ref`, `t_s ~ U(0,1)`, `ε_s ~ N(0, I)`, stacked on
/// a new leading axis (`[S, ...x.shape]`). `reference = None` is the black reference `x_ref = 0`.
///
/// With `S = 1` and `σ = 0` the draw is the plain input (`t_1 = 1`, nothing drawn): the spec's
/// "`S = 1, σ = 0, t = 1` is the plain gradient", and an exact copy keeps `agent score`'s default
/// deterministic and bit-equal to scoring `x` directly. In every other case `t_s` is drawn, even when
/// `σ = 0` (then the points lie on the straight path from the reference to `x`).
///
/// Draw order, fixed so results are reproducible: for each `s`, first `t_s`, then `ε_s` element by
/// element in row-major order. The arithmetic is `f64`, rounded once to `f32`.
///
/// Errors: `S = 0`; `σ` negative or not finite; a reference whose shape differs from `x`'s.
pub fn smoothing_points(
    x: ArrayViewD<f32>,
    samples: usize,
    sigma: f32,
    reference: Option<ArrayViewD<f32>>,
    seed: u64,
) -> Result<ArrayD<f32>, ScoreError> {
    if samples == 0 {
        return Err(ScoreError::InvalidParameter("samples must be at least 1".into()));
    }
    check_sigma(sigma)?;
    if let Some(r) = &reference
        && r.shape() != x.shape()
    {
        return Err(ScoreError::ShapeMismatch { expected: x.shape().to_vec(), got: r.shape().to_vec() });
    }
    let mut shape = vec![samples];
    shape.extend_from_slice(x.shape());
    if samples == 1 && sigma == 0.0 {
        return Ok(x
            .to_owned()
            .insert_axis(Axis(0))
            .into_shape_with_order(IxDyn(&shape))
            .expect("same size"));
    }
    let x = x.as_standard_layout();
    let reference = reference.as_ref().map(|r| r.as_standard_layout());
    let mut out = ArrayD::<f32>::zeros(IxDyn(&shape));
    smoothing_points_into(
        x.as_slice().expect("standard layout"),
        sigma,
        reference.as_ref().map(|r| r.as_slice().expect("standard layout")),
        seed,
        out.as_slice_mut().expect("fresh array"),
    )?;
    Ok(out)
}

fn check_sigma(sigma: f32) -> Result<(), ScoreError> {
    if sigma >= 0.0 && sigma.is_finite() {
        Ok(())
    } else {
        Err(ScoreError::InvalidParameter(format!("smoothing must be finite and ≥ 0, got {sigma}")))
    }
}

/// The draws of [`smoothing_points`] written into `out` (`S × x.len()` values, point after point),
/// on plain slices: the engine fills its batch in place, with no per-element iterator over a
/// dynamic-rank array and no per-sample array to concatenate (in issue 11's profile of a smoothed
/// AlexNet-like score those cost about 2.3 ms CPU per sample, the draws themselves about 1 ms). Same
/// draw order and arithmetic, so the same values bit for bit.
///
/// Errors: `σ` negative or not finite; a reference whose length differs from `x`'s; `out` not a
/// whole, non-zero number of points.
pub(crate) fn smoothing_points_into(
    x: &[f32],
    sigma: f32,
    reference: Option<&[f32]>,
    seed: u64,
    out: &mut [f32],
) -> Result<(), ScoreError> {
    check_sigma(sigma)?;
    if let Some(r) = reference
        && r.len() != x.len()
    {
        return Err(ScoreError::InvalidParameter(format!(
            "the smoothing reference holds {} values, a sample {}",
            r.len(),
            x.len()
        )));
    }
    if x.is_empty() || out.is_empty() || !out.len().is_multiple_of(x.len()) {
        return Err(ScoreError::InvalidParameter(format!(
            "{} output values are not a whole number of points of {} values",
            out.len(),
            x.len()
        )));
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let sigma = f64::from(sigma);
    for point in out.chunks_exact_mut(x.len()) {
        let t: f64 = rng.random();
        match reference {
            Some(r) => {
                for ((p, &xv), &rv) in point.iter_mut().zip(x).zip(r) {
                    let eps: f64 = rng.sample(StandardNormal);
                    *p = (t * (f64::from(xv) + sigma * eps) + (1.0 - t) * f64::from(rv)) as f32;
                }
            }
            None => {
                for (p, &xv) in point.iter_mut().zip(x) {
                    let eps: f64 = rng.sample(StandardNormal);
                    *p = (t * (f64::from(xv) + sigma * eps) + (1.0 - t) * 0.0) as f32;
                }
            }
        }
    }
    Ok(())
}

/// `n` noise inputs of `shape`, every element `U[0, 1)`, in the raw input domain (the caller applies
/// the same preprocessing as for real data). One generator draws them in turn, so the first `m` of
/// `noise_inputs(shape, n, seed)` are `noise_inputs(shape, m, seed)`: raising `n_noise` keeps the
/// earlier inputs.
pub fn noise_inputs(shape: &[usize], n: usize, seed: u64) -> Vec<ArrayD<f32>> {
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    (0..n).map(|_| ArrayD::from_shape_simple_fn(IxDyn(shape), || rng.random::<f32>())).collect()
}

/// The noise inputs of a text model for samples of `len` tokens (docs/spec/scores.md#text-models):
/// `n` sequences of `len` ids drawn uniformly from `0..vocab` without the ids in `exclude` (special
/// tokens, padding), so the noise maps compare position by position with a sample's. Seeded from
/// `seed` and `len` together: each length has its own draws, the same on every run and machine, and
/// one length's draws do not depend on which other lengths were drawn before.
///
/// Errors when no id is left to draw.
pub fn noise_token_ids(
    len: usize,
    n: usize,
    seed: u64,
    vocab: usize,
    exclude: &[i64],
) -> Result<Vec<Vec<i64>>, ScoreError> {
    let excluded: std::collections::HashSet<i64> = exclude.iter().copied().collect();
    let allowed = (0..vocab as i64).filter(|i| !excluded.contains(i)).count();
    if allowed == 0 {
        return Err(ScoreError::InvalidParameter(format!(
            "every id of the vocabulary (0..{vocab}) is excluded from the noise ids"
        )));
    }
    let mixed = seed ^ (len as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut rng = ChaCha8Rng::seed_from_u64(mixed);
    // Rejection keeps the draw uniform over the allowed ids; at least one in `vocab` is allowed.
    let mut draw = || loop {
        let id = rng.random_range(0..vocab as i64);
        if !excluded.contains(&id) {
            return id;
        }
    };
    Ok((0..n).map(|_| (0..len).map(|_| draw()).collect()).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{ArrayD, array};

    fn x() -> ArrayD<f32> {
        array![[0.25f32, -1.0, 3.0], [0.5, 0.0, 2.0]].into_dyn()
    }

    #[test]
    fn one_sample_without_noise_is_the_input() {
        let p = smoothing_points(x().view(), 1, 0.0, None, 9).unwrap();
        assert_eq!(p.shape(), &[1, 2, 3]);
        assert_eq!(p.index_axis(Axis(0), 0), x());
    }

    #[test]
    fn points_are_seeded_and_shaped() {
        let a = smoothing_points(x().view(), 4, 0.5, None, 1).unwrap();
        assert_eq!(a.shape(), &[4, 2, 3]);
        assert_eq!(a, smoothing_points(x().view(), 4, 0.5, None, 1).unwrap());
        assert_ne!(a, smoothing_points(x().view(), 4, 0.5, None, 2).unwrap());
    }

    /// With `σ = 0` every point lies on the segment between the reference and `x`, at one `t` per
    /// point: `x̃ − x_ref = t·(x − x_ref)`.
    #[test]
    fn without_noise_points_lie_on_the_path_from_the_reference() {
        let r = ArrayD::from_elem(IxDyn(&[2, 3]), 1.0f32);
        let p = smoothing_points(x().view(), 5, 0.0, Some(r.view()), 3).unwrap();
        for point in p.outer_iter() {
            // t from the first element whose x differs from the reference
            let t = (point[[0, 0]] - 1.0) / (0.25 - 1.0);
            assert!((0.0..1.0).contains(&t));
            for (pv, xv) in point.iter().zip(x().iter()) {
                assert!((pv - (1.0 + t * (xv - 1.0))).abs() < 1e-5);
            }
        }
    }

    #[test]
    fn noise_has_roughly_the_right_spread() {
        // x = 0, reference 0: x̃ = t·σ·ε, so E[x̃²] = E[t²]·σ² = σ²/3.
        let z = ArrayD::<f32>::zeros(IxDyn(&[1000]));
        let p = smoothing_points(z.view(), 20, 0.5, None, 11).unwrap();
        let m2 = p.iter().map(|&v| f64::from(v).powi(2)).sum::<f64>() / p.len() as f64;
        assert!((m2 - 0.25 / 3.0).abs() < 0.02, "{m2}");
    }

    /// The documented draw order, written out the plain way: `t_s`, then `ε_s` element by element,
    /// `f64` arithmetic rounded once. The fast slice path must give these values bit for bit, so
    /// that its introduction (issue 11) moved no score.
    #[test]
    fn points_follow_the_documented_draw_order_bit_for_bit() {
        let x =
            ArrayD::from_shape_fn(IxDyn(&[2, 3, 5]), |d| (d[0] * 15 + d[1] * 5 + d[2]) as f32 * 0.1 - 1.0);
        let r = ArrayD::from_shape_fn(IxDyn(&[2, 3, 5]), |d| (d[2] as f32) * 0.3);
        for reference in [None, Some(r.view())] {
            let fast = smoothing_points(x.view(), 3, 0.7, reference.clone(), 42).unwrap();
            let mut rng = ChaCha8Rng::seed_from_u64(42);
            let mut plain = Vec::new();
            for _ in 0..3 {
                let t: f64 = rng.random();
                for (i, &xv) in x.iter().enumerate() {
                    let eps: f64 = rng.sample(StandardNormal);
                    let rv = reference.as_ref().map_or(0.0, |r| f64::from(r.iter().nth(i).copied().unwrap()));
                    plain.push((t * (f64::from(xv) + f64::from(0.7f32) * eps) + (1.0 - t) * rv) as f32);
                }
            }
            let fast: Vec<u32> = fast.iter().map(|v| v.to_bits()).collect();
            let plain: Vec<u32> = plain.iter().map(|v| v.to_bits()).collect();
            assert_eq!(fast, plain);
        }
    }

    #[test]
    fn invalid_parameters_are_errors() {
        assert!(smoothing_points(x().view(), 0, 0.5, None, 0).is_err());
        assert!(smoothing_points(x().view(), 2, -0.5, None, 0).is_err());
        assert!(smoothing_points(x().view(), 2, f32::NAN, None, 0).is_err());
        let r = ArrayD::<f32>::zeros(IxDyn(&[3, 2]));
        assert!(smoothing_points(x().view(), 2, 0.5, Some(r.view()), 0).is_err());
    }

    #[test]
    fn noise_inputs_are_uniform_seeded_and_prefix_stable() {
        let a = noise_inputs(&[3, 4, 4], 3, 5);
        assert_eq!(a.len(), 3);
        assert!(a.iter().all(|n| n.shape() == [3, 4, 4] && n.iter().all(|v| (0.0..1.0).contains(v))));
        assert_eq!(noise_inputs(&[3, 4, 4], 2, 5), a[..2].to_vec());
        assert_ne!(noise_inputs(&[3, 4, 4], 1, 6)[0], a[0]);
        let big = &noise_inputs(&[10_000], 1, 0)[0];
        let mean = big.iter().map(|&v| f64::from(v)).sum::<f64>() / 1e4;
        assert!((mean - 0.5).abs() < 0.02, "{mean}");
    }

    #[test]
    fn noise_token_ids_have_the_length_skip_exclusions_and_follow_the_seed() {
        let exclude = [0, 1, 2, 3, 4];
        let a = noise_token_ids(12, 4, 9, 50, &exclude).unwrap();
        assert_eq!(a.len(), 4);
        assert!(a.iter().all(|s| s.len() == 12));
        assert!(a.iter().flatten().all(|&id| (5..50).contains(&id)), "{a:?}");
        assert_eq!(noise_token_ids(12, 4, 9, 50, &exclude).unwrap(), a);
        assert_ne!(noise_token_ids(12, 4, 10, 50, &exclude).unwrap(), a);
        // Another length draws afresh, not a prefix of this one.
        let b = noise_token_ids(11, 4, 9, 50, &exclude).unwrap();
        assert_ne!(b[0][..], a[0][..11]);
        // Uniform over the allowed ids: each of 45 ids about 1/45 of 45 000 draws.
        let big = noise_token_ids(45_000, 1, 3, 50, &exclude).unwrap();
        let mut counts = [0usize; 50];
        for &id in &big[0] {
            counts[id as usize] += 1;
        }
        assert!(counts[5..].iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
        // Only excluded ids left: an error, not an endless loop.
        assert!(noise_token_ids(3, 1, 0, 5, &exclude).is_err());
    }
}
