//! The daemon's configuration: TOML read with the `config` crate, every key overridable by an
//! environment variable `AGENT__SECTION__KEY` (e.g. `AGENT__SERVER__LISTEN=0.0.0.0:9717`).
//!
//! Every struct rejects unknown keys. Durations and sizes carry their unit in the key name. The doc
//! comments here are the reference for `config/prod.toml`, which shows every key.

mod text;
mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::engine::{
    EngineSpec, LayerSpec, Layout, NoiseSettings, Normalization, RuntimeSettings, ScoreSettings, TextSettings,
};

pub use text::{TokenizerConfig, token_options};
pub use validate::Problem;

/// The whole configuration file.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    pub model: ModelConfig,
    #[serde(default)]
    pub engine: EngineConfig,
    #[serde(default)]
    pub noise: NoiseConfig,
    #[serde(default)]
    pub baseline: BaselineConfig,
    #[serde(default)]
    pub window: WindowConfig,
    #[serde(default)]
    pub maps: MapsConfig,
    #[serde(default)]
    pub detectors: DetectorsConfig,
    #[serde(default)]
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// Caps on the sizes inputs declare, checked before allocation (`plugins::limits`).
    #[serde(default)]
    pub limits: plugins::limits::Limits,
    /// A text model's tokenizer (`config/text.rs`); absent for other models.
    #[serde(default)]
    pub tokenizer: Option<TokenizerConfig>,
    /// The file this configuration was read from (for messages); not a key.
    #[serde(skip)]
    pub file: PathBuf,
    /// Old key names found in the file or the environment: they still work; each command says so
    /// where its user sees it ([`Config::warn_deprecated`], `agent check`).
    #[serde(skip)]
    pub deprecated: Vec<Problem>,
}

/// Keys renamed so that each name says one thing: (section, old key, new key). The old names are
/// still read (a serde alias), with a warning.
const RENAMED: &[(&str, &str, &str)] =
    &[("model", "samples", "smoothing_points"), ("model", "dims", "subset_components")];

/// Keys of `[[sources]]` entries renamed likewise: (source `type`, old key, new key), reported
/// per entry as `sources[i].old`.
const RENAMED_IN_SOURCES: &[(&str, &str, &str)] = &[("http", "timeout_ms", "header_timeout_ms")];

/// `[model]`: the ONNX model and what to score in it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// The `model` metric label.
    pub name: String,
    /// The ONNX file as deployed.
    pub path: PathBuf,
    /// The rank-2 embedding output `[B, D]`.
    pub embedding: String,
    /// Layers in network order.
    pub layers: Vec<LayerConfig>,
    /// How each sample is scored: methods, aggregations, smoothing, estimator (defaults and
    /// meanings on [`ScoreSettings`]).
    #[serde(flatten)]
    pub score: ScoreSettings,
    /// Text models: `input_roles`, `pad_id`, `max_length`, `vocab_size`, `noise_exclude_ids`
    /// (defaults and meanings on [`TextSettings`]).
    #[serde(flatten)]
    pub text: TextSettings,
    #[serde(default)]
    pub preprocessing: PreprocessingConfig,
}

/// `[[model.layers]]`: the engine's own layer type (`name`, `tensor`, and `layout`, `grid`,
/// `prefix_tokens`), so a per-layer key is declared once.
pub type LayerConfig = LayerSpec;

/// `[model.preprocessing]`: how raw inputs become model inputs. Mean/std apply to every raw `[0, 1]`
/// input (noise inputs, `uint8` data, images) along the channel axis of `layout`; the image keys
/// apply to PNG/JPEG inputs (`plugins::decode::image`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PreprocessingConfig {
    #[serde(default)]
    pub mean: Vec<f32>,
    #[serde(default)]
    pub std: Vec<f32>,
    /// The model input's axis order: `nchw` (`[N, C, H, W]`) or `nhwc`.
    #[serde(default)]
    pub layout: Layout,
    /// Images: resize to `[height, width]` first (bilinear).
    #[serde(default)]
    pub resize: Option<[u32; 2]>,
    /// Images: then keep the centre `[height, width]`.
    #[serde(default)]
    pub crop: Option<[u32; 2]>,
    /// Images: convert to 1 (grey) or 3 (RGB) channels; absent = the model's channel count.
    #[serde(default)]
    pub channels: Option<u32>,
    /// Images declaring more pixels are refused from their header, before decoding.
    #[serde(default = "default_max_image_pixels")]
    pub max_image_pixels: u64,
}

/// `[engine]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EngineConfig {
    /// Providers, threads and the runtime library (defaults and meanings on [`RuntimeSettings`]).
    #[serde(flatten)]
    pub runtime: RuntimeSettings,
    /// Most samples per engine run.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill once its first sample is there.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Inputs waiting for the engine; sources block when it is full.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// A CPU budget: the most samples per second the engine scores on average. When inputs arrive
    /// faster, each arriving sample is scored with the same probability `p = budget / arrival rate`
    /// (a Bernoulli draw per sample; `p` updated every 250 ms from the larger of the last 250 ms' and
    /// the last second's arrival rate, and constant in between) and the others are skipped: acknowledged (a dir file still ends in `done/`) and counted in
    /// `agent_samples_skipped_total{reason="budget"}`. A draw independent of the sample keeps the
    /// windows an unbiased sample of the traffic, where a token bucket would favour the first samples
    /// of each burst; unlike a per-interval reservoir it holds no input back and adds no latency.
    /// Absent (the default): every input is scored, and sources wait for the engine.
    #[serde(default)]
    pub max_samples_per_sec: Option<f64>,
}

/// `[noise]` (defaults and meanings on [`NoiseSettings`]).
pub type NoiseConfig = NoiseSettings;

/// `[baseline]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BaselineConfig {
    /// The baseline file; read at start-up, written there when built from `reference_dir`.
    #[serde(default)]
    pub path: Option<PathBuf>,
    /// Reference data (a directory of `.npy`/`.npz` files, or one batch file) to build the baseline
    /// from at start-up when `path` is missing.
    #[serde(default)]
    pub reference_dir: Option<PathBuf>,
    /// Per-sample reference scores kept for the distribution test.
    #[serde(default = "default_reservoir_samples")]
    pub reservoir_samples: usize,
}

/// `[window]`: the drift window; at least one bound.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WindowConfig {
    /// The last this many samples.
    #[serde(default)]
    pub samples: Option<usize>,
    /// The samples of the last this many seconds.
    #[serde(default)]
    pub secs: Option<u64>,
}

/// `[maps]`: the mean embedding-aggregated maps of the reference and of the window per (layer,
/// method), at `/api/v1/maps` and on the landing page (where the representation's response moved).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MapsConfig {
    /// Off: no maps at all (none in a baseline built by this configuration, none in the window).
    #[serde(default = "default_true")]
    pub enabled: bool,
    /// The window's maps come from one scored sample in `every` (a map costs about one more scoring
    /// pass of that sample, docs/BENCHMARKS.md "Maps"); 1 maps every sample.
    #[serde(default = "default_maps_every")]
    pub every: u64,
    /// At most this many maps (the newest) make the window's mean: the memory bound,
    /// `window_maps × Σ H·W × 4` bytes over the (layer, method) pairs.
    #[serde(default = "default_window_maps")]
    pub window_maps: usize,
    /// At most this many reference samples are mapped when a baseline is built: a systematic sample
    /// (every `⌈N / reference_samples⌉`-th of the `N` reference samples). Each costs about one more
    /// scoring pass; 128 keep a demo-sized reference (256 samples) at +50 % build time and a large
    /// one at a few percent.
    #[serde(default = "default_reference_maps")]
    pub reference_samples: u64,
}

/// `[detectors]`: the embedding drift detectors (`agent::detectors`) the daemon runs on its window,
/// beside the paper's scores. They need the embedding `z` of every scored sample (a forward-only
/// session on the model cut at `model.embedding`: one forward pass per sample) and reference
/// embeddings in the baseline (kept when it is built; a baseline built without them is used without
/// the detectors, with a warning).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DetectorsConfig {
    /// Which detectors run: any of `mmd`, `ks_share`, `centroid`, `pca`; `[]` runs none and computes
    /// no embedding.
    #[serde(default = "default_detectors")]
    pub enabled: Vec<crate::detectors::DetectorKind>,
    /// Reference embeddings kept in the baseline (a uniform sample), which the detectors are fitted
    /// on when the daemon starts.
    #[serde(default = "default_reference_samples")]
    pub reference_samples: usize,
    /// The false-alarm rate of every test with a p-value (MMD, KS share, centroid) and of the
    /// calibrated `|Δ|` thresholds (`agent_*_score_drift_threshold`).
    #[serde(default = "default_alpha")]
    pub alpha: f64,
    /// MMD permutations and the centroid's and PCA's resamples of the reference.
    #[serde(default = "default_permutations")]
    pub permutations: usize,
    /// MMD rows per side (a seeded subset beyond it): bounds the kernel matrix at twice this squared.
    #[serde(default = "default_mmd_max_samples")]
    pub mmd_max_samples: usize,
    /// The newest this many of the window's samples keep their embedding for the detectors.
    #[serde(default = "default_max_window_samples")]
    pub max_window_samples: usize,
    /// Seconds between two runs of the detectors (they run only when the window changed).
    #[serde(default = "default_interval_secs")]
    pub interval_secs: f64,
    /// Below this many embeddings in the window the detectors do not run (their series are absent).
    #[serde(default = "default_min_window_samples")]
    pub min_window_samples: usize,
}

impl DetectorsConfig {
    /// Whether any detector runs (and so whether embeddings are computed at all).
    pub fn active(&self) -> bool {
        !self.enabled.is_empty()
    }

    /// The detectors' own settings.
    pub fn online(&self) -> crate::detectors::OnlineSettings {
        crate::detectors::OnlineSettings {
            enabled: self.enabled.clone(),
            alpha: self.alpha,
            permutations: self.permutations,
            mmd_max_samples: self.mmd_max_samples,
            seed: 0,
        }
    }
}

/// `[[sources]]`, tagged by `type`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SourceConfig {
    /// Files dropped into a directory.
    Dir(plugins::sources::dir::DirConfig),
    /// A feed polled or streamed over HTTP.
    Http(plugins::sources::http::HttpConfig),
    /// Samples posted to the agent's own endpoint (Open Inference Protocol).
    Ingest(plugins::sources::ingest::IngestConfig),
}

impl SourceConfig {
    pub fn name(&self) -> &str {
        match self {
            SourceConfig::Dir(d) => &d.name,
            SourceConfig::Http(h) => &h.name,
            SourceConfig::Ingest(i) => &i.name,
        }
    }

    /// The ingest source, when this is one.
    pub fn as_ingest(&self) -> Option<&plugins::sources::ingest::IngestConfig> {
        match self {
            SourceConfig::Ingest(i) => Some(i),
            _ => None,
        }
    }
}

/// `[server]`: metrics, status and health endpoints.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    #[serde(default = "default_listen")]
    pub listen: String,
    /// When set, `/metrics` and `/api/*` require `Authorization: Bearer <token>`.
    #[serde(default)]
    pub auth_token: Option<String>,
}

/// `[logging]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoggingConfig {
    /// A `tracing` filter: `info`, `agent=debug,warn`, …; `RUST_LOG` wins when set.
    #[serde(default = "default_level")]
    pub level: String,
    #[serde(default)]
    pub format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

const fn default_max_image_pixels() -> u64 {
    plugins::decode::DEFAULT_MAX_IMAGE_PIXELS
}
const fn default_batch_size() -> usize {
    8
}
const fn default_max_batch_delay_ms() -> u64 {
    20
}
const fn default_queue_capacity() -> usize {
    64
}
const fn default_true() -> bool {
    true
}
const fn default_maps_every() -> u64 {
    10
}
const fn default_window_maps() -> usize {
    256
}
const fn default_reference_maps() -> u64 {
    128
}
const fn default_reservoir_samples() -> usize {
    crate::drift::DEFAULT_RESERVOIR_SIZE
}
/// docs/DRIFT_SIGNALS.md: MMD and the centroid see a changed mix of normal inputs (class-prior
/// shift) that the paper's scores do not see at all; PCA sees structure inside `z` change (blur,
/// contrast, occlusion). The KS share adds nothing the MMD does not see first, at MMD's cost.
fn default_detectors() -> Vec<crate::detectors::DetectorKind> {
    use crate::detectors::DetectorKind;
    vec![DetectorKind::Mmd, DetectorKind::Centroid, DetectorKind::Pca]
}
const fn default_reference_samples() -> usize {
    crate::drift::DEFAULT_EMBEDDING_RESERVOIR_SIZE
}
const fn default_alpha() -> f64 {
    0.01
}
const fn default_permutations() -> usize {
    200
}
const fn default_mmd_max_samples() -> usize {
    500
}
const fn default_max_window_samples() -> usize {
    1000
}
const fn default_interval_secs() -> f64 {
    10.0
}
const fn default_min_window_samples() -> usize {
    20
}
fn default_listen() -> String {
    "127.0.0.1:9717".to_string()
}
fn default_level() -> String {
    "info".to_string()
}

impl Default for EngineConfig {
    fn default() -> Self {
        EngineConfig {
            runtime: RuntimeSettings::default(),
            batch_size: default_batch_size(),
            max_batch_delay_ms: default_max_batch_delay_ms(),
            queue_capacity: default_queue_capacity(),
            max_samples_per_sec: None,
        }
    }
}

impl Default for PreprocessingConfig {
    fn default() -> Self {
        PreprocessingConfig {
            mean: Vec::new(),
            std: Vec::new(),
            layout: Layout::Nchw,
            resize: None,
            crop: None,
            channels: None,
            max_image_pixels: default_max_image_pixels(),
        }
    }
}

impl PreprocessingConfig {
    /// The normalisation the engine (noise inputs) and the decoders share.
    pub fn normalization(&self) -> Normalization {
        Normalization { mean: self.mean.clone(), std: self.std.clone(), layout: self.layout }
    }

    pub fn image_options(&self) -> plugins::decode::ImageOptions {
        plugins::decode::ImageOptions {
            resize: self.resize,
            crop: self.crop,
            channels: self.channels,
            max_pixels: self.max_image_pixels,
        }
    }
}

impl Default for BaselineConfig {
    fn default() -> Self {
        BaselineConfig { path: None, reference_dir: None, reservoir_samples: default_reservoir_samples() }
    }
}

impl Default for WindowConfig {
    fn default() -> Self {
        WindowConfig { samples: Some(1000), secs: None }
    }
}

impl Default for MapsConfig {
    fn default() -> Self {
        MapsConfig {
            enabled: true,
            every: default_maps_every(),
            window_maps: default_window_maps(),
            reference_samples: default_reference_maps(),
        }
    }
}

impl Default for DetectorsConfig {
    fn default() -> Self {
        DetectorsConfig {
            enabled: default_detectors(),
            reference_samples: default_reference_samples(),
            alpha: default_alpha(),
            permutations: default_permutations(),
            mmd_max_samples: default_mmd_max_samples(),
            max_window_samples: default_max_window_samples(),
            interval_secs: default_interval_secs(),
            min_window_samples: default_min_window_samples(),
        }
    }
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig { listen: default_listen(), auth_token: None }
    }
}

impl Default for LoggingConfig {
    fn default() -> Self {
        LoggingConfig { level: default_level(), format: LogFormat::Text }
    }
}

/// One [`Problem`] per old key name (see [`RENAMED`], [`RENAMED_IN_SOURCES`]) set in `raw`.
fn renamed_keys_in_use(raw: &config::Config, file: &str) -> Vec<Problem> {
    let renamed = |section: &str, old: &str, new: &str| Problem {
        file: file.to_string(),
        key: format!("{section}.{old}"),
        why: format!("renamed to {section}.{new}; the old name still works for now"),
    };
    let mut out: Vec<Problem> = RENAMED
        .iter()
        .filter(|(section, old, _)| raw.get_table(section).is_ok_and(|t| t.contains_key(*old)))
        .map(|(section, old, new)| renamed(section, old, new))
        .collect();
    let sources = raw.get_array("sources").unwrap_or_default();
    for (i, source) in sources.into_iter().enumerate() {
        let Ok(table) = source.into_table() else { continue };
        let kind = table.get("type").and_then(|t| t.clone().into_string().ok());
        for (ty, old, new) in RENAMED_IN_SOURCES {
            if kind.as_deref() == Some(*ty) && table.contains_key(*old) {
                out.push(renamed(&format!("sources[{i}]"), old, new));
            }
        }
    }
    out
}

impl Config {
    /// Reads `path` with the process environment's `AGENT__…` overrides.
    pub fn load(path: &Path) -> Result<Config> {
        Config::load_with_env(path, std::env::vars().collect())
    }

    /// Reads `path` with overrides from `env` (only `AGENT__…` variables are used).
    pub fn load_with_env(path: &Path, env: HashMap<String, String>) -> Result<Config> {
        let env: config::Map<String, String> =
            env.into_iter().filter(|(k, _)| k.starts_with("AGENT__")).collect();
        let raw = config::Config::builder()
            .add_source(config::File::from(path).format(config::FileFormat::Toml))
            .add_source(
                config::Environment::with_prefix("AGENT")
                    .prefix_separator("__")
                    .separator("__")
                    .try_parsing(true)
                    .list_separator(",")
                    .with_list_parse_key("engine.providers")
                    .with_list_parse_key("model.methods")
                    .with_list_parse_key("noise.inputs")
                    .with_list_parse_key("model.noise_exclude_ids")
                    .with_list_parse_key("detectors.enabled")
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let file = path.display().to_string();
        let deprecated = renamed_keys_in_use(&raw, &file);
        let mut cfg: Config = raw.try_deserialize().map_err(|e| anyhow!("{file}: {e}"))?;
        cfg.file = path.to_path_buf();
        cfg.deprecated = deprecated;
        Ok(cfg)
    }

    /// Reads `path` (with the process environment's overrides) and refuses it, listing every
    /// problem, unless it is valid: how the daemon, its reload and the file verbs read a
    /// configuration (`agent check` lists the problems instead of refusing).
    pub fn load_valid(path: &Path) -> Result<Config> {
        Config::load_valid_except(path, None)
    }

    /// [`Config::load_valid`], except that problems of the section `skip` (a top-level key such as
    /// `"baseline"`) are not held against it: `agent baseline` makes the baseline that is missing.
    pub fn load_valid_except(path: &Path, skip: Option<&str>) -> Result<Config> {
        let cfg = Config::load(path)?;
        let skipped = |p: &Problem| skip.is_some_and(|s| p.key == s || p.key.starts_with(&format!("{s}.")));
        let list: Vec<String> =
            cfg.validate().iter().filter(|p| !skipped(p)).map(|p| format!("  {p}")).collect();
        if !list.is_empty() {
            anyhow::bail!("invalid configuration {}:\n{}", path.display(), list.join("\n"));
        }
        Ok(cfg)
    }

    /// Logs a warning per old key name in use (see [`Config::deprecated`]); called once logging is up.
    pub fn warn_deprecated(&self) {
        for p in &self.deprecated {
            tracing::warn!("{p}");
        }
    }

    /// Every problem with this configuration (empty = valid); see [`Problem`].
    pub fn validate(&self) -> Vec<Problem> {
        validate::validate(self)
    }

    /// The engine's specification (scores, noise, providers) from `[model]`, `[noise]`, `[engine]`.
    pub fn to_engine_spec(&self) -> EngineSpec {
        let m = &self.model;
        EngineSpec {
            model_path: m.path.clone(),
            model_name: m.name.clone(),
            embedding: m.embedding.clone(),
            layers: m.layers.clone(),
            score: m.score.clone(),
            noise: self.noise.clone(),
            normalization: m.preprocessing.normalization(),
            runtime: self.engine.runtime.clone(),
            text: self.text_settings(),
        }
    }
}

#[cfg(test)]
mod tests;
