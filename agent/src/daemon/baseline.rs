//! The reference baseline's files and their use: building one from reference data (at daemon
//! start-up, and `agent baseline`), reading, writing and checking it against the running engine. The
//! statistics themselves are `crate::drift`'s; this module adds the I/O and the rebuild command.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};

use super::{Scorer, unix_now};
use crate::config::Config;
use crate::drift::{Baseline, BaselineBuilder, BaselineError, BaselineMeta, Shard};
use crate::engine::ScoreKey;
use plugins::decode::{DecodeOptions, Payload, decode_payload_file};

/// How to make a fresh baseline, for messages that refuse one.
const REBUILD: &str = "rebuild it with `agent baseline --config FILE --reference DIR --out BASELINE`";

/// Reads a baseline file (JSON).
pub fn load(path: &Path) -> Result<Baseline> {
    let text =
        std::fs::read_to_string(path).with_context(|| format!("reading baseline {}", path.display()))?;
    Baseline::from_json(&text).map_err(|e| match e {
        BaselineError::Format { .. } => anyhow::anyhow!("baseline {}: {e}; {REBUILD}", path.display()),
        e => anyhow::Error::new(e).context(format!("baseline {}", path.display())),
    })
}

/// Writes a baseline atomically (temporary file, fsync, rename).
pub fn save(b: &Baseline, path: &Path) -> Result<()> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let tmp = path.with_extension("json.tmp");
    let text = b.to_json()?;
    {
        use std::io::Write;
        let mut f = std::fs::File::create(&tmp).with_context(|| format!("creating {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path).with_context(|| format!("writing baseline {}", path.display()))?;
    Ok(())
}

/// Refuses a baseline made for another model, other score settings, or other (layer, method) pairs.
/// `hint` is the rebuild command for this configuration, appended to the message.
pub fn check(
    b: &Baseline,
    model_sha256: &str,
    settings_hash: &str,
    keys: &[ScoreKey],
    hint: &str,
) -> Result<()> {
    if let Some(s) = b.shard {
        bail!(
            "this is shard {s} of a sharded build, not a baseline of the whole reference; combine all {} \
             with `agent baseline merge PARTIAL… --out BASELINE`",
            s.count
        );
    }
    b.check_compatible(model_sha256, settings_hash)
        .map_err(|e| anyhow::anyhow!("{e}; {REBUILD}; here: {hint}"))?;
    let ours: Vec<(&str, _)> = keys.iter().map(|k| (k.layer.as_str(), k.method)).collect();
    let theirs: Vec<(&str, _)> = b.entries.iter().map(|e| (e.layer.as_str(), e.method)).collect();
    if ours != theirs {
        bail!("the baseline covers {theirs:?}, the configuration scores {ours:?}; {REBUILD}");
    }
    Ok(())
}

/// Reference samples a baseline was built from.
pub fn samples(b: &Baseline) -> u64 {
    b.entries.first().map(|e| e.noise_score.count).unwrap_or(0)
}

/// The daemon's baseline at start-up: `baseline.path` when it exists (refusing a stale one), else
/// built from `baseline.reference_dir` (and saved to `baseline.path` when set).
pub fn obtain(scorer: &mut dyn Scorer, cfg: &Config) -> Result<Baseline> {
    let b = &cfg.baseline;
    if let Some(path) = &b.path
        && path.is_file()
    {
        let hint = format!(
            "`agent baseline --config {} --reference DIR --out {}`{}",
            cfg.file.display(),
            path.display(),
            if b.reference_dir.is_some() {
                ", or delete the file to rebuild it from baseline.reference_dir"
            } else {
                ""
            }
        );
        let base = load(path)?;
        check(&base, scorer.model_sha256(), scorer.settings_hash(), scorer.keys(), &hint)
            .with_context(|| format!("baseline {}", path.display()))?;
        tracing::info!(path = %path.display(), samples = samples(&base), "baseline loaded");
        return Ok(base);
    }
    let Some(reference) = &b.reference_dir else {
        bail!("no baseline: set baseline.path to an existing file or baseline.reference_dir");
    };
    tracing::info!(reference = %reference.display(), "building the baseline from reference data");
    let opts = decode_options(cfg, scorer.input_shape())?;
    let mut last_log = Instant::now();
    let sizes = Reservoirs { scores: b.reservoir_samples, embeddings: embedding_samples(cfg) };
    let base =
        build(scorer, reference, &opts, cfg.engine.batch_size, sizes, &cfg.maps, None, &mut |d, t| {
            if last_log.elapsed() > Duration::from_secs(5) {
                last_log = Instant::now();
                tracing::info!(done = d, total = t, "scoring reference data");
            }
        })?;
    if let Some(path) = &b.path {
        save(&base, path)?;
        tracing::info!(path = %path.display(), samples = samples(&base), "baseline built and saved");
    }
    Ok(base)
}

/// The reference inputs: one batch file, or every input file (`.npy`, `.npz`, `.png`, `.jpg`,
/// `.jpeg`) of a directory (sorted).
pub fn reference_files(reference: &Path) -> Result<Vec<PathBuf>> {
    if reference.is_file() {
        return Ok(vec![reference.to_path_buf()]);
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(reference)
        .with_context(|| format!("reading reference directory {}", reference.display()))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            let ext = p.extension().map(|e| e.to_string_lossy().to_ascii_lowercase()).unwrap_or_default();
            let known = plugins::decode::EXTENSIONS.iter().chain(&plugins::decode::text::TEXT_EXTENSIONS);
            p.is_file() && known.into_iter().any(|e| *e == ext)
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!(
            "no .npy, .npz, .png, .jpg, .txt or .jsonl file in reference directory {}",
            reference.display()
        );
    }
    Ok(files)
}

/// Decoding options for the configured model, given the engine's input shape.
/// Fails only when a text model's tokenizer does not load.
pub fn decode_options(cfg: &Config, input_shape: &[usize]) -> Result<DecodeOptions> {
    Ok(DecodeOptions { tokens: cfg.token_options()?, ..decode_options_dense(cfg, input_shape) })
}

/// [`decode_options`] without the tokenizer (the caller has loaded it, or the model has none).
pub fn decode_options_dense(cfg: &Config, input_shape: &[usize]) -> DecodeOptions {
    DecodeOptions {
        input_shape: input_shape.to_vec(),
        max_bytes: 0,
        normalization: cfg.model.preprocessing.normalization(),
        image: cfg.model.preprocessing.image_options(),
        limits: cfg.limits.clone(),
        tokens: None,
    }
}

/// How many reference scores (per layer, method and score) and embeddings a baseline keeps.
#[derive(Debug, Clone, Copy)]
pub struct Reservoirs {
    pub scores: usize,
    /// 0: none (the embedding detectors are off, or the scorer gives no embeddings).
    pub embeddings: usize,
}

/// The reference embeddings a baseline built with `cfg` keeps: `[detectors] reference_samples`
/// when any detector runs, else none.
pub fn embedding_samples(cfg: &Config) -> usize {
    if cfg.detectors.active() { cfg.detectors.reference_samples } else { 0 }
}

/// Scores every reference sample (with `shard`, only the shard's share), `batch_size` at a time;
/// `progress(done, total)` after each batch. A reference file that does not decode is an error: a
/// baseline must not silently skip data.
///
/// A shard owns the samples whose global index (files in name order, rows in order) is `I mod N`:
/// every worker decodes every file (cheap next to scoring) and scores an equal share, whatever the
/// mix of single-sample and batch files. Each shard seeds its reservoirs with its index, so the
/// partials' reservoirs are independent, which their merge needs to stay uniform. The embeddings
/// are kept when `sizes.embeddings > 0` and the scorer gives them ([`Scorer::enable_embeddings`]).
/// The reference maps (`maps`) are computed after the scores, on the systematic sample
/// [`super::maps::reference`] picks by global index, so a shard maps its share of the whole build's
/// sample.
#[allow(clippy::too_many_arguments)]
pub fn build(
    scorer: &mut dyn Scorer,
    reference: &Path,
    opts: &DecodeOptions,
    batch_size: usize,
    sizes: Reservoirs,
    maps: &crate::config::MapsConfig,
    shard: Option<Shard>,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Baseline> {
    let files = reference_files(reference)?;
    let mut batches: Vec<Payload> = Vec::new();
    // The global index of every row kept, per batch (the reference maps pick by it).
    let mut globals: Vec<Vec<u64>> = Vec::new();
    let mut offset = 0u64;
    for f in &files {
        let name = f.display().to_string();
        let batch = decode_payload_file(f, &name, opts)
            .map_err(|r| anyhow::anyhow!("reference input rejected ({}): {r}", r.reason.as_str()))?;
        let rows = batch.samples() as u64;
        match shard {
            None => {
                batches.push(batch);
                globals.push((offset..offset + rows).collect());
            }
            Some(s) => {
                let own: Vec<usize> = (0..rows).filter(|r| s.owns(offset + r)).map(|r| r as usize).collect();
                if !own.is_empty() {
                    batches.push(batch.select(&own));
                    globals.push(own.iter().map(|&r| offset + r as u64).collect());
                }
            }
        }
        offset += rows;
    }
    let total: u64 = batches.iter().map(|b| b.samples() as u64).sum();
    let meta = BaselineMeta {
        model_sha256: scorer.model_sha256().to_string(),
        settings_hash: scorer.settings_hash().to_string(),
        created_unix_secs: unix_now() as u64,
    };
    // Seed 0 (the shard index when sharded): the same reference data gives the same baseline file.
    let seed = shard.map_or(0, |s| u64::from(s.index));
    let mut builder = BaselineBuilder::new(meta, scorer.keys(), sizes.scores, seed);
    if sizes.embeddings > 0 {
        builder = builder.with_embeddings(sizes.embeddings, seed);
    }
    let mut done = 0u64;
    progress(0, total);
    for batch in &batches {
        super::score_payload(scorer, batch, batch_size, sizes.embeddings > 0, &mut |scores, _, z| {
            for s in &scores {
                builder.push(s)?;
            }
            if let Some(z) = z {
                for row in z.rows() {
                    builder.push_embedding(&row.to_vec())?;
                }
            }
            done += scores.len() as u64;
            progress(done, total);
            Ok(())
        })?;
    }
    if done == 0 {
        match shard {
            Some(s) => bail!(
                "shard {s} of the reference data {} holds no sample ({offset} samples for {} shards)",
                reference.display(),
                s.count
            ),
            None => bail!("the reference data {} holds no sample", reference.display()),
        }
    }
    let mut b = builder.finish()?;
    b.shard = shard;
    b.maps = super::maps::reference(scorer, &batches, &globals, offset, maps, batch_size);
    Ok(b)
}

/// `agent baseline --config FILE --reference DIR --out BASELINE [--shard I/N]`, with a progress bar.
pub fn command(config: &Path, reference: &Path, out: &Path, shard: Option<Shard>) -> Result<()> {
    // The baseline being built may not exist yet; that is the point of this command.
    let cfg = Config::load_valid_except(config, Some("baseline"))?;
    for p in &cfg.deprecated {
        eprintln!("warning: {p}");
    }
    let mut engine = super::EngineScorer::new(&cfg.to_engine_spec())?;
    if cfg.detectors.active() {
        engine.enable_embeddings()?;
    }
    let opts = decode_options(&cfg, engine.input_shape())?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} scoring reference [{bar:40}] {pos}/{len} samples ({eta})",
        )
        .expect("a valid template")
        .progress_chars("=> "),
    );
    let b = build(
        &mut engine,
        reference,
        &opts,
        cfg.engine.batch_size,
        Reservoirs { scores: cfg.baseline.reservoir_samples, embeddings: embedding_samples(&cfg) },
        &cfg.maps,
        shard,
        &mut |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        },
    )?;
    bar.finish();
    save(&b, out)?;
    let what = shard.map(|s| format!("partial baseline, shard {s}; ")).unwrap_or_default();
    println!(
        "wrote {} ({what}{} samples, {} layer/method pairs)",
        out.display(),
        samples(&b),
        b.entries.len()
    );
    Ok(())
}

/// `agent baseline merge PARTIAL… --out BASELINE`: the baseline of the whole reference from the
/// partials of a sharded build (see [`crate::drift::merge`] for how it stays exact and uniform).
pub fn merge_command(partials: &[PathBuf], out: &Path) -> Result<()> {
    let mut parts = Vec::with_capacity(partials.len());
    for p in partials {
        parts.push(load(p)?);
    }
    // Seed 0: the same partials give the same file.
    let b = crate::drift::merge(&parts, 0, unix_now() as u64).map_err(|e| {
        let names: Vec<String> =
            partials.iter().enumerate().map(|(i, p)| format!("{} = {}", i + 1, p.display())).collect();
        anyhow::anyhow!("{e} (partials: {})", names.join(", "))
    })?;
    save(&b, out)?;
    println!(
        "wrote {} ({} samples from {} partials, {} layer/method pairs)",
        out.display(),
        samples(&b),
        parts.len(),
        b.entries.len()
    );
    Ok(())
}
