//! Two-sample Kolmogorov–Smirnov test between the window's per-sample scores and the reference's.

/// The statistic and its asymptotic p-value.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct KsResult {
    /// `D = sup_x |F_a(x) − F_b(x)|`, the largest gap between the two empirical distribution functions.
    pub statistic: f64,
    /// Probability under "same distribution" of a statistic at least this large (asymptotic).
    pub p_value: f64,
}

/// Two-sample KS test of two **sorted** samples (ascending; NaN-free). `None` when either is empty.
///
/// Both sides of the agent's test are kept sorted anyway (the baseline's reservoir, the window's
/// [`super::Window::sorted_values`]), so taking sorted slices avoids a sort per scrape. Ties are
/// handled exactly: the distribution functions are compared only after every copy of a value has been
/// passed on both sides.
///
/// p-value: the asymptotic Kolmogorov distribution with Stephens' effective-`n` correction (Numerical
/// Recipes' `kstwo`): `n_e = n·m/(n + m)`, `λ = (√n_e + 0.12 + 0.11/√n_e)·D`,
/// `p = Q_KS(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}`. The correction makes it accurate from about
/// `n_e ≥ 4`; the agent's windows and reservoirs are far larger. (SciPy's current
/// `ks_2samp(method='asymp')` instead evaluates the one-sample distribution at `round(n_e)`, so its
/// p-values differ slightly; see the tests.)
pub fn ks_two_sample(a: &[f64], b: &[f64]) -> Option<KsResult> {
    debug_assert!(a.windows(2).all(|w| w[0] <= w[1]), "first sample not sorted");
    debug_assert!(b.windows(2).all(|w| w[0] <= w[1]), "second sample not sorted");
    if a.is_empty() || b.is_empty() {
        return None;
    }
    let (n, m) = (a.len() as f64, b.len() as f64);
    let (mut i, mut j, mut d) = (0usize, 0usize, 0.0f64);
    while i < a.len() && j < b.len() {
        let x = a[i].min(b[j]);
        while i < a.len() && a[i] <= x {
            i += 1;
        }
        while j < b.len() && b[j] <= x {
            j += 1;
        }
        d = d.max((i as f64 / n - j as f64 / m).abs());
    }
    let en = n * m / (n + m);
    let lambda = (en.sqrt() + 0.12 + 0.11 / en.sqrt()) * d;
    Some(KsResult { statistic: d, p_value: kolmogorov_q(lambda) })
}

/// `Q_KS(λ) = 2 Σ_{k≥1} (−1)^{k−1} e^{−2k²λ²}`, the survival function of the Kolmogorov distribution.
///
/// That alternating series converges slowly for small `λ`, so below `λ = 1.18` the equivalent
/// (Jacobi theta) form `1 − (√(2π)/λ) Σ_{k≥1} e^{−(2k−1)²π²/(8λ²)}` is used, which converges fast
/// there; both need only a handful of terms to reach `f64` precision on their side of the switch.
pub fn kolmogorov_q(lambda: f64) -> f64 {
    if lambda.is_nan() {
        return f64::NAN;
    }
    if lambda <= 0.0 {
        return 1.0;
    }
    let terms = 1..=100;
    let q = if lambda < 1.18 {
        let c = std::f64::consts::PI.powi(2) / (8.0 * lambda * lambda);
        let sum: f64 =
            terms.map(|k: i32| (-(f64::from(2 * k - 1)).powi(2) * c).exp()).take_while(|t| *t > 1e-300).sum();
        1.0 - (2.0 * std::f64::consts::PI).sqrt() / lambda * sum
    } else {
        let mut sum = 0.0;
        for k in terms {
            let term = (-2.0 * f64::from(k * k) * lambda * lambda).exp();
            sum += if k % 2 == 1 { term } else { -term };
            if term < 1e-18 * sum.abs() {
                break;
            }
        }
        2.0 * sum
    };
    q.clamp(0.0, 1.0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sorted(mut v: Vec<f64>) -> Vec<f64> {
        v.sort_by(f64::total_cmp);
        v
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-12 * b.abs().max(1e-300) || (a - b).abs() < 1e-15
    }

    /// Expected values from SciPy 1.17.1 (`/work/main/.venv/bin/python`):
    /// statistic = `scipy.stats.ks_2samp(a, b, method='asymp').statistic`;
    /// p-value = `scipy.special.kolmogorov((√en + 0.12 + 0.11/√en)·D)`, en = n·m/(n+m), i.e. the
    /// formula above evaluated by SciPy's independent Kolmogorov survival function. For reference,
    /// SciPy's own `ks_2samp(..., method='asymp').pvalue` (which uses `kstwo.sf(D, round(en))`) is
    /// given in the comment beside each case: the two differ by up to 0.015 at these small sizes.
    #[test]
    fn matches_scipy() {
        let cases: Vec<(Vec<f64>, Vec<f64>, f64, f64)> = vec![
            (
                (0..40).map(|i| (f64::from(i) * 0.37) % 1.0).collect(),
                (0..30).map(|i| ((f64::from(i) * 0.53) % 1.0) * 1.2).collect(),
                0.14166666666666672,
                0.8544450024968803, // ks_2samp asymp: 0.8385839167591498
            ),
            (
                vec![0.1, 0.4, 0.35, 0.8, 0.55, 0.2, 0.9, 0.05],
                vec![0.6, 0.7, 0.65, 1.1, 0.95, 0.3, 0.75],
                0.6071428571428572,
                0.07528772410866552, // ks_2samp asymp: 0.06180042169929192
            ),
            (
                // ties within and across samples
                vec![1.0, 2.0, 2.0, 3.0, 3.0, 3.0, 4.0],
                vec![2.0, 3.0, 3.0, 4.0, 5.0, 5.0],
                0.3571428571428571,
                0.7001308145277135, // ks_2samp asymp: 0.7133138969873666
            ),
            (vec![1.0, 2.0], vec![1.0, 2.0], 0.0, 1.0),
        ];
        for (a, b, d, p) in cases {
            let r = ks_two_sample(&sorted(a), &sorted(b)).unwrap();
            assert!(close(r.statistic, d), "D {} vs {d}", r.statistic);
            assert!((r.p_value - p).abs() < 1e-12, "p {} vs {p}", r.p_value);
        }
    }

    /// `scipy.special.kolmogorov(λ)` at both sides of the series switch.
    #[test]
    fn kolmogorov_q_literals() {
        let cases = [
            (0.3, 0.9999906941986655),
            (0.5, 0.9639452436648751),
            (1.0, 0.26999967167735456),
            (1.18, 0.1234538094297657),
            (1.5, 0.022217962616525127),
            (2.0, 0.0006709252557796953),
            (3.0, 3.045995948942526e-08),
        ];
        for (lambda, q) in cases {
            let got = kolmogorov_q(lambda);
            assert!((got - q).abs() <= 1e-13 + 1e-10 * q, "Q({lambda}) = {got} vs {q}");
        }
        assert_eq!(kolmogorov_q(0.0), 1.0);
        assert_eq!(kolmogorov_q(40.0), 0.0);
        // continuity at the switch
        assert!((kolmogorov_q(1.18 - 1e-12) - kolmogorov_q(1.18)).abs() < 1e-10);
    }

    #[test]
    fn disjoint_samples_have_statistic_one() {
        let r = ks_two_sample(&[1.0, 2.0, 3.0], &[4.0, 5.0]).unwrap();
        assert_eq!(r.statistic, 1.0);
        assert!(ks_two_sample(&[], &[1.0]).is_none());
    }
}
