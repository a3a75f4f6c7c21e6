//! `agent score`: score files once and print the scores (a table, or JSON lines with `--json`).
//!
//! Every input is scored even when some are bad; the bad ones are listed on stderr, one line each
//! naming the file and the problem, and the exit status is then 1.

use std::io::Write;
use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Result, bail};
use clap::Args;
use ndarray::ArrayD;

use super::ModelArgs;
use crate::engine::Engine;

#[derive(Debug, Clone, Args)]
pub struct ScoreArgs {
    #[command(flatten)]
    pub model: ModelArgs,
    /// Print one JSON object per line per input sample, layer and method instead of a table.
    #[arg(long)]
    pub json: bool,
    /// Samples per engine run (each run computes all their maps at once; memory grows with it).
    #[arg(long, value_name = "N", default_value_t = 16)]
    pub batch_size: usize,
    /// Input files (`.npy`, `.npz`, `.png`, `.jpg`; a text model's `.txt`, `.jsonl`, `.npz`): one
    /// sample each, or a batch (a text file: one sample per line).
    #[arg(required = true)]
    pub inputs: Vec<PathBuf>,
}

/// One printed row.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ScoreRow {
    pub input: String,
    pub sample: usize,
    pub layer: String,
    pub method: &'static str,
    pub noise_score: f64,
    pub variance_score: f64,
    pub noise_benchmark: f64,
    /// How the layer's axes were read (`nchw`, `nhwc`, `tokens`), its map and its prefix tokens.
    pub layout: &'static str,
    pub map: [usize; 2],
    pub prefix_tokens: usize,
}

/// Decodes an input file into a batch for the engine.
pub fn decode(
    engine: &Engine,
    image: &plugins::decode::ImageOptions,
    path: &std::path::Path,
) -> Result<ArrayD<f32>, plugins::decode::Rejection> {
    plugins::decode::decode_file_as(path, &path.display().to_string(), &options(engine, image, None))
}

/// How `score`, `explain` and `report` decode files for `engine`; `tokens` for a text model.
pub fn options(
    engine: &Engine,
    image: &plugins::decode::ImageOptions,
    tokens: Option<plugins::decode::TokenOptions>,
) -> plugins::decode::DecodeOptions {
    plugins::decode::DecodeOptions {
        input_shape: engine.input_shape().to_vec(),
        max_bytes: 0,
        normalization: engine.spec().normalization.clone(),
        image: image.clone(),
        limits: Default::default(),
        tokens,
    }
}

pub fn run(args: &ScoreArgs) -> Result<i32> {
    let spec = args.model.engine_spec()?;
    let image = args.model.image_options()?;
    let mut scorer = crate::daemon::EngineScorer::new(&spec)?;
    let engine = scorer.engine();
    let opts = options(engine, &image, args.model.token_options(engine)?);
    let stdout = std::io::stdout();
    let mut out = stdout.lock();
    if !args.json {
        writeln!(
            out,
            "{:40} {:>6} {:20} {:8} {:>11} {:>14} {:>15}",
            "input", "sample", "layer", "method", "noise_score", "variance_score", "noise_benchmark"
        )?;
    }
    for (l, v) in spec.layers.iter().zip(engine.views()) {
        eprintln!("layer {}: {}", l.name, v.describe());
    }
    for line in engine.text_model().map(|t| t.describe()).unwrap_or_default() {
        eprintln!("{line}");
    }
    let mut failures = Vec::new();
    let (mut scored, start) = (0usize, Instant::now());
    for path in &args.inputs {
        let batch = match plugins::decode::decode_payload_file(path, &path.display().to_string(), &opts) {
            Ok(b) => b,
            Err(e) => {
                failures.push(e.to_string());
                continue;
            }
        };
        let mut rows = Vec::new();
        let keys = scorer.engine().keys().to_vec();
        // Per key, the view of its layer (how its axes were read), for the JSON rows.
        let views: Vec<crate::compiler::LayerView> = keys
            .iter()
            .map(|k| {
                let i = spec
                    .layers
                    .iter()
                    .position(|l| l.name == k.layer)
                    .expect("every key is a configured layer");
                scorer.engine().views()[i].clone()
            })
            .collect();
        let input = path.display().to_string();
        let mut first = 0;
        let result =
            crate::daemon::score_payload(&mut scorer, &batch, args.batch_size, false, &mut |scores, _, _| {
                for (i, s) in scores.iter().enumerate() {
                    for ((key, v), view) in keys.iter().zip(&s.scores).zip(&views) {
                        rows.push(ScoreRow {
                            input: input.clone(),
                            sample: first + i,
                            layer: key.layer.clone(),
                            method: key.method.as_str(),
                            noise_score: v.noise_score,
                            variance_score: v.variance_score,
                            noise_benchmark: key.noise_benchmark,
                            layout: view.layout.as_str(),
                            map: view.grid,
                            prefix_tokens: view.prefix_tokens,
                        });
                    }
                }
                first += scores.len();
                Ok(())
            });
        if let Err(e) = result {
            failures.push(format!("{input}: scoring failed: {e:#}"));
            continue;
        }
        scored += batch.samples();
        for r in rows {
            if args.json {
                writeln!(out, "{}", serde_json::to_string(&r)?)?;
            } else {
                writeln!(
                    out,
                    "{:40} {:>6} {:20} {:8} {:>11.6} {:>14.6} {:>15.6}",
                    r.input, r.sample, r.layer, r.method, r.noise_score, r.variance_score, r.noise_benchmark
                )?;
            }
        }
    }
    out.flush()?;
    let secs = start.elapsed().as_secs_f64();
    if scored > 0 {
        eprintln!(
            "scored {scored} sample(s) in {secs:.2} s ({:.1} ms per sample, provider {})",
            1000.0 * secs / scored as f64,
            scorer.engine().provider().as_str()
        );
    }
    for f in &failures {
        eprintln!("error: {f}");
    }
    if scored == 0 && failures.is_empty() {
        bail!("no input");
    }
    Ok(if failures.is_empty() { 0 } else { 1 })
}
