//! `agent check` names every problem of a configuration and exits 1.

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
