//! The reference baseline (docs/spec/scores.md#drift): what "normal" scores look like, stored beside the
//! model hash.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use super::welford::RunningStats;
use crate::scores::{Method, SampleScores, ScoreKey};

/// Version of the JSON layout; a file with another version is refused rather than misread.
pub const BASELINE_FORMAT: u32 = 1;

/// Default bound on the stored reference scores per (layer, method, score) (`[baseline]
/// reservoir_samples`): enough for quantiles to about ±1 % (one standard error at the median, 0.5/√2048) and a KS reference side whose own
/// sampling error (≈ 1.36/√2048 ≈ 0.03 in `D` at 5 %) is small next to that of a window of a few
/// hundred samples, while keeping the file at about a hundred kB per pair.
pub const DEFAULT_RESERVOIR_SIZE: usize = 2048;

/// Default bound on the stored reference embeddings (`[detectors] reference_samples`): the detectors
/// cap their reference side at 500 (MMD) to 1000 (centroid) rows anyway, and 1000 rows of `D = 2048`
/// are 8 MB in memory (about 20 MB of JSON); at the demo's `D = 32`, a few hundred kB.
pub const DEFAULT_EMBEDDING_RESERVOIR_SIZE: usize = 1000;

/// The ChaCha8 stream of the embedding reservoir's generator: far above the score reservoirs'
/// `2·index + 1`, so adding a layer never reshuffles it (nor it them).
const EMBEDDING_STREAM: u64 = 1 << 40;

/// Why a baseline cannot be built, read or used. The messages say what is wrong; how to rebuild a
/// baseline is the caller's to add (it knows the command line and the configuration).
#[derive(Debug, thiserror::Error)]
pub enum BaselineError {
    #[error("the baseline is stale: it was built for {0}")]
    Stale(String),
    #[error("baseline format {found} is not supported (this agent reads format {BASELINE_FORMAT})")]
    Format { found: u32 },
    #[error("not a baseline file: {0}")]
    NotABaseline(#[source] serde_json::Error),
    #[error("cannot serialise the baseline: {0}")]
    Serialise(#[source] serde_json::Error),
    #[error("{scores} scores for {keys} (layer, method) pairs")]
    Misaligned { scores: usize, keys: usize },
    #[error("no finite reference score for layer {layer:?}, method {method}")]
    NoFiniteScore { layer: String, method: &'static str },
    #[error("cannot merge the partial baselines: {0}")]
    Merge(String),
    #[error("embedding {row} has {found} components, the earlier ones {expected}")]
    EmbeddingWidth { row: u64, found: usize, expected: usize },
}

/// A uniform sample of the reference's embeddings `z`, for the embedding detectors
/// (`agent::detectors`), which are fitted on it when the daemon loads the baseline (with fixed
/// seeds, so a baseline gives the same thresholds on every start).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmbeddingSample {
    /// Finite embeddings seen (all of them, not only those kept).
    pub count: u64,
    /// Embeddings skipped for a non-finite component.
    #[serde(default)]
    pub non_finite: u64,
    /// Components per embedding (`D`).
    pub dim: usize,
    /// The bound on `rows` (the builder's reservoir size).
    pub capacity: usize,
    /// At most `capacity` embeddings, a uniform random sample (reservoir sampling, seeded) of those
    /// seen, in no particular order. All of them when `count` is within the bound.
    pub rows: Vec<Vec<f32>>,
}

impl EmbeddingSample {
    /// The rows as a `[n, D]` matrix.
    pub fn matrix(&self) -> ndarray::Array2<f32> {
        let flat: Vec<f32> = self.rows.iter().flatten().copied().collect();
        ndarray::Array2::from_shape_vec((self.rows.len(), self.dim), flat).expect("rows of width dim")
    }
}

/// One score's reference distribution.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ScoreSummary {
    /// Finite per-sample scores seen (all of them, not only those kept in `reservoir`).
    pub count: u64,
    pub mean: f64,
    /// Population standard deviation (ddof = 0).
    pub std: f64,
    /// Non-finite scores skipped (NaN would mean a broken graph; reported, never averaged in).
    #[serde(default)]
    pub non_finite: u64,
    /// A uniform random sample (reservoir sampling, seeded) of at most the reservoir size of the
    /// per-sample scores, sorted ascending: the quantile sketch and the reference side of the KS test.
    /// All of them when `count` is within the bound.
    pub reservoir: Vec<f64>,
}

impl ScoreSummary {
    /// The `q`-quantile (`0 ≤ q ≤ 1`) of the reservoir by linear interpolation between order
    /// statistics (the "type 7" definition, NumPy's default); `None` when empty or `q` is out of range.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let v = &self.reservoir;
        if v.is_empty() || !(0.0..=1.0).contains(&q) {
            return None;
        }
        let pos = q * (v.len() - 1) as f64;
        let lo = pos.floor() as usize;
        let hi = (lo + 1).min(v.len() - 1);
        Some(v[lo] + (pos - lo as f64) * (v[hi] - v[lo]))
    }

    /// Where `value` falls in the reference distribution, in `[0, 1]`: the reservoir's empirical CDF
    /// at `value` with ties counted half (`(#below + #equal/2) / n`, the mid-distribution function).
    /// Under no drift a sample's rank is uniform on `[0, 1]` (up to the reservoir's discreteness),
    /// whatever the scale of the score, which is what lets one fixed set of histogram buckets
    /// resolve every layer's scores and lets replicas sharing a baseline add their histograms up.
    /// `None` when the reservoir is empty or `value` is not finite.
    pub fn rank(&self, value: f64) -> Option<f64> {
        let v = &self.reservoir;
        if v.is_empty() || !value.is_finite() {
            return None;
        }
        let below = v.partition_point(|&x| x < value);
        let not_above = v.partition_point(|&x| x <= value);
        Some((below as f64 + (not_above - below) as f64 / 2.0) / v.len() as f64)
    }
}

/// The reference statistics of one (layer, method) pair.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct BaselineEntry {
    pub layer: String,
    pub method: Method,
    pub noise_benchmark: f64,
    pub noise_score: ScoreSummary,
    pub variance_score: ScoreSummary,
}

/// Who built a baseline and for what: compared with the running configuration before use.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BaselineMeta {
    /// SHA-256 (hex) of the ONNX model file.
    pub model_sha256: String,
    /// Hash of every setting that changes a score (layers, methods, aggregations, noise, smoothing…).
    pub settings_hash: String,
    pub created_unix_secs: u64,
}

/// The reference baseline file (JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Baseline {
    pub format: u32,
    pub agent_version: String,
    #[serde(flatten)]
    pub meta: BaselineMeta,
    pub reservoir_size: usize,
    pub entries: Vec<BaselineEntry>,
    /// Set on a partial baseline (`agent baseline --shard I/N`): the share of the reference it covers.
    /// A partial is not a baseline of the reference, so the daemon refuses it; `agent baseline merge`
    /// combines all `N` of them into one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shard: Option<Shard>,
    /// The reference's mean embedding-aggregated map per (layer, method) (`super::maps`). Absent in
    /// files written before maps existed or with `maps.enabled = false`: such a file still loads,
    /// and the maps view says the reference has none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub maps: Option<super::maps::ReferenceMaps>,
    /// The reference embeddings the embedding detectors are fitted on; absent in baselines built
    /// before the daemon ran those detectors (the daemon then runs without them and says so). Added
    /// without a format change: older agents ignore it, newer ones read older files.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub embeddings: Option<EmbeddingSample>,
}

/// Which share of the reference a partial baseline covers: the samples whose index `g` in the
/// reference (files in name order, rows in order) has `g mod count == index`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl Shard {
    /// Parses `I/N` (`0 ≤ I < N`).
    pub fn parse(s: &str) -> Result<Shard, String> {
        let (i, n) = s.split_once('/').ok_or_else(|| format!("shard {s:?}: expected I/N, e.g. 0/4"))?;
        let index: u32 = i.trim().parse().map_err(|_| format!("shard {s:?}: {i:?} is not a number"))?;
        let count: u32 = n.trim().parse().map_err(|_| format!("shard {s:?}: {n:?} is not a number"))?;
        if count == 0 || index >= count {
            return Err(format!("shard {s:?}: needs 0 ≤ I < N"));
        }
        Ok(Shard { index, count })
    }

    /// Whether the reference sample with global index `g` belongs to this shard.
    pub fn owns(&self, g: u64) -> bool {
        g % u64::from(self.count) == u64::from(self.index)
    }
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

impl Baseline {
    /// Builds a baseline from the engine's per-sample scores on a reference data set; see
    /// [`BaselineBuilder`] for the streaming form and the meaning of `seed`.
    pub fn from_samples(
        meta: BaselineMeta,
        keys: &[ScoreKey],
        samples: &[SampleScores],
        reservoir_size: usize,
        seed: u64,
    ) -> Result<Baseline, BaselineError> {
        let mut b = BaselineBuilder::new(meta, keys, reservoir_size, seed);
        for s in samples {
            b.push(s)?;
        }
        b.finish()
    }

    /// Refuses a baseline built for another model or other score settings: comparing scores computed
    /// differently would raise (or hide) drift that is not there.
    pub fn check_compatible(&self, model_sha256: &str, settings_hash: &str) -> Result<(), BaselineError> {
        let mut why = Vec::new();
        if self.meta.model_sha256 != model_sha256 {
            why.push(format!("model sha256 {} (running: {model_sha256})", self.meta.model_sha256));
        }
        if self.meta.settings_hash != settings_hash {
            why.push(format!("settings hash {} (running: {settings_hash})", self.meta.settings_hash));
        }
        if why.is_empty() {
            return Ok(());
        }
        Err(BaselineError::Stale(why.join(" and ")))
    }

    pub fn entry(&self, layer: &str, method: Method) -> Option<&BaselineEntry> {
        self.entries.iter().find(|e| e.layer == layer && e.method == method)
    }

    pub fn to_json(&self) -> Result<String, BaselineError> {
        serde_json::to_string_pretty(self).map_err(BaselineError::Serialise)
    }

    /// Parses a baseline and refuses an unknown format version.
    pub fn from_json(text: &str) -> Result<Baseline, BaselineError> {
        let b: Baseline = serde_json::from_str(text).map_err(BaselineError::NotABaseline)?;
        if b.format != BASELINE_FORMAT {
            return Err(BaselineError::Format { found: b.format });
        }
        Ok(b)
    }
}

/// Streams per-sample scores into a [`Baseline`] in `O(keys × reservoir_size)` memory, so a reference
/// set of any size can be scored without holding it.
///
/// `seed` makes the reservoirs reproducible: the same reference scores in the same order give the same
/// file. Every (layer, method, score) draws from its own generator (ChaCha8 seeded with `seed`, stream
/// `2·index` or `2·index + 1`), so adding a layer does not reshuffle the others'.
#[derive(Debug, Clone)]
pub struct BaselineBuilder {
    meta: BaselineMeta,
    keys: Vec<ScoreKey>,
    reservoir_size: usize,
    noise: Vec<Summarizer>,
    variance: Vec<Summarizer>,
    embeddings: Option<EmbeddingReservoir>,
}

impl BaselineBuilder {
    pub fn new(meta: BaselineMeta, keys: &[ScoreKey], reservoir_size: usize, seed: u64) -> Self {
        let make = |stream: u64| Summarizer::new(reservoir_size, seed, stream);
        BaselineBuilder {
            meta,
            keys: keys.to_vec(),
            reservoir_size,
            noise: (0..keys.len() as u64).map(|i| make(2 * i)).collect(),
            variance: (0..keys.len() as u64).map(|i| make(2 * i + 1)).collect(),
            embeddings: None,
        }
    }

    /// Also keeps a uniform sample of at most `capacity` embeddings ([`BaselineBuilder::push_embedding`]),
    /// from its own generator (same `seed`, its own stream).
    pub fn with_embeddings(mut self, capacity: usize, seed: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(EMBEDDING_STREAM);
        self.embeddings = Some(EmbeddingReservoir {
            sample: EmbeddingSample { count: 0, non_finite: 0, dim: 0, capacity, rows: Vec::new() },
            rng,
        });
        self
    }

    /// Adds one sample's embedding (ignored unless [`BaselineBuilder::with_embeddings`]). An
    /// embedding with a non-finite component is counted and skipped; one of another width than the
    /// first is an error (the model's embedding has one width).
    pub fn push_embedding(&mut self, z: &[f32]) -> Result<(), BaselineError> {
        let Some(e) = &mut self.embeddings else { return Ok(()) };
        let s = &mut e.sample;
        if s.count == 0 && s.non_finite == 0 {
            s.dim = z.len();
        } else if z.len() != s.dim {
            return Err(BaselineError::EmbeddingWidth {
                row: s.count + s.non_finite,
                found: z.len(),
                expected: s.dim,
            });
        }
        if z.iter().any(|v| !v.is_finite()) {
            s.non_finite += 1;
            return Ok(());
        }
        let seen = s.count;
        s.count += 1;
        if s.rows.len() < s.capacity {
            s.rows.push(z.to_vec());
        } else if s.capacity > 0 {
            let slot = e.rng.random_range(0..=seen);
            if let Some(r) = s.rows.get_mut(slot as usize) {
                r.copy_from_slice(z);
            }
        }
        Ok(())
    }

    /// Adds one sample's scores, aligned with the keys.
    pub fn push(&mut self, sample: &SampleScores) -> Result<(), BaselineError> {
        if sample.scores.len() != self.keys.len() {
            return Err(BaselineError::Misaligned { scores: sample.scores.len(), keys: self.keys.len() });
        }
        for (i, s) in sample.scores.iter().enumerate() {
            self.noise[i].push(s.noise_score);
            self.variance[i].push(s.variance_score);
        }
        Ok(())
    }

    /// Errors when a pair has no finite score at all (an empty reference set, or a broken layer).
    pub fn finish(self) -> Result<Baseline, BaselineError> {
        let mut entries = Vec::with_capacity(self.keys.len());
        for ((key, ns), vs) in self.keys.into_iter().zip(self.noise).zip(self.variance) {
            let (noise_score, variance_score) = match (ns.finish(), vs.finish()) {
                (Some(n), Some(v)) => (n, v),
                _ => {
                    return Err(BaselineError::NoFiniteScore {
                        layer: key.layer,
                        method: key.method.as_str(),
                    });
                }
            };
            entries.push(BaselineEntry {
                layer: key.layer,
                method: key.method,
                noise_benchmark: key.noise_benchmark,
                noise_score,
                variance_score,
            });
        }
        Ok(Baseline {
            format: BASELINE_FORMAT,
            agent_version: env!("CARGO_PKG_VERSION").to_string(),
            meta: self.meta,
            reservoir_size: self.reservoir_size,
            entries,
            shard: None,
            maps: None,
            embeddings: self.embeddings.map(|e| e.sample).filter(|s| s.count > 0),
        })
    }
}

/// Algorithm R over embeddings, as [`Summarizer`] over scores.
#[derive(Debug, Clone)]
struct EmbeddingReservoir {
    sample: EmbeddingSample,
    rng: ChaCha8Rng,
}

/// Moments plus a reservoir (Vitter's algorithm R: the `i`-th value, 0-based, replaces a uniformly
/// chosen slot with probability `capacity/(i + 1)`, which keeps every value seen equally likely to be
/// in the sample).
#[derive(Debug, Clone)]
struct Summarizer {
    stats: RunningStats,
    non_finite: u64,
    capacity: usize,
    values: Vec<f64>,
    rng: ChaCha8Rng,
}

impl Summarizer {
    fn new(capacity: usize, seed: u64, stream: u64) -> Self {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        rng.set_stream(stream);
        Summarizer { stats: RunningStats::new(), non_finite: 0, capacity, values: Vec::new(), rng }
    }

    fn push(&mut self, value: f64) {
        if !value.is_finite() {
            self.non_finite += 1;
            return;
        }
        let seen = self.stats.count();
        self.stats.push(value);
        if self.values.len() < self.capacity {
            self.values.push(value);
        } else {
            let slot = self.rng.random_range(0..=seen);
            if let Some(v) = self.values.get_mut(slot as usize) {
                *v = value;
            }
        }
    }

    fn finish(mut self) -> Option<ScoreSummary> {
        self.values.sort_by(f64::total_cmp);
        Some(ScoreSummary {
            count: self.stats.count(),
            mean: self.stats.mean()?,
            std: self.stats.std()?,
            non_finite: self.non_finite,
            reservoir: self.values,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scores::LayerScores;

    fn keys() -> Vec<ScoreKey> {
        vec![
            ScoreKey { layer: "conv1".into(), method: Method::Vanilla, noise_benchmark: 0.3 },
            ScoreKey { layer: "conv2".into(), method: Method::GradCam, noise_benchmark: 0.2 },
        ]
    }

    fn meta() -> BaselineMeta {
        BaselineMeta {
            model_sha256: "abc".into(),
            settings_hash: "s1".into(),
            created_unix_secs: 1_700_000_000,
        }
    }

    fn sample(ns: f64, vs: f64) -> SampleScores {
        SampleScores {
            scores: vec![
                LayerScores { noise_score: ns, variance_score: vs },
                LayerScores { noise_score: 2.0 * ns, variance_score: vs / 2.0 },
            ],
        }
    }

    #[test]
    fn summary_statistics_and_quantiles() {
        let samples: Vec<_> = [0.1, 0.4, 0.2, 0.3].iter().map(|&v| sample(v, 0.2)).collect();
        let b = Baseline::from_samples(meta(), &keys(), &samples, 16, 0).unwrap();
        let e = b.entry("conv1", Method::Vanilla).unwrap();
        assert_eq!(e.noise_benchmark, 0.3);
        assert_eq!(e.noise_score.count, 4);
        assert!((e.noise_score.mean - 0.25).abs() < 1e-15);
        // population std of 0.1..0.4: sqrt(0.0125)
        assert!((e.noise_score.std - 0.0125f64.sqrt()).abs() < 1e-12);
        assert_eq!(e.noise_score.reservoir, vec![0.1, 0.2, 0.3, 0.4]);
        // type 7: q = 0.5 → halfway between 0.2 and 0.3; q = 1/3 → 0.2 exactly
        assert!((e.noise_score.quantile(0.5).unwrap() - 0.25).abs() < 1e-15);
        assert!((e.noise_score.quantile(1.0 / 3.0).unwrap() - 0.2).abs() < 1e-15);
        assert_eq!(e.noise_score.quantile(1.5), None);
        assert_eq!(b.entry("conv2", Method::GradCam).unwrap().variance_score.mean, 0.1);
    }

    #[test]
    fn rank_is_the_mid_distribution_function() {
        let samples: Vec<_> = [0.1, 0.4, 0.2, 0.3].iter().map(|&v| sample(v, 0.2)).collect();
        let b = Baseline::from_samples(meta(), &keys(), &samples, 16, 0).unwrap();
        let ns = &b.entries[0].noise_score;
        assert_eq!(ns.rank(0.05), Some(0.0));
        assert_eq!(ns.rank(0.25), Some(0.5));
        // 0.2 itself: one below, one equal → (1 + 1/2)/4
        assert_eq!(ns.rank(0.2), Some(0.375));
        assert_eq!(ns.rank(9.0), Some(1.0));
        assert_eq!(ns.rank(f64::NAN), None);
        // all four variance scores are 0.2: a tie everywhere gives the middle
        assert_eq!(b.entries[0].variance_score.rank(0.2), Some(0.5));
    }

    #[test]
    fn reservoir_is_bounded_sorted_seeded_and_roughly_uniform() {
        let samples: Vec<_> = (0..10_000).map(|i| sample(f64::from(i), 0.0)).collect();
        let b = Baseline::from_samples(meta(), &keys(), &samples, 500, 7).unwrap();
        let r = &b.entries[0].noise_score.reservoir;
        assert_eq!(r.len(), 500);
        assert!(r.windows(2).all(|w| w[0] <= w[1]));
        let median = b.entries[0].noise_score.quantile(0.5).unwrap();
        assert!((median - 5000.0).abs() < 600.0, "{median}");
        assert_eq!(b, Baseline::from_samples(meta(), &keys(), &samples, 500, 7).unwrap());
        assert_eq!(b.entries[0].noise_score.count, 10_000);
    }

    #[test]
    fn json_round_trip_and_format_check() {
        let b = Baseline::from_samples(meta(), &keys(), &[sample(0.5, 0.1)], 8, 0).unwrap();
        let text = b.to_json().unwrap();
        assert!(text.contains("\"model_sha256\": \"abc\""));
        assert_eq!(Baseline::from_json(&text).unwrap(), b);
        let future = text.replace("\"format\": 1", "\"format\": 99");
        let err = Baseline::from_json(&future).unwrap_err().to_string();
        assert!(err.contains("format 99 is not supported"), "{err}");
    }

    #[test]
    fn stale_baselines_are_refused_with_the_rebuild_command() {
        let b = Baseline::from_samples(meta(), &keys(), &[sample(0.5, 0.1)], 8, 0).unwrap();
        assert!(b.check_compatible("abc", "s1").is_ok());
        let err = b.check_compatible("def", "s1").unwrap_err().to_string();
        assert!(err.contains("stale") && err.contains("model sha256 abc (running: def)"), "{err}");
        assert!(b.check_compatible("abc", "s2").unwrap_err().to_string().contains("settings hash"));
    }

    #[test]
    fn bad_inputs_are_errors() {
        assert!(Baseline::from_samples(meta(), &keys(), &[], 8, 0).is_err());
        let short = SampleScores { scores: vec![] };
        assert!(Baseline::from_samples(meta(), &keys(), &[short], 8, 0).is_err());
        let nan = Baseline::from_samples(meta(), &keys(), &[sample(f64::NAN, 0.1), sample(0.5, 0.1)], 8, 0);
        assert_eq!(nan.unwrap().entries[0].noise_score.non_finite, 1);
    }

    /// The embedding reservoir keeps everything within its bound, a seeded uniform sample beyond it,
    /// skips non-finite rows, refuses a change of width, and survives JSON; a baseline without it
    /// (older files) still reads.
    #[test]
    fn embedding_reservoir() {
        let mut b = BaselineBuilder::new(meta(), &keys(), 8, 0).with_embeddings(3, 5);
        for i in 0..2 {
            b.push_embedding(&[i as f32, 1.0]).unwrap();
        }
        b.push_embedding(&[f32::NAN, 0.0]).unwrap();
        assert!(
            b.push_embedding(&[1.0]).unwrap_err().to_string().contains("1 components, the earlier ones 2")
        );
        b.push(&sample(0.5, 0.1)).unwrap();
        let base = b.finish().unwrap();
        let e = base.embeddings.as_ref().unwrap();
        assert_eq!((e.count, e.non_finite, e.dim, e.rows.len()), (2, 1, 2, 2));
        assert_eq!(e.matrix(), ndarray::array![[0.0f32, 1.0], [1.0, 1.0]]);
        assert_eq!(Baseline::from_json(&base.to_json().unwrap()).unwrap(), base);
        let mut old = base.clone();
        old.embeddings = None;
        let text = old.to_json().unwrap();
        assert!(!text.contains("embeddings"));
        assert_eq!(Baseline::from_json(&text).unwrap().embeddings, None);

        // 10 000 rows through a reservoir of 100, 200 times: each row's inclusion rate is 1 %.
        let mut hits = vec![0u32; 10];
        for seed in 0..200 {
            let mut b = BaselineBuilder::new(meta(), &keys(), 8, seed).with_embeddings(100, seed);
            for i in 0..10_000 {
                b.push_embedding(&[i as f32]).unwrap();
            }
            b.push(&sample(0.5, 0.1)).unwrap();
            let e = b.finish().unwrap().embeddings.unwrap();
            assert_eq!((e.count, e.rows.len()), (10_000, 100));
            for r in &e.rows {
                hits[r[0] as usize / 1000] += 1;
            }
        }
        // Per block of 1000 rows: 200 runs × 100 slots × 1/10 = 2000 expected, sd ≈ 42.
        assert!(hits.iter().all(|&h| (1800..2200).contains(&h)), "{hits:?}");
    }
}
