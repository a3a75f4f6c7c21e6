//! ONNX Runtime loads from the project-local install and runs a model the agent built in memory.

use agent::onnx::{self, proto::*};
use ndarray::Array2;

#[test]
fn runs_a_two_node_graph() {
    // y = Relu(x) + 1, built with the agent's own builders, so encoding is exercised too.
    let graph = GraphProto {
        name: "g".into(),
        node: vec![
            NodeProto {
                op_type: "Relu".into(),
                input: vec!["x".into()],
                output: vec!["r".into()],
                ..Default::default()
            },
            NodeProto {
                op_type: "Add".into(),
                input: vec!["r".into(), "one".into()],
                output: vec!["y".into()],
                ..Default::default()
            },
        ],
        initializer: vec![onnx::tensor_f32("one", &[], &[1.0])],
        input: vec![onnx::value_info("x", data_type::FLOAT, &[Err("N"), Ok(3)])],
        output: vec![onnx::value_info("y", data_type::FLOAT, &[Err("N"), Ok(3)])],
        ..Default::default()
    };
    let model = ModelProto {
        ir_version: 9,
        opset_import: vec![OperatorSetIdProto { domain: String::new(), version: 17 }],
        graph: Some(graph),
        ..Default::default()
    };
    let mut session = agent::runtime::cpu_session(&onnx::encode(&model)).expect("session");
    let x = Array2::from_shape_vec((2, 3), vec![-1.0f32, 0.5, 2.0, -3.0, 0.0, 1.0]).unwrap();
    let out = session.run(ort::inputs!["x" => ort::value::TensorRef::from_array_view(&x).unwrap()]).unwrap();
    let y = out["y"].try_extract_array::<f32>().unwrap();
    assert_eq!(y.as_slice().unwrap(), &[1.0, 1.5, 3.0, 1.0, 1.0, 2.0]);
}

/// When the chosen library does not load, the agent says what to install and exits non-zero.
#[test]
fn a_missing_runtime_names_the_fix() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_agent"))
        .env("ORT_DYLIB_PATH", "/nonexistent/libonnxruntime.so.1.31.1")
        .args(["score", "--model", "m.onnx", "--embedding", "e", "--layer", "l", "x.npy"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    for part in [
        "ONNX Runtime 1.31 was not found",
        "scripts/install-onnxruntime.sh",
        "ORT_DYLIB_PATH",
        "/nonexistent/",
    ] {
        assert!(stderr.contains(part), "{part:?} missing in: {stderr}");
    }
}
