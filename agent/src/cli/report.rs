//! `agent report --config C --reference R --current X [--json] [--out report.html]`: the offline
//! comparison of a batch with a reference, the way Evidently, Alibi Detect and NannyML are mostly used —
//! every embedding detector ([`crate::detectors`]) beside the paper's scores (KS tests of the noise
//! and variance scores per layer and method, with ΔNS/ΔVS), in one table.
//!
//! Both sides are scored by the same [`Engine`] as `agent score` and `agent baseline` (the config's
//! `[model]`, `[noise]` and `[engine]`; no sources, no baseline file). The embeddings `z` come from a
//! second, forward-only session on the model cut at the embedding, because the attribution graph's
//! engine keeps only maps and scores ([`EmbeddingModel`], shared with the daemon).

pub mod html;

use std::io::Write;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result, anyhow, bail};
use clap::Args;
use ndarray::{Array2, ArrayView2, Axis};
use serde::Serialize;

use crate::config::Config;
use crate::daemon::baseline::{decode_options, reference_files};
use crate::detectors::{self, DetectorResult};
use crate::drift::{kolmogorov_q, ks_two_sample, relative_drift};
pub use crate::engine::EmbeddingModel;
use crate::engine::{Engine, SampleScores};
use plugins::decode::{DecodeOptions, Payload, decode_payload_file};

#[derive(Debug, Clone, Args)]
pub struct ReportArgs {
    /// Configuration file (TOML); its `[model]`, `[noise]` and `[engine]` sections are used.
    #[arg(long)]
    pub config: PathBuf,
    /// Reference data: a `.npy`/`.npz`/image file or a directory of them.
    #[arg(long)]
    pub reference: PathBuf,
    /// The data to compare with the reference, in the same forms.
    #[arg(long)]
    pub current: PathBuf,
    /// Print `{"detectors": [...]}` instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML report (table, statistic against threshold, mean maps).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Significance level of every test (and the quantile of the resampled thresholds).
    #[arg(long, default_value_t = 0.05)]
    pub alpha: f64,
    /// Permutations of the MMD test and resamples of the centroid and PCA thresholds.
    #[arg(long, default_value_t = 200)]
    pub permutations: usize,
    /// Samples per side whose attribution maps are averaged for the report's mean maps.
    #[arg(long, default_value_t = 256)]
    pub map_samples: usize,
    /// Seed of the detectors' subsets, permutations and resamples.
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Row {
    pub name: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub method: Option<String>,
    pub statistic: f64,
    pub p_value: Option<f64>,
    pub threshold: f64,
    pub drift: bool,
    /// ΔNS or ΔVS, `(reference mean − current mean)/reference mean` (paper §4.4); scores only.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub relative_drift: Option<f64>,
}

impl From<DetectorResult> for Row {
    fn from(r: DetectorResult) -> Row {
        Row {
            name: r.name,
            layer: None,
            method: None,
            statistic: r.statistic,
            p_value: r.p_value,
            threshold: r.threshold,
            drift: r.drift,
            relative_drift: None,
        }
    }
}

/// What one side (reference or current) gave: per-sample scores and embeddings, and the mean
/// embedding-aggregated map per (layer, method) over its first `map_samples` samples.
pub struct Side {
    pub scores: Vec<SampleScores>,
    pub embeddings: Array2<f32>,
    pub mean_maps: Vec<Array2<f64>>,
    pub map_count: usize,
}

/// Decodes, scores and embeds every sample of `path` (a file or a directory), `batch_size` at a time.
/// An input that does not decode is an error naming it: a report must not silently skip data.
pub fn collect(
    engine: &mut Engine,
    forward: &mut EmbeddingModel,
    path: &Path,
    opts: &DecodeOptions,
    batch_size: usize,
    map_samples: usize,
) -> Result<Side> {
    let mut scores = Vec::new();
    let mut embeddings: Vec<Array2<f32>> = Vec::new();
    let mut sums: Vec<Array2<f64>> = Vec::new();
    let mut map_count = 0;
    for f in reference_files(path)? {
        let payload = decode_payload_file(&f, &f.display().to_string(), opts)
            .map_err(|r| anyhow!("{}: input rejected ({}): {r}", f.display(), r.reason.as_str()))?;
        let batch = match payload {
            Payload::Dense(batch) => batch,
            Payload::Tokens(samples) => {
                // Token maps have each sample's own length, so they are not averaged into the report.
                let text =
                    engine.text_model().cloned().context("token samples for a model without token inputs")?;
                for chunk in samples.chunks(batch_size.max(1)) {
                    scores.extend(
                        engine.score_tokens(chunk).with_context(|| format!("scoring {}", f.display()))?,
                    );
                    embeddings.push(
                        forward
                            .embed_tokens(&text, chunk)
                            .with_context(|| format!("embedding {}", f.display()))?,
                    );
                }
                continue;
            }
        };
        for chunk in batch.axis_chunks_iter(Axis(0), batch_size.max(1)) {
            scores.extend(
                engine.score_batch(chunk.view()).with_context(|| format!("scoring {}", f.display()))?,
            );
            embeddings
                .push(forward.embed(chunk.view()).with_context(|| format!("embedding {}", f.display()))?);
            let take = map_samples.saturating_sub(map_count).min(chunk.len_of(Axis(0)));
            if take > 0 {
                let maps = engine.embedding_maps(chunk.slice_axis(Axis(0), (0..take).into()))?;
                for per in maps {
                    if sums.is_empty() {
                        sums = per.iter().map(|m| Array2::zeros(m.dim())).collect();
                    }
                    for (s, m) in sums.iter_mut().zip(&per) {
                        *s += &m.mapv(f64::from);
                    }
                    map_count += 1;
                }
            }
        }
    }
    if scores.is_empty() {
        bail!("{} holds no sample", path.display());
    }
    let views: Vec<ArrayView2<f32>> = embeddings.iter().map(|e| e.view()).collect();
    let embeddings = ndarray::concatenate(Axis(0), &views)?;
    let mean_maps = sums.into_iter().map(|s| s / map_count.max(1) as f64).collect();
    Ok(Side { scores, embeddings, mean_maps, map_count })
}

/// The KS statistic beyond which the asymptotic p-value of [`ks_two_sample`] falls below `alpha`, for
/// samples of `n` and `m` (bisection on the Kolmogorov survival function).
pub fn ks_critical_value(n: usize, m: usize, alpha: f64) -> f64 {
    let en = (n * m) as f64 / (n + m) as f64;
    let factor = en.sqrt() + 0.12 + 0.11 / en.sqrt();
    let (mut lo, mut hi) = (0.0f64, 10.0f64);
    for _ in 0..100 {
        let mid = 0.5 * (lo + hi);
        if kolmogorov_q(mid) > alpha { lo = mid } else { hi = mid }
    }
    (0.5 * (lo + hi) / factor).min(1.0)
}

/// Rows for the paper's scores: per (layer, method), a KS test of the noise scores and one of the
/// variance scores, with the relative drift of the means. Non-finite scores are left out of both.
pub fn score_rows(
    keys: &[crate::engine::ScoreKey],
    reference: &[SampleScores],
    current: &[SampleScores],
    alpha: f64,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        type Pick = fn(&crate::engine::LayerScores) -> f64;
        let picks: [(&str, Pick); 2] =
            [("noise_score_ks", |s| s.noise_score), ("variance_score_ks", |s| s.variance_score)];
        for (name, pick) in picks {
            let values = |side: &[SampleScores]| {
                let mut v: Vec<f64> =
                    side.iter().map(|s| pick(&s.scores[i])).filter(|v| v.is_finite()).collect();
                v.sort_by(f64::total_cmp);
                v
            };
            let (r, c) = (values(reference), values(current));
            let Some(ks) = ks_two_sample(&r, &c) else { continue };
            let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
            rows.push(Row {
                name: name.into(),
                layer: Some(key.layer.clone()),
                method: Some(key.method.as_str().into()),
                statistic: ks.statistic,
                p_value: Some(ks.p_value),
                threshold: ks_critical_value(r.len(), c.len(), alpha),
                drift: ks.p_value < alpha,
                relative_drift: relative_drift(mean(&r), mean(&c)),
            });
        }
    }
    rows
}

/// Rows for the embedding detectors, fitted on the reference's embeddings.
pub fn embedding_rows(
    reference: ArrayView2<f32>,
    current: ArrayView2<f32>,
    alpha: f64,
    resamples: usize,
    seed: u64,
) -> Result<Vec<Row>> {
    let e = anyhow::Error::msg;
    let mmd = detectors::Mmd::fit(
        reference,
        detectors::MmdConfig { permutations: resamples, alpha, seed, ..Default::default() },
    )
    .map_err(e)?;
    let ks = detectors::KsShare::fit(
        reference,
        detectors::KsShareConfig { fdr: alpha, seed, ..Default::default() },
    )
    .map_err(e)?;
    let centroid = detectors::Centroid::fit(
        reference,
        detectors::CentroidConfig { resamples, alpha, seed, ..Default::default() },
    )
    .map_err(e)?;
    let pca = detectors::Pca::fit(reference, detectors::PcaConfig { resamples, seed, ..Default::default() })
        .map_err(e)?;
    let mut rows: Vec<Row> = vec![mmd.test(current).map_err(e)?.into(), ks.test(current).map_err(e)?.into()];
    rows.extend(centroid.test(current).map_err(e)?.into_iter().map(Row::from));
    rows.push(pca.test(current).map_err(e)?.into());
    Ok(rows)
}

pub fn run(args: &ReportArgs) -> Result<i32> {
    let cfg = Config::load(&args.config)?;
    let problems: Vec<String> = cfg
        .validate()
        .into_iter()
        // An offline report reads no source and needs no baseline file.
        .filter(|p| !p.key.starts_with("baseline") && !p.key.starts_with("sources"))
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        bail!("{} has problems:\n{}", args.config.display(), problems.join("\n"));
    }
    if !(args.alpha > 0.0 && args.alpha < 1.0) {
        bail!("--alpha must lie in (0, 1), got {}", args.alpha);
    }
    let spec = cfg.to_engine_spec();
    let mut engine = Engine::new(&spec)?;
    let input = engine.graph().inputs[0].name.clone();
    let mut forward = EmbeddingModel::new(&spec, &input)?;
    let opts = decode_options(&cfg, engine.input_shape())?;
    let bs = cfg.engine.batch_size;
    let reference = collect(&mut engine, &mut forward, &args.reference, &opts, bs, args.map_samples)
        .with_context(|| format!("reference {}", args.reference.display()))?;
    let current = collect(&mut engine, &mut forward, &args.current, &opts, bs, args.map_samples)
        .with_context(|| format!("current {}", args.current.display()))?;
    let mut rows = embedding_rows(
        reference.embeddings.view(),
        current.embeddings.view(),
        args.alpha,
        args.permutations,
        args.seed,
    )?;
    rows.extend(score_rows(engine.keys(), &reference.scores, &current.scores, args.alpha));

    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if args.json {
        let doc = serde_json::json!({
            "detectors": rows,
            "reference_samples": reference.scores.len(),
            "current_samples": current.scores.len(),
            "alpha": args.alpha,
        });
        writeln!(out, "{}", serde_json::to_string_pretty(&doc)?)?;
    } else {
        writeln!(
            out,
            "reference {} ({} samples), current {} ({} samples), alpha {}",
            args.reference.display(),
            reference.scores.len(),
            args.current.display(),
            current.scores.len(),
            args.alpha
        )?;
        writeln!(
            out,
            "{:30} {:10} {:8} {:>12} {:>10} {:>12} {:>6} {:>9}",
            "detector", "layer", "method", "statistic", "p_value", "threshold", "drift", "Δ"
        )?;
        for r in &rows {
            writeln!(
                out,
                "{:30} {:10} {:8} {:>12.6} {:>10} {:>12.6} {:>6} {:>9}",
                r.name,
                r.layer.as_deref().unwrap_or("-"),
                r.method.as_deref().unwrap_or("-"),
                r.statistic,
                r.p_value.map(|p| format!("{p:.2e}")).unwrap_or_else(|| "-".into()),
                r.threshold,
                if r.drift { "yes" } else { "no" },
                r.relative_drift.map(|d| format!("{d:+.3}")).unwrap_or_else(|| "-".into()),
            )?;
        }
    }
    out.flush()?;
    if let Some(path) = &args.out {
        let page = html::Page {
            reference: args.reference.display().to_string(),
            current: args.current.display().to_string(),
            reference_samples: reference.scores.len(),
            current_samples: current.scores.len(),
            alpha: args.alpha,
            rows: &rows,
            keys: engine.keys(),
            reference_maps: &reference.mean_maps,
            current_maps: &current.mean_maps,
            map_samples: (reference.map_count, current.map_count),
        };
        std::fs::write(path, html::render(&page)?).with_context(|| format!("writing {}", path.display()))?;
        eprintln!("wrote {}", path.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// `scipy.special.kolmogorov(λ) = 0.05` at λ = 1.3580986393225507 (scipy.special.kolmogi(0.05)).
    #[test]
    fn ks_critical_value_inverts_the_p_value() {
        let en = 100.0 * 50.0 / 150.0f64;
        let factor = en.sqrt() + 0.12 + 0.11 / en.sqrt();
        let d = ks_critical_value(100, 50, 0.05);
        assert!((d * factor - 1.3580986393225507).abs() < 1e-9, "{}", d * factor);
    }
}
