//! `Config::validate`: every problem at once, each naming the file, the key and why.

use std::net::SocketAddr;

use super::{
    BaselineConfig, Config, DetectorsConfig, EngineConfig, MapsConfig, ModelConfig, NoiseConfig,
    PreprocessingConfig, SourceConfig, WindowConfig,
};

/// One thing wrong with a configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub file: String,
    /// Dotted key, e.g. `model.layers[1].tensor`.
    pub key: String,
    pub why: String,
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}: {}", self.file, self.key, self.why)
    }
}

struct Problems<'a> {
    file: &'a str,
    out: Vec<Problem>,
}

impl Problems<'_> {
    fn add(&mut self, key: impl Into<String>, why: impl Into<String>) {
        self.out.push(Problem { file: self.file.to_string(), key: key.into(), why: why.into() });
    }
}

/// A metric label value: short, printable, no quotes.
fn label_ok(s: &str) -> bool {
    !s.is_empty() && s.len() <= 64 && s.chars().all(|c| c.is_ascii_alphanumeric() || "_-.:/".contains(c))
}

pub(super) fn validate(cfg: &Config) -> Vec<Problem> {
    let file = cfg.file.display().to_string();
    let mut p = Problems { file: &file, out: Vec::new() };
    model(&mut p, &cfg.model);
    preprocessing(&mut p, &cfg.model.preprocessing);
    engine(&mut p, &cfg.engine);
    noise(&mut p, &cfg.noise);
    baseline(&mut p, &cfg.baseline, &file);
    window(&mut p, &cfg.window);
    maps(&mut p, &cfg.maps);
    detectors(&mut p, &cfg.detectors);
    sources(&mut p, &cfg.sources);
    server_and_logging(&mut p, cfg);
    for (key, why) in super::text::problems(cfg) {
        p.add(key, why);
    }
    p.out
}

/// `[model]`: its label, file, embedding, layers and score settings.
fn model(p: &mut Problems, m: &ModelConfig) {
    if !label_ok(&m.name) {
        p.add(
            "model.name",
            format!("{:?} is not a usable metric label (1–64 of A-Z a-z 0-9 _ - . : /)", m.name),
        );
    }
    if !m.path.is_file() {
        p.add("model.path", format!("model file {} does not exist", m.path.display()));
    }
    if m.embedding.trim().is_empty() {
        p.add("model.embedding", "empty; name the model's rank-2 embedding output");
    }
    if m.layers.is_empty() {
        p.add("model.layers", "no layer configured; add at least one [[model.layers]] with name and tensor");
    }
    let mut seen = std::collections::HashSet::new();
    for (i, l) in m.layers.iter().enumerate() {
        if !label_ok(&l.name) {
            p.add(format!("model.layers[{i}].name"), format!("{:?} is not a usable metric label", l.name));
        } else if !seen.insert(l.name.as_str()) {
            p.add(format!("model.layers[{i}].name"), format!("{:?} is used by another layer", l.name));
        }
        if l.tensor.trim().is_empty() {
            p.add(format!("model.layers[{i}].tensor"), "empty; name an intermediate tensor of the graph");
        }
        if let Some(why) = l.layout_request().problem() {
            p.add(format!("model.layers[{i}].layout"), why);
        }
    }
    if m.score.methods.as_ref().is_some_and(|m| m.is_empty()) {
        p.add("model.methods", "empty; use one or more of vanilla, actgrad, gradcam");
    }
    if m.score.smoothing_points == Some(0) {
        p.add("model.smoothing_points", "must be at least 1");
    }
    if m.score.smoothing.is_some_and(|s| !(s >= 0.0 && s.is_finite())) {
        p.add("model.smoothing", "must be a finite number ≥ 0");
    }
    if m.score.subset_components == Some(0) {
        p.add("model.subset_components", "must be at least 1 (or absent to score every component)");
    }
    if m.score.rows_per_run == Some(0) {
        p.add("model.rows_per_run", "must be at least 1");
    }
    if let Some(t) = m.score.binarize
        && !(t > 0.0 && t < 1.0)
    {
        p.add("model.binarize", "threshold must lie strictly between 0 and 1");
    }
    text(p, m);
}

/// The text-model keys of `[model]`, and smoothing, which a text model cannot take: the model file's
/// declared inputs are read only when smoothing is asked for (the engine refuses the rest).
fn text(p: &mut Problems, m: &ModelConfig) {
    for (key, why) in m.text.problems() {
        p.add(format!("model.{key}"), why);
    }
    let smoothing =
        m.score.smoothing_points.is_some_and(|s| s > 1) || m.score.smoothing.is_some_and(|s| s > 0.0);
    if smoothing && m.path.is_file() && model_takes_tokens(m) {
        let key = if m.score.smoothing_points.is_some_and(|s| s > 1) {
            "model.smoothing_points"
        } else {
            "model.smoothing"
        };
        p.add(key, crate::engine::tokens::SMOOTHING_REFUSED);
    }
}

/// Whether the model file declares token inputs (integer inputs, or roles configured so).
fn model_takes_tokens(m: &ModelConfig) -> bool {
    let Ok(bytes) = std::fs::read(&m.path) else { return false };
    let Ok(model) = crate::onnx::decode(&bytes) else { return false };
    let Some(graph) = model.graph.as_ref() else { return false };
    let Ok(declared) = crate::compiler::inputs::declared_inputs(graph) else { return false };
    let pairs: Vec<(String, i32)> = declared.into_iter().map(|(n, t, _)| (n, t)).collect();
    match crate::compiler::decide_roles(&pairs, &m.text.input_roles) {
        Ok(d) => crate::compiler::inputs::is_text(&d),
        Err(_) => pairs.iter().any(|(_, t)| *t != crate::onnx::proto::data_type::FLOAT),
    }
}

/// `[model.preprocessing]`.
fn preprocessing(p: &mut Problems, pre: &PreprocessingConfig) {
    if pre.mean.len() != pre.std.len() {
        p.add("model.preprocessing", format!("mean has {} values, std {}", pre.mean.len(), pre.std.len()));
    }
    if pre.std.iter().any(|s| s.is_nan() || *s <= 0.0) {
        p.add("model.preprocessing.std", "every value must be > 0");
    }
    for (key, size) in [("resize", pre.resize), ("crop", pre.crop)] {
        if let Some([h, w]) = size
            && (h == 0 || w == 0)
        {
            p.add(format!("model.preprocessing.{key}"), "[height, width] must both be at least 1");
        }
    }
    if let (Some([rh, rw]), Some([ch, cw])) = (pre.resize, pre.crop)
        && (ch > rh || cw > rw)
    {
        p.add("model.preprocessing.crop", format!("{ch}×{cw} does not fit in the resized {rh}×{rw} image"));
    }
    if let Some(c) = pre.channels
        && c != 1
        && c != 3
    {
        p.add("model.preprocessing.channels", format!("{c}; images convert to 1 (grey) or 3 (RGB)"));
    }
    if pre.max_image_pixels == 0 {
        p.add("model.preprocessing.max_image_pixels", "must be at least 1");
    }
}

/// `[engine]`.
fn engine(p: &mut Problems, e: &EngineConfig) {
    if e.runtime.providers.as_ref().is_some_and(|p| p.is_empty()) {
        p.add("engine.providers", "empty; use [\"cuda\", \"cpu\"] or [\"cpu\"]");
    }
    if e.runtime.memory_limit_bytes == Some(0) {
        p.add("engine.memory_limit_bytes", "must be at least 1 (bytes)");
    }
    if e.batch_size == 0 {
        p.add("engine.batch_size", "must be at least 1");
    }
    if e.max_samples_per_sec.is_some_and(|b| !(b > 0.0 && b.is_finite())) {
        p.add("engine.max_samples_per_sec", "must be a finite number > 0 (or absent: no budget)");
    }
    if e.queue_capacity == 0 {
        p.add("engine.queue_capacity", "must be at least 1");
    }
    if let Some(lib) = &e.runtime.onnxruntime_path
        && !lib.is_file()
    {
        p.add("engine.onnxruntime_path", format!("{} does not exist", lib.display()));
    }
}

/// `[noise]`.
fn noise(p: &mut Problems, n: &NoiseConfig) {
    if n.inputs.is_empty() && n.n_noise() < 2 {
        p.add("noise.n_noise", "must be at least 2 (the benchmark compares pairs of noise inputs)");
    }
    for (i, f) in n.inputs.iter().enumerate() {
        if !f.is_file() {
            p.add(format!("noise.inputs[{i}]"), format!("{} does not exist", f.display()));
        }
    }
}

/// `[baseline]`: an existing file, or reference data to build it from.
fn baseline(p: &mut Problems, b: &BaselineConfig, file: &str) {
    match (&b.path, &b.reference_dir) {
        (None, None) => p.add(
            "baseline",
            "set path (an existing baseline) and/or reference_dir (reference data to build it from at start-up)",
        ),
        (Some(path), None) if !path.is_file() => p.add(
            "baseline.path",
            format!(
                "{} does not exist and baseline.reference_dir is not set; build it with \
                 `agent baseline --config {file} --reference DIR --out {}`",
                path.display(),
                path.display()
            ),
        ),
        _ => {}
    }
    if let Some(r) = &b.reference_dir
        && !r.exists()
    {
        p.add("baseline.reference_dir", format!("{} does not exist", r.display()));
    }
    if b.reservoir_samples == 0 {
        p.add("baseline.reservoir_samples", "must be at least 1");
    }
}

/// `[window]`: at least one bound, none zero.
fn window(p: &mut Problems, w: &WindowConfig) {
    match (w.samples, w.secs) {
        (None, None) => {
            p.add("window", "neither samples nor secs is set; the window needs at least one bound")
        }
        _ => {
            if w.samples == Some(0) {
                p.add("window.samples", "must be at least 1");
            }
            if w.secs == Some(0) {
                p.add("window.secs", "must be at least 1");
            }
        }
    }
}

/// `[maps]`: every bound at least 1 (`enabled = false` turns the maps off).
fn maps(p: &mut Problems, m: &MapsConfig) {
    if m.every == 0 {
        p.add("maps.every", "must be at least 1 (1 maps every sample); set enabled = false for no maps");
    }
    if m.window_maps == 0 {
        p.add("maps.window_maps", "must be at least 1");
    }
    if m.reference_samples == 0 {
        p.add("maps.reference_samples", "must be at least 1");
    }
}

/// `[detectors]`: sizes the tests can work with, and a permutation count that can reach `alpha`.
fn detectors(p: &mut Problems, d: &DetectorsConfig) {
    let mut seen = std::collections::HashSet::new();
    for (i, k) in d.enabled.iter().enumerate() {
        if !seen.insert(k) {
            p.add(format!("detectors.enabled[{i}]"), format!("{k:?} is listed twice"));
        }
    }
    if !(d.alpha > 0.0 && d.alpha < 1.0) {
        p.add("detectors.alpha", format!("{} is not in (0, 1)", d.alpha));
    } else if (d.permutations as f64 + 1.0) * d.alpha < 1.0 {
        // The smallest permutation p-value is 1/(1 + permutations): with fewer, no test can fire.
        p.add(
            "detectors.permutations",
            format!(
                "{} permutations cannot give a p-value at or below alpha = {} (the smallest is 1/(1 + {})); \
                 use at least {}",
                d.permutations,
                d.alpha,
                d.permutations,
                (1.0 / d.alpha).ceil() as usize - 1
            ),
        );
    }
    if d.reference_samples < 2 {
        p.add("detectors.reference_samples", "must be at least 2 (the detectors need a reference spread)");
    }
    if d.mmd_max_samples < 2 {
        p.add("detectors.mmd_max_samples", "must be at least 2");
    }
    if d.min_window_samples < 2 {
        p.add("detectors.min_window_samples", "must be at least 2");
    }
    if d.max_window_samples < d.min_window_samples {
        p.add(
            "detectors.max_window_samples",
            format!(
                "{} is below detectors.min_window_samples ({})",
                d.max_window_samples, d.min_window_samples
            ),
        );
    }
    if !(d.interval_secs > 0.0 && d.interval_secs.is_finite()) {
        p.add("detectors.interval_secs", format!("{} is not a positive number of seconds", d.interval_secs));
    }
}

/// `[[sources]]`: at least one, one ingest at most, unique usable names, each source's own checks.
fn sources(p: &mut Problems, sources: &[SourceConfig]) {
    if sources.is_empty() {
        p.add(
            "sources",
            "no source configured; add a [[sources]] section (type = \"dir\", \"http\" or \"ingest\")",
        );
    }
    let ingest: Vec<usize> =
        sources.iter().enumerate().filter(|(_, s)| s.as_ingest().is_some()).map(|(i, _)| i).collect();
    if ingest.len() > 1 {
        p.add(
            format!("sources[{}]", ingest[1]),
            "a second ingest source; the endpoint is the server's, so there is at most one",
        );
    }
    let mut names = std::collections::HashSet::new();
    for (i, s) in sources.iter().enumerate() {
        if !names.insert(s.name().to_string()) {
            p.add(format!("sources[{i}].name"), format!("{:?} is used by another source", s.name()));
        }
        match s {
            SourceConfig::Dir(d) => {
                for (key, why) in d.validate() {
                    p.add(format!("sources[{i}].{key}"), why);
                }
            }
            SourceConfig::Http(h) => {
                for (key, why) in h.validate() {
                    p.add(format!("sources[{i}].{key}"), why);
                }
            }
            SourceConfig::Ingest(g) => {
                for (key, why) in g.validate() {
                    p.add(format!("sources[{i}].{key}"), why);
                }
            }
        }
        if !label_ok(s.name()) {
            p.add(format!("sources[{i}].name"), format!("{:?} is not a usable metric label", s.name()));
        }
    }
}

/// `[server]` and `[logging]`.
fn server_and_logging(p: &mut Problems, cfg: &Config) {
    if let Err(e) = cfg.server.listen.parse::<SocketAddr>() {
        p.add("server.listen", format!("{:?} is not an address:port ({e})", cfg.server.listen));
    }
    if cfg.server.auth_token.as_deref() == Some("") {
        p.add("server.auth_token", "empty; remove the key to disable authentication");
    }
    for (key, why) in cfg.limits.validate() {
        p.add(format!("limits.{key}"), why);
    }
    if let Err(e) = tracing_subscriber::EnvFilter::try_new(&cfg.logging.level) {
        p.add("logging.level", format!("{:?} is not a log filter ({e})", cfg.logging.level));
    }
}
