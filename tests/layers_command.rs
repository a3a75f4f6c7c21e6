//! `agent layers` on committed models: the real binary, its table and its JSON.

mod common;

use std::process::Command;

use common::repo_root;

fn layers(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_agent")).arg("layers").args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn model(name: &str) -> String {
    repo_root().join("tests/models").join(name).display().to_string()
}

#[test]
fn names_the_node_that_blocks_a_tensor_and_passes_the_others() {
    let m = model("blocked_sin.onnx");
    let (code, stdout, stderr) = layers(&["--model", &m, "--embedding", "z", "--json"]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(r["embedding"], "z");
    let t = |name: &str| r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == name).cloned();
    let h1 = t("h1").expect("h1 listed");
    assert_eq!(h1["monitorable"], true, "{h1}");
    assert_eq!((h1["op"].as_str(), h1["layout"].as_str()), (Some("Conv"), Some("nchw")));
    assert_eq!(h1["shape"], serde_json::json!([4, 8, 8]));
    let h0 = t("h0").expect("h0 listed");
    assert_eq!(h0["monitorable"], false, "{h0}");
    assert_eq!(h0["blocked_by"]["op"], "Sin", "{h0}");
    assert_eq!(h0["blocked_by"]["node"], "sin", "{h0}");
    // Sin's output is itself blocked by nothing after it: only Conv, Relu, Flatten, Gemm follow.
    assert_eq!(t("s").expect("s listed")["monitorable"], true);
    assert!(h0["depth"].as_u64() < h1["depth"].as_u64());
    // The embedding and the tensors after it are not layers.
    assert!(t("z").is_none());

    // The table says the same for people.
    let (code, stdout, _) = layers(&["--model", &m, "--embedding", "z"]);
    assert_eq!(code, 0);
    let line = |name: &str| stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or("");
    assert!(line("h0").contains("blocked by sin (Sin): no gradient rule"), "{stdout}");
    assert!(line("h1").ends_with(" ok"), "{stdout}");
}

#[test]
fn lists_embedding_candidates_and_token_layouts_without_an_embedding() {
    let (code, stdout, stderr) = layers(&["--model", &model("tiny_vit.onnx")]);
    assert_eq!(code, 0, "{stdout}\n{stderr}");
    assert!(stdout.contains("embedding candidates"), "{stdout}");
    assert!(stdout.contains("  embedding [batch, 6] (model output)"), "{stdout}");
    assert!(stdout.contains("checked against embedding embedding"), "{stdout}");
    let line = |name: &str| stdout.lines().find(|l| l.split_whitespace().nth(1) == Some(name)).unwrap_or("");
    for (tensor, layout, map) in [
        ("patches", "nchw", "4x4"),
        ("patches_nhwc", "nhwc", "4x4"),
        ("patch_tokens", "tokens", "4x4"),
        ("block1", "tokens", "4x4+1"),
    ] {
        let l = line(tensor);
        assert!(
            l.contains(&format!(" {layout} ")) && l.contains(&format!(" {map} ")) && l.ends_with(" ok"),
            "{tensor}: {l}\n{stdout}"
        );
    }
    // The token-mixing block transposes to [C, T] and mixes tokens with a MatMul: channels first there,
    // channels last again after the transpose back.
    for (tensor, layout) in
        [("mix_in", "nchw"), ("mix_matmul", "nchw"), ("act2", "nchw"), ("block2", "tokens")]
    {
        assert!(line(tensor).contains(&format!(" {layout} ")), "{tensor}: {}\n{stdout}", line(tensor));
    }
    let (code, _, stderr) = layers(&["--model", &model("tiny_vit.onnx"), "--embedding", "block1"]);
    assert_eq!(code, 1);
    assert!(stderr.contains("\"block1\" must be rank 2"), "{stderr}");
}

/// Auto-detection on models exported by PyTorch (tests/models/arch): timm ViT blocks are tokens with
/// the class token as prefix (and 4 registers more in vit_reg), Swin stages are channels last, and
/// the convolutional stem stays channels first.
#[test]
fn reads_exported_transformer_layers() {
    for (file, tensor, layout, map) in [
        ("arch/vit.onnx", "/blocks/blocks.1/Add_1_output_0", "tokens", "4x4+1"),
        ("arch/vit.onnx", "/patch_embed/proj/Conv_output_0", "nchw", "4x4"),
        ("arch/vit_reg.onnx", "/blocks/blocks.1/Add_1_output_0", "tokens", "4x4+5"),
        ("arch/swin.onnx", "/layers/layers.1/blocks/blocks.1/Reshape_9_output_0", "nhwc", "8x8"),
        (
            "arch/swin.onnx",
            "/layers/layers.0/blocks/blocks.0/norm2/LayerNormalization_output_0",
            "tokens",
            "16x16",
        ),
    ] {
        let (code, stdout, stderr) = layers(&["--model", &model(file), "--json"]);
        assert_eq!(code, 0, "{file}: {stderr}");
        let r: serde_json::Value = serde_json::from_str(&stdout).unwrap();
        let t = r["tensors"].as_array().unwrap().iter().find(|t| t["name"] == tensor);
        let t = t.unwrap_or_else(|| panic!("{file}: {tensor} not listed"));
        let grid = format!("{}x{}", t["grid"][0], t["grid"][1]);
        let got = match t["prefix_tokens"].as_u64().unwrap() {
            0 => grid,
            p => format!("{grid}+{p}"),
        };
        assert_eq!((t["layout"].as_str().unwrap(), got.as_str()), (layout, map), "{file} {tensor}: {t}");
    }
}
