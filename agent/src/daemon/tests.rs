//! The pipeline with a fake scorer: files in, scores, metrics and done/ out (the real engine's
//! end-to-end test is `tests/daemon_e2e.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;

use super::*;
use crate::engine::LayerScores;
use crate::scores::Method;

struct Fake {
    keys: Vec<ScoreKey>,
    shape: Vec<usize>,
}

impl Scorer for Fake {
    fn keys(&self) -> &[ScoreKey] {
        &self.keys
    }
    fn input_shape(&self) -> &[usize] {
        &self.shape
    }
    fn provider(&self) -> Provider {
        Provider::Cpu
    }
    fn requested_provider(&self) -> Provider {
        Provider::Cuda
    }
    fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>> {
        batch
            .outer_iter()
            .map(|s| {
                let m = s.mean().unwrap_or(0.0) as f64;
                if m > 10.0 {
                    bail!("fake engine failure");
                }
                let l = LayerScores { noise_score: m, variance_score: m / 4.0 };
                Ok(SampleScores { scores: vec![l, l] })
            })
            .collect()
    }
    fn model_sha256(&self) -> &str {
        "sha"
    }
    fn settings_hash(&self) -> &str {
        "hash"
    }
}

fn fake_factory() -> ScorerFactory {
    Arc::new(|_spec: &EngineSpec| {
        let keys = ["a", "b"]
            .iter()
            .map(|l| ScoreKey { layer: l.to_string(), method: Method::Vanilla, noise_benchmark: 0.05 })
            .collect();
        Ok(Box::new(Fake { keys, shape: vec![1, 4, 4] }) as Box<dyn Scorer>)
    })
}

fn npy(path: &Path, shape: &[usize], v: f32) {
    let tmp = path.with_extension("tmp");
    ArrayD::<f32>::from_elem(IxDyn(shape), v).write_npy(std::fs::File::create(&tmp).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn config(dir: &Path) -> Config {
    std::fs::write(dir.join("m.onnx"), b"fake").unwrap();
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    npy(&dir.join("reference.npy"), &[8, 1, 4, 4], 0.5);
    let text = format!(
        r#"
[model]
name = "fake"
path = "{d}/m.onnx"
embedding = "e"
layers = [{{ name = "a", tensor = "ta" }}, {{ name = "b", tensor = "tb" }}]
[engine]
batch_size = 4
max_batch_delay_ms = 5
queue_capacity = 2
[baseline]
path = "{d}/baseline.json"
reference_dir = "{d}/reference.npy"
[window]
samples = 50
[[sources]]
type = "dir"
name = "inbox"
path = "{d}/inbox"
method = "poll"
poll_interval_ms = 20
"#,
        d = dir.display()
    );
    std::fs::write(dir.join("agent.toml"), text).unwrap();
    let cfg = Config::load_with_env(&dir.join("agent.toml"), Default::default()).unwrap();
    assert_eq!(cfg.validate(), vec![]);
    cfg
}

fn wait(what: &str, cond: impl Fn() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !cond() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.filter(|e| e.as_ref().unwrap().path().is_file()).count()).unwrap_or(0)
}

#[test]
fn files_are_scored_counted_and_acknowledged() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = Arc::new(AppState::new());
    let p = rt.block_on(Pipeline::start(&cfg, state.clone(), fake_factory())).unwrap();
    assert!(d.path().join("baseline.json").is_file(), "baseline built at start-up and saved");
    assert_eq!(state.telemetry.ready.get(), 1);
    let inbox = d.path().join("inbox");
    for i in 0..20 {
        npy(&inbox.join(format!("s{i:02}.npy")), &[1, 4, 4], 0.25);
    }
    npy(&inbox.join("batch.npy"), &[3, 1, 4, 4], 0.25);
    npy(&inbox.join("boom.npy"), &[1, 4, 4], 100.0);
    npy(&inbox.join("shape.npy"), &[2, 4, 4], 0.25);
    std::fs::write(inbox.join("notes.txt"), "hello").unwrap();
    wait("every file to be finished", || {
        count(&inbox.join("done")) == 21 && count(&inbox.join("rejected")) == 6
    });
    let text = state.telemetry.encode();
    assert!(text.contains("agent_samples_scored_total{model=\"fake\"} 23"), "{text}");
    for reason in ["engine", "shape", "unsupported"] {
        assert!(
            text.contains(&format!("agent_samples_rejected_total{{model=\"fake\",reason=\"{reason}\"}} 1")),
            "{text}"
        );
    }
    // Window mean 0.25 against the baseline's 0.5: ΔNS = (0.5 - 0.25) / 0.5.
    assert!(
        text.contains("agent_noise_score_drift{layer=\"a\",method=\"vanilla\",model=\"fake\"} 0.5"),
        "{text}"
    );
    assert!(
        text.contains("agent_execution_provider_info{model=\"fake\",provider=\"cpu\",requested=\"cuda\"} 1")
    );
    let st = state.status();
    assert_eq!(st.window_samples, 23);
    assert_eq!(st.layers.len(), 2);
    rt.block_on(p.drain(&state));
    assert_eq!(state.telemetry.ready.get(), 0);
    // A restart in the same state directory continues the counters from the ledger.
    let state2 = Arc::new(AppState::new());
    let p = rt.block_on(Pipeline::start(&cfg, state2.clone(), fake_factory())).unwrap();
    assert_eq!(state2.telemetry.samples_scored.with_label_values(&["fake"]).get(), 23);
    assert_eq!(state2.telemetry.samples_rejected.with_label_values(&["fake", "engine"]).get(), 1);
    rt.block_on(p.drain(&state2));
}

#[test]
fn a_stale_baseline_is_refused_with_the_rebuild_command() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let mut stale = monitor::BaselineBuilder::new(&[], 1).finish("sha", "other-hash");
    stale.samples = 1;
    stale.save(&d.path().join("baseline.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(Pipeline::start(&cfg, Arc::new(AppState::new()), fake_factory())).err().unwrap();
    let msg = format!("{err:#}");
    assert!(msg.contains("agent baseline --config"), "{msg}");
}

fn http_get(port: u16, path: &str, auth: Option<&str>) -> String {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let auth = auth.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n{auth}\r\n").as_bytes()).unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out
}

#[test]
fn server_endpoints_and_auth() {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let state = Arc::new(AppState::new());
    let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port = listener.local_addr().unwrap().port();
    rt.spawn(async move { axum::serve(listener, server::router(state.clone())).await });
    let state = Arc::new(AppState::new());
    let listener2 = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0")).unwrap();
    let port2 = listener2.local_addr().unwrap().port();
    *state.auth_token.write().unwrap() = Some("s3cret".into());
    let s2 = state.clone();
    rt.spawn(async move { axum::serve(listener2, server::router(s2)).await });

    assert!(http_get(port, "/healthz", None).starts_with("HTTP/1.0 200"));
    assert!(http_get(port, "/readyz", None).starts_with("HTTP/1.0 503"));
    let m = http_get(port, "/metrics", None);
    assert!(m.starts_with("HTTP/1.0 200"), "{m}");
    assert!(m.to_lowercase().contains("content-type: text/plain; version=0.0.4; charset=utf-8"), "{m}");
    assert!(http_get(port, "/api/v1/status", None).contains("\"ready\":false"));
    assert!(http_get(port, "/", None).contains("<h1>agent"));

    assert!(http_get(port2, "/metrics", None).starts_with("HTTP/1.0 401"));
    assert!(http_get(port2, "/metrics", Some("wrong")).starts_with("HTTP/1.0 401"));
    assert!(http_get(port2, "/metrics", Some("s3cret")).starts_with("HTTP/1.0 200"));
    assert!(http_get(port2, "/healthz", None).starts_with("HTTP/1.0 200"));
    state.telemetry.ready.set(1);
    assert!(http_get(port2, "/readyz", None).starts_with("HTTP/1.0 200"));
}

#[test]
fn sighup_reloads_or_keeps_the_old_config_and_sigterm_drains() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let path = d.path().join("agent.toml");
    let good = std::fs::read_to_string(&path)
        .unwrap()
        .replace("[window]", "[server]\nlisten = \"127.0.0.1:0\"\n[window]");
    std::fs::write(&path, &good).unwrap();
    let cfg = Config {
        server: crate::config::ServerConfig { listen: "127.0.0.1:0".into(), auth_token: None },
        ..cfg
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = Arc::new(AppState::new());
    let run = rt.spawn(run_with_state(path.clone(), cfg, fake_factory(), state.clone()));
    let pid = std::process::id().to_string();
    let signal =
        |sig: &str| assert!(std::process::Command::new("kill").args([sig, &pid]).status().unwrap().success());
    let reloads = |r: &str| state.telemetry.config_reloads.with_label_values(&[r]).get();
    wait("ready", || state.telemetry.ready.get() == 1);
    // A bad configuration is refused; the running one stays.
    std::fs::write(&path, good.replace("batch_size = 4", "batch_size = 0")).unwrap();
    signal("-HUP");
    wait("a failed reload", || reloads("failure") == 1);
    assert_eq!(state.telemetry.ready.get(), 1);
    // A good one replaces it.
    std::fs::write(&path, good.replace("samples = 50", "samples = 10")).unwrap();
    signal("-HUP");
    wait("a successful reload", || reloads("success") == 1 && state.telemetry.ready.get() == 1);
    npy(&d.path().join("inbox/after.npy"), &[1, 4, 4], 0.25);
    wait("a sample after the reload", || count(&d.path().join("inbox/done")) == 1);
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.is_finished() {
        assert!(Instant::now() < deadline, "run did not return after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(run).unwrap().unwrap();
}
