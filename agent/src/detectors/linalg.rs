//! The little dense linear algebra the detectors need, without a LAPACK dependency: squared distances
//! through one matrix product (ndarray's `dot`, a tuned GEMM), a cyclic Jacobi eigensolver for small
//! symmetric matrices, and a randomized range finder so that a PCA of `D = 2048` only ever
//! diagonalises an `r × r` matrix (`r` ≈ the components kept, plus oversampling).

use ndarray::{Array1, Array2, ArrayView2, Axis};
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use rand_distr::{Distribution, StandardNormal};

/// `‖a_i − b_j‖²` for every row pair, via `‖a‖² + ‖b‖² − 2 a·b` (clamped at 0 against rounding).
pub fn sq_distances(a: ArrayView2<f64>, b: ArrayView2<f64>) -> Array2<f64> {
    let na: Array1<f64> = a.map_axis(Axis(1), |r| r.dot(&r));
    let nb: Array1<f64> = b.map_axis(Axis(1), |r| r.dot(&r));
    let mut g = a.dot(&b.t());
    for ((i, j), v) in g.indexed_iter_mut() {
        *v = (na[i] + nb[j] - 2.0 * *v).max(0.0);
    }
    g
}

/// Eigen-decomposition of a symmetric matrix by cyclic Jacobi rotations: eigenvalues in descending
/// order and the matching eigenvectors as the columns of the second result. `O(n³)` per sweep; used
/// only for `n` up to a few hundred.
pub fn symmetric_eigen(m: &Array2<f64>) -> (Vec<f64>, Array2<f64>) {
    let n = m.nrows();
    let mut a = m.clone();
    let mut v = Array2::<f64>::eye(n);
    let scale: f64 = a.iter().map(|x| x * x).sum::<f64>().sqrt().max(f64::MIN_POSITIVE);
    for _sweep in 0..100 {
        let off: f64 = (0..n)
            .flat_map(|i| (0..n).filter(move |&j| j != i).map(move |j| (i, j)))
            .map(|(i, j)| a[[i, j]] * a[[i, j]])
            .sum();
        if off.sqrt() <= 1e-15 * scale {
            break;
        }
        for p in 0..n {
            for q in p + 1..n {
                let apq = a[[p, q]];
                if apq.abs() <= 1e-300 {
                    continue;
                }
                let theta = (a[[q, q]] - a[[p, p]]) / (2.0 * apq);
                let t = theta.signum() / (theta.abs() + (theta * theta + 1.0).sqrt());
                let t = if theta == 0.0 { 1.0 } else { t };
                let c = 1.0 / (t * t + 1.0).sqrt();
                let s = t * c;
                for k in 0..n {
                    let (akp, akq) = (a[[k, p]], a[[k, q]]);
                    a[[k, p]] = c * akp - s * akq;
                    a[[k, q]] = s * akp + c * akq;
                }
                for k in 0..n {
                    let (apk, aqk) = (a[[p, k]], a[[q, k]]);
                    a[[p, k]] = c * apk - s * aqk;
                    a[[q, k]] = s * apk + c * aqk;
                }
                for k in 0..n {
                    let (vkp, vkq) = (v[[k, p]], v[[k, q]]);
                    v[[k, p]] = c * vkp - s * vkq;
                    v[[k, q]] = s * vkp + c * vkq;
                }
            }
        }
    }
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&i, &j| a[[j, j]].total_cmp(&a[[i, i]]));
    let values = order.iter().map(|&i| a[[i, i]]).collect();
    let vectors = v.select(Axis(1), &order);
    (values, vectors)
}

/// Orthonormalises the columns of `y` (modified Gram–Schmidt, twice for stability; columns that
/// vanish become zeros). The columns are copied into contiguous rows first: walking a column of a
/// row-major `[N, r]` matrix strides through memory, which made this step dominate the fit.
fn orthonormalize(y: &mut Array2<f64>) {
    let mut q = y.t().as_standard_layout().into_owned();
    let k = q.nrows();
    for j in 0..k {
        for _pass in 0..2 {
            for i in 0..j {
                let r = q.row(i).dot(&q.row(j));
                let (done, mut rest) = q.view_mut().split_at(Axis(0), j);
                rest.row_mut(0).scaled_add(-r, &done.row(i));
            }
        }
        let norm = q.row(j).dot(&q.row(j)).sqrt();
        if norm > 1e-12 {
            q.row_mut(j).mapv_inplace(|v| v / norm);
        } else {
            q.row_mut(j).fill(0.0);
        }
    }
    *y = q.t().as_standard_layout().into_owned();
}

/// The top principal axes of a centred `[N, D]` matrix `x`: `(variances, axes)` with the variances
/// (eigenvalues of `xᵀx / N`) in descending order and the axes as rows `[r, D]`.
///
/// When `min(N, D) ≤ exact_below` the small Gram or covariance matrix is diagonalised exactly.
/// Otherwise a randomized range finder (Halko, Martinsson & Tropp 2011, algorithm 4.4): `rank + 10`
/// Gaussian probes, `power` subspace iterations, then the `r × r` problem; the cost is
/// `O(N·D·r·(2·power + 2))` multiply-adds instead of the `O(D³)` of a full decomposition.
pub fn principal_axes(
    x: ArrayView2<f64>,
    rank: usize,
    power: usize,
    seed: u64,
    exact_below: usize,
) -> (Vec<f64>, Array2<f64>) {
    let (n, d) = x.dim();
    let nf = n as f64;
    if d <= exact_below && d <= n {
        let cov = x.t().dot(&x) / nf;
        let (vals, vecs) = symmetric_eigen(&cov);
        return (vals.into_iter().map(|v| v.max(0.0)).collect(), vecs.t().to_owned());
    }
    if n <= exact_below {
        // Gram route: x xᵀ = U Λ Uᵀ, axes = xᵀ u / √λ.
        let gram = x.dot(&x.t()) / nf;
        let (vals, u) = symmetric_eigen(&gram);
        return axes_from_left(x, vals, u, nf);
    }
    let r = (rank + 10).min(n).min(d);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let omega = Array2::from_shape_fn((d, r), |_| StandardNormal.sample(&mut rng));
    let mut y = x.dot(&omega);
    orthonormalize(&mut y);
    for _ in 0..power {
        let mut z = x.t().dot(&y);
        orthonormalize(&mut z);
        y = x.dot(&z);
        orthonormalize(&mut y);
    }
    // x ≈ Q (Qᵀ x); the axes are those of B = Qᵀx: B Bᵀ = W Λ' Wᵀ, axes = Bᵀ w / √λ'.
    let b = y.t().dot(&x);
    let small = b.dot(&b.t()) / nf;
    let (vals, w) = symmetric_eigen(&small);
    let mut axes = Array2::<f64>::zeros((vals.len(), d));
    for (i, &lam) in vals.iter().enumerate() {
        if lam > 0.0 {
            let a = b.t().dot(&w.column(i)) / (lam * nf).sqrt();
            axes.row_mut(i).assign(&a);
        }
    }
    (vals.into_iter().map(|v| v.max(0.0)).collect(), axes)
}

fn axes_from_left(x: ArrayView2<f64>, vals: Vec<f64>, u: Array2<f64>, nf: f64) -> (Vec<f64>, Array2<f64>) {
    let d = x.ncols();
    let mut axes = Array2::<f64>::zeros((vals.len(), d));
    for (i, &lam) in vals.iter().enumerate() {
        if lam > 1e-300 {
            let a = x.t().dot(&u.column(i)) / (lam * nf).sqrt();
            axes.row_mut(i).assign(&a);
        }
    }
    (vals.into_iter().map(|v| v.max(0.0)).collect(), axes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn distances_match_the_definition() {
        let a = ndarray::array![[0.0, 0.0], [1.0, 2.0]];
        let b = ndarray::array![[3.0, 4.0]];
        let d = sq_distances(a.view(), b.view());
        assert_eq!(d, ndarray::array![[25.0], [8.0]]);
    }

    #[test]
    fn jacobi_diagonalises() {
        // numpy 2.4.6: numpy.linalg.eigh([[4,1,2],[1,3,0],[2,0,5]]).eigenvalues, reversed
        let m = ndarray::array![[4.0, 1.0, 2.0], [1.0, 3.0, 0.0], [2.0, 0.0, 5.0]];
        let (vals, vecs) = symmetric_eigen(&m);
        let want = [6.669079088282287, 3.4760236029181333, 1.8548973087995761];
        for (v, w) in vals.iter().zip(want) {
            assert!((v - w).abs() < 1e-9, "{v} vs {w}");
        }
        // M v = λ v for each pair
        for (i, &lambda) in vals.iter().enumerate() {
            let mv = m.dot(&vecs.column(i));
            let lv = &vecs.column(i) * lambda;
            assert!((&mv - &lv).iter().all(|e| e.abs() < 1e-10));
        }
    }

    #[test]
    fn randomized_axes_agree_with_exact_ones() {
        // A low-rank-plus-small-noise matrix: the range finder must recover its leading spectrum.
        let (n, d) = (120, 60);
        let x = Array2::from_shape_fn((n, d), |(i, j)| {
            let (fi, fj) = (i as f64, j as f64);
            3.0 * (0.3 * fi).sin() * (0.05 * fj).cos()
                + (0.11 * fi).cos() * (0.2 * fj).sin()
                + 0.01 * ((fi * 7.0 + fj * 3.0) % 5.0)
        });
        let mean = x.mean_axis(Axis(0)).unwrap();
        let xc = &x - &mean;
        let (exact, _) = principal_axes(xc.view(), 5, 0, 1, 1000);
        let (approx, axes) = principal_axes(xc.view(), 5, 3, 1, 10);
        for i in 0..3 {
            assert!((exact[i] - approx[i]).abs() <= 1e-8 * exact[0], "{i}: {} vs {}", exact[i], approx[i]);
            assert!((axes.row(i).dot(&axes.row(i)) - 1.0).abs() < 1e-9);
        }
    }
}
