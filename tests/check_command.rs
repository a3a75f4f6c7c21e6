//! `agent check` names every problem of a configuration and exits 1.

mod support;

use std::process::Command;

#[test]
fn check_lists_three_mistakes_and_exits_1() {
    let d = tempfile::tempdir().unwrap();
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let cfg = d.path().join("agent.toml");
    // Mistakes: the model file is missing, the window has no bound, the listen address is not one.
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
name = "digits"
path = "{d}/no-such-model.onnx"
embedding = "embedding"
layers = [{{ name = "block2", tensor = "/pool2/MaxPool_output_0" }}]

[baseline]
reference_dir = "{d}"

[window]

[server]
listen = "not-an-address"

[[sources]]
type = "dir"
path = "{inbox}"
"#,
            d = d.path().display(),
            inbox = inbox.display()
        ),
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_agent")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(
        out.status.code(),
        Some(1),
        "stdout: {stdout}\nstderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    for key in ["model.path", "window", "server.listen"] {
        assert!(stdout.lines().any(|l| l.contains(&format!(": {key}: "))), "{key} not named in:\n{stdout}");
    }
    assert!(stdout.lines().all(|l| l.starts_with(&cfg.display().to_string())), "{stdout}");
}

#[test]
fn check_names_an_unknown_key() {
    let d = tempfile::tempdir().unwrap();
    let cfg = d.path().join("agent.toml");
    std::fs::write(
        &cfg,
        "[model]\nname = \"m\"\npath = \"m.onnx\"\nembedding = \"e\"\nlayers = []\ncolour = \"red\"\n",
    )
    .unwrap();
    let out =
        Command::new(env!("CARGO_BIN_EXE_agent")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1));
    assert!(stdout.contains("colour") && stdout.contains("agent.toml"), "{stdout}");
}

/// The demo model with an http and an ingest source, and the given `[model.preprocessing]` lines.
fn sources_config(d: &std::path::Path, preprocessing: &str) -> std::path::PathBuf {
    support::DemoConfig {
        layers: vec![support::DEMO_LAYERS[1]],
        preprocessing: preprocessing.into(),
        rest: format!(
            r#"[[sources]]
type = "http"
name = "feed"
url = "http://127.0.0.1:1/feed"
state_dir = "{d}/feed"
mode = "stream"

[[sources]]
type = "ingest"
models = ["mnist"]
"#,
            d = d.display()
        ),
        ..support::DemoConfig::default()
    }
    .write(d)
}

#[test]
fn check_accepts_http_and_ingest_sources_and_checks_image_geometry() {
    let d = tempfile::tempdir().unwrap();
    let cfg = sources_config(d.path(), "resize = [32, 32]\ncrop = [28, 28]\nchannels = 1");
    let out =
        Command::new(env!("CARGO_BIN_EXE_agent")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.starts_with("OK: "), "{stdout}");
    // Images that cannot become the model's [1, 28, 28] input: both mistakes named.
    let cfg = sources_config(d.path(), "crop = [24, 24]\nchannels = 3");
    let out =
        Command::new(env!("CARGO_BIN_EXE_agent")).args(["check", "--config"]).arg(&cfg).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.contains("model.preprocessing: channels = 3"), "{stdout}");
    assert!(stdout.contains("model.preprocessing: crop = [24, 24]"), "{stdout}");
}
