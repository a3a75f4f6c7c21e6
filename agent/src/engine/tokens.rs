//! Text models: token samples in, maps over the token axis out (docs/spec/scores.md#text-models).
//!
//! A text encoder's inputs are integers (ids, attention mask, token types), fed and never
//! differentiated. The graph is compiled at fixed lengths (the compiler needs fixed sizes):
//! `T = max_length`, and the shorter `length_buckets` on first use; a batch is padded to the
//! shortest `T` that holds its longest sample, with the pad id and a zero mask. Each sample's maps are its
//! own first `len` positions: the padded ones are sliced off before any score sees a map, so neither
//! the noise score nor the variance score of a sample depends on what it was batched with.
//!
//! Inside the engine a token batch travels as one float array `[B, 3, T]` (rows: ids, the 0/1 mask
//! of real tokens, token types) through the same group/run loop as images; [`feeds`] turns it back
//! into the model's int64 inputs per run. Ids are exact in float32 up to 2^24, which the vocabulary
//! size is checked against.

use std::collections::{BTreeMap, HashMap, VecDeque};

use anyhow::{Context, Result, bail};
use ndarray::{Array2, Array3, ArrayView3, ArrayViewD, Axis};
use serde::{Deserialize, Serialize};

pub use plugins::decode::tokens::TokenSample;

use super::{Engine, EngineSpec, SampleScores, ScoreKey};
use crate::compiler::{DecidedInput, InputRole};
use crate::onnx::proto::*;
use crate::scores::NoiseReference;

/// Rows of the packed token batch `[B, ROWS, T]`.
pub(super) const ROWS: usize = 3;
const ROW_IDS: usize = 0;
const ROW_MASK: usize = 1;
const ROW_TYPES: usize = 2;
/// The largest vocabulary whose ids float32 holds exactly.
const MAX_VOCAB: usize = 1 << 24;
/// Lengths whose noise maps are kept; the least recently used is dropped beyond.
const NOISE_CACHE_LENGTHS: usize = 128;

/// The `[model]` keys of a text model. All optional: a vision model leaves them out, and a text
/// model's roles, pad id and vocabulary are found from the model when not given.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct TextSettings {
    /// Role of each model input, by input name: `ids`, `mask`, `token_types`, `positions` or
    /// `values` (the float input of a vision model) [default: from the name — `input_ids`,
    /// `attention_mask`, `token_type_ids`, `position_ids` and their common variants].
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub input_roles: BTreeMap<String, InputRole>,
    /// Text models: the id padding positions get [default: 0].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pad_id: Option<i64>,
    /// Text models: the sequence length the graph is compiled at; every batch is padded to it and
    /// longer samples are refused (truncate when tokenizing) [default: 128].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_length: Option<usize>,
    /// Text models: shorter lengths to compile too; a batch then runs on the shortest one that holds
    /// its longest sample, so short samples cost less (each is one more compile and session, made
    /// on first use) [default: none — every batch is padded to max_length].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub length_buckets: Option<Vec<usize>>,
    /// Text models: noise ids are drawn from `0..vocab_size` [default: the rows of the embedding
    /// table the ids input indexes].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vocab_size: Option<usize>,
    /// Text models: ids never drawn for noise inputs — the special tokens ([CLS], [SEP], [PAD],
    /// [MASK], [UNK], …), from the tokenizer [default: the pad id only].
    #[serde(default, skip_serializing_if = "Option::is_none", deserialize_with = "ids_or_strings")]
    pub noise_exclude_ids: Option<Vec<i64>>,
}

/// A list of ids as numbers, or as strings of digits: an environment override
/// (`AGENT__MODEL__NOISE_EXCLUDE_IDS=0,100,101`) reaches a flattened key as strings.
fn ids_or_strings<'de, D: serde::Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<i64>>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Id {
        Number(i64),
        Text(String),
    }
    let Some(ids) = Option::<Vec<Id>>::deserialize(d)? else { return Ok(None) };
    ids.into_iter()
        .map(|id| match id {
            Id::Number(n) => Ok(n),
            Id::Text(s) => {
                s.trim().parse().map_err(|_| serde::de::Error::custom(format!("{s:?} is not a token id")))
            }
        })
        .collect::<std::result::Result<Vec<i64>, _>>()
        .map(Some)
}

impl TextSettings {
    pub fn pad_id(&self) -> i64 {
        self.pad_id.unwrap_or(0)
    }
    pub fn max_length(&self) -> usize {
        self.max_length.unwrap_or(128)
    }
    /// The excluded ids, sorted, the pad id always among them.
    pub fn noise_exclude_ids(&self) -> Vec<i64> {
        let mut v = self.noise_exclude_ids.clone().unwrap_or_default();
        v.push(self.pad_id());
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Problems that need no model (config validation).
    pub fn problems(&self) -> Vec<(&'static str, String)> {
        let mut p = Vec::new();
        if self.max_length == Some(0) {
            p.push(("max_length", "must be at least 1".to_string()));
        }
        for &b in self.length_buckets.iter().flatten() {
            if b == 0 || b > self.max_length() {
                p.push((
                    "length_buckets",
                    format!("{b}; every bucket lies in 1..=max_length ({})", self.max_length()),
                ));
            }
        }
        if self.pad_id.is_some_and(|id| id < 0) {
            p.push(("pad_id", "must be ≥ 0".to_string()));
        }
        if let Some(v) = self.vocab_size {
            if v == 0 || v > MAX_VOCAB {
                p.push(("vocab_size", format!("{v}; must lie in 1..={MAX_VOCAB}")));
            } else if self.noise_exclude_ids().iter().filter(|&&i| (0..v as i64).contains(&i)).count() >= v {
                p.push(("noise_exclude_ids", format!("excludes every id of the vocabulary (0..{v})")));
            }
        }
        p
    }
}

/// What the engine decided for a text model.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TextModel {
    pub inputs: Vec<DecidedInput>,
    /// `max_length`: the compiled sequence length.
    pub length: usize,
    /// Shorter compiled lengths (`length_buckets`), ascending, each below `length`.
    pub buckets: Vec<usize>,
    pub pad_id: i64,
    pub vocab_size: usize,
    /// Where the vocabulary size came from ("configured", or the embedding table found).
    pub vocab_from: String,
    pub noise_exclude_ids: Vec<i64>,
}

impl TextModel {
    /// Decides the inputs' roles; `None` for a model with one float input (a vision model).
    pub fn decide(model: &ModelProto, settings: &TextSettings) -> Result<Option<TextModel>> {
        let graph = model.graph.as_ref().context("model has no graph")?;
        let declared = crate::compiler::inputs::declared_inputs(graph)?;
        let pairs: Vec<(String, i32)> = declared.iter().map(|(n, t, _)| (n.clone(), *t)).collect();
        let inputs = crate::compiler::decide_roles(&pairs, &settings.input_roles)
            .map_err(|p| anyhow::anyhow!("the model's inputs: {}", p.join("; ")))?;
        if !crate::compiler::inputs::is_text(&inputs) {
            return Ok(None);
        }
        for (name, _, dims) in &declared {
            if dims.len() != 2 {
                bail!("token input {name:?} has rank {}; token inputs are [batch, sequence]", dims.len());
            }
        }
        let ids = inputs.iter().find(|i| i.role == InputRole::Ids).expect("a text model has ids");
        let (vocab_size, vocab_from) = match settings.vocab_size {
            Some(v) => (v, "configured".to_string()),
            None => match crate::compiler::inputs::vocab_of(graph, &ids.name) {
                Some((v, table)) => (v, format!("rows of {table:?}")),
                None => {
                    bail!("no embedding table indexed by {:?} found: set vocab_size under [model]", ids.name)
                }
            },
        };
        let length = settings.max_length();
        if length == 0 || vocab_size == 0 || vocab_size > MAX_VOCAB {
            bail!("max_length = {length}, vocab_size = {vocab_size}: both must be at least 1 (vocab ≤ 2^24)");
        }
        if !(0..vocab_size as i64).contains(&settings.pad_id()) {
            bail!("pad_id {} is outside the vocabulary 0..{vocab_size}", settings.pad_id());
        }
        if !inputs.iter().any(|i| i.role == InputRole::Mask) {
            tracing::warn!(
                "the text model has no attention-mask input: unless it masks pad id {} itself, a sample's tokens attend to its padding (docs/spec/scores.md#text-models)",
                settings.pad_id()
            );
        }
        let mut buckets: Vec<usize> = settings.length_buckets.clone().unwrap_or_default();
        if let Some(b) = buckets.iter().find(|&&b| b == 0 || b > length) {
            bail!("length_buckets: {b} does not lie in 1..=max_length ({length})");
        }
        buckets.retain(|&b| b < length);
        buckets.sort_unstable();
        buckets.dedup();
        let exclude = settings.noise_exclude_ids();
        if exclude.iter().filter(|&&i| (0..vocab_size as i64).contains(&i)).count() >= vocab_size {
            bail!("noise_exclude_ids excludes every id of the vocabulary (0..{vocab_size})");
        }
        Ok(Some(TextModel {
            inputs,
            length,
            buckets,
            pad_id: settings.pad_id(),
            vocab_size,
            vocab_from,
            noise_exclude_ids: exclude,
        }))
    }

    /// The model with its token inputs fixed to `[batch, length]`.
    pub fn fixed_model(&self, model: &ModelProto) -> Result<ModelProto> {
        self.fixed_at(model, self.length)
    }

    fn fixed_at(&self, model: &ModelProto, t: usize) -> Result<ModelProto> {
        let names: Vec<&str> = self.inputs.iter().map(|i| i.name.as_str()).collect();
        crate::compiler::with_sequence_length(model, &names, t)
    }

    /// The compiled length a batch whose longest sample has `len` tokens runs at.
    pub fn length_for(&self, len: usize) -> usize {
        self.buckets.iter().copied().find(|&b| b >= len).unwrap_or(self.length)
    }

    /// One line per input and the text settings, for `agent check` and `agent score`.
    pub fn describe(&self) -> Vec<String> {
        let mut out: Vec<String> = self.inputs.iter().map(|i| format!("input {}", i.describe())).collect();
        out.push(format!(
            "text: max_length {} ({}), pad_id {}, vocabulary {} ({}), {} id(s) excluded from noise",
            self.length,
            if self.buckets.is_empty() {
                "every batch padded to it".to_string()
            } else {
                format!("batches padded to the first of {:?} that holds them", self.buckets)
            },
            self.pad_id,
            self.vocab_size,
            self.vocab_from,
            self.noise_exclude_ids.len()
        ));
        out
    }

    /// What enters the settings hash (only text models extend it).
    pub(super) fn hashed(&self) -> serde_json::Value {
        let roles: Vec<(&str, InputRole)> = self.inputs.iter().map(|i| (i.name.as_str(), i.role)).collect();
        serde_json::json!({
            "roles": roles,
            "length": self.length,
            "pad_id": self.pad_id,
            "vocab_size": self.vocab_size,
            "noise_exclude_ids": self.noise_exclude_ids,
            "noise": "uniform-ids",
        })
    }

    /// Checks the samples and packs them into `[B, ROWS, t]`, `t` the length the batch runs at
    /// (padding: pad id, mask 0, type 0). Every problem names the sample and what is wrong with it.
    pub fn pack(&self, samples: &[TokenSample], t: usize) -> Result<Array3<f32>> {
        let mut out = Array3::<f32>::zeros((samples.len(), ROWS, t));
        out.index_axis_mut(Axis(1), ROW_IDS).fill(self.pad_id as f32);
        for (s, x) in samples.iter().enumerate() {
            if x.is_empty() {
                bail!("token sample {s} is empty");
            }
            if x.len() > self.length {
                bail!(
                    "token sample {s} has {} tokens; max_length is {} (truncate when tokenizing)",
                    x.len(),
                    self.length
                );
            }
            if x.len() > t {
                bail!("internal: token sample {s} has {} tokens, packed at {t}", x.len());
            }
            if let Some(bad) = x.ids.iter().find(|&&id| !(0..self.vocab_size as i64).contains(&id)) {
                bail!("token sample {s}: id {bad} is outside the vocabulary 0..{}", self.vocab_size);
            }
            if let Some(types) = &x.type_ids {
                if types.len() != x.len() {
                    bail!("token sample {s} has {} ids but {} type ids", x.len(), types.len());
                }
                if let Some(bad) = types.iter().find(|&&v| !(0..=MAX_VOCAB as i64).contains(&v)) {
                    bail!("token sample {s}: type id {bad} is out of range");
                }
            }
            for (p, &id) in x.ids.iter().enumerate() {
                out[[s, ROW_IDS, p]] = id as f32;
                out[[s, ROW_MASK, p]] = 1.0;
                out[[s, ROW_TYPES, p]] = x.type_ids.as_ref().map_or(0.0, |v| v[p] as f32);
            }
        }
        Ok(out)
    }

    /// The model's inputs for a packed batch, as ONNX Runtime values.
    pub(super) fn feeds<'v>(
        &self,
        packed: ArrayViewD<f32>,
    ) -> Result<Vec<(std::borrow::Cow<'static, str>, ort::session::SessionInputValue<'v>)>> {
        let packed: ArrayView3<f32> = packed.into_dimensionality()?;
        let (b, t) = (packed.shape()[0], packed.shape()[2]);
        let row = |r: usize| packed.index_axis(Axis(1), r).mapv(|v| v as i64);
        let mut out = Vec::with_capacity(self.inputs.len());
        for i in &self.inputs {
            let a: Array2<i64> = match i.role {
                InputRole::Ids => row(ROW_IDS),
                InputRole::Mask => row(ROW_MASK),
                InputRole::TokenTypes => row(ROW_TYPES),
                InputRole::Positions => Array2::from_shape_fn((b, t), |(_, p)| p as i64),
                InputRole::Values => bail!("internal: a float input in a text model"),
            };
            let v = ort::value::Tensor::from_array(a).map_err(|e| anyhow::anyhow!("{e}"))?;
            out.push((std::borrow::Cow::Owned(i.name.clone()), v.into_dyn().into()));
        }
        Ok(out)
    }
}

/// The specification a text model runs under: smoothing cannot perturb token ids, so
/// `smoothing_points` defaults to 1 for it and more is refused (docs/spec/scores.md#text-models).
pub(super) fn effective_spec(spec: &EngineSpec, text: Option<&TextModel>) -> Result<EngineSpec> {
    let mut spec = spec.clone();
    if text.is_some() {
        match spec.score.smoothing_points {
            None => spec.score.smoothing_points = Some(1),
            Some(s) if s > 1 => bail!("{}", SMOOTHING_REFUSED),
            Some(_) => {}
        }
        if spec.score.smoothing.is_some_and(|s| s != 0.0) {
            bail!("{}", SMOOTHING_REFUSED);
        }
    }
    Ok(spec)
}

/// Why a text model takes no smoothing (config validation and the engine say the same).
pub const SMOOTHING_REFUSED: &str = "smoothing_points > 1 and smoothing perturb the model's input, and a text model's input is token ids, which cannot be perturbed by Gaussian noise: set smoothing_points = 1 (the default for text models) and leave smoothing out";

/// The settings hash of a text model: the vision hash extended by the inputs' roles, the length and
/// the noise ids' settings (a vision model's hash does not change).
pub(super) fn with_text(hash: String, text: &TextModel) -> String {
    crate::compiler::sha256_hex(
        serde_json::json!({ "settings": hash, "text": text.hashed() }).to_string().as_bytes(),
    )
}

impl Engine {
    /// A text model's decided inputs and settings (`None` for a model with one float input).
    pub fn text_model(&self) -> Option<&TextModel> {
        self.text.as_ref()
    }

    /// Scores token samples (unpadded, of any lengths up to `max_length`); one result per sample,
    /// aligned with [`Engine::keys`]. Each sample's maps are its first `len` positions, compared with
    /// noise inputs of the same length.
    pub fn score_tokens(&mut self, samples: &[TokenSample]) -> Result<Vec<SampleScores>> {
        self.text.as_ref().context("score_tokens: this model takes a float input, not token ids")?;
        let maps = self.sample_maps(samples)?;
        for x in samples {
            self.noise_for(x.len())?;
        }
        maps.into_iter()
            .zip(samples)
            .map(|(per_output, x)| {
                let noise = self.noise_for(x.len())?;
                super::session::sample_scores(&per_output, noise)
            })
            .collect()
    }

    /// Scores every sample, `chunk` at a time (see [`score_tokens_in_chunks`]).
    pub fn score_all_tokens(&mut self, samples: &[TokenSample], chunk: usize) -> Result<Vec<SampleScores>> {
        let mut out = Vec::with_capacity(samples.len());
        score_tokens_in_chunks(samples, chunk, &mut |b| self.score_tokens(b), &mut |_, s| {
            out.extend(s);
            Ok(())
        })?;
        Ok(out)
    }

    /// Per sample, per output (aligned with [`Engine::keys`]): the embedding-aggregated map `E` over
    /// the sample's own positions, `[len − prefix, 1]` for a token layer (for `agent explain`).
    pub fn token_maps(&mut self, samples: &[TokenSample]) -> Result<Vec<Vec<Array2<f32>>>> {
        self.text.as_ref().context("token_maps: this model takes a float input, not token ids")?;
        Ok(self
            .sample_maps(samples)?
            .into_iter()
            .map(|per| per.into_iter().map(|m| m.embedding).collect())
            .collect())
    }

    /// Per sample and output, the maps of `samples` (each cut to its own length), run at the
    /// shortest compiled length that holds the longest of them.
    fn sample_maps(&mut self, samples: &[TokenSample]) -> Result<Vec<Vec<crate::scores::SampleMaps>>> {
        let text = self.text.as_ref().context("internal: no text model")?;
        let longest = samples.iter().map(TokenSample::len).max().unwrap_or(0);
        let t = text.length_for(longest);
        let packed = text.pack(samples, t)?;
        if t == text.length {
            return self.maps(packed.view().into_dyn());
        }
        self.in_bucket(t, |e| e.maps(packed.view().into_dyn()))
    }

    /// Runs `f` with the graph compiled at `t` tokens in place of the `max_length` one (compiled on
    /// first use). The engine's run loop reads `graph`, `session`, `input_shape` and `unit_bytes`;
    /// they are swapped in and back, so the loop is the same code for every length.
    fn in_bucket<R>(&mut self, t: usize, f: impl FnOnce(&mut Engine) -> Result<R>) -> Result<R> {
        if !self.buckets.contains_key(&t) {
            let b = self.compile_bucket(t).with_context(|| format!("compiling the graph at {t} tokens"))?;
            self.buckets.insert(t, b);
        }
        let mut b = self.buckets.remove(&t).expect("just inserted");
        let swap = |e: &mut Engine, b: &mut Bucket| {
            std::mem::swap(&mut e.graph, &mut b.graph);
            std::mem::swap(&mut e.session, &mut b.session);
            std::mem::swap(&mut e.input_shape, &mut b.input_shape);
            std::mem::swap(&mut e.unit_bytes, &mut b.unit_bytes);
        };
        swap(self, &mut b);
        let result = f(self);
        swap(self, &mut b);
        self.buckets.insert(t, b);
        result
    }

    /// The attribution graph of the same model and options at `t` tokens, in its own session.
    fn compile_bucket(&self, t: usize) -> Result<Bucket> {
        let text = self.text.as_ref().context("internal: no text model")?;
        let path = &self.spec.model_path;
        let bytes = std::fs::read(path).with_context(|| format!("reading model {}", path.display()))?;
        if crate::compiler::sha256_hex(&bytes) != self.model_sha256() {
            bail!("model {} changed on disk since the engine started", path.display());
        }
        let model = text.fixed_at(&crate::onnx::decode(&bytes)?, t)?;
        let graph = crate::compiler::compile(&model, self.model_sha256(), &self.graph.options)?;
        let (env, _) = crate::runtime::environment(self.spec.runtime.onnxruntime_path.as_deref())?;
        let (session, _) =
            crate::runtime::session(env, &graph.to_bytes(), &super::session::session_options(&self.spec))?;
        let unit_bytes = super::session::bytes_per_point_row(&graph.outputs);
        tracing::info!(tokens = t, "text model: graph compiled for a shorter length");
        Ok(Bucket { graph, session, input_shape: vec![ROWS, t], unit_bytes })
    }

    /// The noise references for samples of `len` tokens, computed on first use.
    fn noise_for(&mut self, len: usize) -> Result<&[NoiseReference]> {
        if self.text_noise.get(len).is_none() {
            let refs = self.text_noise_references(len)?;
            self.text_noise.insert(len, refs);
        }
        Ok(self.text_noise.get(len).expect("just inserted"))
    }

    /// Per output, the noise reference of `n_noise` uniformly drawn id sequences of `len` tokens.
    fn text_noise_references(&mut self, len: usize) -> Result<Vec<NoiseReference>> {
        let text = self.text.as_ref().context("internal: no text model")?;
        if len == 0 || len > text.length {
            bail!("no noise inputs of {len} tokens: lengths run from 1 to max_length = {}", text.length);
        }
        let n = self.spec.noise.n_noise();
        if n < 2 {
            bail!("at least 2 noise inputs are needed (the noise benchmark compares pairs); got {n}");
        }
        let ids = crate::scores::noise_token_ids(
            len,
            n,
            self.spec.noise.seed(),
            text.vocab_size,
            &text.noise_exclude_ids,
        )?;
        let samples: Vec<TokenSample> = ids.into_iter().map(TokenSample::new).collect();
        let maps = self
            .sample_maps(&samples)
            .with_context(|| format!("computing the attribution maps of the noise inputs of {len} tokens"))?;
        (0..self.graph.outputs.len())
            .map(|oi| {
                let e: Vec<Array2<f32>> = maps.iter().map(|m| m[oi].embedding.clone()).collect();
                NoiseReference::new(&e)
                    .with_context(|| format!("noise maps of {}", self.graph.outputs[oi].layer))
            })
            .collect()
    }

    /// The keys of a text model, with each pair's noise benchmark taken at `max_length` (the noise
    /// score itself compares a sample with noise of its own length).
    pub(super) fn prepare_text_noise(&mut self) -> Result<()> {
        let t = self.text.as_ref().context("internal: no text model")?.length;
        let refs = self.text_noise_references(t)?;
        self.keys = self
            .graph
            .outputs
            .iter()
            .zip(&refs)
            .map(|(out, r)| {
                Ok(ScoreKey {
                    layer: self.spec.layers[out.layer_index].name.clone(),
                    method: out.method,
                    noise_benchmark: r.benchmark().context("noise benchmark")?,
                })
            })
            .collect::<Result<_>>()?;
        self.text_noise.insert(t, refs);
        Ok(())
    }
}

/// A graph compiled at one of the `length_buckets`, with what the run loop reads beside it.
pub(super) struct Bucket {
    graph: crate::compiler::AttributionGraph,
    session: ort::session::Session,
    input_shape: Vec<usize>,
    unit_bytes: u64,
}

/// Per sample of a packed batch, its number of real tokens.
pub(super) fn lengths(packed: ArrayViewD<f32>) -> Vec<usize> {
    packed
        .axis_iter(Axis(0))
        .map(|s| s.index_axis(Axis(0), ROW_MASK).iter().filter(|&&m| m != 0.0).count())
        .collect()
}

/// The noise references of a text model per sample length, least recently used dropped beyond
/// [`NOISE_CACHE_LENGTHS`] lengths (each holds `n_noise` maps of `len` values per output).
#[derive(Debug, Default)]
pub(super) struct NoiseCache {
    by_length: HashMap<usize, Vec<NoiseReference>>,
    order: VecDeque<usize>,
}

impl NoiseCache {
    pub(super) fn get(&mut self, len: usize) -> Option<&[NoiseReference]> {
        if self.by_length.contains_key(&len) {
            self.order.retain(|&l| l != len);
            self.order.push_back(len);
        }
        self.by_length.get(&len).map(Vec::as_slice)
    }

    pub(super) fn insert(&mut self, len: usize, refs: Vec<NoiseReference>) {
        if self.by_length.insert(len, refs).is_none() {
            self.order.push_back(len);
        }
        while self.order.len() > NOISE_CACHE_LENGTHS {
            if let Some(old) = self.order.pop_front() {
                self.by_length.remove(&old);
            }
        }
    }

    #[cfg(test)]
    pub(super) fn lengths(&self) -> usize {
        self.by_length.len()
    }
}

/// Scores `samples` `chunk` at a time through `score` (the token twin of
/// [`super::score_in_chunks`]): each chunk is padded on its own, so a chunk's longest sample only
/// matters to the run, never to a score.
pub fn score_tokens_in_chunks(
    samples: &[TokenSample],
    chunk: usize,
    score: &mut dyn FnMut(&[TokenSample]) -> Result<Vec<SampleScores>>,
    on_chunk: &mut dyn FnMut(usize, Vec<SampleScores>) -> Result<()>,
) -> Result<()> {
    let mut start = 0;
    while start < samples.len() {
        let end = (start + chunk.max(1)).min(samples.len());
        let scores = score(&samples[start..end])?;
        if scores.len() != end - start {
            bail!("the engine returned {} results for {} samples", scores.len(), end - start);
        }
        on_chunk(start, scores)?;
        start = end;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model() -> TextModel {
        TextModel {
            inputs: vec![],
            length: 6,
            buckets: vec![2, 4],
            pad_id: 0,
            vocab_size: 10,
            vocab_from: "configured".into(),
            noise_exclude_ids: vec![0],
        }
    }

    #[test]
    fn packing_pads_with_the_pad_id_and_a_zero_mask() {
        let m = TextModel { pad_id: 9, ..model() };
        let p = m
            .pack(
                &[
                    TokenSample::new(vec![2, 5, 3]),
                    TokenSample { ids: vec![2, 3], type_ids: Some(vec![0, 1]) },
                ],
                6,
            )
            .unwrap();
        assert_eq!(p.index_axis(Axis(1), ROW_IDS).row(0).to_vec(), [2., 5., 3., 9., 9., 9.]);
        assert_eq!(p.index_axis(Axis(1), ROW_MASK).row(1).to_vec(), [1., 1., 0., 0., 0., 0.]);
        assert_eq!(p.index_axis(Axis(1), ROW_TYPES).row(1).to_vec(), [0., 1., 0., 0., 0., 0.]);
        assert_eq!(lengths(p.view().into_dyn()), [3, 2]);
        // The shortest compiled length that holds the longest sample.
        assert_eq!([1, 2, 3, 4, 5, 6].map(|l| m.length_for(l)), [2, 2, 4, 4, 6, 6]);
        assert_eq!(m.pack(&[TokenSample::new(vec![2, 3])], 2).unwrap().shape(), [1, ROWS, 2]);
    }

    #[test]
    fn bad_samples_are_named() {
        let m = model();
        let e = |s: Vec<TokenSample>| m.pack(&s, 6).unwrap_err().to_string();
        assert!(e(vec![TokenSample::new(vec![1]), TokenSample::new(vec![])]).contains("sample 1 is empty"));
        assert!(e(vec![TokenSample::new(vec![1; 7])]).contains("7 tokens; max_length is 6"));
        assert!(e(vec![TokenSample::new(vec![1, 10])]).contains("id 10 is outside the vocabulary 0..10"));
        assert!(e(vec![TokenSample::new(vec![1, -1])]).contains("id -1"));
        let x = TokenSample { ids: vec![1, 2], type_ids: Some(vec![0]) };
        assert!(e(vec![x]).contains("2 ids but 1 type ids"));
    }

    #[test]
    fn the_noise_cache_is_bounded_and_keeps_recent_lengths() {
        let mut c = NoiseCache::default();
        for len in 1..=NOISE_CACHE_LENGTHS {
            c.insert(len, vec![]);
        }
        assert!(c.get(1).is_some()); // 1 is now the most recent
        c.insert(NOISE_CACHE_LENGTHS + 1, vec![]);
        assert_eq!(c.lengths(), NOISE_CACHE_LENGTHS);
        assert!(c.get(2).is_none(), "the least recently used length is dropped");
        assert!(c.get(1).is_some());
    }

    #[test]
    fn settings_problems() {
        let s = TextSettings {
            max_length: Some(0),
            vocab_size: Some(2),
            noise_exclude_ids: Some(vec![1]),
            ..Default::default()
        };
        let keys: Vec<&str> = s.problems().iter().map(|p| p.0).collect();
        assert_eq!(keys, ["max_length", "noise_exclude_ids"]);
        assert_eq!(TextSettings::default().noise_exclude_ids(), [0]);
    }
}
