//! Where it drifted: the mean embedding-aggregated map `E` (docs/spec/scores.md#embedding-aggregation)
//! of each (layer, method) over the reference and over the current window, so that the two can be
//! compared cell by cell (docs/spec/agent.md, "Maps").
//!
//! The reference side ([`ReferenceMaps`]) is a mean with its count per pair, which is all an exact
//! merge of sharded partials needs. The window side ([`MapWindow`]) keeps each sampled map until it
//! leaves the window, with running sums so that adding and expiring a map cost `O(H·W)` each,
//! independent of the window's length; the sums are rebuilt from the kept maps after as many removals
//! as there are maps (amortised `O(1)` per removal), so rounding cannot accumulate over days.

use std::collections::VecDeque;

use ndarray::Array2;
use serde::{Deserialize, Serialize};

use super::window::WindowError;
use crate::scores::Method;

/// Why a map cannot be added or merged.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum MapError {
    #[error("{got} maps for {keys} (layer, method) pairs")]
    Misaligned { got: usize, keys: usize },
    #[error("map {index} is {got:?}, earlier maps of that pair are {expected:?}")]
    Shape { index: usize, got: [usize; 2], expected: [usize; 2] },
    #[error("map {index} holds a value that is not finite")]
    NonFinite { index: usize },
    #[error("{0}")]
    Merge(String),
}

/// The mean map of one (layer, method) pair over `count` samples.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MeanMap {
    pub layer: String,
    pub method: Method,
    /// `[height, width]` of the map (the layer's spatial grid).
    pub shape: [usize; 2],
    pub count: u64,
    /// Row-major, `height × width` values.
    pub mean: Vec<f64>,
}

impl MeanMap {
    pub fn to_array(&self) -> Array2<f64> {
        Array2::from_shape_vec((self.shape[0], self.shape[1]), self.mean.clone())
            .unwrap_or_else(|_| Array2::zeros((self.shape[0], self.shape[1])))
    }
}

/// The reference's mean maps, stored in the baseline file (`maps`).
///
/// Which reference samples are mapped: those whose global index `g` (files in name order, rows in
/// order, the same numbering as `agent baseline --shard`) has `g mod stride = 0`, with
/// `stride = ⌈total / reference_samples⌉` — a systematic sample of at most `reference_samples`
/// spread evenly over the whole reference. Every shard computes the same stride from the total, so the
/// partials' samples are disjoint and together are exactly the whole build's.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ReferenceMaps {
    pub stride: u64,
    pub maps: Vec<MeanMap>,
}

impl ReferenceMaps {
    /// The stride that maps at most `max_samples` of `total` samples (`max_samples ≥ 1`).
    pub fn stride_for(total: u64, max_samples: u64) -> u64 {
        total.div_ceil(max_samples.max(1)).max(1)
    }

    pub fn get(&self, layer: &str, method: Method) -> Option<&MeanMap> {
        self.maps.iter().find(|m| m.layer == layer && m.method == method)
    }

    /// Samples behind the means (the same for every pair).
    pub fn samples(&self) -> u64 {
        self.maps.first().map_or(0, |m| m.count)
    }

    /// The reference maps of the union of the partials: per pair, the count-weighted mean.
    pub fn merge(parts: &[&ReferenceMaps]) -> Result<ReferenceMaps, MapError> {
        let err = |m: String| Err(MapError::Merge(m));
        let Some(first) = parts.first() else {
            return err("no partial maps given".into());
        };
        for (i, p) in parts.iter().enumerate() {
            if p.stride != first.stride {
                return err(format!(
                    "partial {} maps 1 reference sample in {}, partial 1 maps 1 in {}",
                    i + 1,
                    p.stride,
                    first.stride
                ));
            }
            let pairs = |r: &ReferenceMaps| -> Vec<(String, Method)> {
                r.maps.iter().map(|m| (m.layer.clone(), m.method)).collect()
            };
            if pairs(p) != pairs(first) {
                return err(format!(
                    "partial {} has maps {:?}, partial 1 has {:?}",
                    i + 1,
                    pairs(p),
                    pairs(first)
                ));
            }
        }
        let mut maps = Vec::with_capacity(first.maps.len());
        for (k, head) in first.maps.iter().enumerate() {
            // Partials that mapped none of the sample (count 0) have no shape and add nothing.
            let counted: Vec<&MeanMap> = parts.iter().map(|p| &p.maps[k]).filter(|m| m.count > 0).collect();
            let head = counted.first().copied().unwrap_or(head);
            let count: u64 = counted.iter().map(|m| m.count).sum();
            let mut sum = vec![0.0f64; head.mean.len()];
            for m in &counted {
                if m.shape != head.shape || m.mean.len() != m.shape[0] * m.shape[1] {
                    return err(format!(
                        "the maps of {}/{} are {:?} ({} values) in one partial, {:?} in another",
                        m.layer,
                        m.method.as_str(),
                        m.shape,
                        m.mean.len(),
                        head.shape
                    ));
                }
                for (s, v) in sum.iter_mut().zip(&m.mean) {
                    *s += v * m.count as f64;
                }
            }
            let mean = if count == 0 { sum } else { sum.into_iter().map(|s| s / count as f64).collect() };
            maps.push(MeanMap { count, mean, ..head.clone() });
        }
        Ok(ReferenceMaps { stride: first.stride, maps })
    }
}

/// Checks one sample's maps against the pairs and the shapes seen so far (fixing them on the first).
fn check(maps: &[Array2<f32>], keys: usize, shapes: &mut Option<Vec<[usize; 2]>>) -> Result<(), MapError> {
    if maps.len() != keys {
        return Err(MapError::Misaligned { got: maps.len(), keys });
    }
    let got: Vec<[usize; 2]> = maps.iter().map(|m| [m.nrows(), m.ncols()]).collect();
    if let Some(expected) = shapes
        && let Some(index) = (0..keys).find(|&i| got[i] != expected[i])
    {
        return Err(MapError::Shape { index, got: got[index], expected: expected[index] });
    }
    if let Some(index) = maps.iter().position(|m| m.iter().any(|v| !v.is_finite())) {
        return Err(MapError::NonFinite { index });
    }
    *shapes = Some(got);
    Ok(())
}

/// Streams maps into per-pair sums: the reference side while a baseline is built.
#[derive(Debug, Clone)]
pub struct MapSums {
    keys: Vec<(String, Method)>,
    shapes: Option<Vec<[usize; 2]>>,
    sums: Vec<Array2<f64>>,
    count: u64,
}

impl MapSums {
    pub fn new(keys: Vec<(String, Method)>) -> MapSums {
        MapSums { keys, shapes: None, sums: Vec::new(), count: 0 }
    }

    /// Adds one sample's maps, aligned with the keys. A sample with a non-finite value is refused.
    pub fn push(&mut self, maps: &[Array2<f32>]) -> Result<(), MapError> {
        check(maps, self.keys.len(), &mut self.shapes)?;
        if self.sums.is_empty() {
            self.sums = maps.iter().map(|m| Array2::zeros(m.dim())).collect();
        }
        for (s, m) in self.sums.iter_mut().zip(maps) {
            s.zip_mut_with(m, |s, &v| *s += f64::from(v));
        }
        self.count += 1;
        Ok(())
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    /// The means. A shard may hold none of the mapped samples: its maps then have count 0 and no
    /// values (shape `[0, 0]`), and merge as nothing.
    pub fn finish(self, stride: u64) -> ReferenceMaps {
        let n = self.count as f64;
        let mut sums = self.sums.into_iter();
        let maps = self
            .keys
            .into_iter()
            .map(|(layer, method)| match sums.next() {
                Some(s) => MeanMap {
                    layer,
                    method,
                    shape: [s.nrows(), s.ncols()],
                    count: self.count,
                    mean: s.iter().map(|v| v / n).collect(),
                },
                None => MeanMap { layer, method, shape: [0, 0], count: 0, mean: Vec::new() },
            })
            .collect();
        ReferenceMaps { stride, maps }
    }
}

struct Entry {
    /// Index of the sample among all recorded (mapped or not), for the count bound.
    seq: u64,
    t: f64,
    maps: Vec<Array2<f32>>,
}

/// The maps of the samples in the drift window: the same bounds as [`super::Window`] (the last
/// `window_samples` samples, counted whether mapped or not, and/or the last `window_secs` seconds),
/// plus at most `max_maps` maps (the newest), which bounds the memory at `max_maps · Σ H·W · 4`
/// bytes whatever the window's length.
pub struct MapWindow {
    window_samples: Option<u64>,
    window_secs: Option<f64>,
    max_maps: usize,
    keys: usize,
    shapes: Option<Vec<[usize; 2]>>,
    seq: u64,
    entries: VecDeque<Entry>,
    sums: Vec<Array2<f64>>,
    /// Removals since the sums were last rebuilt from the entries.
    removed: usize,
}

impl MapWindow {
    /// `keys` (layer, method) pairs per sample; the bounds are checked as [`super::Window::new`]
    /// checks them, and `max_maps` must be at least 1.
    pub fn new(
        keys: usize,
        window_samples: Option<usize>,
        window_secs: Option<f64>,
        max_maps: usize,
    ) -> Result<MapWindow, WindowError> {
        super::Window::new(window_samples, window_secs)?;
        if max_maps == 0 {
            return Err(WindowError::NoSamples);
        }
        Ok(MapWindow {
            window_samples: window_samples.map(|n| n as u64),
            window_secs,
            max_maps,
            keys,
            shapes: None,
            seq: 0,
            entries: VecDeque::new(),
            sums: Vec::new(),
            removed: 0,
        })
    }

    /// Counts one sample at time `t` (seconds, non-decreasing) and adds its maps when it was mapped.
    /// Maps that do not fit (another count or shape than before, a non-finite value) are refused with
    /// the reason; the sample is counted all the same, as the score windows count it.
    pub fn record(&mut self, t: f64, maps: Option<Vec<Array2<f32>>>) -> Result<(), MapError> {
        self.seq += 1;
        let added = match maps {
            Some(maps) => check(&maps, self.keys, &mut self.shapes).map(|()| {
                if self.sums.is_empty() {
                    self.sums = maps.iter().map(|m| Array2::zeros(m.dim())).collect();
                }
                for (s, m) in self.sums.iter_mut().zip(&maps) {
                    s.zip_mut_with(m, |s, &v| *s += f64::from(v));
                }
                self.entries.push_back(Entry { seq: self.seq, t, maps });
            }),
            None => Ok(()),
        };
        while self.entries.len() > self.max_maps {
            self.pop();
        }
        if let Some(n) = self.window_samples {
            while self.entries.front().is_some_and(|e| self.seq - e.seq >= n) {
                self.pop();
            }
        }
        self.expire(t);
        added
    }

    /// Drops the maps older than `window_secs` before `now` (a map at `t` stays while
    /// `now − t ≤ window_secs`).
    pub fn expire(&mut self, now: f64) {
        if let Some(secs) = self.window_secs {
            while self.entries.front().is_some_and(|e| now - e.t > secs) {
                self.pop();
            }
        }
    }

    fn pop(&mut self) {
        let Some(e) = self.entries.pop_front() else { return };
        for (s, m) in self.sums.iter_mut().zip(&e.maps) {
            s.zip_mut_with(m, |s, &v| *s -= f64::from(v));
        }
        self.removed += 1;
        if self.removed >= self.entries.len() {
            self.rebuild();
        }
    }

    /// Recomputes the sums from the kept maps (exactly zero when none is left).
    fn rebuild(&mut self) {
        for s in &mut self.sums {
            s.fill(0.0);
        }
        for e in &self.entries {
            for (s, m) in self.sums.iter_mut().zip(&e.maps) {
                s.zip_mut_with(m, |s, &v| *s += f64::from(v));
            }
        }
        self.removed = 0;
    }

    /// Maps in the window.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Samples recorded since the window was made (mapped or not).
    pub fn seen(&self) -> u64 {
        self.seq
    }

    /// The `[height, width]` of each pair's maps, once one was added.
    pub fn shapes(&self) -> Option<&[[usize; 2]]> {
        self.shapes.as_deref()
    }

    /// Per pair, the mean of the maps in the window; `None` when it holds none.
    pub fn means(&self) -> Option<Vec<Array2<f64>>> {
        if self.entries.is_empty() {
            return None;
        }
        let n = self.entries.len() as f64;
        Some(self.sums.iter().map(|s| s / n).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::array;

    fn m(v: [[f32; 2]; 1]) -> Array2<f32> {
        array![[v[0][0], v[0][1]]]
    }

    #[test]
    fn window_means_follow_the_count_bound() {
        let mut w = MapWindow::new(1, Some(3), None, 100).unwrap();
        assert_eq!(w.means(), None);
        w.record(0.0, Some(vec![m([[1.0, 2.0]])])).unwrap();
        w.record(1.0, None).unwrap();
        w.record(2.0, Some(vec![m([[3.0, 6.0]])])).unwrap();
        assert_eq!(w.means().unwrap()[0], array![[2.0, 4.0]]);
        // The fourth sample pushes the first (mapped) one out of the last three.
        w.record(3.0, Some(vec![m([[5.0, 0.5]])])).unwrap();
        assert_eq!(w.len(), 2);
        assert_eq!(w.means().unwrap()[0], array![[4.0, 3.25]]);
        // Two unmapped samples: only the newest map (sample 4) is among the last three.
        w.record(4.0, None).unwrap();
        w.record(5.0, None).unwrap();
        assert_eq!(w.means().unwrap()[0], array![[5.0, 0.5]]);
        w.record(6.0, None).unwrap();
        assert!(w.is_empty() && w.means().is_none());
        assert_eq!(w.seen(), 7);
    }

    #[test]
    fn window_means_follow_the_time_bound_and_the_map_cap() {
        let mut w = MapWindow::new(2, None, Some(10.0), 2).unwrap();
        let two = |a: f32, b: f32| Some(vec![m([[a, a]]), m([[b, -b]])]);
        w.record(0.0, two(1.0, 10.0)).unwrap();
        w.record(5.0, two(2.0, 20.0)).unwrap();
        let means = w.means().unwrap();
        assert_eq!(means[0], array![[1.5, 1.5]]);
        assert_eq!(means[1], array![[15.0, -15.0]]);
        // The cap of 2 maps drops the oldest.
        w.record(6.0, two(4.0, 40.0)).unwrap();
        assert_eq!(w.means().unwrap()[1], array![[30.0, -30.0]]);
        // At 15.5 the map of 5.0 is 10.5 s old; the one of 6.0 exactly 9.5 s.
        w.expire(15.5);
        assert_eq!(w.means().unwrap()[0], array![[4.0, 4.0]]);
        w.expire(16.0); // 10 s exactly: kept
        assert_eq!(w.len(), 1);
        w.expire(16.5);
        assert!(w.means().is_none());
        assert_eq!(w.shapes(), Some(&[[1, 2], [1, 2]][..]));
    }

    #[test]
    fn sums_stay_exact_over_many_removals() {
        // Values whose sums round in f64: after 10 000 add/remove cycles the mean is still that of
        // the last three maps, because the sums are rebuilt from the kept maps.
        let mut w = MapWindow::new(1, Some(3), None, 3).unwrap();
        for i in 0..10_000 {
            let v = 1e7 + 0.1 * (i % 7) as f32;
            w.record(i as f64, Some(vec![m([[v, 0.1]])])).unwrap();
        }
        let last: Vec<f64> = (9_997..10_000).map(|i| f64::from(1e7 + 0.1 * (i % 7) as f32)).collect();
        let expected = last.iter().sum::<f64>() / 3.0;
        let got = w.means().unwrap()[0][[0, 0]];
        assert!((got - expected).abs() <= 1e-9 * expected, "{got} vs {expected}");
        assert!((w.means().unwrap()[0][[0, 1]] - f64::from(0.1f32)).abs() < 1e-12);
    }

    #[test]
    fn bad_maps_are_refused_and_the_sample_still_counts() {
        let mut w = MapWindow::new(1, Some(2), None, 10).unwrap();
        w.record(0.0, Some(vec![m([[1.0, 1.0]])])).unwrap();
        let e = w.record(1.0, Some(vec![array![[1.0f32], [2.0]]])).unwrap_err();
        assert_eq!(e, MapError::Shape { index: 0, got: [2, 1], expected: [1, 2] });
        assert_eq!(
            w.record(2.0, Some(vec![m([[f32::NAN, 1.0]])])).unwrap_err(),
            MapError::NonFinite { index: 0 }
        );
        assert!(matches!(w.record(3.0, Some(vec![])), Err(MapError::Misaligned { got: 0, keys: 1 })));
        assert_eq!(w.seen(), 4);
        // The first map is now 3 samples back, outside a window of 2.
        assert!(w.is_empty());
        assert!(MapWindow::new(1, None, None, 5).is_err());
        assert!(MapWindow::new(1, Some(5), None, 0).is_err());
    }

    fn sums(values: &[[f32; 2]]) -> MapSums {
        let mut s = MapSums::new(vec![("l".into(), Method::Vanilla)]);
        for v in values {
            s.push(&[m([*v])]).unwrap();
        }
        s
    }

    #[test]
    fn reference_means_merge_exactly() {
        let whole = sums(&[[1.0, 2.0], [3.0, 4.0], [8.0, 0.0]]).finish(2);
        assert_eq!(whole.maps[0].mean, vec![4.0, 2.0]);
        assert_eq!(whole.samples(), 3);
        let a = sums(&[[1.0, 2.0], [8.0, 0.0]]).finish(2);
        let b = sums(&[[3.0, 4.0]]).finish(2);
        // A shard that mapped none of the sample merges as nothing, wherever it is.
        let none = sums(&[]).finish(2);
        assert_eq!((none.samples(), none.maps[0].shape), (0, [0, 0]));
        assert_eq!(ReferenceMaps::merge(&[&none, &a, &b]).unwrap(), whole);
        assert_eq!(ReferenceMaps::merge(&[&a, &none, &b]).unwrap(), whole);
        let other = sums(&[[3.0, 4.0]]).finish(3);
        assert!(
            ReferenceMaps::merge(&[&a, &other]).unwrap_err().to_string().contains("1 reference sample in 3")
        );
        let mut wide = MapSums::new(vec![("l".into(), Method::Vanilla)]);
        wide.push(&[array![[1.0f32, 2.0, 3.0]]]).unwrap();
        assert!(ReferenceMaps::merge(&[&a, &wide.finish(2)]).unwrap_err().to_string().contains("[1, 3]"));
        assert_eq!(ReferenceMaps::stride_for(10, 4), 3);
        assert_eq!(ReferenceMaps::stride_for(3, 512), 1);
        assert_eq!(whole.get("l", Method::Vanilla).unwrap().to_array(), array![[4.0, 2.0]]);
    }
}
