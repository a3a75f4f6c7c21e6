//! Where it drifted, in the daemon: the reference's mean maps (computed when a baseline is built,
//! stored in it) and the window's (kept by the engine thread from a share of the scored samples),
//! served at `/api/v1/maps` and drawn on the landing page ([`super::heatmap`]). The statistics are
//! `crate::drift::maps`'; this module decides which samples are mapped and holds the live state.

use std::sync::Mutex;
use std::time::Instant;

use anyhow::{Context, Result};
use ndarray::{Array2, ArrayViewD, Axis};
use serde::Serialize;

use super::Scorer;
use super::locks::lock;
use crate::config::{Config, MapsConfig};
use crate::drift::{Baseline, MapError, MapSums, MapWindow, ReferenceMaps};
use crate::engine::ScoreKey;
use crate::scores::Method;

/// The reference maps of a baseline being built: the samples whose global index `g` (as listed in
/// `globals`, one list per batch) is a multiple of the stride, `batch_size` at a time. `total` is
/// the number of samples of the whole reference (not of a shard), so that every shard picks the
/// same samples as one process would. A scorer that computes no maps, or maps that do not fit, give
/// a baseline without maps and a warning: maps are for looking at, never a reason to refuse a
/// baseline.
pub fn reference(
    scorer: &mut dyn Scorer,
    batches: &[plugins::decode::Payload],
    globals: &[Vec<u64>],
    total: u64,
    cfg: &MapsConfig,
    batch_size: usize,
) -> Option<ReferenceMaps> {
    if !cfg.enabled {
        return None;
    }
    let stride = ReferenceMaps::stride_for(total, cfg.reference_samples);
    let mut sums = MapSums::new(pairs(scorer.keys()));
    let mut skipped = 0u64;
    let result = (|| -> Result<()> {
        for (batch, g) in batches.iter().zip(globals) {
            let picks: Vec<usize> = (0..g.len()).filter(|&i| g[i].is_multiple_of(stride)).collect();
            if picks.is_empty() {
                continue;
            }
            // Token samples have maps of their own lengths, which no mean map holds: text models get
            // no reference maps (the maps view says so).
            let Some(batch) = batch.as_dense() else {
                anyhow::bail!("reference maps are drawn for dense inputs only (this model takes token ids)");
            };
            let chosen = batch.select(Axis(0), &picks);
            for chunk in chosen.axis_chunks_iter(Axis(0), batch_size.max(1)) {
                for per in scorer.embedding_maps(chunk.view())? {
                    match sums.push(&per) {
                        Ok(()) => {}
                        Err(MapError::NonFinite { .. }) => skipped += 1,
                        Err(e) => return Err(e.into()),
                    }
                }
            }
        }
        Ok(())
    })();
    if let Err(e) = result {
        tracing::warn!(error = %format!("{e:#}"), "the baseline gets no reference maps");
        return None;
    }
    if skipped > 0 {
        tracing::warn!(skipped, "reference samples with a non-finite map are left out of the reference maps");
    }
    let maps = sums.finish(stride);
    tracing::info!(samples = maps.samples(), stride, "reference maps computed");
    Some(maps)
}

fn pairs(keys: &[ScoreKey]) -> Vec<(String, Method)> {
    keys.iter().map(|k| (k.layer.clone(), k.method)).collect()
}

/// The maps state of the running pipeline (in `AppState::maps`, which the functions below take
/// rather than the whole state, so that `state` stays the leaf the server reads): written by the
/// engine thread, read by the server.
pub struct LiveMaps {
    model: String,
    enabled: bool,
    keys: Vec<(String, Method)>,
    input_shape: Vec<usize>,
    every: u64,
    max_maps: usize,
    window: MapWindow,
    reference: Option<ReferenceMaps>,
    /// Why there is no reference map, and how to get one.
    reference_note: Option<String>,
    origin: Instant,
    /// The last failure to compute or add the window's maps.
    error: Option<String>,
}

impl LiveMaps {
    pub fn new(
        cfg: &Config,
        keys: &[ScoreKey],
        input_shape: &[usize],
        base: Option<&Baseline>,
    ) -> Result<LiveMaps> {
        let m = &cfg.maps;
        let window = MapWindow::new(
            keys.len(),
            cfg.window.samples,
            cfg.window.secs.map(|s| s as f64),
            m.window_maps.max(1),
        )
        .context("the maps window")?;
        let reference = base.and_then(|b| b.maps.clone());
        let reference_note = match (m.enabled, &reference) {
            (false, _) => Some("maps are off (maps.enabled = false)".to_string()),
            (true, Some(_)) => None,
            (true, None) => Some(rebuild_note(cfg)),
        };
        Ok(LiveMaps {
            model: cfg.model.name.clone(),
            enabled: m.enabled,
            keys: pairs(keys),
            input_shape: input_shape.to_vec(),
            every: m.every.max(1),
            max_maps: m.window_maps,
            window,
            reference,
            reference_note,
            origin: Instant::now(),
            error: None,
        })
    }

    fn secs(&self, t: Instant) -> f64 {
        t.saturating_duration_since(self.origin).as_secs_f64()
    }

    /// Rows of the next `n` samples to map: those whose running index is a multiple of `every`.
    fn picks(&self, n: usize) -> Vec<usize> {
        if !self.enabled {
            return Vec::new();
        }
        let seen = self.window.seen();
        (0..n).filter(|&i| (seen + i as u64).is_multiple_of(self.every)).collect()
    }

    /// Counts `n` samples scored at `now`, with the maps of the rows `picks` (in order).
    fn record(&mut self, now: Instant, n: usize, picks: &[usize], maps: Result<Vec<Vec<Array2<f32>>>>) {
        let t = self.secs(now);
        let maps = match maps {
            Ok(m) if m.len() == picks.len() => m.into_iter().map(Some).collect::<Vec<_>>(),
            Ok(m) => {
                self.fail(format!("the engine returned maps of {} samples for {}", m.len(), picks.len()));
                vec![None; picks.len()]
            }
            Err(e) => {
                self.fail(format!("computing the window's maps: {e:#}"));
                vec![None; picks.len()]
            }
        };
        let mut next = picks.iter().copied().zip(maps).peekable();
        for row in 0..n {
            let m = if next.peek().is_some_and(|(p, _)| *p == row) {
                next.next().and_then(|(_, m)| m)
            } else {
                None
            };
            if let Err(e) = self.window.record(t, m) {
                self.fail(format!("a window map was refused: {e}"));
            }
        }
    }

    fn fail(&mut self, why: String) {
        if self.error.as_deref() != Some(why.as_str()) {
            tracing::warn!(model = %self.model, "{why}");
        }
        self.error = Some(why);
    }

    /// What `/api/v1/maps` answers, with the window expired to `now`.
    pub fn view(&mut self, now: Instant) -> MapsView {
        let t = self.secs(now);
        self.window.expire(t);
        let means = self.window.means();
        let shapes = self.window.shapes().map(|s| s.to_vec());
        let in_window = self.window.len();
        let maps = self
            .keys
            .iter()
            .enumerate()
            .map(|(i, (layer, method))| {
                let reference =
                    self.reference.as_ref().and_then(|r| r.get(layer, *method)).filter(|r| r.count > 0);
                let window = means.as_ref().map(|m| m[i].clone());
                let shape = reference.map(|r| r.shape).or_else(|| shapes.as_ref().map(|s| s[i]));
                let reference_map = reference.map(|r| r.to_array());
                let difference = match (&window, &reference_map) {
                    (Some(w), Some(r)) if w.dim() == r.dim() => Some(w - r),
                    _ => None,
                };
                KeyMaps {
                    layer: layer.clone(),
                    method: *method,
                    shape,
                    reference_samples: reference.map_or(0, |r| r.count),
                    window_samples: if window.is_some() { in_window } else { 0 },
                    reference: reference_map.map(rows),
                    window: window.map(rows),
                    difference: difference.map(rows),
                }
            })
            .collect();
        MapsView {
            model: self.model.clone(),
            enabled: self.enabled,
            input_shape: self.input_shape.clone(),
            every: self.every,
            window_maps_max: self.max_maps,
            window_maps: in_window,
            samples_seen: self.window.seen(),
            reference_samples: self.reference.as_ref().map_or(0, |r| r.samples()),
            reference_stride: self.reference.as_ref().map(|r| r.stride),
            reference_note: self.reference_note.clone(),
            error: self.error.clone(),
            maps,
        }
    }
}

/// Why the baseline has no reference maps, and the commands that give it some.
fn rebuild_note(cfg: &Config) -> String {
    let out = cfg.baseline.path.as_ref().map_or("BASELINE".to_string(), |p| p.display().to_string());
    let delete = match (&cfg.baseline.path, &cfg.baseline.reference_dir) {
        (Some(p), Some(_)) => {
            format!(", or delete {} to rebuild it from baseline.reference_dir at start-up", p.display())
        }
        _ => String::new(),
    };
    format!(
        "the baseline has no reference maps (built by an agent without maps, or with maps.enabled = \
         false); rebuild it with `agent baseline --config {} --reference DIR --out {out}`{delete}",
        cfg.file.display()
    )
}

fn rows(m: Array2<f64>) -> Vec<Vec<f64>> {
    m.outer_iter().map(|r| r.to_vec()).collect()
}

/// `GET /api/v1/maps`.
#[derive(Debug, Clone, Serialize)]
pub struct MapsView {
    pub model: String,
    pub enabled: bool,
    /// The model's input shape without the batch axis (the maps are on the layers' grids).
    pub input_shape: Vec<usize>,
    /// One scored sample in `every` is mapped for the window.
    pub every: u64,
    pub window_maps_max: usize,
    /// Maps averaged into the window's mean.
    pub window_maps: usize,
    /// Samples scored since the pipeline started (mapped or not).
    pub samples_seen: u64,
    /// Reference samples averaged into the reference's mean (0: none).
    pub reference_samples: u64,
    /// One reference sample in `reference_stride` was mapped.
    pub reference_stride: Option<u64>,
    pub reference_note: Option<String>,
    pub error: Option<String>,
    pub maps: Vec<KeyMaps>,
}

/// One (layer, method): the mean maps as rows of cells (`shape[0]` rows of `shape[1]`).
#[derive(Debug, Clone, Serialize)]
pub struct KeyMaps {
    pub layer: String,
    pub method: Method,
    /// `[height, width]`; `None` until a map is known.
    pub shape: Option<[usize; 2]>,
    pub reference_samples: u64,
    pub window_samples: usize,
    pub reference: Option<Vec<Vec<f64>>>,
    pub window: Option<Vec<Vec<f64>>>,
    /// `window − reference`.
    pub difference: Option<Vec<Vec<f64>>>,
}

/// Starts the maps of a new pipeline (a reload starts a new window, as for the scores).
pub(super) fn install(
    live: &Mutex<Option<LiveMaps>>,
    cfg: &Config,
    scorer: &dyn Scorer,
    base: Option<&Baseline>,
) {
    *lock(live) = match LiveMaps::new(cfg, scorer.keys(), scorer.input_shape(), base) {
        Ok(m) => Some(m),
        Err(e) => {
            tracing::warn!(error = %format!("{e:#}"), "no maps for this pipeline");
            None
        }
    };
}

/// The engine thread's hook after a batch was scored: maps the share of its samples that
/// [`LiveMaps`] picks (one engine call for all of them) and records every sample in the window.
pub(super) fn observe(live: &Mutex<Option<LiveMaps>>, scorer: &mut dyn Scorer, batch: ArrayViewD<f32>) {
    let n = batch.len_of(Axis(0));
    // The engine thread is the only writer: the picks stay valid while the lock is released for the
    // (slow) engine call, so readers are never held up by it.
    let picks = match lock(live).as_ref() {
        Some(m) => m.picks(n),
        None => return,
    };
    let maps = if picks.is_empty() {
        Ok(Vec::new())
    } else if picks.len() == n {
        scorer.embedding_maps(batch)
    } else {
        scorer.embedding_maps(batch.select(Axis(0), &picks).view())
    };
    if let Some(m) = lock(live).as_mut() {
        m.record(Instant::now(), n, &picks, maps);
    }
}

/// The view of the running pipeline's maps; `None` before the first pipeline is up.
pub fn view(live: &Mutex<Option<LiveMaps>>) -> Option<MapsView> {
    lock(live).as_mut().map(|m| m.view(Instant::now()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::{BaselineBuilder, BaselineMeta, MeanMap};
    use crate::scores::{LayerScores, SampleScores};
    use ndarray::array;

    fn config(dir: &std::path::Path, maps: &str) -> Config {
        let p = dir.join("agent.toml");
        std::fs::write(
            &p,
            format!(
                "[model]\nname = \"m\"\npath = \"m.onnx\"\nembedding = \"z\"\nlayers = [{{ name = \"l\", tensor = \"t\" }}]\n\
                 [baseline]\npath = \"{d}/b.json\"\nreference_dir = \"{d}/ref\"\n[window]\nsamples = 4\n[maps]\n{maps}\n",
                d = dir.display()
            ),
        )
        .unwrap();
        Config::load_with_env(&p, Default::default()).unwrap()
    }

    fn keys() -> Vec<ScoreKey> {
        vec![ScoreKey { layer: "l".into(), method: Method::Vanilla, noise_benchmark: 0.1 }]
    }

    fn baseline(maps: Option<ReferenceMaps>) -> Baseline {
        let meta = BaselineMeta { model_sha256: "m".into(), settings_hash: "h".into(), created_unix_secs: 0 };
        let mut b = BaselineBuilder::new(meta, &keys(), 8, 0);
        b.push(&SampleScores { scores: vec![LayerScores { noise_score: 0.5, variance_score: 0.1 }] })
            .unwrap();
        Baseline { maps, ..b.finish().unwrap() }
    }

    fn one(v: f32) -> Vec<Array2<f32>> {
        vec![array![[v, -v]]]
    }

    #[test]
    fn every_other_sample_is_mapped_and_compared_with_the_reference() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path(), "every = 2");
        let reference = ReferenceMaps {
            stride: 1,
            maps: vec![MeanMap {
                layer: "l".into(),
                method: Method::Vanilla,
                shape: [1, 2],
                count: 5,
                mean: vec![1.0, 1.0],
            }],
        };
        let mut m = LiveMaps::new(&cfg, &keys(), &[1, 2, 2], Some(&baseline(Some(reference)))).unwrap();
        let t = Instant::now();
        // Samples 0..3 → rows 0 and 2 are mapped; then samples 3..6 → rows 1 (sample 4) and none else.
        assert_eq!(m.picks(3), vec![0, 2]);
        m.record(t, 3, &[0, 2], Ok(vec![one(2.0), one(4.0)]));
        assert_eq!(m.picks(3), vec![1]);
        m.record(t, 3, &[1], Ok(vec![one(8.0)]));
        // Window of 4 samples: 2..5 → the maps of samples 2 and 4.
        let v = m.view(t);
        assert_eq!((v.window_maps, v.samples_seen, v.reference_samples), (2, 6, 5));
        let k = &v.maps[0];
        assert_eq!(k.shape, Some([1, 2]));
        assert_eq!(k.window, Some(vec![vec![6.0, -6.0]]));
        assert_eq!(k.reference, Some(vec![vec![1.0, 1.0]]));
        assert_eq!(k.difference, Some(vec![vec![5.0, -7.0]]));
        assert!(v.reference_note.is_none() && v.error.is_none());
        // A failed engine call counts the samples, maps nothing, and says why.
        m.record(t, 2, &[1], Err(anyhow::anyhow!("boom")));
        let v = m.view(t);
        assert_eq!((v.window_maps, v.samples_seen), (1, 8));
        assert!(v.error.as_deref().unwrap().contains("boom"));
    }

    #[test]
    fn a_baseline_without_maps_says_how_to_rebuild_it() {
        let d = tempfile::tempdir().unwrap();
        let cfg = config(d.path(), "");
        let mut m = LiveMaps::new(&cfg, &keys(), &[1, 2, 2], Some(&baseline(None))).unwrap();
        let v = m.view(Instant::now());
        let note = v.reference_note.unwrap();
        assert!(note.contains("no reference maps") && note.contains("agent baseline --config"), "{note}");
        assert!(note.contains("or delete") && note.contains("b.json"), "{note}");
        assert_eq!((v.maps[0].reference.clone(), v.maps[0].difference.clone()), (None, None));
        // The file of such a baseline still loads.
        let path = d.path().join("old.json");
        super::super::baseline::save(&baseline(None), &path).unwrap();
        assert!(!std::fs::read_to_string(&path).unwrap().contains("\"maps\""));
        assert_eq!(super::super::baseline::load(&path).unwrap().maps, None);
        let off = LiveMaps::new(&config(d.path(), "enabled = false"), &keys(), &[1], None).unwrap();
        assert_eq!(off.picks(5), Vec::<usize>::new());
    }
}
