//! The rolling window of recent per-sample scores that the agent compares with the baseline.

use std::collections::VecDeque;

/// A window that cannot bound itself.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum WindowError {
    #[error("a window needs window_samples, window_secs or both")]
    Unbounded,
    #[error("window_samples must be at least 1")]
    NoSamples,
    #[error("window_secs must be positive and finite, got {0}")]
    BadSecs(f64),
}

/// The last `window_samples` samples and/or the samples of the last `window_secs` seconds.
///
/// A sample must satisfy both bounds that are set. At least one bound is required: a window with
/// neither would grow without limit in a long-running daemon. Timestamps are seconds (e.g. Unix time
/// as `f64`) and are expected in arrival order; expiry pops from the oldest end while the oldest
/// sample is too old, so a sample that arrives with an earlier timestamp than its predecessor stays
/// until those before it have expired (its own age is not checked separately).
///
/// Statistics are computed on demand in `O(n)` (at scrape time, not per sample), which keeps them
/// exact: a running sum with removals would accumulate rounding error over days.
#[derive(Debug, Clone)]
pub struct Window {
    window_samples: Option<usize>,
    window_secs: Option<f64>,
    samples: VecDeque<(f64, f64)>,
}

impl Window {
    /// Errors when both bounds are `None`, `window_samples = 0`, or `window_secs` is not a positive
    /// finite number.
    pub fn new(window_samples: Option<usize>, window_secs: Option<f64>) -> Result<Self, WindowError> {
        if window_samples.is_none() && window_secs.is_none() {
            return Err(WindowError::Unbounded);
        }
        if window_samples == Some(0) {
            return Err(WindowError::NoSamples);
        }
        if let Some(s) = window_secs
            && !(s > 0.0 && s.is_finite())
        {
            return Err(WindowError::BadSecs(s));
        }
        Ok(Window { window_samples, window_secs, samples: VecDeque::new() })
    }

    /// Adds a sample and drops the oldest beyond `window_samples`, and those older than `window_secs`
    /// before `timestamp_secs` (the newest time the window has seen). Non-finite values are ignored:
    /// they would poison the mean and cannot be ranked for the KS test.
    pub fn push(&mut self, timestamp_secs: f64, value: f64) {
        if !value.is_finite() {
            return;
        }
        self.samples.push_back((timestamp_secs, value));
        if let Some(max) = self.window_samples {
            while self.samples.len() > max {
                self.samples.pop_front();
            }
        }
        self.expire(timestamp_secs);
    }

    /// Drops samples older than `window_secs` before `now_secs`: a sample at `t` stays while
    /// `now − t ≤ window_secs`. Call before reading when no sample has arrived for a while.
    pub fn expire(&mut self, now_secs: f64) {
        if let Some(secs) = self.window_secs {
            while self.samples.front().is_some_and(|&(t, _)| now_secs - t > secs) {
                self.samples.pop_front();
            }
        }
    }

    pub fn len(&self) -> usize {
        self.samples.len()
    }

    pub fn is_empty(&self) -> bool {
        self.samples.is_empty()
    }

    /// Mean of the values in the window, `None` when empty.
    pub fn mean(&self) -> Option<f64> {
        if self.samples.is_empty() {
            return None;
        }
        Some(self.samples.iter().map(|&(_, v)| v).sum::<f64>() / self.samples.len() as f64)
    }

    /// The values, ascending: the window's side of the KS test.
    pub fn sorted_values(&self) -> Vec<f64> {
        let mut v: Vec<f64> = self.samples.iter().map(|&(_, v)| v).collect();
        v.sort_by(f64::total_cmp);
        v
    }

    pub fn clear(&mut self) {
        self.samples.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bounded_by_count() {
        let mut w = Window::new(Some(3), None).unwrap();
        for (t, v) in [(0.0, 5.0), (1.0, 1.0), (2.0, 3.0), (3.0, 2.0)] {
            w.push(t, v);
        }
        assert_eq!(w.len(), 3);
        assert_eq!(w.mean(), Some(2.0));
        assert_eq!(w.sorted_values(), vec![1.0, 2.0, 3.0]);
    }

    #[test]
    fn bounded_by_time() {
        let mut w = Window::new(None, Some(10.0)).unwrap();
        for (t, v) in [(0.0, 1.0), (5.0, 2.0), (10.0, 3.0), (12.0, 4.0)] {
            w.push(t, v);
        }
        // at t = 12 the sample at 0 is 12 s old and gone; the one at 5 (7 s old) stays
        assert_eq!(w.sorted_values(), vec![2.0, 3.0, 4.0]);
        w.expire(20.0); // 5 is 15 s old, 10 exactly 10 s old (kept)
        assert_eq!(w.sorted_values(), vec![3.0, 4.0]);
        w.expire(100.0);
        assert!(w.is_empty());
        assert_eq!(w.mean(), None);
    }

    #[test]
    fn both_bounds_apply() {
        let mut w = Window::new(Some(2), Some(10.0)).unwrap();
        for (t, v) in [(0.0, 1.0), (1.0, 2.0), (2.0, 3.0)] {
            w.push(t, v);
        }
        assert_eq!(w.sorted_values(), vec![2.0, 3.0]);
        w.push(50.0, 9.0);
        assert_eq!(w.sorted_values(), vec![9.0]);
    }

    #[test]
    fn rejects_unbounded_and_invalid_windows_and_values() {
        assert!(Window::new(None, None).is_err());
        assert!(Window::new(Some(0), None).is_err());
        assert!(Window::new(None, Some(0.0)).is_err());
        assert!(Window::new(None, Some(f64::NAN)).is_err());
        let mut w = Window::new(Some(5), None).unwrap();
        w.push(0.0, f64::NAN);
        assert!(w.is_empty());
    }
}
