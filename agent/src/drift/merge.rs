//! Combining partial baselines (`agent baseline merge`): the reference scored by many workers, each a
//! share of it, gives the same baseline as one process would.
//!
//! Moments merge exactly (Chan et al.'s parallel update, [`RunningStats::merge`]), up to float
//! rounding. Reservoirs merge so that the result is again a uniform sample of the union: with `n_j`
//! scores behind partial `j` and `k` the reservoir size, how many of the merged `m = min(Σn_j, k)`
//! slots come from each partial is drawn as a multivariate hypergeometric split (`m` draws without
//! replacement from the `Σn_j` scores, labelled by partial), and that many are drawn without
//! replacement from the partial's own reservoir. A partial's reservoir is a uniform sample of its
//! scores (and independent of the others': each shard seeds its own generator), so a uniform subset
//! of it is a uniform subset of the partial, and the hypergeometric counts make the union uniform:
//! every `m`-subset of all the scores is equally likely.
//!
//! The reference embeddings ([`EmbeddingSample`]) merge the same way, rows for scores: each shard's
//! builder keeps a uniform sample of its own embeddings from its own seeded generator, so the same
//! hypergeometric split gives a uniform sample of all of them. Partials must agree on having them,
//! on `D` and on the bound.

use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

use super::baseline::{
    BASELINE_FORMAT, Baseline, BaselineEntry, BaselineError, EmbeddingSample, ScoreSummary,
};
use super::maps::ReferenceMaps;
use super::welford::RunningStats;

/// Merges the `N` partials of one sharded build into the baseline of the whole reference.
///
/// Refuses (naming the difference) partials that are not all `N` shards of one build: another model,
/// other score settings, another agent version or reservoir size, other (layer, method) pairs, a
/// missing or repeated shard, or a file that is not a partial. `seed` makes the merged reservoirs
/// reproducible; `created_unix_secs` is the merged file's creation time.
pub fn merge(parts: &[Baseline], seed: u64, created_unix_secs: u64) -> Result<Baseline, BaselineError> {
    let err = |m: String| Err(BaselineError::Merge(m));
    let Some(first) = parts.first() else {
        return err("no partial baseline given".into());
    };
    let Some(n) = first.shard.map(|s| s.count) else {
        return err("partial 1 is a whole baseline, not a shard (built without --shard)".into());
    };
    let mut seen = vec![false; n as usize];
    for (i, p) in parts.iter().enumerate() {
        let which = format!("partial {} ({})", i + 1, p.shard.map(|s| s.to_string()).unwrap_or_default());
        let Some(s) = p.shard else {
            return err(format!("partial {} is a whole baseline, not a shard", i + 1));
        };
        if s.index >= s.count {
            return err(format!("{which}: shard index {} is not below the shard count {}", s.index, s.count));
        }
        if s.count != n {
            return err(format!("{which} is one of {} shards, partial 1 one of {n}", s.count));
        }
        if std::mem::replace(&mut seen[s.index as usize], true) {
            return err(format!("{which}: shard {} is given twice", s));
        }
        let differ = |what: &str, a: &dyn std::fmt::Display, b: &dyn std::fmt::Display| {
            Err(BaselineError::Merge(format!("{which} has {what} {a}, partial 1 has {b}")))
        };
        if p.format != BASELINE_FORMAT {
            return differ("format", &p.format, &BASELINE_FORMAT);
        }
        if p.meta.model_sha256 != first.meta.model_sha256 {
            return differ("model sha256", &p.meta.model_sha256, &first.meta.model_sha256);
        }
        if p.meta.settings_hash != first.meta.settings_hash {
            return differ("settings hash", &p.meta.settings_hash, &first.meta.settings_hash);
        }
        if p.agent_version != first.agent_version {
            return differ("agent version", &p.agent_version, &first.agent_version);
        }
        if p.reservoir_size != first.reservoir_size {
            return differ("reservoir size", &p.reservoir_size, &first.reservoir_size);
        }
        let pairs = |b: &Baseline| -> Vec<String> {
            b.entries
                .iter()
                .map(|e| format!("{}/{}@{}", e.layer, e.method.as_str(), e.noise_benchmark))
                .collect()
        };
        if pairs(p) != pairs(first) {
            return differ(
                "(layer, method, benchmark)",
                &format!("{:?}", pairs(p)),
                &format!("{:?}", pairs(first)),
            );
        }
    }
    let missing: Vec<String> =
        seen.iter().enumerate().filter(|(_, s)| !**s).map(|(i, _)| format!("{i}/{n}")).collect();
    if !missing.is_empty() {
        return err(format!("shard {} missing", missing.join(", ")));
    }
    let k = first.reservoir_size;
    let mut entries = Vec::with_capacity(first.entries.len());
    for (e, head) in first.entries.iter().enumerate() {
        let mut merged = Vec::with_capacity(2);
        for (s, pick) in [
            (0u64, (|x: &BaselineEntry| &x.noise_score) as fn(&BaselineEntry) -> &ScoreSummary),
            (1u64, |x: &BaselineEntry| &x.variance_score),
        ] {
            let mut rng = ChaCha8Rng::seed_from_u64(seed);
            rng.set_stream(2 * e as u64 + s);
            let summaries: Vec<&ScoreSummary> = parts.iter().map(|p| pick(&p.entries[e])).collect();
            merged.push(merge_summaries(&summaries, k, &mut rng).map_err(|m| {
                BaselineError::Merge(format!("layer {:?}, method {}: {m}", head.layer, head.method.as_str()))
            })?);
        }
        let variance_score = merged.pop().expect("two summaries");
        let noise_score = merged.pop().expect("two summaries");
        entries.push(BaselineEntry { noise_score, variance_score, ..head.clone() });
    }
    let maps = merge_maps(parts)?;
    let embeddings = merge_embeddings(parts, seed)?;
    let mut meta = first.meta.clone();
    meta.created_unix_secs = created_unix_secs;
    Ok(Baseline {
        format: BASELINE_FORMAT,
        agent_version: first.agent_version.clone(),
        meta,
        reservoir_size: k,
        entries,
        shard: None,
        maps,
        embeddings,
    })
}

/// The partials' embedding samples merged into one uniform sample of all their embeddings.
fn merge_embeddings(parts: &[Baseline], seed: u64) -> Result<Option<EmbeddingSample>, BaselineError> {
    let err = |m: String| Err(BaselineError::Merge(m));
    let samples: Vec<Option<&EmbeddingSample>> = parts.iter().map(|p| p.embeddings.as_ref()).collect();
    if samples.iter().all(Option::is_none) {
        return Ok(None);
    }
    let mut have = Vec::with_capacity(parts.len());
    for (i, s) in samples.iter().enumerate() {
        let Some(s) = s else {
            return err(format!(
                "partial {} has no reference embeddings and others have (built by an older agent?)",
                i + 1
            ));
        };
        let head = samples[0].expect("checked above");
        if s.dim != head.dim || s.capacity != head.capacity {
            return err(format!(
                "partial {} keeps embeddings of D = {} (at most {}), partial 1 of D = {} (at most {})",
                i + 1,
                s.dim,
                s.capacity,
                head.dim,
                head.capacity
            ));
        }
        let expected = usize::try_from(s.count).unwrap_or(usize::MAX).min(s.capacity);
        if s.rows.len() != expected || s.rows.iter().any(|r| r.len() != s.dim) {
            return err(format!(
                "partial {} keeps {} reference embeddings for {} seen (expected {expected} of width {})",
                i + 1,
                s.rows.len(),
                s.count,
                s.dim
            ));
        }
        have.push(s);
    }
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    rng.set_stream(1 << 40);
    let sets: Vec<(&[Vec<f32>], u64)> = have.iter().map(|s| (s.rows.as_slice(), s.count)).collect();
    let capacity = have[0].capacity;
    Ok(Some(EmbeddingSample {
        count: have.iter().map(|s| s.count).sum(),
        non_finite: have.iter().map(|s| s.non_finite).sum(),
        dim: have[0].dim,
        capacity,
        rows: uniform_union(&sets, capacity, &mut rng),
    }))
}

/// A uniform sample of at most `k` of the union of several populations, each given as a uniform
/// sample of itself (`.0`) and its size (`.1`): a multivariate hypergeometric split of the `k` slots
/// by population, then that many drawn without replacement from each sample.
fn uniform_union<T: Clone>(parts: &[(&[T], u64)], k: usize, rng: &mut impl Rng) -> Vec<T> {
    let total: u64 = parts.iter().map(|p| p.1).sum();
    let m = usize::try_from(total).unwrap_or(usize::MAX).min(k);
    let mut left: Vec<u64> = parts.iter().map(|p| p.1).collect();
    let mut take = vec![0usize; parts.len()];
    let mut remaining = total;
    for _ in 0..m {
        let mut u = rng.random_range(0..remaining);
        let j = left
            .iter()
            .position(|&l| {
                if u < l {
                    true
                } else {
                    u -= l;
                    false
                }
            })
            .expect("u < remaining = Σ left");
        left[j] -= 1;
        take[j] += 1;
        remaining -= 1;
    }
    let mut out = Vec::with_capacity(m);
    for ((sample, _), &t) in parts.iter().zip(&take) {
        // A partial Fisher–Yates shuffle: the first t of a random permutation are a uniform t-subset.
        let mut v: Vec<T> = sample.to_vec();
        for i in 0..t {
            let r = rng.random_range(i..v.len());
            v.swap(i, r);
        }
        out.extend_from_slice(&v[..t]);
    }
    out
}

/// The partials' reference maps merged (count-weighted means): all partials have them, or none.
fn merge_maps(parts: &[Baseline]) -> Result<Option<ReferenceMaps>, BaselineError> {
    let have: Vec<&ReferenceMaps> = parts.iter().filter_map(|p| p.maps.as_ref()).collect();
    if have.is_empty() {
        return Ok(None);
    }
    if let Some(i) = parts.iter().position(|p| p.maps.is_none()) {
        return Err(BaselineError::Merge(format!(
            "partial {} has no reference maps and partial {} has (build every shard with the same [maps] settings)",
            i + 1,
            parts.iter().position(|p| p.maps.is_some()).unwrap_or(0) + 1
        )));
    }
    ReferenceMaps::merge(&have).map(Some).map_err(|e| BaselineError::Merge(format!("reference maps: {e}")))
}

/// One score's summaries, merged (see the module documentation for the reservoir).
pub fn merge_summaries(
    parts: &[&ScoreSummary],
    k: usize,
    rng: &mut impl Rng,
) -> Result<ScoreSummary, String> {
    let mut stats = RunningStats::new();
    let mut non_finite = 0;
    for (j, p) in parts.iter().enumerate() {
        let expected = usize::try_from(p.count).unwrap_or(usize::MAX).min(k);
        if p.reservoir.len() != expected {
            return Err(format!(
                "partial {} keeps {} reservoir scores for {} scores (expected {expected})",
                j + 1,
                p.reservoir.len(),
                p.count
            ));
        }
        stats.merge(&RunningStats::from_moments(p.count, p.mean, p.std * p.std));
        non_finite += p.non_finite;
    }
    let total = stats.count();
    let sets: Vec<(&[f64], u64)> = parts.iter().map(|p| (p.reservoir.as_slice(), p.count)).collect();
    let mut reservoir = uniform_union(&sets, k, rng);
    reservoir.sort_by(f64::total_cmp);
    Ok(ScoreSummary {
        count: total,
        mean: stats.mean().ok_or("no finite score in any partial")?,
        std: stats.std().ok_or("no finite score in any partial")?,
        non_finite,
        reservoir,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::drift::baseline::{BaselineBuilder, BaselineMeta, Shard};
    use crate::scores::{LayerScores, Method, SampleScores, ScoreKey};

    fn keys() -> Vec<ScoreKey> {
        vec![ScoreKey { layer: "conv1".into(), method: Method::Vanilla, noise_benchmark: 0.3 }]
    }

    fn meta() -> BaselineMeta {
        BaselineMeta { model_sha256: "abc".into(), settings_hash: "s1".into(), created_unix_secs: 1 }
    }

    fn sample(v: f64) -> SampleScores {
        SampleScores { scores: vec![LayerScores { noise_score: v, variance_score: 1e3 + v.sin() }] }
    }

    /// The partials of `values` over `n` shards, built as `agent baseline --shard` builds them.
    fn partials(values: &[f64], n: u32, k: usize) -> Vec<Baseline> {
        (0..n)
            .map(|i| {
                let shard = Shard { index: i, count: n };
                let mut b = BaselineBuilder::new(meta(), &keys(), k, u64::from(i));
                for (g, v) in values.iter().enumerate() {
                    if shard.owns(g as u64) {
                        b.push(&sample(*v)).unwrap();
                    }
                }
                let mut out = b.finish().unwrap();
                out.shard = Some(shard);
                out
            })
            .collect()
    }

    #[test]
    fn merged_moments_equal_the_single_process_ones() {
        let values: Vec<f64> = (0..1000).map(|i| 1e4 + f64::from(i).cos() * 3.0).collect();
        let mut whole = BaselineBuilder::new(meta(), &keys(), 4096, 0);
        values.iter().for_each(|v| whole.push(&sample(*v)).unwrap());
        let whole = whole.finish().unwrap();
        let merged = merge(&partials(&values, 4, 4096), 0, 1).unwrap();
        for (a, b) in [
            (&merged.entries[0].noise_score, &whole.entries[0].noise_score),
            (&merged.entries[0].variance_score, &whole.entries[0].variance_score),
        ] {
            assert_eq!(a.count, b.count);
            assert!((a.mean - b.mean).abs() <= 1e-12 * b.mean.abs(), "{} vs {}", a.mean, b.mean);
            assert!((a.std - b.std).abs() <= 1e-9 * b.std, "{} vs {}", a.std, b.std);
            // Everything fits in the reservoir: the merged one holds every score.
            assert_eq!(a.reservoir, b.reservoir);
        }
        assert_eq!(merged.shard, None);
        assert_eq!(merged.meta.settings_hash, whole.meta.settings_hash);
    }

    /// Over many seeded merges, every one of the 200 scores lands in the 20-slot merged reservoir
    /// equally often (chi-square over the 200 inclusion counts), although the shards are unequal
    /// (3 shards of 200 scores: 67, 67, 66) and each partial's reservoir is itself a sample.
    #[test]
    fn merged_reservoir_is_uniform_over_the_union() {
        let values: Vec<f64> = (0..200).map(f64::from).collect();
        let (k, runs) = (20usize, 3000u64);
        let mut hits = vec![0u64; values.len()];
        for run in 0..runs {
            let mut parts = partials(&values, 3, k);
            // Fresh shard seeds per run, as fresh workers would have.
            for (i, p) in parts.iter_mut().enumerate() {
                let shard = p.shard.unwrap();
                let mut b = BaselineBuilder::new(meta(), &keys(), k, run * 7 + i as u64 + 1000);
                for (g, v) in values.iter().enumerate() {
                    if shard.owns(g as u64) {
                        b.push(&sample(*v)).unwrap();
                    }
                }
                *p = Baseline { shard: Some(shard), ..b.finish().unwrap() };
            }
            let m = merge(&parts, run, 1).unwrap();
            let r = &m.entries[0].noise_score.reservoir;
            assert_eq!(r.len(), k);
            for v in r {
                hits[*v as usize] += 1;
            }
        }
        let expected = (runs as usize * k) as f64 / values.len() as f64;
        let chi2: f64 = hits.iter().map(|&h| (h as f64 - expected).powi(2) / expected).sum();
        // 199 degrees of freedom: the 0.1 % upper critical value is about 267.
        assert!(chi2 < 267.0, "chi-square {chi2:.1} over 199 dof: not uniform ({hits:?})");
        // Each shard's share is hypergeometric with mean k·n_j/N.
        let from_first: u64 = hits.iter().step_by(3).sum();
        let share = from_first as f64 / (runs as usize * k) as f64;
        assert!((share - 67.0 / 200.0).abs() < 0.01, "{share}");
    }

    /// Reference maps merge into the count-weighted mean; partials with and without maps do not mix.
    #[test]
    fn reference_maps_merge_with_the_partials() {
        use crate::drift::maps::MapSums;
        let values: Vec<f64> = (0..6).map(f64::from).collect();
        let mut parts = partials(&values, 2, 16);
        let map = |v: f32| ndarray::array![[v, 2.0 * v]];
        // Shard 0 mapped samples 0, 2, 4; shard 1 samples 1, 3, 5 (their values as maps).
        for (i, p) in parts.iter_mut().enumerate() {
            let mut s = MapSums::new(vec![("conv1".into(), Method::Vanilla)]);
            for v in (i..6).step_by(2) {
                s.push(&[map(v as f32)]).unwrap();
            }
            p.maps = Some(s.finish(1));
        }
        let m = merge(&parts, 0, 1).unwrap().maps.unwrap();
        assert_eq!((m.samples(), m.stride), (6, 1));
        assert_eq!(m.maps[0].mean, vec![2.5, 5.0]);
        parts[1].maps = None;
        let e = merge(&parts, 0, 1).unwrap_err().to_string();
        assert!(e.contains("partial 2 has no reference maps and partial 1 has"), "{e}");
        parts[0].maps = None;
        assert_eq!(merge(&parts, 0, 1).unwrap().maps, None);
    }

    #[test]
    fn mismatched_or_incomplete_partials_are_refused_by_name() {
        let values: Vec<f64> = (0..40).map(f64::from).collect();
        let parts = partials(&values, 4, 16);
        let e = merge(&parts[..3], 0, 1).unwrap_err().to_string();
        assert!(e.contains("shard 3/4 missing"), "{e}");
        let twice = [parts[0].clone(), parts[0].clone(), parts[2].clone(), parts[3].clone()];
        let e = merge(&twice, 0, 1).unwrap_err().to_string();
        assert!(e.contains("shard 0/4 is given twice"), "{e}");
        let mut other = parts.clone();
        other[2].meta.settings_hash = "s2".into();
        let e = merge(&other, 0, 1).unwrap_err().to_string();
        assert!(e.contains("partial 3 (2/4) has settings hash s2, partial 1 has s1"), "{e}");
        let mut other = parts.clone();
        other[1].meta.model_sha256 = "zzz".into();
        assert!(merge(&other, 0, 1).unwrap_err().to_string().contains("model sha256 zzz"));
        let mut whole = parts.clone();
        whole[0].shard = None;
        assert!(merge(&whole, 0, 1).unwrap_err().to_string().contains("not a shard"));
        assert!(merge(&[], 0, 1).is_err());
        let mut bad = parts.clone();
        bad[1].shard = Some(Shard { index: 9, count: 4 });
        assert!(merge(&bad, 0, 1).unwrap_err().to_string().contains("shard index 9 is not below"));
        assert_eq!(Shard::parse("2/4"), Ok(Shard { index: 2, count: 4 }));
        assert!(Shard::parse("4/4").is_err() && Shard::parse("x").is_err() && Shard::parse("1/0").is_err());
    }

    /// Sharded embedding samples merge into a uniform sample of all the embeddings: over many merges
    /// every one of 120 rows lands in the 12-row merged sample equally often; partials without
    /// embeddings beside ones with are refused.
    #[test]
    fn embedding_samples_merge_uniformly() {
        let (n, k, runs) = (120usize, 12usize, 2000u64);
        let mut hits = vec![0u64; n];
        for run in 0..runs {
            let parts: Vec<Baseline> = (0..3u32)
                .map(|i| {
                    let shard = Shard { index: i, count: 3 };
                    let mut b = BaselineBuilder::new(meta(), &keys(), 4, run * 3 + u64::from(i))
                        .with_embeddings(k, run * 3 + u64::from(i));
                    for g in (0..n).filter(|g| shard.owns(*g as u64)) {
                        b.push(&sample(g as f64)).unwrap();
                        b.push_embedding(&[g as f32, 0.5]).unwrap();
                    }
                    Baseline { shard: Some(shard), ..b.finish().unwrap() }
                })
                .collect();
            let m = merge(&parts, run, 1).unwrap().embeddings.unwrap();
            assert_eq!((m.count, m.dim, m.rows.len()), (n as u64, 2, k));
            for r in &m.rows {
                hits[r[0] as usize] += 1;
            }
            if run == 0 {
                let mut mixed = parts.clone();
                mixed[1].embeddings = None;
                let e = merge(&mixed, 0, 1).unwrap_err().to_string();
                assert!(e.contains("partial 2 has no reference embeddings"), "{e}");
            }
        }
        let expected = (runs as usize * k) as f64 / n as f64;
        let chi2: f64 = hits.iter().map(|&h| (h as f64 - expected).powi(2) / expected).sum();
        // 119 degrees of freedom: the 0.1 % upper critical value is about 168.
        assert!(chi2 < 168.0, "chi-square {chi2:.1} over 119 dof: not uniform ({hits:?})");
    }
}
