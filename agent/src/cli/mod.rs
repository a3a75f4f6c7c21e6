//! Command-line verbs that work on files: `compile`, `score`, `explain`. The daemon's verbs (`run`,
//! `check`, `baseline`) live with the daemon. Each verb is a function taking its parsed arguments.

pub mod compile;
pub mod demo;
pub mod explain;
pub mod layers;
pub mod score;

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Args;

use crate::config::Config;
use crate::engine::{EngineSpec, LayerSpec};
use crate::runtime::Provider;
use crate::scores::{Aggregation, Method};

/// Where the engine's settings come from: a configuration file, or flags alone. Flags given
/// together with `--config` override the file's values.
#[derive(Debug, Clone, Args)]
pub struct ModelArgs {
    /// Configuration file (TOML); its `[model]`, `[noise]` and `[engine]` sections are used.
    #[arg(long)]
    pub config: Option<PathBuf>,
    /// The ONNX model (without --config).
    #[arg(long)]
    pub model: Option<PathBuf>,
    /// The rank-2 embedding output (without --config).
    #[arg(long)]
    pub embedding: Option<String>,
    /// An intermediate tensor to score; repeat for a score curve (`label=tensor` sets the label).
    #[arg(long = "layer")]
    pub layers: Vec<String>,
    /// How a layer's axes are read: `LAYER=auto|nchw|nhwc|tokens[,grid=GHxGW][,prefix=N]` (LAYER is
    /// its label or tensor; default auto). Repeat per layer.
    #[arg(long = "layout")]
    pub layouts: Vec<String>,
    /// Attribution method(s): vanilla, actgrad, gradcam.
    #[arg(long = "method")]
    pub methods: Vec<Method>,
    #[arg(long)]
    pub channel_agg: Option<Aggregation>,
    #[arg(long)]
    pub embedding_agg: Option<Aggregation>,
    /// Normalise each component's map before the embedding aggregation.
    #[arg(long)]
    pub normalize_dims: bool,
    /// Binarise normalised maps at this threshold before the variance score.
    #[arg(long)]
    pub binarize: Option<f32>,
    /// Noise input file(s) (`.npy`, one sample each) instead of drawn noise.
    #[arg(long = "noise-input")]
    pub noise_inputs: Vec<PathBuf>,
    #[arg(long)]
    pub noise_seed: Option<u64>,
    #[arg(long)]
    pub n_noise: Option<usize>,
    /// Smoothed estimator: points per sample (default 1: the plain gradient).
    #[arg(long)]
    pub samples: Option<usize>,
    /// Smoothed estimator: noise σ (default 0.5 when --samples > 1).
    #[arg(long)]
    pub smoothing: Option<f32>,
    /// Smoothed estimator: reference input x_ref: black (zeros, default), input, or a `.npy` sample.
    #[arg(long)]
    pub smoothing_reference: Option<crate::engine::SmoothingReference>,
    /// Score a seeded random subset of this many embedding components.
    #[arg(long)]
    pub dims: Option<usize>,
    /// Cotangent rows per ONNX Runtime run.
    #[arg(long)]
    pub rows_per_run: Option<usize>,
    /// The noise score's E map: exact, mean_map (one row), hutchinson (--probes rows).
    #[arg(long)]
    pub estimator: Option<crate::engine::Estimator>,
    #[arg(long)]
    pub probes: Option<usize>,
    /// Execution providers in order of preference (default cpu without --config).
    #[arg(long = "provider")]
    pub providers: Vec<Provider>,
    #[arg(long)]
    pub threads: Option<usize>,
    /// libonnxruntime.so to load.
    #[arg(long)]
    pub onnxruntime: Option<PathBuf>,
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

    /// The engine specification these arguments describe. `score`'s defaults differ from the
    /// daemon's: one smoothing point (the plain gradient) unless asked otherwise.
    pub fn engine_spec(&self) -> Result<EngineSpec> {
        let mut spec = match &self.config {
            Some(path) => {
                let cfg = Config::load(path)?;
                let problems = cfg.validate();
                if !problems.is_empty() {
                    let list: Vec<String> = problems.iter().map(|p| format!("  {p}")).collect();
                    bail!("{} has problems:\n{}", path.display(), list.join("\n"));
                }
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
            spec.layers = self
                .layers
                .iter()
                .map(|l| match l.split_once('=') {
                    Some((name, tensor)) if !name.is_empty() => {
                        LayerSpec { name: name.into(), tensor: tensor.into(), ..Default::default() }
                    }
                    _ => LayerSpec { name: l.clone(), tensor: l.clone(), ..Default::default() },
                })
                .collect();
        }
        apply_layouts(&mut spec.layers, &self.layouts)?;
        if let Some(m) = &self.model {
            spec.model_path = m.clone();
        }
        if let Some(e) = &self.embedding {
            spec.embedding = e.clone();
        }
        if !self.methods.is_empty() {
            spec.methods = self.methods.clone();
        }
        spec.channel_agg = self.channel_agg.unwrap_or(spec.channel_agg);
        spec.embedding_agg = self.embedding_agg.unwrap_or(spec.embedding_agg);
        spec.normalize_dims |= self.normalize_dims;
        spec.binarize = self.binarize.or(spec.binarize);
        if !self.noise_inputs.is_empty() {
            spec.noise_inputs = self.noise_inputs.clone();
        }
        spec.noise_seed = self.noise_seed.unwrap_or(spec.noise_seed);
        spec.n_noise = self.n_noise.unwrap_or(spec.n_noise);
        if self.config.is_none() || self.samples.is_some() {
            spec.samples = self.samples.unwrap_or(1);
            spec.smoothing = self.smoothing.unwrap_or(if spec.samples > 1 { 0.5 } else { 0.0 });
        } else if let Some(s) = self.smoothing {
            spec.smoothing = s;
        }
        if let Some(r) = &self.smoothing_reference {
            spec.smoothing_reference = r.clone();
        }
        spec.dims = self.dims.or(spec.dims);
        spec.rows_per_run = self.rows_per_run.unwrap_or(spec.rows_per_run);
        spec.estimator = self.estimator.unwrap_or(spec.estimator);
        spec.probes = self.probes.unwrap_or(spec.probes);
        if !self.providers.is_empty() {
            spec.providers = self.providers.clone();
        }
        spec.threads = self.threads.unwrap_or(spec.threads);
        if let Some(p) = &self.onnxruntime {
            spec.onnxruntime_path = Some(p.clone());
        }
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
