//! The deployment files (Prometheus rules and their unit tests, PrometheusRule, Grafana dashboard,
//! systemd unit) pass `deploy/check.sh`, which installs `promtool` when it is missing.

use std::path::{Path, PathBuf};
use std::process::Command;

#[test]
fn deploy_check_script_passes() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root");
    let out = Command::new("bash")
        .arg(root.join("deploy/check.sh"))
        .current_dir(root)
        .output()
        .expect("run deploy/check.sh");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "deploy/check.sh failed ({}):\n{stdout}\n{stderr}", out.status);
    assert!(stdout.contains("deploy/check.sh: all checks passed"), "unexpected output:\n{stdout}");
}

/// The demo encoder's two layers, standing in for a shipped configuration's placeholder tensors.
const DEMO_TENSORS: [&str; 2] = ["/pool1/MaxPool_output_0", "/pool2/MaxPool_output_0"];

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root").to_path_buf()
}

/// The block scalar `key: |` of a YAML file, dedented (enough YAML for a ConfigMap's data).
fn yaml_block(yaml: &str, key: &str) -> String {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}: |"));
    assert!(lines.next().is_some(), "no `{key}: |` block");
    let mut out = Vec::new();
    let mut indent = None;
    for l in lines {
        if l.trim().is_empty() {
            out.push(String::new());
            continue;
        }
        let n = l.len() - l.trim_start().len();
        let block = *indent.get_or_insert(n);
        if n < block {
            break;
        }
        out.push(l[block..].to_string());
    }
    out.join("\n") + "\n"
}

/// Runs `agent check` on a configuration shipped in the repository, adapted to this machine: every
/// absolute path of a `path`/`*_dir` key moves under a temporary root, where the model (the demo
/// encoder) and the `dir` sources' inboxes are provided; `tensor` placeholders become the demo
/// encoder's layers; the baseline is to be built from the demo reference data
/// (`AGENT__BASELINE__REFERENCE_DIR`), and the token comes from `AGENT__SERVER__AUTH_TOKEN` as in
/// the sidecar. Everything else, every key name and value included, is checked as shipped.
fn check_shipped_config(what: &str, text: &str) {
    let d = tempfile::tempdir().unwrap();
    let tmp = d.path();
    let mut section = String::new();
    let mut tensors = 0;
    let mut out = String::new();
    for line in text.lines() {
        let t = line.trim_start();
        if t.starts_with('[') {
            section = t.split('#').next().unwrap().trim().to_string();
        }
        let Some((key, value)) = t.split_once('=').filter(|_| !t.starts_with('#')) else {
            out.push_str(line);
            out.push('\n');
            continue;
        };
        let (key, value) = (key.trim(), value.trim());
        let quoted = value.strip_prefix('"').and_then(|v| v.split_once('"')).map(|(v, _)| v);
        let indent = &line[..line.len() - t.len()];
        match quoted {
            Some(v) if key == "tensor" => {
                assert!(tensors < DEMO_TENSORS.len(), "{what}: more layers than the demo encoder has");
                out.push_str(&format!("{indent}tensor = \"{}\"  # was {v}\n", DEMO_TENSORS[tensors]));
                tensors += 1;
            }
            Some(v) if (key == "path" || key.ends_with("_dir")) && v.starts_with('/') => {
                let local = tmp.join(v.trim_start_matches('/'));
                match (section.as_str(), key) {
                    ("[model]", "path") => {
                        std::fs::create_dir_all(local.parent().unwrap()).unwrap();
                        std::fs::copy(root().join("models/digits/encoder.onnx"), &local).unwrap();
                    }
                    ("[[sources]]", "path") => std::fs::create_dir_all(&local).unwrap(),
                    _ => {}
                }
                out.push_str(&format!("{indent}{key} = \"{}\"\n", local.display()));
            }
            _ => {
                out.push_str(line);
                out.push('\n');
            }
        }
    }
    let cfg = tmp.join("agent.toml");
    std::fs::write(&cfg, &out).unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["check", "--config"])
        .arg(&cfg)
        .env("AGENT__BASELINE__REFERENCE_DIR", root().join("models/digits/reference.npy"))
        .env("AGENT__SERVER__AUTH_TOKEN", "check-token")
        .output()
        .expect("run agent check");
    let stdout = String::from_utf8_lossy(&result.stdout);
    let stderr = String::from_utf8_lossy(&result.stderr);
    assert!(
        result.status.success() && stdout.starts_with("OK:"),
        "{what}: `agent check` failed ({}):\n{stdout}\n{stderr}\nconfiguration as checked:\n{out}",
        result.status
    );
    eprintln!("{what}: {}", stdout.trim());
}

#[test]
fn the_sidecar_configmap_passes_agent_check() {
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/sidecar.yaml")).unwrap();
    let toml = yaml_block(&yaml, "prod.toml");
    // The sidecar receives mirrored inputs both ways: a shared emptyDir and posted requests.
    for source in ["type = \"dir\"", "type = \"ingest\""] {
        assert!(toml.lines().any(|l| l.trim() == source), "the sidecar's prod.toml has no `{source}` source");
    }
    check_shipped_config("deploy/kubernetes/sidecar.yaml prod.toml", &toml);
}

#[test]
fn config_prod_toml_passes_agent_check() {
    let text = std::fs::read_to_string(root().join("config/prod.toml")).unwrap();
    check_shipped_config("config/prod.toml", &text);
}

#[test]
fn config_demo_toml_passes_agent_check_as_is() {
    // A baseline left in demo-run/ by an earlier demo with other settings would (rightly) be refused;
    // the shipped file is what is checked, so its baseline goes to a fresh path.
    let fresh = tempfile::tempdir().unwrap();
    let result = Command::new(env!("CARGO_BIN_EXE_agent"))
        .args(["check", "--config", "config/demo.toml"])
        .env("AGENT__BASELINE__PATH", fresh.path().join("baseline.json"))
        .current_dir(root())
        .output()
        .expect("run agent check");
    let stdout = String::from_utf8_lossy(&result.stdout);
    assert!(
        result.status.success() && stdout.starts_with("OK:"),
        "config/demo.toml: {}\n{stdout}\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
}

/// The values of a YAML list `key:` (items `- value` on the following lines), in order.
fn yaml_list(yaml: &str, key: &str) -> Vec<String> {
    let mut lines = yaml.lines().skip_while(|l| l.trim() != format!("{key}:"));
    assert!(lines.next().is_some(), "no `{key}:` list");
    lines.map(str::trim).take_while(|l| l.starts_with("- ")).map(|l| l[2..].to_string()).collect()
}

/// `key: value` on a line of its own, the first one.
fn yaml_scalar<'a>(yaml: &'a str, key: &str) -> &'a str {
    yaml.lines()
        .find_map(|l| l.trim().strip_prefix(&format!("{key}: ")))
        .unwrap_or_else(|| panic!("no `{key}:`"))
        .trim()
}

/// The sharded baseline Jobs agree with each other and with the sidecar: as many shards as
/// completions, every partial merged, written where the sidecar reads its baseline, with the
/// sidecar's own settings (its ConfigMap, which `the_sidecar_configmap_passes_agent_check` checks).
#[test]
fn the_baseline_jobs_agree_on_shards_and_with_the_sidecar() {
    let yaml = std::fs::read_to_string(root().join("deploy/kubernetes/baseline-job.yaml")).unwrap();
    let sidecar = std::fs::read_to_string(root().join("deploy/kubernetes/sidecar.yaml")).unwrap();
    let docs: Vec<&str> = yaml.split("\n---\n").collect();
    assert_eq!(docs.len(), 3, "PVC, shards Job, merge Job");
    let (shards, merge) = (docs[1], docs[2]);
    assert_eq!(yaml_scalar(shards, "completionMode"), "Indexed");
    let n: usize = yaml_scalar(shards, "completions").parse().unwrap();
    assert_eq!(yaml_scalar(shards, "parallelism").parse::<usize>().unwrap(), n);
    let args = yaml_list(shards, "args");
    let flag = |args: &[String], f: &str| args[args.iter().position(|a| a == f).unwrap() + 1].clone();
    assert_eq!(args[0], "baseline");
    assert_eq!(flag(&args, "--shard"), format!("$(JOB_COMPLETION_INDEX)/{n}"));
    let out = flag(&args, "--out");
    assert!(out.contains("$(JOB_COMPLETION_INDEX)"), "{out}");
    assert_eq!(flag(&args, "--config"), "/etc/agent/prod.toml");

    let margs = yaml_list(merge, "args");
    assert_eq!(&margs[..2], ["baseline", "merge"]);
    let partials: Vec<String> =
        (0..n).map(|i| out.replace("$(JOB_COMPLETION_INDEX)", &i.to_string())).collect();
    assert_eq!(margs[2..2 + n], partials[..], "the merge must list every shard's partial");
    let wait = yaml_list(merge, "command").join(" ");
    assert!(wait.contains(&format!("-ge {n}")), "the merge waits for {n} partials: {wait}");

    // The sidecar's settings, and its baseline path as the merge's output.
    assert!(shards.contains("name: ml-repr-agent-config"), "the shards must use the sidecar's ConfigMap");
    assert!(sidecar.contains("  name: ml-repr-agent-config\n"));
    let d = tempfile::tempdir().unwrap();
    let file = d.path().join("prod.toml");
    std::fs::write(&file, yaml_block(&sidecar, "prod.toml")).unwrap();
    let cfg = agent::config::Config::load_with_env(&file, Default::default()).unwrap();
    let path = cfg.baseline.path.expect("the sidecar sets baseline.path");
    assert_eq!(Path::new(margs.last().unwrap()), path, "the merge must write the sidecar's baseline.path");
    assert_eq!(margs[margs.len() - 2], "--out");
}
