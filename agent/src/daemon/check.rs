//! `agent check --config FILE`: every problem with a configuration, its model and its baseline.

use std::path::Path;

use super::baseline::{check as check_baseline, load as load_baseline, samples as baseline_samples};
use crate::config::Config;
use crate::engine::Engine;

/// Every problem found, one line each; empty = OK. `Ok` carries the summary line.
pub fn problems(config: &Path) -> Result<String, Vec<String>> {
    let cfg = match Config::load(config) {
        Ok(c) => c,
        Err(e) => return Err(vec![format!("{e:#}")]),
    };
    for p in &cfg.deprecated {
        eprintln!("warning: {p}");
    }
    let mut out: Vec<String> = cfg.validate().iter().map(|p| p.to_string()).collect();
    let file = cfg.file.display().to_string();
    // The model checks need a readable model and ONNX Runtime; without them they add nothing useful.
    if out.iter().any(|p| p.contains(": model.") || p.contains(": engine.")) {
        return Err(out);
    }
    if let Err(e) = crate::runtime::environment(cfg.engine.runtime.onnxruntime_path.as_deref()) {
        out.push(format!("{file}: engine.onnxruntime_path: {e:#}"));
        return Err(out);
    }
    let engine = match Engine::new(&cfg.to_engine_spec()) {
        Ok(e) => e,
        Err(e) => {
            out.push(format!("{file}: model: {e:#}"));
            return Err(out);
        }
    };
    let pre = &cfg.model.preprocessing;
    for why in plugins::decode::image::check_geometry(
        engine.input_shape(),
        &pre.normalization(),
        &pre.image_options(),
    ) {
        out.push(format!("{file}: model.preprocessing: {why}"));
    }
    let mut baseline_note = String::from("baseline will be built from baseline.reference_dir at start-up");
    if let Some(path) = cfg.baseline.path.as_ref().filter(|p| p.is_file()) {
        let hint = format!("`agent baseline --config {file} --reference DIR --out {}`", path.display());
        match load_baseline(path).and_then(|b| {
            check_baseline(&b, engine.model_sha256(), engine.settings_hash(), engine.keys(), &hint).map(|_| b)
        }) {
            Ok(b) => {
                baseline_note =
                    format!("baseline {} ({} samples) matches", path.display(), baseline_samples(&b))
            }
            Err(e) => out.push(format!("{file}: baseline.path: {e:#}")),
        }
    }
    if !out.is_empty() {
        return Err(out);
    }
    let mut summary = format!(
        "OK: model {} ({}), {} layer/method pairs, input {:?}, provider {}; {}",
        cfg.model.name,
        cfg.model.path.display(),
        engine.keys().len(),
        engine.input_shape(),
        engine.provider().as_str(),
        baseline_note
    );
    // What the compiler decided per layer (layouts are auto-detected unless configured).
    for (l, v) in cfg.model.layers.iter().zip(engine.views()) {
        summary.push_str(&format!("\n  layer {} ({}): {}", l.name, l.tensor, v.describe()));
    }
    // A text model: each input's role and the padding, length and noise-id settings.
    for line in engine.text_model().map(|t| t.describe()).unwrap_or_default() {
        summary.push_str(&format!("\n  {line}"));
    }
    Ok(summary)
}

/// Prints the problems one per line (exit 1) or the summary (exit 0).
pub fn command(config: &Path) -> i32 {
    match problems(config) {
        Ok(summary) => {
            println!("{summary}");
            0
        }
        Err(list) => {
            for p in &list {
                println!("{p}");
            }
            eprintln!("{} problem(s) found", list.len());
            1
        }
    }
}
