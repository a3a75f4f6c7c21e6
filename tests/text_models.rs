//! Text encoders: integer inputs fed, never differentiated; maps over the token axis.
//!
//! The fixture `tests/models/text/encoder.onnx` is a small BERT-style sentence encoder exported by
//! PyTorch (`tests/models/build_text.py`, the only place PyTorch is needed), with float64-autograd
//! rows `∂z_j/∂h` at the output of encoder layer 0 for three id sequences of 5, 9 and 14 tokens,
//! each computed alone and unpadded. Here the model is compiled at a fixed length, the samples are
//! padded into one batch, and every row is held to its reference (relative Frobenius error ≤ 1e-4,
//! the bound `tests/architectures.rs` explains), with the padded positions' rows exactly zero.

mod common;

use std::collections::BTreeMap;
use std::process::Command;

use agent::compiler::{self, CompileOptions, InputRole};
use agent::engine::{Engine, EngineSpec, LayerSpec, TextSettings, TokenSample};
use agent::onnx;
use agent::scores::Method;
use common::repo_root;
use ndarray::{Array2, ArrayD};

const REL_TOL: f64 = 1e-4;

#[derive(Debug, serde::Deserialize)]
struct Sample {
    ids: Vec<i64>,
    #[serde(rename = "ref")]
    reference: String,
    emb: String,
}

#[derive(Debug, serde::Deserialize)]
struct Manifest {
    file: String,
    inputs: Vec<String>,
    embedding: String,
    layer: String,
    vocab: usize,
    hidden: usize,
    d: usize,
    special_ids: Vec<i64>,
    components: Vec<usize>,
    samples: Vec<Sample>,
    bytes: u64,
}

fn dir() -> std::path::PathBuf {
    repo_root().join("tests/models/text")
}

fn manifest() -> Manifest {
    let text = std::fs::read_to_string(dir().join("manifest.json")).unwrap();
    serde_json::from_str(&text).unwrap()
}

fn model_path() -> std::path::PathBuf {
    dir().join(manifest().file)
}

/// Runs `model` on int64 inputs and a float cotangent; returns the named float outputs.
fn run(
    model: &[u8],
    ints: Vec<(&str, Array2<i64>)>,
    cotangent: ArrayD<f32>,
    outputs: &[&str],
) -> Vec<ArrayD<f32>> {
    let mut s = agent::runtime::cpu_session(model).expect("session");
    let mut feeds: Vec<(String, ort::value::DynValue)> = ints
        .into_iter()
        .map(|(n, a)| (n.to_string(), ort::value::Tensor::from_array(a).unwrap().into_dyn()))
        .collect();
    feeds.push((compiler::COTANGENT.into(), ort::value::Tensor::from_array(cotangent).unwrap().into_dyn()));
    let out = s.run(feeds).expect("run");
    outputs.iter().map(|o| out[*o].try_extract_array::<f32>().unwrap().to_owned()).collect()
}

#[test]
fn fixture_rows_match_float64_autograd_with_padding() {
    let m = manifest();
    let bytes = std::fs::read(model_path()).unwrap();
    assert_eq!(bytes.len() as u64, m.bytes, "encoder.onnx is not the file the manifest describes");
    let t = 16;
    let model = compiler::with_sequence_length(
        &onnx::decode(&bytes).unwrap(),
        &["input_ids", "attention_mask", "token_type_ids"],
        t,
    )
    .unwrap();
    let opts = CompileOptions {
        embedding: m.embedding.clone(),
        layers: vec![m.layer.clone()],
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        // The layer in its own element order [T, C], as the references are stored.
        layouts: vec![],
    };
    let graph = compiler::compile(&model, "text", &opts).unwrap_or_else(|e| panic!("refused: {e:#}"));
    assert_eq!(graph.embedding_dim, m.d);
    let n = m.samples.len();
    let mut ids = Array2::<i64>::zeros((n, t));
    let mut mask = Array2::<i64>::zeros((n, t));
    for (i, s) in m.samples.iter().enumerate() {
        for (p, &id) in s.ids.iter().enumerate() {
            ids[[i, p]] = id;
            mask[[i, p]] = 1;
        }
    }
    let k = m.components.len();
    let eye =
        ArrayD::from_shape_fn(
            ndarray::IxDyn(&[k, m.d]),
            |i| if m.components[i[0]] == i[1] { 1.0 } else { 0.0 },
        );
    let out = run(
        &graph.to_bytes(),
        vec![("input_ids", ids.clone()), ("attention_mask", mask), ("token_type_ids", Array2::zeros((n, t)))],
        eye,
        &[m.embedding.as_str(), graph.outputs[0].name.as_str()],
    );
    let (emb, rows) = (&out[0], &out[1]);
    let c = m.hidden;
    assert_eq!(rows.len(), n * k * t * c, "map shape {:?}", rows.shape());
    let rows: Vec<f32> = rows.iter().copied().collect();
    let mut worst = 0.0f64;
    for (i, s) in m.samples.iter().enumerate() {
        let len = s.ids.len();
        let z: ndarray::Array1<f64> = ndarray_npy::read_npy(dir().join(&s.emb)).unwrap();
        for j in 0..m.d {
            let (a, b) = (emb[[i, j]] as f64, z[j]);
            assert!((a - b).abs() <= 1e-5 * (1.0 + b.abs()), "sample {i} embedding {j}: {a} vs {b}");
        }
        let reference: ndarray::Array3<f64> = ndarray_npy::read_npy(dir().join(&s.reference)).unwrap();
        assert_eq!(reference.shape(), [k, len, c]);
        for r in 0..k {
            let row = &rows[(i * k + r) * t * c..(i * k + r + 1) * t * c];
            let want: Vec<f64> = reference.index_axis(ndarray::Axis(0), r).iter().copied().collect();
            let norm = want.iter().map(|v| v * v).sum::<f64>().sqrt();
            let diff =
                row[..len * c].iter().zip(&want).map(|(&a, &b)| (a as f64 - b).powi(2)).sum::<f64>().sqrt();
            let rel = diff / norm;
            assert!(rel <= REL_TOL, "sample {i} component {}: relative error {rel:.2e}", m.components[r]);
            worst = worst.max(rel);
            // Padding gets no gradient at all: its attention weights are exactly 0 and the pooling masks it.
            assert!(row[len * c..].iter().all(|&v| v == 0.0), "sample {i}: a padded position has a gradient");
        }
    }
    eprintln!("text encoder: worst relative row error {worst:.1e} over {n} samples × {k} components");
}

fn spec(max_length: usize) -> EngineSpec {
    let m = manifest();
    let mut spec = EngineSpec::new(&model_path(), &m.embedding);
    spec.layers = vec![LayerSpec { name: "layer0".into(), tensor: m.layer.clone(), ..Default::default() }];
    spec.score.methods = Some(vec![Method::Vanilla, Method::ActGrad]);
    spec.text = TextSettings {
        max_length: Some(max_length),
        noise_exclude_ids: Some(m.special_ids.clone()),
        ..Default::default()
    };
    spec
}

fn samples() -> Vec<TokenSample> {
    let m = manifest();
    let mut out: Vec<TokenSample> = m.samples.iter().map(|s| TokenSample::new(s.ids.clone())).collect();
    // A sample with token types, and the shortest possible one.
    let mut typed = TokenSample::new(vec![2, 17, 411, 3, 90, 3]);
    typed.type_ids = Some(vec![0, 0, 0, 0, 1, 1]);
    out.push(typed);
    out.push(TokenSample::new(vec![2, 3]));
    out
}

fn assert_close(a: &[agent::engine::SampleScores], b: &[agent::engine::SampleScores], what: &str) {
    assert_eq!(a.len(), b.len());
    for (i, (x, y)) in a.iter().zip(b).enumerate() {
        for (p, q) in x.scores.iter().zip(&y.scores) {
            for (u, v) in [(p.noise_score, q.noise_score), (p.variance_score, q.variance_score)] {
                assert!(
                    u.is_finite() && (u - v).abs() <= 1e-4 * (1.0 + v.abs()),
                    "{what}: sample {i}: {u} vs {v}"
                );
            }
        }
    }
}

#[test]
fn padding_never_leaks_into_a_score() {
    let mut e16 = Engine::new(&spec(16)).unwrap();
    let decided: Vec<(String, InputRole, bool)> =
        e16.text_model().unwrap().inputs.iter().map(|i| (i.name.clone(), i.role, i.detected)).collect();
    assert_eq!(
        decided,
        [
            ("input_ids".to_string(), InputRole::Ids, true),
            ("attention_mask".to_string(), InputRole::Mask, true),
            ("token_type_ids".to_string(), InputRole::TokenTypes, true)
        ]
    );
    assert_eq!(e16.text_model().unwrap().vocab_size, manifest().vocab, "vocabulary from the embedding table");
    assert_eq!(decided.iter().map(|d| d.0.clone()).collect::<Vec<_>>(), manifest().inputs);
    assert_eq!(
        e16.views()[0].grid,
        [16, 1],
        "a token layer of a text model is a 1-D map: {:?}",
        e16.views()[0]
    );
    let xs = samples();
    let together = e16.score_tokens(&xs).unwrap();
    // Each sample alone, and in a batch padded further (another compiled length).
    let alone: Vec<_> = xs.iter().flat_map(|x| e16.score_tokens(std::slice::from_ref(x)).unwrap()).collect();
    assert_close(&together, &alone, "batched vs alone");
    let mut e24 = Engine::new(&spec(24)).unwrap();
    let longer = e24.score_all_tokens(&xs, 2).unwrap();
    assert_close(&together, &longer, "padded to 16 vs padded to 24");
    // Shorter compiled lengths: each batch runs on the first that holds its longest sample (chunks
    // of 2: 5 and 9 tokens at 16, 14 and 6 at 16, 2 at 8), with the same scores.
    let mut bucketed = spec(24);
    bucketed.text.length_buckets = Some(vec![16, 8]);
    let mut eb = Engine::new(&bucketed).unwrap();
    assert_eq!(eb.text_model().unwrap().length_for(6), 8);
    let by_bucket = eb.score_all_tokens(&xs, 2).unwrap();
    assert_close(&together, &by_bucket, "padded to 16 vs padded to the first bucket that holds the batch");
    assert_eq!(eb.settings_hash(), e24.settings_hash(), "buckets change no score");
    // The maps are the samples' own positions.
    let maps = e16.token_maps(&xs).unwrap();
    for (x, per) in xs.iter().zip(&maps) {
        assert!(per.iter().all(|m| m.dim() == (x.len(), 1)), "map {:?} for {} tokens", per[0].dim(), x.len());
    }
    // Scores are not constant: the samples differ.
    assert!(
        together.iter().any(|s| (s.scores[0].noise_score - together[0].scores[0].noise_score).abs() > 1e-3)
    );
    // The settings hash follows the length (another graph), not the batch.
    assert_ne!(e16.settings_hash(), e24.settings_hash());
}

#[test]
fn bad_token_samples_and_float_batches_are_refused_by_name() {
    let mut e = Engine::new(&spec(16)).unwrap();
    let err = e.score_tokens(&[TokenSample::new(vec![2, 3]), TokenSample::new(vec![2; 17])]).unwrap_err();
    assert!(err.to_string().contains("token sample 1 has 17 tokens; max_length is 16"), "{err:#}");
    let err = e.score_tokens(&[TokenSample::new(vec![2, 5000])]).unwrap_err();
    assert!(err.to_string().contains("id 5000 is outside the vocabulary 0..1000"), "{err:#}");
    let err = e.score_batch(ndarray::ArrayD::zeros(ndarray::IxDyn(&[1, 3, 16])).view()).unwrap_err();
    assert!(err.to_string().contains("text model"), "{err:#}");
    // Still scores afterwards.
    assert_eq!(e.score_tokens(&[TokenSample::new(vec![2, 3])]).unwrap().len(), 1);
}

#[test]
fn smoothing_and_unknown_roles_are_refused() {
    let mut s = spec(16);
    s.score.smoothing_points = Some(4);
    let err = Engine::new(&s).err().expect("smoothing refused");
    assert!(err.to_string().contains("token ids"), "{err:#}");
    let mut s = spec(16);
    s.text.input_roles = BTreeMap::from([("segments".to_string(), InputRole::TokenTypes)]);
    let err = Engine::new(&s).err().expect("unknown input refused");
    assert!(err.to_string().contains("\"segments\"") && err.to_string().contains("no such input"), "{err:#}");
}

/// A configuration for the fixture with `extra` lines under `[model]`.
fn config(d: &std::path::Path, extra: &str) -> std::path::PathBuf {
    let m = manifest();
    let inbox = d.join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let cfg = d.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
name = "text"
path = "{model}"
embedding = "{emb}"
layers = [{{ name = "layer0", tensor = "{layer}" }}]
{length}
noise_exclude_ids = [0, 1, 2, 3, 4]
{extra}

[baseline]
reference_dir = "{inbox}"

[[sources]]
type = "dir"
path = "{inbox}"
"#,
            model = model_path().display(),
            emb = m.embedding,
            layer = m.layer,
            length = if extra.contains("max_length") { "" } else { "max_length = 32" },
            inbox = inbox.display()
        ),
    )
    .unwrap();
    cfg
}

fn check(cfg: &std::path::Path) -> (Option<i32>, String) {
    let out =
        Command::new(env!("CARGO_BIN_EXE_agent")).args(["check", "--config"]).arg(cfg).output().unwrap();
    (
        out.status.code(),
        format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr)),
    )
}

#[test]
fn check_says_what_it_decided_for_a_text_model_and_refuses_smoothing() {
    let d = tempfile::tempdir().unwrap();
    let (code, out) = check(&config(d.path(), ""));
    assert_eq!(code, Some(0), "{out}");
    for want in [
        "input input_ids: ids (detected",
        "input attention_mask: mask (detected",
        "input token_type_ids: token_types (detected",
        "max_length 32",
        "vocabulary 1000",
        "32x1 map",
    ] {
        assert!(out.contains(want), "{want:?} not in:\n{out}");
    }
    let (code, out) = check(&config(d.path(), "smoothing_points = 8"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("model.smoothing_points") && out.contains("token ids"), "{out}");
    let (code, out) = check(&config(d.path(), "max_length = 0"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("model.max_length: must be at least 1"), "{out}");
    let (code, out) = check(&config(d.path(), "input_roles = { input_ids = \"mask\" }"));
    assert_eq!(code, Some(1), "{out}");
    assert!(out.contains("none with the ids role") && out.contains("each role is one input"), "{out}");
}

#[test]
fn layers_lists_a_text_model_at_a_fixed_length_with_token_strips() {
    let m = manifest();
    let model = onnx::decode(&std::fs::read(model_path()).unwrap()).unwrap();
    let report = compiler::layers::list(&model, Some(&m.embedding)).unwrap_or_else(|e| panic!("{e:#}"));
    let t = compiler::layers::LIST_LENGTH;
    let layer = report.tensors.iter().find(|x| x.name == m.layer).expect("the fixture's layer is listed");
    assert_eq!(layer.shape, [t as i64, m.hidden as i64]);
    assert_eq!((layer.layout.as_str(), layer.grid, layer.prefix_tokens), ("tokens", [t, 1], 0), "{layer:?}");
    assert!(layer.monitorable, "{layer:?}");
}

#[test]
fn compile_fixes_the_length_and_names_the_roles() {
    let m = manifest();
    let d = tempfile::tempdir().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["compile", "--model"])
        .arg(model_path())
        .args(["--embedding", &m.embedding, "--layer", &m.layer, "--max-length", "20", "--out"])
        .arg(d.path().join("g.onnx"))
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{text}");
    for want in
        ["input_ids [N, [20]]", "20x1 map", "input input_ids: ids (detected", "input attention_mask: mask"]
    {
        assert!(text.contains(want), "{want:?} not in:\n{text}");
    }
}
