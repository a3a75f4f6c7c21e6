//! The pipeline in-process with the real engine on the digit encoder: files in, scores, metrics and
//! done/ out (the whole binary's end-to-end test is `tests/daemon_e2e.rs`).

use std::path::Path;
use std::time::{Duration, Instant};

use ndarray::{ArrayD, IxDyn};
use ndarray_npy::WriteNpyExt;

use super::*;
use anyhow::bail;

/// The real engine, with one fault injected: a batch holding a sample whose mean exceeds 10 fails,
/// as an engine error would (the real engine cannot be made to fail on demand), so the retry-alone
/// and reject-as-`engine` path is exercised. Everything else is the real engine's.
struct Flaky(Box<dyn Scorer>);

impl Scorer for Flaky {
    fn keys(&self) -> &[ScoreKey] {
        self.0.keys()
    }
    fn input_shape(&self) -> &[usize] {
        self.0.input_shape()
    }
    fn provider(&self) -> Provider {
        self.0.provider()
    }
    fn requested_provider(&self) -> Provider {
        self.0.requested_provider()
    }
    fn score_batch(&mut self, batch: ArrayViewD<f32>) -> Result<Vec<SampleScores>> {
        if batch.outer_iter().any(|s| s.mean().unwrap_or(0.0) > 10.0) {
            bail!("injected engine failure");
        }
        self.0.score_batch(batch)
    }
    fn model_sha256(&self) -> &str {
        self.0.model_sha256()
    }
    fn settings_hash(&self) -> &str {
        self.0.settings_hash()
    }
}

fn flaky_factory() -> ScorerFactory {
    let real = engine_factory();
    Arc::new(move |spec: &EngineSpec| Ok(Box::new(Flaky(real(spec)?)) as Box<dyn Scorer>))
}

const SHAPE: [usize; 3] = [1, 28, 28];

fn npy(path: &Path, shape: &[usize], v: f32) {
    let tmp = path.with_extension("tmp");
    ArrayD::<f32>::from_elem(IxDyn(shape), v).write_npy(std::fs::File::create(&tmp).unwrap()).unwrap();
    std::fs::rename(tmp, path).unwrap();
}

fn config(dir: &Path) -> Config {
    std::fs::create_dir_all(dir.join("inbox")).unwrap();
    npy(&dir.join("reference.npy"), &[8, 1, 28, 28], 0.5);
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/digits/encoder.onnx");
    let text = format!(
        r#"
[model]
name = "digits"
path = "{m}"
embedding = "embedding"
layers = [{{ name = "a", tensor = "/pool1/MaxPool_output_0" }}, {{ name = "b", tensor = "/pool2/MaxPool_output_0" }}]
methods = ["vanilla"]
smoothing_points = 1
smoothing = 0.0
rows_per_run = 32
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
        d = dir.display(),
        m = model.display()
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
    let p = rt.block_on(Pipeline::start(&cfg, state.clone(), flaky_factory())).unwrap();
    assert!(d.path().join("baseline.json").is_file(), "baseline built at start-up and saved");
    assert_eq!(state.telemetry.ready.get(), 1);
    let inbox = d.path().join("inbox");
    for i in 0..20 {
        npy(&inbox.join(format!("s{i:02}.npy")), &SHAPE, 0.25);
    }
    npy(&inbox.join("batch.npy"), &[3, 1, 28, 28], 0.25);
    npy(&inbox.join("boom.npy"), &SHAPE, 100.0);
    npy(&inbox.join("shape.npy"), &[2, 28, 28], 0.25);
    std::fs::write(inbox.join("notes.txt"), "hello").unwrap();
    wait("every file to be finished", || {
        count(&inbox.join("done")) == 21 && count(&inbox.join("rejected")) == 6
    });
    let text = state.telemetry.encode();
    assert!(text.contains("agent_samples_scored_total{model=\"digits\"} 23"), "{text}");
    for reason in ["engine", "shape", "unsupported"] {
        assert!(
            text.contains(&format!("agent_samples_rejected_total{{model=\"digits\",reason=\"{reason}\"}} 1")),
            "{text}"
        );
    }
    // Constant 0.25 images against a baseline of constant 0.5 images: the drift gauges, the KS test
    // and the window scores are all there and finite.
    for metric in
        ["agent_noise_score_drift", "agent_variance_score_drift", "agent_noise_score", "agent_variance_score"]
    {
        let line = text
            .lines()
            .find(|l| l.starts_with(&format!("{metric}{{layer=\"a\",method=\"vanilla\",model=\"digits\"}}")))
            .unwrap_or_else(|| panic!("{metric} missing:\n{text}"));
        let v: f64 = line.rsplit(' ').next().unwrap().parse().unwrap();
        assert!(v.is_finite(), "{line}");
    }
    assert!(
        text.contains(
            "agent_drift_ks_pvalue{layer=\"a\",method=\"vanilla\",model=\"digits\",score=\"noise\"}"
        ),
        "{text}"
    );
    // Providers default to [cuda, cpu]; this machine has no GPU, so CPU runs and says so.
    assert!(
        text.contains(
            "agent_execution_provider_info{model=\"digits\",provider=\"cpu\",requested=\"cuda\"} 1"
        ),
        "{text}"
    );
    let st = state.status();
    assert_eq!(st.window_samples, 23);
    assert_eq!(st.layers.len(), 2);
    rt.block_on(p.drain(&state));
    assert_eq!(state.telemetry.ready.get(), 0);
    // A restart in the same state directory continues the counters from the ledger.
    let state2 = Arc::new(AppState::new());
    let p = rt.block_on(Pipeline::start(&cfg, state2.clone(), flaky_factory())).unwrap();
    assert_eq!(state2.telemetry.samples_scored.with_label_values(&["digits"]).get(), 23);
    assert_eq!(state2.telemetry.samples_rejected.with_label_values(&["digits", "engine"]).get(), 1);
    rt.block_on(p.drain(&state2));
}

#[test]
fn a_restarted_pipeline_keeps_no_gauge_of_the_old_window() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = Arc::new(AppState::new());
    let p = rt.block_on(Pipeline::start(&cfg, state.clone(), flaky_factory())).unwrap();
    for i in 0..4 {
        npy(&d.path().join(format!("inbox/s{i}.npy")), &SHAPE, 0.25);
    }
    wait("4 samples", || state.telemetry.samples_scored.with_label_values(&["digits"]).get() == 4);
    let before = state.telemetry.encode();
    // A reload drains the pipeline and starts another on the same state, with an empty window.
    rt.block_on(p.drain(&state));
    let p = rt.block_on(Pipeline::start(&cfg, state.clone(), flaky_factory())).unwrap();
    wait("the empty window published", || {
        state.telemetry.encode().contains("agent_window_samples{model=\"digits\"} 0")
    });
    let after = state.telemetry.encode();
    // Assert only once nothing runs any more (a running source would keep the runtime alive).
    rt.block_on(p.drain(&state));
    let window = [
        "agent_noise_score{",
        "agent_noise_score_drift{",
        "agent_drift_ks_pvalue{",
        "agent_drift_ks_statistic{",
    ];
    for metric in window {
        assert!(before.contains(metric), "{metric} missing before the restart:\n{before}");
        assert!(!after.contains(metric), "{metric} survived the restart:\n{after}");
    }
    assert!(after.contains("agent_baseline_noise_score{"), "{after}");
}

#[test]
fn a_stale_baseline_is_refused_with_the_rebuild_command() {
    let d = tempfile::tempdir().unwrap();
    let cfg = config(d.path());
    let meta = crate::drift::BaselineMeta {
        model_sha256: "sha".into(),
        settings_hash: "other-hash".into(),
        created_unix_secs: 0,
    };
    let stale = crate::drift::BaselineBuilder::new(meta, &[], 1, 0).finish().unwrap();
    baseline::save(&stale, &d.path().join("baseline.json")).unwrap();
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let err = rt.block_on(Pipeline::start(&cfg, Arc::new(AppState::new()), flaky_factory())).err().unwrap();
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
    *locks::write(&state.auth_token) = Some("s3cret".into());
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
    let run = rt.spawn(run_with_state(path.clone(), cfg, flaky_factory(), state.clone()));
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
    npy(&d.path().join("inbox/after.npy"), &SHAPE, 0.25);
    wait("a sample after the reload", || count(&d.path().join("inbox/done")) == 1);
    signal("-TERM");
    let deadline = Instant::now() + Duration::from_secs(20);
    while !run.is_finished() {
        assert!(Instant::now() < deadline, "run did not return after SIGTERM");
        std::thread::sleep(Duration::from_millis(20));
    }
    rt.block_on(run).unwrap().unwrap();
}

/// With a budget of 5 samples/s and files arriving at about 60/s, the budget stage skips most of
/// them after the first second; every file still ends in `done/` (skipped ones too), and each
/// sample is counted once, scored or skipped (a 3-sample batch file counts its rows apart).
#[test]
fn over_budget_files_are_skipped_counted_and_still_end_in_done() {
    let d = tempfile::tempdir().unwrap();
    let mut cfg = config(d.path());
    cfg.engine.max_samples_per_sec = Some(5.0);
    assert_eq!(cfg.validate(), vec![]);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let state = Arc::new(AppState::new());
    let p = rt.block_on(Pipeline::start(&cfg, state.clone(), engine_factory())).unwrap();
    let inbox = d.path().join("inbox");
    let t0 = Instant::now();
    let files = 150;
    for i in 0..files {
        let due = t0 + Duration::from_millis(i as u64 * 1000 / 60);
        std::thread::sleep(due.saturating_duration_since(Instant::now()));
        let rows: &[usize] = if i % 10 == 9 { &[3, 1, 28, 28] } else { &SHAPE };
        npy(&inbox.join(format!("s{i:03}.npy")), rows, 0.25);
    }
    let samples = (files + 2 * (files / 10)) as u64;
    let t = &state.telemetry;
    let scored = || t.samples_scored.with_label_values(&["digits"]).get();
    let skipped = || t.samples_skipped.with_label_values(&["digits", "budget"]).get();
    wait("every file in done/", || count(&inbox.join("done")) == files && scored() + skipped() == samples);
    assert_eq!(count(&inbox.join("rejected")), 0);
    // About 60 files in the first second (p = 1), then p ≈ 5/70 for the other 1.5 s.
    assert!(skipped() > samples / 3, "scored {}, skipped {}", scored(), skipped());
    assert!(scored() > 0);
    rt.block_on(p.drain(&state));
    assert_eq!(scored() + skipped(), samples);
}
