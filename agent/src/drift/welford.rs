//! Running mean and variance (Welford), the streaming core of baselines and windows.

use serde::{Deserialize, Serialize};

/// Count, mean and variance of a stream, updated one value at a time in `O(1)` memory.
///
/// One owner pushes and reads (the `Add / Push / Reset` contract of a telemetry aggregator), so there
/// are no locks. Welford's update rather than `Σx` and `Σx²` so that a mean far from zero cannot
/// cancel the variance.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct RunningStats {
    count: u64,
    mean: f64,
    m2: f64,
}

impl RunningStats {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn push(&mut self, value: f64) {
        self.count += 1;
        let delta = value - self.mean;
        self.mean += delta / self.count as f64;
        self.m2 += delta * (value - self.mean);
    }

    /// Combines two streams' statistics (Chan et al.), as if every value had been pushed into one.
    pub fn merge(&mut self, other: &RunningStats) {
        if other.count == 0 {
            return;
        }
        if self.count == 0 {
            *self = *other;
            return;
        }
        let (n1, n2) = (self.count as f64, other.count as f64);
        let n = n1 + n2;
        let delta = other.mean - self.mean;
        self.mean += delta * n2 / n;
        self.m2 += other.m2 + delta * delta * n1 * n2 / n;
        self.count += other.count;
    }

    /// The state of a stream known only by its count, mean and population variance (as a baseline
    /// file stores them): what [`RunningStats::merge`] needs to combine partial baselines.
    pub fn from_moments(count: u64, mean: f64, variance: f64) -> Self {
        if count == 0 {
            return Self::default();
        }
        RunningStats { count, mean, m2: variance * count as f64 }
    }

    pub fn reset(&mut self) {
        *self = Self::default();
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// `None` before the first value: a mean of nothing is not zero.
    pub fn mean(&self) -> Option<f64> {
        (self.count > 0).then_some(self.mean)
    }

    /// Population variance (ddof = 0), like every variance in this project; `None` when empty.
    pub fn variance(&self) -> Option<f64> {
        (self.count > 0).then(|| self.m2 / self.count as f64)
    }

    /// Population standard deviation; `None` when empty.
    pub fn std(&self) -> Option<f64> {
        self.variance().map(f64::sqrt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hand_computed_moments() {
        let mut s = RunningStats::new();
        assert_eq!(s.mean(), None);
        for v in [2.0, 4.0, 4.0, 4.0, 5.0, 5.0, 7.0, 9.0] {
            s.push(v);
        }
        assert_eq!(s.count(), 8);
        assert_eq!(s.mean(), Some(5.0));
        assert_eq!(s.variance(), Some(4.0));
        assert_eq!(s.std(), Some(2.0));
        s.reset();
        assert_eq!(s.count(), 0);
        assert_eq!(s.variance(), None);
    }

    #[test]
    fn merge_equals_single_stream() {
        let values: Vec<f64> = (0..50).map(|i| 1e6 + f64::from(i).sin()).collect();
        let mut whole = RunningStats::new();
        values.iter().for_each(|&v| whole.push(v));
        let (mut a, mut b) = (RunningStats::new(), RunningStats::new());
        values[..17].iter().for_each(|&v| a.push(v));
        values[17..].iter().for_each(|&v| b.push(v));
        a.merge(&b);
        assert_eq!(a.count(), whole.count());
        assert!((a.mean().unwrap() - whole.mean().unwrap()).abs() < 1e-9);
        assert!((a.variance().unwrap() - whole.variance().unwrap()).abs() < 1e-9);
        let mut empty = RunningStats::new();
        empty.merge(&whole);
        assert_eq!(empty, whole);
    }
}
