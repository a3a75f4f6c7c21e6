//! Building a baseline from reference data: at daemon start-up, and `agent baseline`.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result, bail};
use ndarray::{ArrayD, Axis};

use super::Scorer;
use super::monitor::{baseline_samples, save_baseline, unix_now};
use crate::config::Config;
use crate::drift::{Baseline, BaselineBuilder, BaselineMeta};
use plugins::decode::{DecodeOptions, decode_file};

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
            p.is_file() && plugins::decode::EXTENSIONS.contains(&ext.as_str())
        })
        .collect();
    files.sort();
    if files.is_empty() {
        bail!("no .npy, .npz, .png or .jpg file in reference directory {}", reference.display());
    }
    Ok(files)
}

/// Decoding options for the configured model, given the engine's input shape.
pub fn decode_options(cfg: &Config, input_shape: &[usize]) -> DecodeOptions {
    DecodeOptions {
        input_shape: input_shape.to_vec(),
        max_bytes: 0,
        normalization: cfg.model.preprocessing.normalization(),
        image: cfg.model.preprocessing.image_options(),
        limits: cfg.limits.clone(),
    }
}

/// Scores every reference sample, `batch_size` at a time; `progress(done, total)` after each batch.
/// A reference file that does not decode is an error: a baseline must not silently skip data.
pub fn build(
    scorer: &mut dyn Scorer,
    reference: &Path,
    opts: &DecodeOptions,
    batch_size: usize,
    reservoir_samples: usize,
    progress: &mut dyn FnMut(u64, u64),
) -> Result<Baseline> {
    let files = reference_files(reference)?;
    let mut batches: Vec<ArrayD<f32>> = Vec::new();
    for f in &files {
        batches.push(
            decode_file(f, opts)
                .map_err(|r| anyhow::anyhow!("reference input rejected ({}): {r}", r.reason.as_str()))?,
        );
    }
    let total: u64 = batches.iter().map(|b| b.len_of(Axis(0)) as u64).sum();
    let meta = BaselineMeta {
        model_sha256: scorer.model_sha256().to_string(),
        settings_hash: scorer.settings_hash().to_string(),
        created_unix_secs: unix_now() as u64,
    };
    // Seed 0: the same reference data gives the same baseline file.
    let mut builder = BaselineBuilder::new(meta, scorer.keys(), reservoir_samples, 0);
    let mut done = 0u64;
    progress(0, total);
    for batch in &batches {
        let n = batch.len_of(Axis(0));
        let mut start = 0;
        while start < n {
            let end = (start + batch_size.max(1)).min(n);
            let chunk = batch.slice_axis(Axis(0), (start..end).into());
            for s in scorer.score_batch(chunk)? {
                builder.push(&s).map_err(anyhow::Error::msg)?;
                done += 1;
            }
            start = end;
            progress(done, total);
        }
    }
    if done == 0 {
        bail!("the reference data {} holds no sample", reference.display());
    }
    builder.finish().map_err(anyhow::Error::msg)
}

/// `agent baseline --config FILE --reference DIR --out BASELINE`, with a progress bar.
pub fn command(config: &Path, reference: &Path, out: &Path) -> Result<()> {
    let cfg = Config::load(config)?;
    let problems: Vec<String> = cfg
        .validate()
        .into_iter()
        // The baseline being built may not exist yet; that is the point of this command.
        .filter(|p| !p.key.starts_with("baseline"))
        .map(|p| p.to_string())
        .collect();
    if !problems.is_empty() {
        bail!("the configuration has problems:\n{}", problems.join("\n"));
    }
    let mut engine = crate::engine::Engine::new(&cfg.to_engine_spec())?;
    let opts = decode_options(&cfg, engine.input_shape());
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
        cfg.baseline.reservoir_samples,
        &mut |d, t| {
            bar.set_length(t);
            bar.set_position(d);
        },
    )?;
    bar.finish();
    save_baseline(&b, out)?;
    println!(
        "wrote {} ({} samples, {} layer/method pairs)",
        out.display(),
        baseline_samples(&b),
        b.entries.len()
    );
    Ok(())
}
