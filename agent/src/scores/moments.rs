//! Per-pixel running mean and variance over embedding components, one row (`[H, W]` map) at a time.

/// Welford's update applied independently to every pixel.
///
/// Updating one row at a time (never one chunk at a time) makes the result independent of how the
/// attribution graph splits the `D` rows into chunks of `K`: chunked and whole-array computations are
/// bit-identical, not merely close. Welford rather than sums of squares because raw gradient maps can
/// have a mean far larger than their spread, where `Σx² − n·x̄²` cancels catastrophically.
#[derive(Debug, Clone)]
pub(crate) struct PixelMoments {
    rows: usize,
    mean: Vec<f64>,
    m2: Vec<f64>,
}

impl PixelMoments {
    pub(crate) fn new(pixels: usize) -> Self {
        PixelMoments { rows: 0, mean: vec![0.0; pixels], m2: vec![0.0; pixels] }
    }

    /// Adds one row; `values` yields exactly one value per pixel, in row-major order.
    pub(crate) fn push(&mut self, values: impl Iterator<Item = f32>) {
        self.rows += 1;
        let n = self.rows as f64;
        for ((mean, m2), v) in self.mean.iter_mut().zip(self.m2.iter_mut()).zip(values) {
            let v = f64::from(v);
            let delta = v - *mean;
            *mean += delta / n;
            *m2 += delta * (v - *mean);
        }
    }

    pub(crate) fn rows(&self) -> usize {
        self.rows
    }

    /// Population variance (ddof = 0) of every pixel over the rows pushed so far.
    pub(crate) fn variances(&self) -> impl Iterator<Item = f64> + '_ {
        let n = self.rows as f64;
        self.m2.iter().map(move |m2| m2 / n)
    }

    pub(crate) fn reset(&mut self) {
        self.rows = 0;
        self.mean.fill(0.0);
        self.m2.fill(0.0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_two_pass_population_variance() {
        let rows = [[1.0f32, 10.0], [2.0, 10.0], [4.0, 10.0], [9.0, 10.0]];
        let mut m = PixelMoments::new(2);
        for r in rows {
            m.push(r.into_iter());
        }
        // pixel 0: mean 4, deviations -3,-2,0,5 → (9+4+0+25)/4 = 9.5; pixel 1 constant → 0
        let v: Vec<f64> = m.variances().collect();
        assert!((v[0] - 9.5).abs() < 1e-12 && v[1] == 0.0, "{v:?}");
        assert_eq!(m.rows(), 4);
        m.reset();
        assert_eq!(m.rows(), 0);
    }

    #[test]
    fn large_offset_does_not_cancel() {
        let mut m = PixelMoments::new(1);
        for v in [1.0e6f32, 1.0e6 + 1.0, 1.0e6 + 2.0] {
            m.push(std::iter::once(v));
        }
        let v: Vec<f64> = m.variances().collect();
        assert!((v[0] - 2.0 / 3.0).abs() < 1e-9, "{v:?}");
    }
}
