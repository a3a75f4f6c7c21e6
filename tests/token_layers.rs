//! Token and channels-last layers (docs/spec/attribution-graph.md#layer-layouts) on the committed
//! ViT-like model `tiny_vit`: its patches exist in every layout — `patches` [N,8,4,4] (nchw), `patches_nhwc`
//! [N,4,4,8] (nhwc), `patch_tokens` [N,16,8] (tokens, no prefix) — and `block1`/`block2` [N,17,8] are
//! token layers with a class token in front.

mod common;

use std::process::Command;

use agent::compiler::{self, AttributionGraph, CompileOptions, LayerLayout, LayoutRequest, MapOutput};
use agent::onnx;
use agent::scores::{Aggregation, Method};
use common::*;
use ndarray::{ArrayD, IxDyn};

const D: usize = 6;

fn model_path() -> std::path::PathBuf {
    repo_root().join("tests/models/tiny_vit.onnx")
}

fn compile(
    layers: &[&str],
    layouts: Vec<LayoutRequest>,
    agg: Option<Aggregation>,
    methods: &[Method],
) -> AttributionGraph {
    let model = onnx::decode(&std::fs::read(model_path()).unwrap()).unwrap();
    let opts = CompileOptions {
        embedding: "embedding".into(),
        layers: layers.iter().map(|s| s.to_string()).collect(),
        methods: methods.to_vec(),
        channel_agg: agg,
        smoothing_samples: 1,
        layouts,
    };
    compiler::compile(&model, "test", &opts).unwrap()
}

fn auto(n: usize) -> Vec<LayoutRequest> {
    vec![LayoutRequest::default(); n]
}

/// Every output of the graph on `x` with the identity cotangent (all `D` rows).
fn maps(g: &AttributionGraph, x: &ArrayD<f32>) -> Vec<ArrayD<f32>> {
    let eye = ArrayD::from_shape_fn(IxDyn(&[D, D]), |i| if i[0] == i[1] { 1.0f32 } else { 0.0 });
    let names: Vec<&str> = g.outputs.iter().map(|o| o.name.as_str()).collect();
    run(&g.to_bytes(), vec![("x", x.clone()), (compiler::COTANGENT, eye)], &names)
}

fn max_abs(a: &ArrayD<f32>) -> f32 {
    a.iter().fold(0.0f32, |m, v| m.max(v.abs()))
}

#[test]
fn auto_detection_reads_every_layout_with_the_right_prefix() {
    let layers = ["patches", "patches_nhwc", "patch_tokens", "block1", "block2"];
    let g = compile(&layers, auto(5), Some(Aggregation::Abs), &[Method::Vanilla]);
    let got: Vec<(LayerLayout, usize, [usize; 2], usize)> =
        g.views.iter().map(|v| (v.layout, v.channels, v.grid, v.prefix_tokens)).collect();
    assert_eq!(
        got,
        vec![
            (LayerLayout::Nchw, 8, [4, 4], 0),
            (LayerLayout::Nhwc, 8, [4, 4], 0),
            (LayerLayout::Tokens, 8, [4, 4], 0),
            (LayerLayout::Tokens, 8, [4, 4], 1),
            (LayerLayout::Tokens, 8, [4, 4], 1),
        ],
        "{:#?}",
        g.views
    );
    assert!(g.views.iter().all(|v| v.detected));
    assert!(g.views[0].reason.contains("Conv"), "{}", g.views[0].reason);
    assert!(g.views[3].reason.contains("17 tokens = 1 prefix + 4x4 grid"), "{}", g.views[3].reason);
    for o in &g.outputs {
        assert_eq!((o.channels, o.height, o.width), (8, 4, 4), "{o:?}");
    }
    // Without layouts (graphs compiled before them) the same token layer is [C = 17, L = 8].
    let old = compile(&["block1"], vec![], Some(Aggregation::Abs), &[Method::Vanilla]);
    assert_eq!((old.views[0].layout, old.outputs[0].height, old.outputs[0].width), (LayerLayout::Nchw, 8, 1));
}

#[test]
fn a_token_map_is_the_jacobian_over_channels_on_the_patch_grid() {
    let x = uniform(&[2, 3, 16, 16], 11);
    // The view, raw: [B, K, C, gh, gw] against the unviewed Jacobian [B, K, T, C, 1].
    let viewed = compile(&["block1"], auto(1), None, &[Method::Vanilla]);
    let plain = compile(&["block1"], vec![LayoutRequest::NCHW], None, &[Method::Vanilla]);
    let v = &maps(&viewed, &x)[0];
    let j = &maps(&plain, &x)[0];
    assert_eq!(v.shape(), &[2, D, 8, 4, 4]);
    assert_eq!(j.shape(), &[2, D, 17, 8, 1]);
    for b in 0..2 {
        for k in 0..D {
            for c in 0..8 {
                for gy in 0..4 {
                    for gx in 0..4 {
                        let t = 1 + gy * 4 + gx;
                        assert_eq!(v[[b, k, c, gy, gx]], j[[b, k, t, c, 0]], "b {b} k {k} c {c} token {t}");
                    }
                }
            }
        }
    }

    // And against finite differences of the forward model: the `mean` map at grid cell (gy, gx) is the
    // derivative of z_k along "every channel of token 1 + 4·gy + gx moves by 1/C".
    let mean = compile(&["block1"], auto(1), Some(Aggregation::Mean), &[Method::Vanilla]);
    let m = &maps(&mean, &x)[0];
    assert_eq!(m.shape(), &[2, D, 4, 4]);
    let model = onnx::decode(&std::fs::read(model_path()).unwrap()).unwrap();
    let h = run(&with_output(&model, "block1"), vec![("x", x.clone())], &["block1"]).remove(0);
    let tail = tail_model(&model, "block1", "embedding");
    let eps = 1e-2f32;
    let scale = max_abs(m);
    let mut worst = 0.0f32;
    for b in 0..2 {
        let mut rows = Vec::new();
        for cell in 0..16 {
            for sign in [1.0f32, -1.0] {
                let mut hb = h.index_axis(ndarray::Axis(0), b).to_owned();
                for c in 0..8 {
                    hb[[1 + cell, c]] += sign * eps / 8.0;
                }
                rows.push(hb);
            }
        }
        let views: Vec<_> = rows.iter().map(|r| r.view()).collect();
        let hs = ndarray::stack(ndarray::Axis(0), &views).unwrap();
        let xs = ndarray::stack(ndarray::Axis(0), &vec![x.index_axis(ndarray::Axis(0), b); 32]).unwrap();
        let z = run(&tail, vec![("block1", hs), ("x", xs)], &["embedding"]).remove(0);
        for cell in 0..16 {
            for k in 0..D {
                let fd = (z[[2 * cell, k]] - z[[2 * cell + 1, k]]) / (2.0 * eps);
                let an = m[[b, k, cell / 4, cell % 4]];
                worst = worst.max((fd - an).abs() / scale);
            }
        }
    }
    assert!(worst < 1e-2, "token map vs finite differences: worst relative error {worst}");
}

#[test]
fn nhwc_and_token_views_of_the_same_patches_give_the_nchw_maps() {
    let x = uniform(&[3, 3, 16, 16], 5);
    for agg in [Aggregation::Mean, Aggregation::Abs, Aggregation::Var] {
        let g = compile(&["patches", "patches_nhwc", "patch_tokens"], auto(3), Some(agg), &Method::ALL);
        let out = maps(&g, &x);
        let by = |layer: &str, m: Method| -> &ArrayD<f32> {
            let i = g.outputs.iter().position(|o: &MapOutput| o.layer == layer && o.method == m).unwrap();
            &out[i]
        };
        for m in Method::ALL {
            let reference = by("patches", m);
            assert!(max_abs(reference) > 0.0, "{m:?}: empty map");
            for other in ["patches_nhwc", "patch_tokens"] {
                let diff = (by(other, m) - reference).mapv(f32::abs);
                let rel = max_abs(&diff) / max_abs(reference);
                assert!(rel < 1e-5, "{other} {m:?} {agg:?}: differs from the nchw map by {rel}");
            }
        }
    }
}

#[test]
fn smoothed_maps_average_after_the_view() {
    // Two smoothing points per sample: the batch of 4 is 2 samples. The attribution is averaged over
    // each sample's points before the channel aggregation (spec), after the view.
    let model = onnx::decode(&std::fs::read(model_path()).unwrap()).unwrap();
    let layers = ["patches", "patches_nhwc", "patch_tokens", "block1"];
    let smoothed = |agg| {
        let opts = CompileOptions {
            embedding: "embedding".into(),
            layers: layers.iter().map(|s| s.to_string()).collect(),
            methods: Method::ALL.to_vec(),
            channel_agg: Some(agg),
            smoothing_samples: 2,
            layouts: auto(4),
        };
        compiler::compile(&model, "test", &opts).unwrap()
    };
    let x = uniform(&[4, 3, 16, 16], 9);
    // `mean` is linear in the attribution (and Grad-CAM is averaged after its ReLU): the smoothed map
    // is the mean of the points' maps.
    let (g, plain) =
        (smoothed(Aggregation::Mean), compile(&layers, auto(4), Some(Aggregation::Mean), &Method::ALL));
    let (s, p) = (maps(&g, &x), maps(&plain, &x));
    for (i, o) in g.outputs.iter().enumerate() {
        assert_eq!(s[i].shape()[0], 2, "{}", o.name);
        let want =
            (&p[i].slice(ndarray::s![0..;2, .., .., ..]) + &p[i].slice(ndarray::s![1..;2, .., .., ..])) / 2.0;
        let rel = max_abs(&(&s[i] - &want).into_dyn()) / max_abs(&want.into_dyn());
        assert!(
            rel < 1e-5,
            "{} ({:?}): smoothed map differs from the mean of its points by {rel}",
            o.layer,
            o.method
        );
    }
    // `var` is not linear: the three views of the patches must still agree.
    let g = smoothed(Aggregation::Var);
    let s = maps(&g, &x);
    for m in Method::ALL {
        let at = |layer: &str| &s[g.outputs.iter().position(|o| o.layer == layer && o.method == m).unwrap()];
        for other in ["patches_nhwc", "patch_tokens"] {
            let rel = max_abs(&(at(other) - at("patches"))) / max_abs(at("patches"));
            assert!(rel < 1e-5, "{other} {m:?}: smoothed var map differs from the nchw one by {rel}");
        }
    }
}

#[test]
fn configured_layouts_are_checked_against_the_shape() {
    let model = onnx::decode(&std::fs::read(model_path()).unwrap()).unwrap();
    let try_compile = |layer: &str, req: LayoutRequest| {
        let opts = CompileOptions {
            embedding: "embedding".into(),
            layers: vec![layer.into()],
            methods: vec![Method::Vanilla],
            channel_agg: Some(Aggregation::Abs),
            smoothing_samples: 1,
            layouts: vec![req],
        };
        compiler::compile(&model, "test", &opts).map_err(|e| format!("{e:#}"))
    };
    let tokens = |grid, prefix| LayoutRequest { layout: LayerLayout::Tokens, grid, prefix_tokens: prefix };
    let e = try_compile("patches", tokens(None, None)).unwrap_err();
    assert!(e.contains("patches") && e.contains("[batch, T, C]"), "{e}");
    let e = try_compile("block1", tokens(Some([4, 4]), Some(2))).unwrap_err();
    assert!(e.contains("17 tokens") && e.contains("4x4"), "{e}");
    // A grid the user states: 17 tokens = 1 + 2 x 8.
    let g = try_compile("block1", tokens(Some([2, 8]), None)).unwrap();
    assert_eq!((g.outputs[0].height, g.outputs[0].width, g.outputs[0].prefix_tokens), (2, 8, 1));
}

#[test]
fn old_graph_metadata_reads_as_channels_first() {
    let opts: CompileOptions = serde_json::from_str(
        r#"{"embedding":"z","layers":["h"],"methods":["vanilla"],"channel_agg":"abs","smoothing_samples":1}"#,
    )
    .unwrap();
    assert!(opts.layouts.is_empty());
    let out: MapOutput = serde_json::from_str(
        r#"{"name":"attr/0/vanilla","layer":"h","layer_index":0,"method":"vanilla","channels":4,"height":8,"width":8}"#,
    )
    .unwrap();
    assert_eq!((out.layout, out.prefix_tokens), (LayerLayout::Nchw, 0));
}

fn agent() -> Command {
    Command::new(env!("CARGO_BIN_EXE_agent"))
}

fn write_input(dir: &std::path::Path) -> std::path::PathBuf {
    use ndarray_npy::WriteNpyExt;
    let p = dir.join("x.npy");
    uniform(&[2, 3, 16, 16], 3).write_npy(std::fs::File::create(&p).unwrap()).unwrap();
    p
}

#[test]
fn score_json_and_check_show_the_decision() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(d.path());
    let model = model_path();
    let out = agent()
        .args(["score", "--json", "--embedding", "embedding", "--layer", "vit=block1", "--layer", "patches"])
        .args(["--layout", "patches=nhwc"])
        .arg("--model")
        .arg(&model)
        .arg(&input)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{stderr}");
    let rows: Vec<serde_json::Value> = stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
    assert_eq!(rows.len(), 4, "{stdout}");
    for r in &rows {
        match r["layer"].as_str().unwrap() {
            "vit" => {
                assert_eq!((r["layout"].as_str(), r["prefix_tokens"].as_u64()), (Some("tokens"), Some(1)));
                assert_eq!(r["map"], serde_json::json!([4, 4]));
            }
            // Configured against the evidence: the [8, 4, 4] conv output read as [H=8, W=4, C=4].
            "patches" => {
                assert_eq!(r["layout"].as_str(), Some("nhwc"));
                assert_eq!(r["map"], serde_json::json!([8, 4]));
            }
            other => panic!("unexpected layer {other}"),
        }
        assert!(r["noise_score"].as_f64().unwrap().is_finite());
    }
    assert!(
        stderr.contains("layer vit: tokens [17, 8] -> 8 channels x 4x4 map, 1 prefix token (auto:"),
        "{stderr}"
    );

    // agent check prints the same decision for a configured layer.
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let cfg = d.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
name = "vit"
path = "{model}"
embedding = "embedding"
layers = [
  {{ name = "block2", tensor = "block2" }},
  {{ name = "grid", tensor = "block1", layout = "tokens", grid = [2, 8] }},
]

[engine]
providers = ["cpu"]

[baseline]
reference_dir = "{inbox}"

[window]
samples = 8

[[sources]]
type = "dir"
path = "{inbox}"
"#,
            model = model.display(),
            inbox = inbox.display()
        ),
    )
    .unwrap();
    let out = agent().args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(
        stdout.contains("layer block2 (block2): tokens [17, 8] -> 8 channels x 4x4 map, 1 prefix token (auto: channels last"),
        "{stdout}"
    );
    assert!(
        stdout.contains(
            "layer grid (block1): tokens [17, 8] -> 8 channels x 2x8 map, 1 prefix token (configured"
        ),
        "{stdout}"
    );

    // A layout key that contradicts itself is a configuration problem, named.
    let bad = std::fs::read_to_string(&cfg).unwrap().replace("layout = \"tokens\"", "layout = \"nchw\"");
    std::fs::write(&cfg, bad).unwrap();
    let out = agent().args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(
        stdout.contains("model.layers[1].layout: grid and prefix_tokens apply to token layers"),
        "{stdout}"
    );
}

#[test]
fn compile_takes_layout_flags_and_lists_the_views() {
    let d = tempfile::tempdir().unwrap();
    let out = agent()
        .args(["compile", "--embedding", "embedding", "--layer", "block1", "--layer", "patches_nhwc"])
        .args(["--layout", "block1=tokens,grid=2x8", "--channel-agg", "mean", "--model"])
        .arg(model_path())
        .arg("--out")
        .arg(d.path().join("g.onnx"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("output attr/0/vanilla   [N, K, 2, 8]"), "{stdout}");
    assert!(
        stdout.contains("layer block1: tokens [17, 8] -> 8 channels x 2x8 map, 1 prefix token (configured"),
        "{stdout}"
    );
    assert!(
        stdout.contains("layer patches_nhwc: nhwc [4, 4, 8] -> 8 channels x 4x4 map (auto: channels last"),
        "{stdout}"
    );
    // A flag naming no layer is refused by name.
    let out = agent()
        .args([
            "compile",
            "--embedding",
            "embedding",
            "--layer",
            "block1",
            "--layout",
            "block9=tokens",
            "--model",
        ])
        .arg(model_path())
        .arg("--out")
        .arg(d.path().join("g.onnx"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("\"block9\", which is not a layer"), "{stderr}");
}

#[test]
fn explain_draws_a_token_map_on_the_image() {
    let d = tempfile::tempdir().unwrap();
    let input = write_input(d.path());
    let png = d.path().join("vit.png");
    let out = agent()
        .args(["explain", "--embedding", "embedding", "--layer", "block1", "--scale", "4", "--sample", "1"])
        .arg("--model")
        .arg(model_path())
        .arg(&input)
        .arg("--out")
        .arg(&png)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", String::from_utf8_lossy(&out.stderr));
    let img = image::open(&png).unwrap().to_rgb8();
    // Input panel and one map panel, 16 × 4 pixels each, 4-pixel gaps.
    assert_eq!((img.width(), img.height()), (2 * 64 + 3 * 4, 64 + 8));
    // The map panel is the input tinted by the 4 x 4 token map, each cell upscaled to 16 x 16 pixels.
    let panel_x = 4 + 64 + 4;
    assert_ne!(img.get_pixel(panel_x, 4).0, img.get_pixel(4, 4).0, "the map panel is drawn over the input");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(stdout.contains("columns: input, block1"), "{stdout}");
}

/// The exported architecture fixtures (tests/models/arch): timm ViT with a class token, ViT with a
/// class token and 4 registers, and Swin (channels-last stages). Auto-detection must read their
/// middle layers as tokens with prefix 1 and 5 and as nhwc, and the viewed raw maps must equal the
/// float64-autograd Jacobian rows PyTorch computed, rearranged by the documented view.
#[test]
fn exported_vit_and_swin_layers_match_float64_autograd_through_the_view() {
    use ndarray_npy::ReadNpyExt;
    let dir = repo_root().join("tests/models/arch");
    let manifest: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("manifest.json")).unwrap()).unwrap();
    for (name, want_layout, want_prefix, want_grid) in [
        ("vit", LayerLayout::Tokens, 1, [4, 4]),
        ("vit_reg", LayerLayout::Tokens, 5, [4, 4]),
        ("swin", LayerLayout::Nhwc, 0, [8, 8]),
    ] {
        let e = manifest.iter().find(|e| e["name"] == name).unwrap();
        let layer = e["layers"].as_array().unwrap().iter().find(|l| l["key"] == "mid").unwrap();
        let tensor = layer["name"].as_str().unwrap();
        let model = onnx::decode(&std::fs::read(dir.join(e["file"].as_str().unwrap())).unwrap()).unwrap();
        let opts = CompileOptions {
            embedding: e["embedding"].as_str().unwrap().into(),
            layers: vec![tensor.into()],
            methods: vec![Method::Vanilla],
            channel_agg: None,
            smoothing_samples: 1,
            layouts: auto(1),
        };
        let g = compiler::compile(&model, "test", &opts).unwrap_or_else(|err| panic!("{name}: {err:#}"));
        let v = &g.views[0];
        assert_eq!(
            (v.layout, v.prefix_tokens, v.grid),
            (want_layout, want_prefix, want_grid),
            "{name}: {v:?}"
        );
        let d = e["d"].as_u64().unwrap() as usize;
        let comps: Vec<usize> =
            e["components"].as_array().unwrap().iter().map(|c| c.as_u64().unwrap() as usize).collect();
        let rows =
            ArrayD::from_shape_fn(
                IxDyn(&[comps.len(), d]),
                |i| if comps[i[0]] == i[1] { 1.0f32 } else { 0.0 },
            );
        let x = ArrayD::<f32>::read_npy(
            std::fs::File::open(dir.join(e["inputs_file"].as_str().unwrap())).unwrap(),
        )
        .unwrap();
        let input = e["input"].as_str().unwrap();
        let m =
            run(&g.to_bytes(), vec![(input, x), (compiler::COTANGENT, rows)], &[g.outputs[0].name.as_str()])
                .remove(0);
        let reference =
            ArrayD::<f64>::read_npy(std::fs::File::open(dir.join(layer["ref"].as_str().unwrap())).unwrap())
                .unwrap();
        let [gh, gw] = v.grid;
        let (mut num, mut den) = (0.0f64, 0.0f64);
        for b in 0..2 {
            for k in 0..comps.len() {
                for c in 0..v.channels {
                    for i in 0..gh {
                        for j in 0..gw {
                            let r = match v.layout {
                                LayerLayout::Tokens => reference[[b, k, v.prefix_tokens + i * gw + j, c]],
                                _ => reference[[b, k, i, j, c]],
                            };
                            num += (m[[b, k, c, i, j]] as f64 - r).powi(2);
                            den += r * r;
                        }
                    }
                }
            }
        }
        let rel = (num / den).sqrt();
        assert!(rel < 1e-4, "{name}: viewed map vs float64 autograd rows: relative error {rel:.2e}");
    }
}
