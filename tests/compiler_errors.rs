//! The compiler refuses what it cannot differentiate, with messages that name the problem.

use agent::compiler::{self, CompileOptions};
use agent::onnx::{self, proto::*};
use agent::scores::Method;

fn node(op: &str, inputs: &[&str], output: &str) -> NodeProto {
    NodeProto {
        name: format!("{op}_{output}"),
        op_type: op.into(),
        input: inputs.iter().map(|s| s.to_string()).collect(),
        output: vec![output.into()],
        ..Default::default()
    }
}

/// x [N, 4] → Gemm → h → (op) → z, plus a side branch x → Tanh → side.
fn model(tail_op: &str, z_dims: &[i64]) -> ModelProto {
    let w: Vec<f32> = (0..16).map(|i| (i as f32 * 0.37).sin()).collect();
    let mut nodes = vec![node("Gemm", &["x", "w"], "h"), node("Tanh", &["x"], "side")];
    let mut inits = vec![onnx::tensor_f32("w", &[4, 4], &w)];
    if z_dims.len() == 2 {
        nodes.push(node(tail_op, &["h"], "z"));
    } else {
        inits.push(onnx::tensor_i64("shape", &[3], z_dims));
        nodes.push(node(tail_op, &["h"], "t"));
        nodes.push(node("Reshape", &["t", "shape"], "z"));
    }
    ModelProto {
        ir_version: 8,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(GraphProto {
            name: "g".into(),
            node: nodes,
            initializer: inits,
            input: vec![onnx::value_info("x", data_type::FLOAT, &[Err("N"), Ok(4)])],
            output: vec![
                onnx::value_info("z", data_type::FLOAT, &[Err("N"), Ok(4)]),
                onnx::value_info("side", data_type::FLOAT, &[Err("N"), Ok(4)]),
            ],
            ..Default::default()
        }),
        ..Default::default()
    }
}

fn compile_err(m: &ModelProto, layer: &str) -> String {
    let opts = CompileOptions {
        embedding: "z".into(),
        layers: vec![layer.into()],
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        layouts: vec![],
    };
    match compiler::compile(m, "t", &opts) {
        Ok(_) => panic!("compiling with layer {layer:?} should fail"),
        Err(e) => format!("{e:#}"),
    }
}

#[test]
fn a_model_with_supported_ops_compiles() {
    let opts = CompileOptions {
        embedding: "z".into(),
        layers: vec!["h".into()],
        methods: vec![Method::Vanilla],
        channel_agg: None,
        smoothing_samples: 1,
        layouts: vec![],
    };
    let g = compiler::compile(&model("Sigmoid", &[-1, 4]), "t", &opts).unwrap();
    assert_eq!(g.embedding_dim, 4);
    assert_eq!(g.outputs[0].channels, 4);
}

#[test]
fn unsupported_operator_names_node_op_and_layer() {
    let e = compile_err(&model("Softmax", &[-1, 4]), "h");
    for part in ["Softmax_z", "Softmax", "layer h", "no gradient rule"] {
        assert!(e.contains(part), "{e:?} should mention {part:?}");
    }
}

#[test]
fn unknown_tensor_is_named_with_suggestions() {
    let e = compile_err(&model("Sigmoid", &[-1, 4]), "hh");
    assert!(e.contains("\"hh\"") && e.contains("not a tensor of the model"), "{e}");
}

#[test]
fn layer_that_does_not_reach_the_embedding_is_refused() {
    let e = compile_err(&model("Sigmoid", &[-1, 4]), "side");
    assert!(e.contains("not an ancestor of the embedding"), "{e}");
}

#[test]
fn weights_are_not_layers() {
    let e = compile_err(&model("Sigmoid", &[-1, 4]), "w");
    assert!(e.contains("weight (initializer)"), "{e}");
}

#[test]
fn embedding_must_be_rank_two() {
    let e = compile_err(&model("Sigmoid", &[-1, 2, 2]), "h");
    assert!(e.contains("must be rank 2"), "{e}");
}

#[test]
fn old_opsets_are_refused_with_a_way_out() {
    let mut m = model("Sigmoid", &[-1, 4]);
    m.opset_import[0].version = 11;
    let e = compile_err(&m, "h");
    assert!(e.contains("opset 11") && e.contains("version_converter"), "{e}");
}
