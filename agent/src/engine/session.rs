//! [`Engine`]: compile the attribution graph, hold its ONNX Runtime session, and score batches.
//!
//! Per batch: each sample becomes `S` smoothing points (`S = 1`: the sample itself), and the graph runs
//! on groups of samples with chunks of cotangent rows (one-hot rows of the scored components); every
//! run's `[b, k, H, W]` maps stream into one [`ScoreAccumulator`] per sample and (layer, method).
//! The noise side is computed the same way once, at start-up.
//!
//! How many samples and rows share a run comes from the memory limit ([`RunPlan`]): all rows of as
//! many samples as fit, so that each sample's forward pass runs once; only when one sample's rows do
//! not fit are the rows chunked (and the forward pass repeated per chunk).

use std::path::Path;

use anyhow::{Context, Result, bail};
use ndarray::{Array2, ArrayD, ArrayViewD, Axis, CowArray, IxDyn};
use ort::session::Session;
use ort::value::{Tensor, TensorRef};

use super::Estimator;
use super::tokens::{self, NoiseCache, TextModel};
use super::{EngineSpec, LayerScores, SampleScores, ScoreKey};
use crate::compiler::{self, AttributionGraph, CompileOptions, LayerLayout, LayerView, MapOutput};
use crate::runtime::{self, Provider, SessionOptions};
use crate::scores::{self, Aggregation, HutchinsonAccumulator, Method, NoiseReference, ScoreAccumulator};

pub struct Engine {
    pub(super) spec: EngineSpec,
    pub(super) graph: AttributionGraph,
    pub(super) session: Session,
    provider: Provider,
    input_name: String,
    pub(super) input_shape: Vec<usize>,
    /// Indices of the embedding components scored (all `D`, or a seeded subset).
    components: Vec<usize>,
    /// Every cotangent row of a sample, built once: the one-hot rows of `components`, then the
    /// estimator's extra rows (`1/D` row, or Hutchinson probes; none for `exact`). Each run feeds a
    /// view of a range of them.
    all_rows: Array2<f32>,
    /// Estimated bytes of one run per (smoothing point × cotangent row) ([`bytes_per_point_row`]).
    pub(super) unit_bytes: u64,
    /// `x_ref` of the smoothed estimator when it is a file.
    smoothing_reference: Option<ArrayD<f32>>,
    pub(super) keys: Vec<ScoreKey>,
    noise: Vec<NoiseReference>,
    /// A text model's inputs and settings (`None`: one float input); its noise references per
    /// sample length ([`super::tokens`]).
    pub(super) text: Option<TextModel>,
    pub(super) text_noise: NoiseCache,
    /// A text model's graphs compiled at its shorter `length_buckets`, on first use.
    pub(super) buckets: std::collections::HashMap<usize, tokens::Bucket>,
    model_sha256: String,
    settings_hash: String,
    /// Runs go through an `IoBinding` ([`Engine::set_io_binding`]); on by default for CUDA sessions.
    io_binding: bool,
}

impl Engine {
    pub fn new(spec: &EngineSpec) -> Result<Engine> {
        let (env, rt) = runtime::environment(spec.runtime.onnxruntime_path.as_deref())?;
        tracing::debug!(runtime = %rt.path.display(), "ONNX Runtime loaded");
        let bytes = std::fs::read(&spec.model_path)
            .with_context(|| format!("reading model {}", spec.model_path.display()))?;
        let model_sha256 = compiler::sha256_hex(&bytes);
        let model = crate::onnx::decode(&bytes)
            .with_context(|| format!("{} is not a valid ONNX model", spec.model_path.display()))?;
        // Which inputs are fed how; a text model is compiled at its fixed length, and smoothing
        // (which would perturb ids) is refused for it.
        let text = TextModel::decide(&model, &spec.text)?;
        let spec = &tokens::effective_spec(spec, text.as_ref())?;
        let model = match &text {
            Some(t) => t.fixed_model(&model)?,
            None => model,
        };
        if spec.score.smoothing_points() == 0 || spec.score.rows_per_run() == Some(0) {
            bail!("smoothing_points and rows_per_run must be at least 1");
        }
        if spec.runtime.memory_limit_bytes() == 0 {
            bail!("memory_limit_bytes must be at least 1");
        }
        let opts = CompileOptions {
            embedding: spec.embedding.clone(),
            layers: spec.layers.iter().map(|l| l.tensor.clone()).collect(),
            methods: spec.score.methods().to_vec(),
            channel_agg: Some(spec.score.channel_agg()),
            smoothing_samples: spec.score.smoothing_points(),
            layouts: spec.layers.iter().map(|l| l.layout_request()).collect(),
        };
        let graph = compiler::compile(&model, &model_sha256, &opts).with_context(|| {
            let at =
                text.as_ref().map(|t| format!(" at max_length = {} tokens", t.length)).unwrap_or_default();
            format!("compiling the attribution graph of {}{at}", spec.model_path.display())
        })?;
        let (input_name, input_shape) = match &text {
            // The packed token batch `[B, ROWS, T]` (tokens.rs).
            Some(t) => (String::new(), vec![tokens::ROWS, t.length]),
            None => {
                if graph.inputs.len() != 1
                    || graph.inputs[0].elem_type != crate::onnx::proto::data_type::FLOAT
                {
                    bail!(
                        "the engine scores models with exactly one float32 input; this one has {}",
                        graph.inputs.len()
                    );
                }
                (graph.inputs[0].name.clone(), graph.inputs[0].rest.iter().map(|&d| d as usize).collect())
            }
        };
        let d = graph.embedding_dim;
        let components = match spec.score.subset_components {
            Some(k) if k < d => scores::choose_dims(d, k, spec.estimator_seed()),
            Some(0) => bail!("subset_components must be at least 1"),
            _ => (0..d).collect(),
        };
        let extra_rows = estimator_rows(spec, d)?;
        let mut all_rows = Array2::<f32>::zeros((components.len() + extra_rows.nrows(), d));
        for (r, &c) in components.iter().enumerate() {
            all_rows[[r, c]] = 1.0;
        }
        all_rows.slice_axis_mut(Axis(0), (components.len()..).into()).assign(&extra_rows);
        let unit_bytes = bytes_per_point_row(&graph.outputs);
        let (session, provider) = runtime::session(env, &graph.to_bytes(), &session_options(spec))?;
        let requested = spec.runtime.providers().first().copied().unwrap_or(Provider::Cpu);
        if provider != requested {
            tracing::warn!(
                requested = requested.as_str(),
                running = provider.as_str(),
                "execution provider fell back"
            );
        }
        tracing::info!(provider = provider.as_str(), model = %spec.model_path.display(), d, scored_components = components.len(), "engine ready");
        let settings_hash = with_views(settings_hash(spec, &model_sha256)?, &graph.views);
        let settings_hash = match &text {
            Some(t) => tokens::with_text(settings_hash, t),
            None => settings_hash,
        };
        let input_dims: Vec<usize> = graph.inputs[0].rest.iter().map(|&d| d as usize).collect();
        let smoothing_reference = match &spec.score.smoothing_reference() {
            super::SmoothingReference::File(p) if text.is_none() => {
                Some(load_noise(p, &input_dims).context("smoothing reference")?)
            }
            _ => None,
        };
        let mut engine = Engine {
            spec: spec.clone(),
            graph,
            session,
            provider,
            input_name,
            input_shape,
            components,
            all_rows,
            unit_bytes,
            smoothing_reference,
            keys: Vec::new(),
            noise: Vec::new(),
            text,
            text_noise: NoiseCache::default(),
            buckets: Default::default(),
            model_sha256,
            settings_hash,
            io_binding: provider == Provider::Cuda,
        };
        if engine.text.is_some() {
            engine.prepare_text_noise()?;
        } else {
            engine.prepare_noise()?;
        }
        Ok(engine)
    }

    pub fn keys(&self) -> &[ScoreKey] {
        &self.keys
    }
    pub fn input_shape(&self) -> &[usize] {
        &self.input_shape
    }
    pub fn provider(&self) -> Provider {
        self.provider
    }
    pub fn requested_provider(&self) -> Provider {
        self.spec.runtime.providers().first().copied().unwrap_or(Provider::Cpu)
    }
    pub fn model_sha256(&self) -> &str {
        &self.model_sha256
    }
    /// Per layer (spec order), how the compiler read its axes and why.
    pub fn views(&self) -> &[LayerView] {
        &self.graph.views
    }
    pub fn settings_hash(&self) -> &str {
        &self.settings_hash
    }
    pub fn spec(&self) -> &EngineSpec {
        &self.spec
    }
    pub fn embedding_dim(&self) -> usize {
        self.graph.embedding_dim
    }
    pub fn graph(&self) -> &AttributionGraph {
        &self.graph
    }

    /// Whether runs bind their inputs through an ONNX Runtime `IoBinding`, which keeps a group's
    /// points on the device while its cotangent chunks run. On by default for CUDA sessions, where
    /// it saves a host-to-device copy of the points per chunk; on the CPU it saves nothing (the
    /// runtime reads host memory either way), so it is off there, and tests turn it on to check that
    /// both paths give the same scores.
    pub fn set_io_binding(&mut self, on: bool) {
        self.io_binding = on;
    }

    /// Noise inputs: the given files, or `n_noise` draws of `U[0,1]` in the raw input domain passed
    /// through the configured normalisation. Their maps are computed once and reused for every sample.
    fn prepare_noise(&mut self) -> Result<()> {
        let inputs: Vec<ArrayD<f32>> = if self.spec.noise.inputs.is_empty() {
            scores::noise_inputs(&self.input_shape, self.spec.noise.n_noise(), self.spec.noise.seed())
                .into_iter()
                .map(|x| normalize(x, &self.spec.normalization))
                .collect()
        } else {
            self.spec.noise.inputs.iter().map(|p| load_noise(p, &self.input_shape)).collect::<Result<_>>()?
        };
        if inputs.len() < 2 {
            bail!(
                "at least 2 noise inputs are needed (the noise benchmark compares pairs); got {}",
                inputs.len()
            );
        }
        let views: Vec<_> = inputs.iter().map(|x| x.view()).collect();
        let batch = ndarray::stack(Axis(0), &views)?;
        let maps = self.maps(batch.view()).context("computing the noise inputs' attribution maps")?;
        // maps[sample][output] → per output, the noise E maps.
        let outputs = self.graph.outputs.clone();
        self.noise.clear();
        self.keys.clear();
        for (oi, out) in outputs.iter().enumerate() {
            let e: Vec<Array2<f32>> = maps.iter().map(|m| m[oi].embedding.clone()).collect();
            let reference =
                NoiseReference::new(&e).with_context(|| format!("noise maps of {}", out.layer))?;
            let noise_benchmark = reference.benchmark().context("noise benchmark")?;
            self.keys.push(ScoreKey {
                layer: self.spec.layers[out.layer_index].name.clone(),
                method: out.method,
                noise_benchmark,
            });
            self.noise.push(reference);
        }
        Ok(())
    }

    /// Scores a batch `[B, …input_shape]`; one result per sample, aligned with [`Engine::keys`].
    pub fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>> {
        self.float_input_only("score_batch")?;
        let maps = self.maps(batch)?;
        maps.into_iter().map(|per_output| sample_scores(&per_output, &self.noise)).collect()
    }

    /// Scores every sample of `batch`, `chunk` at a time (see [`super::score_in_chunks`]).
    pub fn score_all(&mut self, batch: ArrayViewD<f32>, chunk: usize) -> Result<Vec<SampleScores>> {
        let mut out = Vec::with_capacity(batch.len_of(Axis(0)));
        super::score_in_chunks(batch, chunk, &mut |b| self.score_batch(b), &mut |_, s| {
            out.extend(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// Runs the graph once on a batch with arbitrary cotangent rows `[K, D]` (random probes, a
    /// `1/D` row for the mean map, …) and returns each output's `[B, K, H, W]` maps; smoothing
    /// points are formed as for scoring. For estimators and experiments.
    pub fn run_rows(
        &mut self,
        batch: ArrayViewD<f32>,
        rows: ndarray::ArrayView2<f32>,
    ) -> Result<Vec<ndarray::Array4<f32>>> {
        if rows.ncols() != self.graph.embedding_dim {
            bail!("cotangent rows have {} columns; D = {}", rows.ncols(), self.graph.embedding_dim);
        }
        self.float_input_only("run_rows")?;
        let points = self.points(batch)?;
        let mut feeds = self.model_feeds(points.view())?;
        feeds.push((compiler::COTANGENT.into(), TensorRef::from_array_view(rows)?.into()));
        let out = self.session.run(feeds).context("ONNX Runtime failed")?;
        self.graph
            .outputs
            .iter()
            .map(|o| {
                let m = out[o.name.as_str()].try_extract_array::<f32>()?;
                Ok(m.into_dimensionality::<ndarray::Ix4>()?.to_owned())
            })
            .collect()
    }

    /// Per sample, per output (aligned with [`Engine::keys`]): the embedding-aggregated map `E`.
    pub fn embedding_maps(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<Vec<Array2<f32>>>> {
        self.float_input_only("embedding_maps")?;
        Ok(self.maps(batch)?.into_iter().map(|per| per.into_iter().map(|m| m.embedding).collect()).collect())
    }

    /// How the next batch of `samples` samples is split into runs (see [`RunPlan`]).
    pub fn plan(&self, samples: usize) -> RunPlan {
        RunPlan::new(
            samples,
            self.spec.score.smoothing_points(),
            self.all_rows.nrows(),
            self.unit_bytes,
            self.spec.runtime.memory_limit_bytes(),
            self.spec.score.rows_per_run(),
        )
    }

    /// Per sample, per output: the embedding-aggregated map and the variance score, computed group
    /// by group of [`RunPlan::samples_per_run`] samples.
    pub(super) fn maps(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<Vec<scores::SampleMaps>>> {
        if batch.ndim() != self.input_shape.len() + 1 || batch.shape()[1..] != self.input_shape[..] {
            bail!("batch has shape {:?}; the model takes [B, {:?}]", batch.shape(), self.input_shape);
        }
        let b = batch.shape()[0];
        let plan = self.plan(b);
        let mut result = Vec::with_capacity(b);
        let mut start = 0;
        while start < b {
            let end = (start + plan.samples_per_run).min(b);
            let group = batch.slice_axis(Axis(0), (start..end).into());
            result.extend(self.group_maps(group, plan.rows_per_run)?);
            start = end;
        }
        Ok(result)
    }

    /// [`Engine::maps`] for one group of samples, `rows_per_run` cotangent rows per run: first the
    /// one-hot rows of the scored components (they feed the variance score, and `E` with the exact
    /// estimator), then the estimator's extra rows (one `1/D` row for `mean_map`, the probes for
    /// `hutchinson`), whose maps give `E` instead.
    fn group_maps(
        &mut self,
        batch: ArrayViewD<f32>,
        rows_per_run: usize,
    ) -> Result<Vec<Vec<scores::SampleMaps>>> {
        let b = batch.shape()[0];
        let outputs: Vec<MapOutput> = self.graph.outputs.clone();
        // Per sample and output, the map rows that are the sample's (text: its own tokens).
        let visible = self.visible_heights(batch.view(), &outputs)?;
        let points = self.points(batch)?;
        let d = self.graph.embedding_dim;
        let mut acc: Vec<Vec<ScoreAccumulator>> = (0..b)
            .map(|s| {
                outputs
                    .iter()
                    .enumerate()
                    .map(|(oi, o)| {
                        let a = ScoreAccumulator::new(
                            visible[s][oi],
                            o.width,
                            self.spec.score.embedding_agg(),
                            self.spec.score.normalize_dims,
                            self.spec.score.binarize,
                        );
                        if self.components.len() < d { a.subset_of(d) } else { a }
                    })
                    .collect()
            })
            .collect();
        let estimator = self.spec.score.estimator();
        let mut hutch: Vec<Vec<HutchinsonAccumulator>> = if estimator == Estimator::Hutchinson {
            (0..b)
                .map(|s| {
                    outputs
                        .iter()
                        .enumerate()
                        .map(|(oi, o)| HutchinsonAccumulator::new(visible[s][oi], o.width, d))
                        .collect()
                })
                .collect()
        } else {
            Vec::new()
        };
        let mut mean_map: Vec<Vec<Option<Array2<f32>>>> = vec![vec![None; outputs.len()]; b];
        let n_components = self.components.len();
        let total = self.all_rows.nrows();
        // With IoBinding the points are handed to ONNX Runtime once per group (on CUDA: copied to
        // the device once) and stay bound while the row chunks run; only the chunk is bound anew.
        // Bound values are owned tensors: `ort` (rc.15) clones a borrowed one through an internal
        // IoBinding of its own, which deadlocks on its lock (seen on the CPU).
        // A text model's several integer inputs go through `model_feeds`; the binding holds one.
        let mut binding = if self.io_binding && self.text.is_none() {
            let mut bd = self.session.create_binding()?;
            bd.bind_input(self.input_name.as_str(), &Tensor::from_array(points.to_owned())?)?;
            Some(bd)
        } else {
            None
        };
        let mut start = 0;
        while start < total {
            let end = (start + rows_per_run.max(1)).min(total);
            // A row range of a row-major matrix is contiguous: fed as a view, no copy.
            let v = self.all_rows.slice_axis(Axis(0), (start..end).into());
            let out = match binding.as_mut() {
                Some(bd) => {
                    bd.bind_input(compiler::COTANGENT, &Tensor::from_array(v.to_owned())?)?;
                    // Outputs bound to host memory anew each run: a bound output keeps its buffer,
                    // whose shape the last, shorter chunk would not match.
                    let host = ort::memory::MemoryInfo::default();
                    for o in &outputs {
                        bd.bind_output_to_device(o.name.as_str(), &host)?;
                    }
                    self.session.run_binding(bd).context("ONNX Runtime failed")?
                }
                None => {
                    let mut feeds = self.model_feeds(points.view())?;
                    feeds.push((compiler::COTANGENT.into(), TensorRef::from_array_view(v)?.into()));
                    self.session.run(feeds).context("ONNX Runtime failed")?
                }
            };
            // Rows [0, split) of this chunk are component rows, the rest estimator rows.
            let split = n_components.clamp(start, end) - start;
            for (oi, o) in outputs.iter().enumerate() {
                let m = out[o.name.as_str()].try_extract_array::<f32>()?;
                let m = m.into_dimensionality::<ndarray::Ix4>()?;
                for s in 0..b {
                    let rows = m.index_axis(Axis(0), s);
                    let rows = rows.slice_axis(Axis(1), (..visible[s][oi]).into());
                    if split > 0 {
                        let part = rows.slice_axis(Axis(0), (..split).into());
                        acc[s][oi].push(part)?;
                    }
                    if split < end - start {
                        let part = rows.slice_axis(Axis(0), (split..).into());
                        match estimator {
                            Estimator::MeanMap => {
                                mean_map[s][oi] = Some(part.index_axis(Axis(0), 0).to_owned())
                            }
                            Estimator::Hutchinson => hutch[s][oi].push(part)?,
                            Estimator::Exact => {}
                        }
                    }
                }
            }
            start = end;
        }
        let mut result = Vec::with_capacity(b);
        for s in 0..b {
            let mut per = Vec::with_capacity(outputs.len());
            for oi in 0..outputs.len() {
                let mut m = acc[s][oi].finish()?;
                match estimator {
                    Estimator::Exact => {}
                    Estimator::MeanMap => {
                        m.embedding = mean_map[s][oi].take().context("internal: no mean map")?
                    }
                    Estimator::Hutchinson => m.embedding = hutch[s][oi].finish()?,
                }
                per.push(m);
            }
            result.push(per);
        }
        Ok(result)
    }

    /// The model's inputs for one run (without the cotangent): the float batch itself, or a text
    /// model's int64 inputs from the packed token batch.
    fn model_feeds<'v>(
        &self,
        points: ArrayViewD<'v, f32>,
    ) -> Result<Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'v>)>> {
        match &self.text {
            Some(t) => t.feeds(points),
            None => Ok(vec![(self.input_name.clone().into(), TensorRef::from_array_view(points)?.into())]),
        }
    }

    /// Per sample and output, how many rows of the `[K, H, W]` map belong to the sample: all `H`,
    /// except a text model's token layers, whose rows past the sample's length are padding
    /// (docs/spec/scores.md#text-models).
    fn visible_heights(&self, batch: ArrayViewD<f32>, outputs: &[MapOutput]) -> Result<Vec<Vec<usize>>> {
        let Some(_) = &self.text else {
            return Ok(vec![outputs.iter().map(|o| o.height).collect(); batch.shape()[0]]);
        };
        tokens::lengths(batch)
            .into_iter()
            .enumerate()
            .map(|(s, len)| {
                outputs
                    .iter()
                    .map(|o| {
                        if o.layout != LayerLayout::Tokens {
                            return Ok(o.height);
                        }
                        if len <= o.prefix_tokens {
                            bail!(
                                "token sample {s} has {len} tokens; layer {} leaves its first {} out of the map",
                                o.layer,
                                o.prefix_tokens
                            );
                        }
                        Ok((len - o.prefix_tokens).min(o.height))
                    })
                    .collect()
            })
            .collect()
    }

    /// Refuses the float-batch entry points on a text model (its samples are token ids).
    fn float_input_only(&self, what: &str) -> Result<()> {
        if self.text.is_some() {
            bail!("{what}: this is a text model; its samples are token ids (Engine::score_tokens)");
        }
        Ok(())
    }

    /// The model's batch: each sample's `S` smoothing points, consecutive (`S = 1`: the batch itself,
    /// borrowed when it is contiguous).
    fn points<'b>(&self, batch: ArrayViewD<'b, f32>) -> Result<CowArray<'b, f32, IxDyn>> {
        let s = self.spec.score.smoothing_points();
        let sigma = self.spec.score.smoothing();
        if s == 1 && sigma == 0.0 {
            return Ok(if batch.is_standard_layout() {
                CowArray::from(batch)
            } else {
                CowArray::from(batch.as_standard_layout().into_owned())
            });
        }
        if s == 0 {
            bail!("smoothing_points must be at least 1");
        }
        let n = batch.shape()[0];
        let mut shape = batch.shape().to_vec();
        shape[0] = n * s;
        // Every sample's points written straight into the model's batch (no per-sample arrays to
        // concatenate).
        let mut out = ArrayD::<f32>::zeros(IxDyn(&shape));
        let batch = batch.as_standard_layout();
        let per = batch.len() / n.max(1);
        if per == 0 {
            return Ok(CowArray::from(out));
        }
        let file_reference = match self.spec.score.smoothing_reference() {
            super::SmoothingReference::File(_) => Some(
                self.smoothing_reference
                    .as_ref()
                    .context("internal: smoothing reference not loaded")?
                    .as_standard_layout(),
            ),
            _ => None,
        };
        let xs = batch.as_slice().expect("standard layout");
        let dst = out.as_slice_mut().expect("fresh array");
        for (x, points) in xs.chunks_exact(per).zip(dst.chunks_exact_mut(per * s)) {
            // Draws seeded from `smoothing_seed` and the sample's content: a sample's score is
            // reproducible and does not depend on its position in a batch or a stream, and different
            // samples get independent draws. One shared draw set for every sample would shift a whole
            // window by whatever that set happens to do (measured: the drift Spearman then ranged
            // from +0.08 to −0.16 with the seed; docs/REPRODUCTION.md).
            let reference = match self.spec.score.smoothing_reference() {
                super::SmoothingReference::Black => None,
                super::SmoothingReference::Input => Some(x),
                super::SmoothingReference::File(_) => file_reference.as_ref().and_then(|r| r.as_slice()),
            };
            let seed = sample_seed(self.spec.score.smoothing_seed(), x);
            scores::draws::smoothing_points_into(x, sigma, reference, seed, points)?;
        }
        Ok(CowArray::from(out))
    }
}

/// How a batch is split into ONNX Runtime runs: `samples_per_run` samples (each `S` points) with
/// `rows_per_run` cotangent rows each. A run's tensors grow with points × rows, so the plan keeps
/// `samples_per_run × S × rows_per_run × unit_bytes` within the memory limit. It prefers all rows in
/// one run (each sample's forward pass then runs once) and fewer samples per run; only when one
/// sample's rows do not fit does it chunk the rows. How runs are split changes no score.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RunPlan {
    pub samples_per_run: usize,
    pub rows_per_run: usize,
}

impl RunPlan {
    /// `rows_override`: the explicit `rows_per_run`, which then only the samples per run adapt to.
    pub fn new(
        samples: usize,
        points: usize,
        rows: usize,
        unit_bytes: u64,
        limit: u64,
        rows_override: Option<usize>,
    ) -> RunPlan {
        let samples = samples.max(1);
        let per_sample_row = (points.max(1) as u64).saturating_mul(unit_bytes.max(1));
        let rows_fit = (limit / per_sample_row).max(1) as usize;
        let rows_per_run = rows_override.unwrap_or(rows_fit).clamp(1, rows.max(1));
        let per_sample = per_sample_row.saturating_mul(rows_per_run as u64);
        let samples_per_run = ((limit / per_sample).max(1) as usize).min(samples);
        RunPlan { samples_per_run, rows_per_run }
    }
}

/// Estimated bytes of a run per (smoothing point × cotangent row): every distinct layer's
/// activation (`C × H × W` floats) times a safety factor for the backward tensors between the layer
/// and the embedding, which have the layer's order of size (ONNX Runtime's planner reuses their
/// buffers, but masks, transposed copies and the maps live alongside). The factor comes from a
/// measurement: the daemon with the fixed chunking it had before (16 samples × 16 points × 32 rows
/// per run, layers of 8·14·14 and 16·7·7 elements) peaked at 700 MiB against 82 MiB without
/// smoothing, 79 KB per (point, row), 8.4 × the layers' 9408 bytes (docs/BENCHMARKS.md, "Memory").
pub(super) fn bytes_per_point_row(outputs: &[MapOutput]) -> u64 {
    const SAFETY: u64 = 10;
    let mut seen = std::collections::BTreeSet::new();
    let elements: u64 = outputs
        .iter()
        .filter(|o| seen.insert(o.layer_index))
        .map(|o| (o.channels * o.height * o.width) as u64)
        .sum();
    4 * elements.max(1) * SAFETY
}

/// The ONNX Runtime session options of a specification (every graph of an engine runs under them).
pub(super) fn session_options(spec: &EngineSpec) -> SessionOptions {
    SessionOptions {
        providers: spec.runtime.providers().to_vec(),
        threads: spec.runtime.threads(),
        device_id: 0,
        spinning: spec.runtime.intra_op_spinning(),
    }
}

/// `seed` mixed with a hash of the sample's values (SHA-256 of its little-endian f32 bytes).
fn sample_seed(seed: u64, x: &[f32]) -> u64 {
    use sha2::{Digest, Sha256};
    let mut h = Sha256::new();
    h.update(seed.to_le_bytes());
    // The values' little-endian bytes in order, hashed a block at a time (the same digest as one
    // value at a time).
    let mut buf = Vec::with_capacity(4096);
    for block in x.chunks(1024) {
        buf.clear();
        buf.extend(block.iter().flat_map(|v| v.to_le_bytes()));
        h.update(&buf);
    }
    u64::from_le_bytes(h.finalize()[..8].try_into().expect("8 bytes"))
}

/// The estimator's extra cotangent rows, after checking that it applies to these settings: `mean_map`
/// and `hutchinson` need maps linear in the cotangent (`mean` channel aggregation of `vanilla` or
/// `actgrad`) and un-normalised components, aggregated by `mean` and `var` respectively.
fn estimator_rows(spec: &EngineSpec, d: usize) -> Result<Array2<f32>> {
    let sc = &spec.score;
    let (name, agg) = match sc.estimator() {
        Estimator::Exact => return Ok(Array2::zeros((0, d))),
        Estimator::MeanMap => ("mean_map", Aggregation::Mean),
        Estimator::Hutchinson => ("hutchinson", Aggregation::Var),
    };
    let mut problems = Vec::new();
    if sc.embedding_agg() != agg {
        problems.push(format!("embedding_agg = \"{}\"", agg.as_str()));
    }
    if sc.channel_agg() != Aggregation::Mean {
        problems.push("channel_agg = \"mean\"".to_string());
    }
    if sc.normalize_dims {
        problems.push("normalize_dims = false".to_string());
    }
    if sc.methods().iter().any(|m| !matches!(m, Method::Vanilla | Method::ActGrad)) {
        problems.push("methods among vanilla and actgrad".to_string());
    }
    if !problems.is_empty() {
        bail!("estimator \"{name}\" needs {}", problems.join(", "));
    }
    Ok(match sc.estimator() {
        Estimator::MeanMap => Array2::from_elem((1, d), 1.0 / d as f32),
        _ => {
            if sc.probes() < 2 {
                bail!("estimator \"hutchinson\" needs probes ≥ 2");
            }
            scores::hutchinson_probes(d, sc.probes(), spec.estimator_seed())
        }
    })
}

/// Mean/std normalisation of one sample (no batch axis) along the channel axis of the configured
/// layout; empty = identity. The decoders use the same function for images and `uint8` data.
pub fn normalize(mut x: ArrayD<f32>, n: &super::Normalization) -> ArrayD<f32> {
    plugins::decode::normalize(&mut x, false, n);
    x
}

/// One sample from a `.npy` file (noise inputs, the smoothing reference).
fn load_noise(path: &Path, shape: &[usize]) -> Result<ArrayD<f32>> {
    let opts = plugins::decode::DecodeOptions { input_shape: shape.to_vec(), ..Default::default() };
    let a = plugins::decode::decode_file(path, &opts).context("noise input")?;
    if a.shape()[0] != 1 {
        bail!("noise input {} holds {} samples; give one sample per file", path.display(), a.shape()[0]);
    }
    Ok(a.index_axis(Axis(0), 0).to_owned().into_dimensionality::<IxDyn>()?)
}

/// Hash of the model and of every setting that changes a score (docs/spec/scores.md#drift): a
/// baseline made under a different hash is refused. Every settings type is destructured here, so a new
/// field does not compile until it is either hashed or listed as not changing a score.
fn settings_hash(spec: &EngineSpec, model_sha256: &str) -> Result<String> {
    let EngineSpec {
        model_path: _, // the model's content is hashed instead (`model_sha256`)
        model_name: _, // a metric label
        embedding,
        layers,
        score,
        noise,
        normalization,
        runtime: _, // where the graph runs changes no score
        text: _,    // a text model's settings: `tokens::with_text`, once decided
    } = spec;
    let super::ScoreSettings {
        normalize_dims,
        binarize,
        subset_components,
        estimator_seed,
        // Hashed below through their accessors, which apply the defaults.
        methods: _,
        channel_agg: _,
        embedding_agg: _,
        smoothing_points: _,
        smoothing: _,
        smoothing_seed: _,
        smoothing_reference: _,
        estimator: _,
        probes: _,
        // How many cotangent rows share a run changes no score.
        rows_per_run: _,
    } = score;
    // `n_noise` and `seed` through their accessors below.
    let super::NoiseSettings { n_noise: _, seed: _, inputs } = noise;
    let mut noise_files = Vec::new();
    for p in inputs {
        noise_files.push(compiler::sha256_hex(
            &std::fs::read(p).with_context(|| format!("reading {}", p.display()))?,
        ));
    }
    let reference_file = match score.smoothing_reference() {
        super::SmoothingReference::File(p) => {
            compiler::sha256_hex(&std::fs::read(&p).with_context(|| format!("reading {}", p.display()))?)
        }
        other => String::from(other),
    };
    // The defaulted fields enter through their accessors, so leaving a key out and writing its
    // default give the same hash. The JSON keys keep their first names ("samples", "dims") so that
    // renaming a setting does not invalidate existing baselines.
    let mut v = serde_json::json!({
        "model": model_sha256,
        "embedding": embedding,
        "layers": layers,
        "methods": score.methods(),
        "channel_agg": score.channel_agg(),
        "embedding_agg": score.embedding_agg(),
        "normalize_dims": normalize_dims,
        "binarize": binarize,
        "n_noise": if inputs.is_empty() { noise.n_noise() } else { 0 },
        "noise_seed": noise.seed(),
        "noise_files": noise_files,
        "normalization": normalization,
        "samples": score.smoothing_points(),
        "smoothing": score.smoothing(),
        "smoothing_seed": score.smoothing_seed(),
        "smoothing_draws": "per-sample",
        "smoothing_reference": reference_file,
        "dims": subset_components,
        "estimator": score.estimator(),
        "probes": if score.estimator() == Estimator::Hutchinson { score.probes() } else { 0 },
        "compiler": compiler::COMPILER_VERSION,
    });
    // Set explicitly, the estimator seed joins the hash; absent, it is the noise seed, already
    // hashed, so baselines made before it had its own key stay valid.
    if let Some(seed) = estimator_seed {
        v["estimator_seed"] = serde_json::json!(seed);
    }
    Ok(compiler::sha256_hex(v.to_string().as_bytes()))
}

/// The settings hash, extended by the layers' views when any is not channels first: a layout
/// (configured or auto-detected) changes every map of its layer, so a baseline made under another
/// reading must not match — while channels-first graphs keep the hash they had before layouts.
fn with_views(hash: String, views: &[LayerView]) -> String {
    if views.iter().all(|v| v.layout == LayerLayout::Nchw) {
        return hash;
    }
    let v: Vec<_> = views.iter().map(|v| (v.layout, v.grid, v.prefix_tokens)).collect();
    compiler::sha256_hex(serde_json::json!({ "settings": hash, "views": v }).to_string().as_bytes())
}

/// One sample's scores from its maps per (layer, method) and the noise references they are compared
/// with (the same order); shared by dense and token samples.
pub(super) fn sample_scores(
    per_output: &[scores::SampleMaps],
    noise: &[NoiseReference],
) -> Result<SampleScores> {
    let scores = per_output
        .iter()
        .zip(noise)
        .map(|(m, noise)| {
            let noise_score = noise.score(m.embedding.view())?;
            Ok(LayerScores { noise_score, variance_score: m.variance_score })
        })
        .collect::<Result<Vec<_>>>()?;
    Ok(SampleScores { scores })
}

#[cfg(test)]
mod tests {
    use super::RunPlan;

    #[test]
    fn runs_take_all_rows_of_as_many_samples_as_the_limit_allows() {
        // 16 samples × 16 points × 32 rows × 1 KB = 8 MiB.
        let plan = |limit: u64, over| RunPlan::new(16, 16, 32, 1024, limit, over);
        assert_eq!(plan(8 << 20, None), RunPlan { samples_per_run: 16, rows_per_run: 32 });
        assert_eq!(plan(1 << 30, None), RunPlan { samples_per_run: 16, rows_per_run: 32 });
        // Room for 2.5 samples' rows: 2 samples per run, every row, so one forward pass each.
        assert_eq!(plan(1280 << 10, None), RunPlan { samples_per_run: 2, rows_per_run: 32 });
        // Not even one sample's rows: one sample per run, its rows chunked.
        assert_eq!(plan(100 << 10, None), RunPlan { samples_per_run: 1, rows_per_run: 6 });
        // The smallest run whatever the limit: one sample, one row.
        assert_eq!(plan(1, None), RunPlan { samples_per_run: 1, rows_per_run: 1 });
        // An explicit rows_per_run is kept; the samples per run still follow the limit.
        assert_eq!(plan(1 << 20, Some(8)), RunPlan { samples_per_run: 8, rows_per_run: 8 });
        assert_eq!(plan(1 << 30, Some(100)), RunPlan { samples_per_run: 16, rows_per_run: 32 });
    }
}
