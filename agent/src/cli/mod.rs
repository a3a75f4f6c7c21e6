//! Command-line verbs that work on files: `compile`, `score`, `explain`. The daemon's verbs (`run`,
//! `check`, `baseline`) live with the daemon. Each verb is a function taking its parsed arguments.

pub mod baseline;
pub mod compile;
pub mod demo;
pub mod explain;
pub mod layers;
pub mod report;
pub mod score;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::config::Config;
use crate::engine::{EngineSpec, LayerSpec, NoiseSettings, RuntimeSettings, ScoreSettings};
use crate::runtime::Provider;

/// Where the engine's settings come from: a configuration file, or flags alone. Flags given
/// together with `--config` override the file's values. The score flags are the configuration's own
/// settings types ([`ScoreSettings`], [`NoiseSettings`], [`RuntimeSettings`]), read as flags.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Configuration file (TOML); its `[model]`, `[noise]` and `[engine]` sections are used.
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// The ONNX model (without --config).
    #[arg(long, value_name = "M.onnx")]
    pub model: Option<PathBuf>,
    /// The rank-2 embedding output `[batch, D]` of the model (without --config).
    #[arg(long, value_name = "NAME")]
    pub embedding: Option<String>,
    /// An intermediate tensor to score, repeatable for a score curve; `label=tensor` sets the label
    /// used in output and metrics [default with --config: the configured layers].
    #[arg(long = "layer", value_name = "[LABEL=]TENSOR")]
    pub layers: Vec<LayerSpec>,
    /// How a layer's axes are read: `LAYER=auto|nchw|nhwc|tokens[,grid=GHxGW][,prefix=N]` (LAYER is
    /// its label or tensor; default auto). Repeat per layer.
    #[arg(long = "layout", value_name = "LAYER=LAYOUT")]
    pub layouts: Vec<String>,
    /// A text model's `tokenizer.json` [default with --config: its `[tokenizer] path`]: `.txt` and
    /// `.jsonl` inputs are tokenized with it, truncated to the model's `max_length`.
    #[arg(long, value_name = "tokenizer.json")]
    pub tokenizer: Option<PathBuf>,
    #[command(flatten)]
    pub score: ScoreSettings,
    #[command(flatten)]
    pub noise: NoiseSettings,
    #[command(flatten)]
    pub runtime: RuntimeSettings,
}

impl std::str::FromStr for Provider {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "cuda" => Ok(Provider::Cuda),
            "cpu" => Ok(Provider::Cpu),
            _ => Err(format!("unknown provider {s:?} (expected cuda or cpu)")),
        }
    }
}

impl ModelArgs {
    /// PNG/JPEG preprocessing: the configuration's `[model.preprocessing]`, or the defaults (resize to
    /// the model's input) without `--config`.
    pub fn image_options(&self) -> Result<plugins::decode::ImageOptions> {
        Ok(match &self.config {
            Some(path) => Config::load(path)?.model.preprocessing.image_options(),
            None => plugins::decode::ImageOptions::default(),
        })
    }

    /// A text model's decoding (`None` for other models): `--tokenizer` over the configuration's
    /// `[tokenizer] path`, for the text model the engine decided.
    pub fn token_options(
        &self,
        engine: &crate::engine::Engine,
    ) -> Result<Option<plugins::decode::TokenOptions>> {
        let configured = match &self.config {
            Some(path) => Config::load(path)?.tokenizer.map(|t| t.path),
            None => None,
        };
        let path = self.tokenizer.clone().or(configured);
        match engine.text_model() {
            Some(text) => Ok(Some(crate::config::token_options(text, path.as_deref())?)),
            None if path.is_some() => bail!("a tokenizer is given, but the model takes a float input"),
            None => Ok(None),
        }
    }

    /// The engine specification these arguments describe. `score`'s defaults differ from the
    /// daemon's: one smoothing point (the plain gradient) and the CPU unless asked otherwise.
    pub fn engine_spec(&self) -> Result<EngineSpec> {
        let mut spec = match &self.config {
            Some(path) => {
                let cfg = Config::load_valid(path)?;
                cfg.warn_deprecated();
                cfg.to_engine_spec()
            }
            None => {
                let (Some(model), Some(embedding)) = (&self.model, &self.embedding) else {
                    bail!("give --config FILE, or --model M.onnx --embedding NAME --layer TENSOR");
                };
                if self.layers.is_empty() {
                    bail!("give at least one --layer TENSOR");
                }
                EngineSpec::new(model, embedding)
            }
        };
        if !self.layers.is_empty() {
            spec.layers = self.layers.clone();
        }
        apply_layouts(&mut spec.layers, &self.layouts)?;
        if let Some(m) = &self.model {
            spec.model_path = m.clone();
        }
        if let Some(e) = &self.embedding {
            spec.embedding = e.clone();
        }
        spec.score = spec.score.overlay(self.score.clone());
        spec.noise = spec.noise.overlay(self.noise.clone());
        spec.runtime = spec.runtime.overlay(self.runtime.clone());
        if spec.layers.is_empty() {
            bail!("no layer to score: give --layer TENSOR or configure [[model.layers]]");
        }
        Ok(spec)
    }
}

/// Applies `--layout LAYER=…` flags to the layers they name (by label, else by tensor).
pub fn apply_layouts(layers: &mut [LayerSpec], flags: &[String]) -> Result<()> {
    for f in flags {
        let (name, req) = crate::compiler::LayoutRequest::parse_flag(f).map_err(anyhow::Error::msg)?;
        let at = layers
            .iter()
            .position(|l| l.name == name)
            .or_else(|| layers.iter().position(|l| l.tensor == name));
        let Some(l) = at.map(|i| &mut layers[i]) else {
            let known: Vec<&str> = layers.iter().map(|l| l.name.as_str()).collect();
            bail!("--layout {f:?} names {name:?}, which is not a layer (layers: {})", known.join(", "));
        };
        l.layout = req.layout;
        l.grid = req.grid;
        l.prefix_tokens = req.prefix_tokens;
    }
    Ok(())
}
