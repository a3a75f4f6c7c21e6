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
    let e = compile_err(&model("Det", &[-1, 4]), "h");
    for part in ["Det_z", "Det", "layer h", "no gradient rule"] {
        assert!(e.contains(part), "{e:?} should mention {part:?}");
    }
}

#[test]
fn unknown_tensor_is_named_with_suggestions() {
    // A path whose last part names a tensor: that tensor is suggested.
    let e = compile_err(&model("Sigmoid", &[-1, 4]), "/block/h");
    assert!(e.contains("\"/block/h\"") && e.contains("not a tensor of the model"), "{e}");
    assert!(e.contains("did you mean: h?"), "{e}");
    // Nothing alike: the tensors nearest the embedding are listed instead.
    let e = compile_err(&model("Sigmoid", &[-1, 4]), "hh");
    assert!(e.contains("\"hh\"") && e.contains("not a tensor of the model"), "{e}");
    assert!(e.contains("tensors near the end of the graph: z"), "{e}");
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

/// `model(op)` with the tail node's inputs and attributes replaced.
fn with_tail(op: &str, inputs: &[&str], attrs: Vec<AttributeProto>) -> ModelProto {
    let mut m = model(op, &[-1, 4]);
    let n = m.graph.as_mut().unwrap().node.iter_mut().find(|n| n.op_type == op).unwrap();
    n.input = inputs.iter().map(|s| s.to_string()).collect();
    n.attribute = attrs;
    m
}

#[test]
fn a_pow_exponent_that_depends_on_a_layer_is_refused_by_name() {
    let e = compile_err(&with_tail("Pow", &["h", "h"], vec![]), "h");
    for part in ["Pow_z", "op Pow", "as input 1", "cannot differentiate"] {
        assert!(e.contains(part), "{e:?} should mention {part:?}");
    }
}

#[test]
fn softmax_over_the_batch_axis_is_refused() {
    let e = compile_err(&with_tail("Softmax", &["h"], vec![onnx::attr::int("axis", 0)]), "h");
    assert!(e.contains("Softmax_z") && e.contains("axis 0") && e.contains("after the batch axis"), "{e}");
}
