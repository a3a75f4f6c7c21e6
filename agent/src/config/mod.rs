//! The daemon's configuration: TOML read with the `config` crate, every key overridable by an
//! environment variable `AGENT__SECTION__KEY` (e.g. `AGENT__SERVER__LISTEN=0.0.0.0:9717`).
//!
//! Every struct rejects unknown keys. Durations and sizes carry their unit in the key name. The doc
//! comments here are the reference for `config/prod.toml`, which shows every key.

mod validate;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use anyhow::{Result, anyhow};
use serde::{Deserialize, Serialize};

use crate::engine::{EngineSpec, LayerSpec, Layout, Normalization};
use crate::runtime::Provider;
use crate::scores::{Aggregation, Method};

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
    pub sources: Vec<SourceConfig>,
    #[serde(default)]
    pub server: ServerConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The file this configuration was read from (for messages); not a key.
    #[serde(skip)]
    pub file: PathBuf,
}

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
    #[serde(default = "default_methods")]
    pub methods: Vec<Method>,
    #[serde(default = "default_channel_agg")]
    pub channel_agg: Aggregation,
    #[serde(default = "default_embedding_agg")]
    pub embedding_agg: Aggregation,
    #[serde(default)]
    pub normalize_dims: bool,
    /// Variance-score binarisation threshold; absent = off.
    #[serde(default)]
    pub binarize: Option<f32>,
    /// Score a seeded random subset of this many embedding components; absent = all.
    #[serde(default)]
    pub dims: Option<usize>,
    /// Smoothed estimator: noisy copies per sample and their standard deviation. Absent `smoothing`
    /// is 0.5 with `samples > 1` and 0 with `samples = 1`, so `samples = 1` alone is the plain
    /// gradient (spec §1: `S = 1, σ = 0`), not one random point.
    #[serde(default = "default_samples")]
    pub samples: usize,
    #[serde(default)]
    pub smoothing: Option<f32>,
    #[serde(default)]
    pub smoothing_seed: u64,
    /// Reference input of the smoothed estimator: "black" (zeros, default), "input", or a `.npy` path.
    #[serde(default)]
    pub smoothing_reference: crate::engine::SmoothingReference,
    /// The noise score's `E` map: "exact" (default), "mean_map" or "hutchinson" (spec §6).
    #[serde(default)]
    pub estimator: crate::engine::Estimator,
    /// Hutchinson probes (default 64).
    #[serde(default = "crate::engine::default_probes")]
    pub probes: usize,
    /// Cotangent rows per ONNX Runtime run.
    #[serde(default = "default_rows_per_run")]
    pub rows_per_run: usize,
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
    /// Execution providers in order of preference.
    #[serde(default = "default_providers")]
    pub providers: Vec<Provider>,
    /// Intra-op threads; 0 = ONNX Runtime's default.
    #[serde(default)]
    pub threads: usize,
    /// Most samples per engine run.
    #[serde(default = "default_batch_size")]
    pub batch_size: usize,
    /// Longest wait for a batch to fill once its first sample is there.
    #[serde(default = "default_max_batch_delay_ms")]
    pub max_batch_delay_ms: u64,
    /// Inputs waiting for the engine; sources block when it is full.
    #[serde(default = "default_queue_capacity")]
    pub queue_capacity: usize,
    /// `libonnxruntime.so` to load; absent = `ORT_DYLIB_PATH`, project-local install, system.
    #[serde(default)]
    pub onnxruntime_path: Option<PathBuf>,
}

/// `[noise]`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoiseConfig {
    #[serde(default = "default_n_noise")]
    pub n_noise: usize,
    #[serde(default)]
    pub seed: u64,
    /// Explicit noise inputs (`.npy`); when given, `n_noise` and `seed` are not used.
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
}

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
fn default_methods() -> Vec<Method> {
    vec![Method::Vanilla]
}
const fn default_channel_agg() -> Aggregation {
    Aggregation::Abs
}
const fn default_embedding_agg() -> Aggregation {
    Aggregation::Var
}
const fn default_samples() -> usize {
    16
}
/// σ when `smoothing` is not set.
pub fn default_smoothing(samples: usize) -> f32 {
    if samples > 1 { 0.5 } else { 0.0 }
}
const fn default_rows_per_run() -> usize {
    32
}
fn default_providers() -> Vec<Provider> {
    vec![Provider::Cuda, Provider::Cpu]
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
const fn default_n_noise() -> usize {
    4
}
const fn default_reservoir_samples() -> usize {
    2048
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
            providers: default_providers(),
            threads: 0,
            batch_size: default_batch_size(),
            max_batch_delay_ms: default_max_batch_delay_ms(),
            queue_capacity: default_queue_capacity(),
            onnxruntime_path: None,
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

impl Default for NoiseConfig {
    fn default() -> Self {
        NoiseConfig { n_noise: default_n_noise(), seed: 0, inputs: Vec::new() }
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
                    .source(Some(env)),
            )
            .build()
            .map_err(|e| anyhow!("{}: {e}", path.display()))?;
        let mut cfg: Config = raw.try_deserialize().map_err(|e| anyhow!("{}: {e}", path.display()))?;
        cfg.file = path.to_path_buf();
        Ok(cfg)
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
            methods: m.methods.clone(),
            channel_agg: m.channel_agg,
            embedding_agg: m.embedding_agg,
            normalize_dims: m.normalize_dims,
            binarize: m.binarize,
            n_noise: self.noise.n_noise,
            noise_seed: self.noise.seed,
            noise_inputs: self.noise.inputs.clone(),
            normalization: m.preprocessing.normalization(),
            samples: m.samples,
            smoothing: m.smoothing.unwrap_or_else(|| default_smoothing(m.samples)),
            smoothing_seed: m.smoothing_seed,
            smoothing_reference: m.smoothing_reference.clone(),
            dims: m.dims,
            estimator: m.estimator,
            probes: m.probes,
            rows_per_run: m.rows_per_run,
            providers: self.engine.providers.clone(),
            threads: self.engine.threads,
            onnxruntime_path: self.engine.onnxruntime_path.clone(),
        }
    }
}

#[cfg(test)]
mod tests;
