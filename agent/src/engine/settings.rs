//! The settings that change a score, declared once: the configuration file reads them (the score keys
//! of `[model]`, all of `[noise]`, the runtime keys of `[engine]`) and `agent score`/`agent explain`
//! read the same types as flags.
//!
//! Every field is optional: absent means "the default", which is written once, in the accessor of the
//! same name. That is what lets a flag given with `--config` override the file ([`ScoreSettings::overlay`])
//! and lets the file leave a key out. Code that scores reads the accessors, never the raw fields.
//!
//! Adding a setting: a field here (with its flag, its doc comment naming default and unit, and its
//! accessor), its line in `overlay`, its line in the engine's `settings_hash` when it changes a score
//! (the compiler points at both: they destructure the type), and its check in `config::validate`.

use std::path::PathBuf;

use clap::Args;
use serde::{Deserialize, Serialize};

use super::{Estimator, SmoothingReference};
use crate::runtime::Provider;
use crate::scores::{Aggregation, Method};

/// How each sample is scored: the score keys of `[model]` and their flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Args)]
pub struct ScoreSettings {
    /// Attribution method(s), repeatable: vanilla, actgrad, gradcam [default: vanilla].
    #[arg(long = "method", value_name = "METHOD")]
    #[serde(default)]
    pub methods: Option<Vec<Method>>,
    /// Channel aggregation φ_C of each component's map: mean, abs, var [default: abs].
    #[arg(long, value_name = "AGG")]
    #[serde(default)]
    pub channel_agg: Option<Aggregation>,
    /// Embedding aggregation φ_E over the components' maps: mean, abs, var [default: var].
    #[arg(long, value_name = "AGG")]
    #[serde(default)]
    pub embedding_agg: Option<Aggregation>,
    /// Min–max normalise each component's map before the embedding aggregation of the noise score
    /// [default: off].
    #[arg(long)]
    #[serde(default)]
    pub normalize_dims: bool,
    /// Binarise the normalised maps at this threshold (0 < t < 1) before the variance score
    /// [default: off].
    #[arg(long, value_name = "THRESHOLD")]
    #[serde(default)]
    pub binarize: Option<f32>,
    /// Score a random subset of this many embedding components, drawn once from --estimator-seed
    /// [default: all D]. Formerly `dims`.
    #[arg(long, visible_alias = "dims", value_name = "K")]
    #[serde(default, alias = "dims")]
    pub subset_components: Option<usize>,
    /// Smoothed estimator: points averaged per sample [default: 16 in a configuration file; 1, the
    /// plain gradient, for `agent score` without --config]. Formerly `samples`.
    #[arg(long, visible_alias = "samples", value_name = "S")]
    #[serde(default, alias = "samples")]
    pub smoothing_points: Option<usize>,
    /// Smoothed estimator: standard deviation σ of the noise added to each point, in model-input
    /// units [default: 0.5 with more than one point, else 0].
    #[arg(long, value_name = "SIGMA")]
    #[serde(default)]
    pub smoothing: Option<f32>,
    /// Smoothed estimator: seed of the per-sample draws [default: 0].
    #[arg(long, value_name = "SEED")]
    #[serde(default)]
    pub smoothing_seed: Option<u64>,
    /// Smoothed estimator: reference input x_ref: black (zeros), input, or the path of a `.npy`
    /// sample [default: black].
    #[arg(long, value_name = "REF")]
    #[serde(default)]
    pub smoothing_reference: Option<SmoothingReference>,
    /// The noise score's map E: exact, mean_map (one cotangent row) or hutchinson (--probes rows)
    /// [default: exact].
    #[arg(long, value_name = "ESTIMATOR")]
    #[serde(default)]
    pub estimator: Option<Estimator>,
    /// Seed of the --subset-components draw and of the Hutchinson probes [default: the noise seed].
    #[arg(long, value_name = "SEED")]
    #[serde(default)]
    pub estimator_seed: Option<u64>,
    /// Hutchinson probes (cotangent rows) with --estimator hutchinson [default: 64].
    #[arg(long, value_name = "K")]
    #[serde(default)]
    pub probes: Option<usize>,
    /// Cotangent rows per ONNX Runtime run, overriding the choice from `engine.memory_limit_bytes`
    /// [default: as many as the memory limit allows, all of them when it allows].
    #[arg(long, value_name = "K")]
    #[serde(default)]
    pub rows_per_run: Option<usize>,
}

const DEFAULT_METHODS: &[Method] = &[Method::Vanilla];

impl ScoreSettings {
    pub fn methods(&self) -> &[Method] {
        self.methods.as_deref().unwrap_or(DEFAULT_METHODS)
    }
    pub fn channel_agg(&self) -> Aggregation {
        self.channel_agg.unwrap_or(Aggregation::Abs)
    }
    pub fn embedding_agg(&self) -> Aggregation {
        self.embedding_agg.unwrap_or(Aggregation::Var)
    }
    pub fn smoothing_points(&self) -> usize {
        self.smoothing_points.unwrap_or(16)
    }
    /// σ; when not set, 0.5 with more than one point and 0 with one, so `smoothing_points = 1` alone
    /// is the plain gradient (`S = 1, σ = 0`), not one random point.
    pub fn smoothing(&self) -> f32 {
        self.smoothing.unwrap_or(if self.smoothing_points() > 1 { 0.5 } else { 0.0 })
    }
    pub fn smoothing_seed(&self) -> u64 {
        self.smoothing_seed.unwrap_or(0)
    }
    pub fn smoothing_reference(&self) -> SmoothingReference {
        self.smoothing_reference.clone().unwrap_or_default()
    }
    pub fn estimator(&self) -> Estimator {
        self.estimator.unwrap_or_default()
    }
    pub fn probes(&self) -> usize {
        self.probes.unwrap_or(64)
    }
    /// The explicit override; `None` lets the engine choose from its memory limit.
    pub fn rows_per_run(&self) -> Option<usize> {
        self.rows_per_run
    }

    /// These settings with every field that `over` sets replaced by its value (flags over a file).
    pub fn overlay(self, over: ScoreSettings) -> ScoreSettings {
        let ScoreSettings {
            methods,
            channel_agg,
            embedding_agg,
            normalize_dims,
            binarize,
            subset_components,
            smoothing_points,
            smoothing,
            smoothing_seed,
            smoothing_reference,
            estimator,
            estimator_seed,
            probes,
            rows_per_run,
        } = over;
        ScoreSettings {
            methods: methods.or(self.methods),
            channel_agg: channel_agg.or(self.channel_agg),
            embedding_agg: embedding_agg.or(self.embedding_agg),
            normalize_dims: normalize_dims || self.normalize_dims,
            binarize: binarize.or(self.binarize),
            subset_components: subset_components.or(self.subset_components),
            // A new number of points without a σ takes that number's default σ, not the file's.
            smoothing: match (smoothing_points, smoothing) {
                (_, Some(s)) => Some(s),
                (Some(_), None) => None,
                (None, None) => self.smoothing,
            },
            smoothing_points: smoothing_points.or(self.smoothing_points),
            smoothing_seed: smoothing_seed.or(self.smoothing_seed),
            smoothing_reference: smoothing_reference.or(self.smoothing_reference),
            estimator: estimator.or(self.estimator),
            estimator_seed: estimator_seed.or(self.estimator_seed),
            probes: probes.or(self.probes),
            rows_per_run: rows_per_run.or(self.rows_per_run),
        }
    }
}

/// The noise inputs of the noise score and its benchmark: `[noise]` and its flags.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Args)]
#[serde(deny_unknown_fields)]
pub struct NoiseSettings {
    /// Noise inputs drawn once at start-up, U[0,1] in the raw input domain [default: 4, at least 2].
    #[arg(long = "n-noise", value_name = "N")]
    #[serde(default)]
    pub n_noise: Option<usize>,
    /// Seed of the drawn noise inputs [default: 0].
    #[arg(id = "noise_seed", long = "noise-seed", value_name = "SEED")]
    #[serde(default)]
    pub seed: Option<u64>,
    /// Noise input file(s) (`.npy`, one sample each), repeatable, instead of drawn noise
    /// [default: draw --n-noise inputs].
    #[arg(id = "noise_inputs", long = "noise-input", value_name = "FILE")]
    #[serde(default)]
    pub inputs: Vec<PathBuf>,
}

impl NoiseSettings {
    pub fn n_noise(&self) -> usize {
        self.n_noise.unwrap_or(4)
    }
    pub fn seed(&self) -> u64 {
        self.seed.unwrap_or(0)
    }

    /// These settings with every field that `over` sets replaced by its value (flags over a file).
    pub fn overlay(self, over: NoiseSettings) -> NoiseSettings {
        let NoiseSettings { n_noise, seed, inputs } = over;
        NoiseSettings {
            n_noise: n_noise.or(self.n_noise),
            seed: seed.or(self.seed),
            inputs: if inputs.is_empty() { self.inputs } else { inputs },
        }
    }
}

/// Where the engine runs: the runtime keys of `[engine]` and their flags. They change no score.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize, Args)]
pub struct RuntimeSettings {
    /// Execution providers in order of preference, repeatable: cuda, cpu [default: cuda then cpu in
    /// a configuration file; cpu for `agent score` without --config].
    #[arg(long = "provider", value_name = "PROVIDER")]
    #[serde(default)]
    pub providers: Option<Vec<Provider>>,
    /// ONNX Runtime intra-op threads; 0 = ONNX Runtime's default [default: 0].
    #[arg(long, value_name = "N")]
    #[serde(default)]
    pub threads: Option<usize>,
    /// The libonnxruntime.so to load [default: ORT_DYLIB_PATH, then the project-local install, then
    /// the system].
    #[arg(long = "onnxruntime", value_name = "LIB")]
    #[serde(default)]
    pub onnxruntime_path: Option<PathBuf>,
    /// Memory for the tensors of one ONNX Runtime run, in bytes: the engine sizes its runs (samples
    /// and cotangent rows per run) to fit, from an estimate of the compiled graph's bytes per
    /// (point, row) [default: 134217728, 128 MiB].
    #[arg(long, value_name = "BYTES")]
    #[serde(default)]
    pub memory_limit_bytes: Option<u64>,
    /// Let ONNX Runtime's intra-op worker threads spin while they wait for work inside a run,
    /// instead of sleeping [default: false]. Spinning can shave latency off a run but burns the
    /// waiting cores: next to a production model, the cycles it would otherwise have (measured in
    /// docs/BENCHMARKS.md, "Intra-op spinning").
    #[arg(long, value_name = "BOOL")]
    #[serde(default)]
    pub intra_op_spinning: Option<bool>,
}

const DEFAULT_PROVIDERS: &[Provider] = &[Provider::Cuda, Provider::Cpu];

impl RuntimeSettings {
    pub fn providers(&self) -> &[Provider] {
        self.providers.as_deref().unwrap_or(DEFAULT_PROVIDERS)
    }
    pub fn threads(&self) -> usize {
        self.threads.unwrap_or(0)
    }
    pub fn memory_limit_bytes(&self) -> u64 {
        self.memory_limit_bytes.unwrap_or(128 << 20)
    }
    pub fn intra_op_spinning(&self) -> bool {
        self.intra_op_spinning.unwrap_or(false)
    }

    /// These settings with every field that `over` sets replaced by its value (flags over a file).
    pub fn overlay(self, over: RuntimeSettings) -> RuntimeSettings {
        let RuntimeSettings { providers, threads, onnxruntime_path, memory_limit_bytes, intra_op_spinning } =
            over;
        RuntimeSettings {
            providers: providers.or(self.providers),
            threads: threads.or(self.threads),
            onnxruntime_path: onnxruntime_path.or(self.onnxruntime_path),
            memory_limit_bytes: memory_limit_bytes.or(self.memory_limit_bytes),
            intra_op_spinning: intra_op_spinning.or(self.intra_op_spinning),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn flags_override_the_file_and_absent_keys_take_the_defaults() {
        let file = ScoreSettings {
            channel_agg: Some(Aggregation::Mean),
            smoothing_points: Some(8),
            smoothing: Some(0.3),
            rows_per_run: Some(4),
            ..ScoreSettings::default()
        };
        let flags = ScoreSettings { channel_agg: Some(Aggregation::Var), ..ScoreSettings::default() };
        let merged = file.clone().overlay(flags);
        assert_eq!(merged.channel_agg(), Aggregation::Var);
        assert_eq!((merged.smoothing_points(), merged.smoothing(), merged.rows_per_run()), (8, 0.3, Some(4)));
        // A new number of points without σ takes that number's default σ.
        let one = file.overlay(ScoreSettings { smoothing_points: Some(1), ..ScoreSettings::default() });
        assert_eq!((one.smoothing_points(), one.smoothing()), (1, 0.0));
        let none = ScoreSettings::default();
        assert_eq!(
            (none.smoothing_points(), none.smoothing(), none.methods()),
            (16, 0.5, &[Method::Vanilla][..])
        );
        assert_eq!(
            (none.estimator(), none.probes(), none.embedding_agg()),
            (Estimator::Exact, 64, Aggregation::Var)
        );

        let noise =
            NoiseSettings { n_noise: Some(3), inputs: vec!["a.npy".into()], ..NoiseSettings::default() }
                .overlay(NoiseSettings { seed: Some(7), ..NoiseSettings::default() });
        assert_eq!((noise.n_noise(), noise.seed(), noise.inputs.len()), (3, 7, 1));
        let rt =
            RuntimeSettings::default().overlay(RuntimeSettings { threads: Some(2), ..Default::default() });
        assert_eq!((rt.providers(), rt.threads()), (&[Provider::Cuda, Provider::Cpu][..], 2));
        assert_eq!(rt.memory_limit_bytes(), 128 << 20);
        assert_eq!(none.rows_per_run(), None);
    }
}
