//! Shapes from a probe run: the model itself, run by ONNX Runtime with extra outputs.
//!
//! Value info in exported models is often partial or stale, so the compiler asks the runtime. Two runs,
//! batch 2 and batch 3, tell which tensors carry the batch axis (their first dim follows the batch)
//! and prove the other dims do not depend on the batch size.

use std::collections::HashMap;

use anyhow::{Context, Result, anyhow, bail};
use ndarray::{ArrayD, IxDyn};
use rand::{Rng, SeedableRng};

use crate::onnx::{self, proto::*};

/// A tensor's shape as the probe saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbedShape {
    /// True when the tensor carries the batch (on some axis).
    pub batched: bool,
    /// Batched: the dims of the tensor's *canonical* view `[B, rest…]` (see [`BatchLayout`]);
    /// not batched: all dims.
    pub rest: Vec<i64>,
    /// Where the batch sits when it is not simply axis 0 (`None`: axis 0, unmerged — the canonical
    /// view is the tensor itself).
    pub layout: Option<BatchLayout>,
}

/// A batched tensor whose batch is not plain axis 0: transformer exports move it
/// (`reshape(B, N, 3, H, d).permute(2, 0, 3, 1, 4)` puts it on axis 1) or merge it with another
/// factor (window partitions `[B·nW, …]`, heads `[B·h, …]`). Its canonical view moves the batch to
/// the front and splits a merged axis `B·m` into `[B, m]` (batch-major, which the probe verifies);
/// rules see only canonical views.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BatchLayout {
    /// The physical axis that holds the batch.
    pub axis: usize,
    /// `m` when that axis is `B·m` (1 when it is the batch alone).
    pub factor: i64,
    /// Physical rank.
    pub rank: usize,
}

impl BatchLayout {
    /// The canonical axis of physical axis `p` (the batch axis itself maps to the factor's axis,
    /// which only exists when `factor > 1`).
    pub fn canonical_axis(&self, p: usize) -> Option<usize> {
        use std::cmp::Ordering::*;
        match p.cmp(&self.axis) {
            Less => Some(p + 1),
            Equal => (self.factor > 1).then_some(self.axis + 1),
            Greater => Some(if self.factor > 1 { p + 1 } else { p }),
        }
    }
}

/// Reads shapes at batch 2 and 3 as a batched layout: exactly one axis changes, as `2m` → `3m`.
fn batched_layout(a: &[i64], b: &[i64]) -> Option<(usize, i64)> {
    if a.len() != b.len() {
        return None;
    }
    let differ: Vec<usize> = (0..a.len()).filter(|&i| a[i] != b[i]).collect();
    let &[i] = differ.as_slice() else { return None };
    (a[i] % 2 == 0 && b[i] % 3 == 0 && a[i] / 2 == b[i] / 3 && a[i] > 0).then_some((i, a[i] / 2))
}

/// Whether samples 1 and 2 of a batch-3 run (fed identical inputs) have identical slices in the
/// batch-major view of axis `axis` with factor `m` — the proof that the batch is the major factor.
fn batch_major(data: &[f64], dims: &[i64], axis: usize, m: i64) -> bool {
    let pre: i64 = dims[..axis].iter().product();
    let post: i64 = dims[axis + 1..].iter().product::<i64>() * m;
    let (pre, post) = (pre as usize, post as usize);
    (0..pre).all(|i| {
        let base = i * 3 * post;
        (0..post).all(|j| {
            let (x, y) = (data[base + post + j], data[base + 2 * post + j]);
            (x - y).abs() <= 1e-4 * (1.0 + x.abs()) || (x.is_nan() && y.is_nan())
        })
    })
}

/// A model input as the probe feeds it.
#[derive(Debug, Clone)]
pub struct InputSpec {
    pub name: String,
    pub elem_type: i32,
    /// Dims after the (dynamic) batch axis.
    pub rest: Vec<i64>,
}

/// The model's real inputs (graph inputs that are not initializers), with fixed non-batch dims.
pub fn model_inputs(graph: &GraphProto) -> Result<Vec<InputSpec>> {
    let inits: std::collections::HashSet<&str> = graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let mut out = Vec::new();
    for v in graph.input.iter().filter(|v| !inits.contains(v.name.as_str())) {
        let (elem_type, dims) =
            onnx::value_info_shape(v).ok_or_else(|| anyhow!("model input {:?} is not a tensor", v.name))?;
        if dims.is_empty() {
            bail!("model input {:?} has no shape; the compiler needs [batch, ...] with fixed sizes", v.name);
        }
        let mut rest = Vec::new();
        for (axis, d) in dims.iter().enumerate().skip(1) {
            match d {
                Some(d) if *d > 0 => rest.push(*d),
                _ if elem_type == data_type::INT64 && axis == 1 && dims.len() == 2 => bail!(
                    "model input {:?} is a token input with a dynamic sequence length; text models are compiled at a fixed length (the engine uses [model] max_length; compiler::with_sequence_length)",
                    v.name
                ),
                _ => bail!(
                    "model input {:?} has a symbolic or unknown size on axis {axis}; only the batch axis (0) may be dynamic",
                    v.name
                ),
            }
        }
        // Checked before anything is allocated from the declared sizes (the probe feeds 3 samples).
        let elements = rest.iter().try_fold(1i64, |n, &d| n.checked_mul(d));
        if elements.is_none_or(|n| n > MAX_INPUT_ELEMENTS) {
            bail!(
                "model input {:?} declares {:?} elements per sample (shape {rest:?}); the compiler accepts at most {MAX_INPUT_ELEMENTS}",
                v.name,
                elements.map_or("more than 2^63".to_string(), |n| n.to_string())
            );
        }
        out.push(InputSpec { name: v.name.clone(), elem_type, rest });
    }
    if out.is_empty() {
        bail!("the model has no inputs");
    }
    Ok(out)
}

/// The largest model input, in elements per sample, the compiler will probe (a 4096 × 4096 RGB image
/// is 50 M): the declared sizes of an untrusted model must not decide an allocation.
const MAX_INPUT_ELEMENTS: i64 = 1 << 26;

/// Random probe inputs: floats in [0, 1), integers zero.
fn probe_inputs(
    inputs: &[InputSpec],
    batch: usize,
    seed: u64,
) -> Result<Vec<(String, ort::value::DynValue)>> {
    let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(seed);
    let mut out = Vec::new();
    for i in inputs {
        let mut shape = vec![batch];
        shape.extend(i.rest.iter().map(|&d| d as usize));
        let v: ort::value::DynValue = match i.elem_type {
            data_type::FLOAT => {
                let mut a = ArrayD::from_shape_simple_fn(IxDyn(&shape), || rng.random::<f32>());
                if batch >= 3 {
                    let one = a.index_axis(ndarray::Axis(0), 1).to_owned();
                    a.index_axis_mut(ndarray::Axis(0), 2).assign(&one);
                }
                ort::value::Tensor::from_array(a).map_err(|e| anyhow!("{e}"))?.into_dyn()
            }
            data_type::INT64 => {
                let a = ArrayD::<i64>::zeros(IxDyn(&shape));
                ort::value::Tensor::from_array(a).map_err(|e| anyhow!("{e}"))?.into_dyn()
            }
            t => bail!(
                "model input {:?} has element type {t}; the probe feeds float32 and int64 inputs",
                i.name
            ),
        };
        out.push((i.name.clone(), v));
    }
    Ok(out)
}

/// What the probe learned: shapes of the requested tensors and the values of the small ones that do
/// not depend on the batch (shape arithmetic a rule may need as a constant).
pub struct Probe {
    pub shapes: HashMap<String, ProbedShape>,
    pub values: HashMap<String, Vec<f64>>,
}

/// Tensors up to this many elements have their values kept when they do not depend on the batch.
const MAX_VALUE_ELEMENTS: usize = 64;

/// Runs the model at batch 2 and 3 with `tensors` exposed (each through a `Cast` to double, so
/// integer and boolean tensors are read the same way) and returns their shapes and small values.
pub fn probe(model: &ModelProto, tensors: &[String]) -> Result<Probe> {
    let (probe, mut odd) = probe_lenient(model, tensors, false)?;
    match odd.drain(..).next() {
        Some((_, why)) => Err(anyhow!(why)),
        None => Ok(probe),
    }
}

/// [`probe`], but a tensor whose shape does not follow the batch on axis 0 is left out of the
/// shapes and listed (name, problem) instead of failing the probe (for `agent layers`, which
/// probes every tensor of a model). `shapes_only` exposes each tensor's `Shape` instead of its
/// values, so the runtime can free activations as usual (no values are then kept).
pub fn probe_lenient(
    model: &ModelProto,
    tensors: &[String],
    shapes_only: bool,
) -> Result<(Probe, Vec<(String, String)>)> {
    let mut m = model.clone();
    let g = m.graph.as_mut().context("model has no graph")?;
    let inputs = model_inputs(g)?;
    let exposed: Vec<String> = (0..tensors.len()).map(|i| format!("attr/probe/{i}")).collect();
    let op = if shapes_only { "Shape" } else { "Cast" };
    for (t, out) in tensors.iter().zip(&exposed) {
        g.node.push(NodeProto {
            name: format!("{out}/{op}"),
            op_type: op.into(),
            input: vec![t.clone()],
            output: vec![out.clone()],
            attribute: if shapes_only {
                vec![]
            } else {
                vec![onnx::attr::int("to", data_type::DOUBLE as i64)]
            },
            ..Default::default()
        });
    }
    g.output = exposed
        .iter()
        .map(|t| ValueInfoProto {
            name: t.clone(),
            r#type: Some(TypeProto {
                tensor_type: Some(TensorTypeProto {
                    elem_type: if shapes_only { data_type::INT64 } else { data_type::DOUBLE },
                    shape: None,
                }),
                ..Default::default()
            }),
            ..Default::default()
        })
        .collect();
    g.value_info.clear();
    let mut session =
        crate::runtime::cpu_session(&onnx::encode(&m)).context("loading the model for the shape probe")?;
    let mut runs = Vec::new();
    for batch in [2usize, 3] {
        let feeds = probe_inputs(&inputs, batch, batch as u64)?;
        // At batch 3, samples 1 and 2 are identical (see `batch_major`).
        let outputs = session
            .run(feeds)
            .map_err(|e| anyhow!("the shape probe (batch {batch}) failed in ONNX Runtime: {e}"))?;
        let mut seen = HashMap::new();
        for (t, out) in tensors.iter().zip(&exposed) {
            let v = &outputs[out.as_str()];
            if shapes_only {
                let (_, dims) = v.try_extract_tensor::<i64>().map_err(|e| anyhow!("tensor {t:?}: {e}"))?;
                seen.insert(t.clone(), (dims.to_vec(), None, Vec::new()));
                continue;
            }
            let (shape, data) = v.try_extract_tensor::<f64>().map_err(|e| anyhow!("tensor {t:?}: {e}"))?;
            let dims: Vec<i64> = shape.iter().copied().collect();
            let small = (data.len() <= MAX_VALUE_ELEMENTS).then(|| data.to_vec());
            // At batch 3, keep only the batch-major verdict for each possible batched layout.
            let major = if batch == 3 {
                (0..dims.len())
                    .filter(|&i| dims[i] % 3 == 0 && dims[i] > 0)
                    .map(|i| (i, batch_major(data, &dims, i, dims[i] / 3)))
                    .collect()
            } else {
                Vec::new()
            };
            seen.insert(t.clone(), (dims, small, major));
        }
        runs.push(seen);
    }
    let mut out = Probe { shapes: HashMap::new(), values: HashMap::new() };
    let mut odd = Vec::new();
    for t in tensors {
        let ((a, va, _), (b, vb, major)) = (&runs[0][t], &runs[1][t]);
        let shape = if let Some((axis, m)) = batched_layout(a, b) {
            // A plain batch axis is taken as it is (integer outputs such as pool indices count over
            // the whole batch, so their slices differ); a moved or merged one must prove itself.
            // Without values (`shapes_only`) a moved or merged axis is taken unproven; the compiler
            // proves it when a path runs through the tensor.
            if !shapes_only && (axis != 0 || m != 1) && !major.iter().any(|&(i, ok)| i == axis && ok) {
                odd.push((
                    t.clone(),
                    format!(
                        "tensor {t:?} has shape {a:?} at batch 2 and {b:?} at batch 3, but axis {axis} does not hold the samples batch-major (identical samples give different slices): the compiler cannot tell which elements belong to which sample"
                    ),
                ));
                continue;
            }
            let mut rest: Vec<i64> = a[..axis].to_vec();
            if m > 1 {
                rest.push(m);
            }
            rest.extend(&a[axis + 1..]);
            let layout = (axis != 0 || m != 1).then_some(BatchLayout { axis, factor: m, rank: a.len() });
            ProbedShape { batched: true, rest, layout }
        } else if a == b {
            if let (Some(va), Some(vb)) = (va, vb)
                && va == vb
            {
                out.values.insert(t.clone(), va.clone());
            }
            ProbedShape { batched: false, rest: a.clone(), layout: None }
        } else {
            odd.push((
                t.clone(),
                format!(
                    "tensor {t:?} has shape {a:?} at batch 2 and {b:?} at batch 3: the compiler needs the batch on one axis and fixed other sizes"
                ),
            ));
            continue;
        };
        out.shapes.insert(t.clone(), shape);
    }
    Ok((out, odd))
}
