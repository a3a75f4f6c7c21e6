//! Narrow public vision architectures (ResNet, MobileNetV3, ConvNeXt, ShuffleNetV2, ViT, Swin,
//! EfficientViT), exported by PyTorch's own exporter, against float64 autograd.
//!
//! The fixtures in `tests/models/arch/` are written by `tests/models/build_architectures.py`, which is
//! the only place PyTorch is needed: per model it saves the ONNX file, two float32 inputs and the rows
//! `∂z_j/∂h` of four embedding components at one or two layer tensors, computed in float64 from the
//! same float32 inputs. Here each model is compiled without channel aggregation, run in ONNX Runtime
//! with one-hot cotangent rows for those components, and every row is compared with its reference.
//!
//! Tolerance: relative Frobenius error `‖a − r‖ / ‖r‖` per row ≤ 1e-4. The compiled graph computes in
//! float32, so even a correct graph is off from float64 by accumulated rounding. The scale of that
//! rounding is measured by the script for every fixture: PyTorch's own float32 reverse pass lands
//! within 7e-7 of the references on all of them, transformers included (`f32_autograd_rel` in the
//! manifest), and the compiled ResNet within 2e-7. A rule with a wrong term, transpose, axis or
//! broadcast is off by 1e-2 or more. 1e-4 leaves over two orders of magnitude for float32 rounding in
//! ONNX Runtime's kernels while still catching errors far below what finite differences resolve.
//!
//! The raw map of a layer (`channel_agg: None`) is a reshape of the `[B, K, *layer shape]` gradient,
//! so rows are compared flattened, in the layer tensor's own element order, whatever its layout
//! (`[B, C, H, W]`, ViT's `[B, T, C]`, Swin's `[B, H, W, C]`).

mod common;

use agent::compiler::{self, CompileOptions};
use agent::onnx;
use agent::scores::Method;
use common::{repo_root, run, with_output};
use ndarray::{ArrayD, IxDyn};

const REL_TOL: f64 = 1e-4;

#[derive(Debug, serde::Deserialize)]
struct ArchLayer {
    key: String,
    name: String,
    shape: Vec<usize>,
    #[serde(rename = "ref")]
    reference: String,
    path_ops: Vec<String>,
}

#[derive(Debug, serde::Deserialize)]
struct ArchModel {
    name: String,
    file: String,
    input: String,
    input_shape: Vec<usize>,
    inputs_file: String,
    embedding: String,
    d: usize,
    components: Vec<usize>,
    layers: Vec<ArchLayer>,
    opset: i64,
    bytes: u64,
}

fn arch_dir() -> std::path::PathBuf {
    repo_root().join("tests/models/arch")
}

fn arch_manifest() -> Vec<ArchModel> {
    let path = arch_dir().join("manifest.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn entry(name: &str) -> ArchModel {
    arch_manifest()
        .into_iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("{name}: not in tests/models/arch/manifest.json"))
}

/// Compiles one model and holds every row to its reference, printing the worst relative error per
/// layer; a refusal panics with the compiler's message and the ops the exporter put on the path.
fn check(name: &str) {
    let m = entry(name);
    let bytes = std::fs::read(arch_dir().join(&m.file)).unwrap();
    assert_eq!(bytes.len() as u64, m.bytes, "{name}: {} is not the file the manifest describes", m.file);
    let model = onnx::decode(&bytes).unwrap();
    let opts = CompileOptions {
        embedding: m.embedding.clone(),
        layers: m.layers.iter().map(|l| l.name.clone()).collect(),
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        // Each layer in its own element order, as the references are stored.
        layouts: vec![],
    };
    let start = std::time::Instant::now();
    let graph = compiler::compile(&model, "architectures", &opts).unwrap_or_else(|e| {
        let ops: Vec<String> =
            m.layers.iter().map(|l| format!("{}: {}", l.key, l.path_ops.join(","))).collect();
        panic!(
            "{name} (opset {}): refused: {e:#}\n  ops on the layer→embedding paths: {}",
            m.opset,
            ops.join("; ")
        )
    });
    let compile_s = start.elapsed().as_secs_f64();
    assert_eq!(graph.embedding_dim, m.d, "{name}: embedding dimension");
    assert_eq!(graph.outputs.len(), m.layers.len(), "{name}: one map output per layer (vanilla only)");

    let x: ArrayD<f32> = ndarray_npy::read_npy(arch_dir().join(&m.inputs_file)).unwrap();
    let n = x.shape()[0];
    assert_eq!(&x.shape()[1..], m.input_shape.as_slice(), "{name}: saved input shape");
    let k = m.components.len();
    let eye =
        ArrayD::from_shape_fn(IxDyn(&[k, m.d]), |i| if m.components[i[0]] == i[1] { 1.0f32 } else { 0.0 });
    let names: Vec<&str> = graph.outputs.iter().map(|o| o.name.as_str()).collect();
    let maps = run(&graph.to_bytes(), vec![(&m.input, x), (compiler::COTANGENT, eye)], &names);

    let mut report = Vec::new();
    for (li, layer) in m.layers.iter().enumerate() {
        let out = graph.outputs.iter().position(|o| o.layer_index == li).expect("map output of layer");
        let got = &maps[out];
        let reference: ArrayD<f64> = ndarray_npy::read_npy(arch_dir().join(&layer.reference)).unwrap();
        let mut want_shape = vec![n, k];
        want_shape.extend(&layer.shape);
        assert_eq!(reference.shape(), want_shape.as_slice(), "{name} {}: reference shape", layer.key);
        let per_row: usize = layer.shape.iter().product();
        assert_eq!(
            got.len(),
            n * k * per_row,
            "{name} {}: map size {:?} for layer {:?}",
            layer.key,
            got.shape(),
            layer.shape
        );
        let got: Vec<f32> = got.iter().copied().collect();
        let want: Vec<f64> = reference.iter().copied().collect();
        assert_eq!(got.len(), want.len(), "{name} {}: flattened lengths", layer.key);
        let mut worst = 0.0f64;
        for (row, (a, r)) in got.chunks(per_row).zip(want.chunks(per_row)).enumerate() {
            let norm_r = r.iter().map(|v| v * v).sum::<f64>().sqrt();
            assert!(norm_r > 0.0, "{name} {}: reference row {row} is zero", layer.key);
            let diff = a.iter().zip(r).map(|(&a, &r)| (a as f64 - r).powi(2)).sum::<f64>().sqrt();
            let rel = diff / norm_r;
            assert!(
                rel <= REL_TOL,
                "{name} layer {} ({}): sample {} component {}: relative error {rel:.2e} > {REL_TOL:.0e}",
                layer.key,
                layer.name,
                row / k,
                m.components[row % k]
            );
            worst = worst.max(rel);
        }
        report.push(format!("{} {worst:.1e}", layer.key));
    }
    eprintln!(
        "{name:14} opset {:2}  compiled in {compile_s:.2} s  worst relative row error: {}",
        m.opset,
        report.join(", ")
    );
}

/// The models with a test below; a model added to the manifest must get one.
const MODELS: [&str; 10] = [
    "resnet",
    "mobilenetv3",
    "convnext",
    "convnext_op20",
    "shufflenetv2",
    "vit",
    "vit_reg",
    "vit_dynamo",
    "swin",
    "efficientvit",
];

#[test]
fn every_manifest_model_has_a_test() {
    let mut listed: Vec<String> = arch_manifest().into_iter().map(|m| m.name).collect();
    listed.sort();
    let mut tested: Vec<String> = MODELS.iter().map(|s| s.to_string()).collect();
    tested.sort();
    assert_eq!(listed, tested);
}

/// The fixtures themselves, independent of the compiler: each layer tensor exists with the recorded
/// shape, the embedding is `[N, D]`, and the references have one row per input and component.
#[test]
fn fixtures_match_their_manifest() {
    for m in arch_manifest() {
        let bytes = std::fs::read(arch_dir().join(&m.file)).unwrap();
        let model = onnx::decode(&bytes).unwrap();
        let x: ArrayD<f32> = ndarray_npy::read_npy(arch_dir().join(&m.inputs_file)).unwrap();
        let n = x.shape()[0];
        assert_eq!(m.components.len(), 4, "{}: components", m.name);
        assert!(m.components.iter().all(|&c| c < m.d), "{}: component out of range", m.name);
        for layer in &m.layers {
            let out = run(
                &with_output(&model, &layer.name),
                vec![(&m.input, x.clone())],
                &[m.embedding.as_str(), layer.name.as_str()],
            );
            assert_eq!(out[0].shape(), &[n, m.d], "{}: embedding shape", m.name);
            assert_eq!(&out[1].shape()[1..], layer.shape.as_slice(), "{} {}: layer shape", m.name, layer.key);
            let reference: ArrayD<f64> = ndarray_npy::read_npy(arch_dir().join(&layer.reference)).unwrap();
            let mut want = vec![n, m.components.len()];
            want.extend(&layer.shape);
            assert_eq!(reference.shape(), want.as_slice(), "{} {}: reference shape", m.name, layer.key);
        }
    }
}

#[test]
fn resnet() {
    check("resnet");
}

#[test]
fn mobilenetv3() {
    check("mobilenetv3");
}

#[test]
fn convnext() {
    check("convnext");
}

#[test]
fn convnext_op20() {
    check("convnext_op20");
}

#[test]
fn shufflenetv2() {
    check("shufflenetv2");
}

#[test]
fn vit() {
    check("vit");
}

#[test]
fn vit_reg() {
    check("vit_reg");
}

#[test]
fn vit_dynamo() {
    check("vit_dynamo");
}

#[test]
fn swin() {
    check("swin");
}

#[test]
fn efficientvit() {
    check("efficientvit");
}
