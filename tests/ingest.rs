//! The `ingest` source end to end: the real binary, V2 requests over loopback from `curl`, from NVIDIA's
//! `tritonclient` (when the Python environment has it), and from raw sockets; every error status with
//! its reason; a full queue answering 503 with Retry-After; the agent healthy throughout and scoring
//! exactly the accepted samples.
//!
//! Uses the demo model on ONNX Runtime (CPU): `ORT_DYLIB_PATH` or the project-local install.

mod support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ndarray::Axis;
use ndarray_npy::WriteNpyExt;
use support::{Daemon, MODEL, Response, config, digits, get, request, v2_body, wait_until};

const TOKEN: &str = "s3cret";
const AUTH: (&str, &str) = ("Authorization", "Bearer s3cret");
const JSON: (&str, &str) = ("Content-Type", "application/json");

/// `curl` posting a file; the status, headers and body.
fn curl(port: u16, path: &str, headers: &[(&str, &str)], body: &Path) -> Response {
    let mut cmd = Command::new("curl");
    cmd.args(["-sS", "-i", "--max-time", "30", "-X", "POST", "--data-binary"])
        .arg(format!("@{}", body.display()))
        .arg(format!("http://127.0.0.1:{port}{path}"));
    for (k, v) in headers {
        cmd.arg("-H").arg(format!("{k}: {v}"));
    }
    let out = cmd.output().expect("running curl");
    assert!(out.status.success(), "curl failed: {}", String::from_utf8_lossy(&out.stderr));
    // With `Expect: 100-continue` curl prints the interim answer first.
    let text = String::from_utf8_lossy(&out.stdout).replace("HTTP/1.1 100 Continue\r\n\r\n", "");
    support::parse_response(text.as_bytes()).expect("an HTTP answer")
}

/// The project's Python (`scripts/install-onnxruntime.sh` installs `tritonclient` into it).
fn triton_python() -> PathBuf {
    let p = support::python();
    let ok = Command::new(&p)
        .args(["-c", "import tritonclient.http, numpy"])
        .output()
        .is_ok_and(|o| o.status.success());
    assert!(ok, "{} cannot import tritonclient.http: run scripts/install-onnxruntime.sh", p.display());
    p
}

fn counted(d: &Daemon, code: &str) -> f64 {
    d.metric("agent_ingest_requests_total", &[("source", "mirror"), ("code", code)]).unwrap_or(0.0)
}

#[test]
fn ingest_accepts_v2_requests_refuses_bad_ones_and_pushes_back() {
    let d = tempfile::tempdir().unwrap();
    // A slow engine (16 smoothing points, one sample per run) behind a queue of 2: easy to fill.
    let cfg = config(
        d.path(),
        16,
        "batch_size = 1\nmax_batch_delay_ms = 1\nqueue_capacity = 2",
        &format!(
            r#"
[[sources]]
type = "ingest"
name = "mirror"
models = ["mnist"]
max_body_bytes = 65536
request_timeout_ms = 1000
auth_token = "{TOKEN}"
retry_after_secs = 2
"#
        ),
    );
    let log = d.path().join("agent.log");
    let mut agent = Daemon::start(&cfg, &log);
    // Before the engine is ready the endpoint answers 503, never a dropped connection.
    wait_until("the server", Duration::from_secs(60), &log, || {
        get(agent.port, "/healthz").filter(|r| r.code == 200)
    });
    agent.wait_ready();
    let port = agent.port;
    let x = digits();
    let mut accepted = 0.0;
    let mut retried = 0.0;

    // curl: the V2 route under the production model's name, and the plain route with CloudEvents.
    let body = d.path().join("one.json");
    std::fs::write(&body, v2_body("curl-1", x.index_axis(Axis(0), 0))).unwrap();
    let r = curl(port, "/v2/models/mnist/infer", &[AUTH, JSON], &body);
    assert_eq!(r.code, 202, "{r:?}");
    assert_eq!(r.json()["id"], "curl-1");
    assert_eq!(r.json()["samples"], 1);
    accepted += 1.0;
    let r = curl(port, &format!("/v2/models/{MODEL}/infer"), &[AUTH, JSON], &body);
    assert_eq!(r.code, 202, "{r:?}");
    accepted += 1.0;
    let no_id = d.path().join("no-id.json");
    std::fs::write(&no_id, v2_body("x", x.index_axis(Axis(0), 1)).replace(r#""id":"x","#, "")).unwrap();
    let ce = [
        AUTH,
        JSON,
        ("ce-id", "event-7"),
        ("ce-type", "org.kubeflow.serving.inference.request"),
        ("ce-source", "http://localhost:9081/"),
        ("ce-specversion", "1.0"),
    ];
    let r = curl(port, "/api/v1/samples", &ce, &no_id);
    assert_eq!((r.code, r.json()["id"].as_str()), (202, Some("event-7")), "{r:?}");
    accepted += 1.0;
    let mut response_event = ce;
    response_event[3] = ("ce-type", "org.kubeflow.serving.inference.response");
    let r = curl(port, "/api/v1/samples", &response_event, &no_id);
    assert_eq!((r.code, r.json()["ignored"].as_str()), (200, Some("response event")), "{r:?}");

    // tritonclient: JSON, the binary extension, UINT8, FP64 with a model version, a wrong shape.
    agent.wait_scored(accepted, Duration::from_secs(120));
    {
        let py = triton_python();
        let sample = d.path().join("sample.npy");
        x.index_axis(Axis(0), 2).to_owned().write_npy(std::fs::File::create(&sample).unwrap()).unwrap();
        let script = support::repo_root().join("tests/clients/triton_infer.py");
        let out = Command::new(py)
            .arg(script)
            .arg(port.to_string())
            .args([TOKEN, "mnist"])
            .arg(&sample)
            .output()
            .unwrap();
        assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        eprintln!("tritonclient: {v}");
        for case in ["fp32_json", "fp32_binary", "uint8_json", "fp64_version", "wrong_shape"] {
            retried += v[case]["retried"].as_f64().unwrap();
        }
        for case in ["fp32_json", "fp32_binary", "uint8_json", "fp64_version"] {
            assert_eq!(v[case]["status"], "202", "{case}: {v}");
            accepted += 1.0;
        }
        assert_eq!(v["fp32_binary"]["body"]["id"], "triton-fp32-binary");
        assert_eq!(v["wrong_shape"]["status"], "400", "{v}");
        assert_eq!(v["wrong_shape"]["message"]["reason"], "shape", "{v}");
    }

    // Refusals, each with its status and a JSON reason.
    let one = v2_body("r", x.index_axis(Axis(0), 3));
    let post = |path: &str, headers: &[(&str, &str)], body: &[u8]| {
        request(port, "POST", path, headers, body).unwrap()
    };
    let big = format!(
        r#"{{"inputs":[{{"name":"input","shape":[20000],"datatype":"FP32","data":[{}]}}]}}"#,
        vec!["0.125"; 20000].join(",")
    );
    let wrong_shape = one.replace("[1,1,28,28]", "[1,1,28,27]");
    let short = one.replacen("0,", "", 1);
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, Vec<u8>, u16, &'a str);
    let cases: Vec<Case> = vec![
        ("/v2/models/mnist/infer", vec![AUTH], big.clone().into_bytes(), 413, "too_large"),
        ("/v2/models/mnist/infer", vec![AUTH], b"{\"inputs\": [".to_vec(), 400, "decode"),
        ("/v2/models/mnist/infer", vec![AUTH], wrong_shape.into_bytes(), 400, "shape"),
        ("/v2/models/mnist/infer", vec![AUTH], short.into_bytes(), 400, "shape"),
        ("/v2/models/mnist/infer", vec![AUTH], one.replace("FP32", "BOOL").into_bytes(), 400, "dtype"),
        ("/v2/models/mnist/infer", vec![], one.clone().into_bytes(), 401, "unauthorized"),
        (
            "/v2/models/mnist/infer",
            vec![("Authorization", "Bearer nope")],
            one.clone().into_bytes(),
            401,
            "unauthorized",
        ),
        ("/v2/models/resnet/infer", vec![AUTH], one.clone().into_bytes(), 404, "unknown_model"),
    ];
    for (path, headers, body, code, reason) in &cases {
        let r = post(path, headers, body);
        assert_eq!((r.code, r.reason().as_str()), (*code, *reason), "{path} {headers:?}: {r:?}");
        assert!(!r.json()["error"]["message"].as_str().unwrap().is_empty());
        if *code == 401 {
            assert_eq!(r.header("www-authenticate"), Some("Bearer"));
        }
    }
    // Too large without a Content-Length (chunked), read up to the limit only.
    let big_file = d.path().join("big.json");
    std::fs::write(&big_file, &big).unwrap();
    let r = curl(port, "/v2/models/mnist/infer", &[AUTH, ("Transfer-Encoding", "chunked")], &big_file);
    assert_eq!((r.code, r.reason().as_str()), (413, "too_large"), "{r:?}");
    // A body that never completes: 408 after request_timeout_ms.
    let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let t0 = Instant::now();
    s.write_all(b"POST /api/v1/samples HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\nContent-Length: 5000\r\n\r\n{\"in").unwrap();
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    let r = support::parse_response(&buf).expect("an answer to the slow request");
    assert_eq!((r.code, r.reason().as_str()), (408, "timeout"), "{r:?}");
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());

    // A burst beyond the queue: some accepted, the rest 503 with Retry-After, none lost silently.
    let answers = Arc::new(Mutex::new(Vec::new()));
    let threads: Vec<_> = (0..16)
        .map(|t| {
            let (answers, bodies) = (
                answers.clone(),
                (0..4)
                    .map(|k| v2_body(&format!("burst-{t}-{k}"), x.index_axis(Axis(0), 10 + t * 4 + k)))
                    .collect::<Vec<_>>(),
            );
            std::thread::spawn(move || {
                for b in bodies {
                    let r = request(port, "POST", "/api/v1/samples", &[AUTH, JSON], b.as_bytes()).unwrap();
                    answers.lock().unwrap().push(r);
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let answers = answers.lock().unwrap();
    let ok = answers.iter().filter(|r| r.code == 202).count();
    let full: Vec<_> = answers.iter().filter(|r| r.code == 503).collect();
    eprintln!("burst of {}: {ok} accepted, {} told to retry", answers.len(), full.len());
    assert_eq!(ok + full.len(), answers.len(), "{answers:?}");
    assert!(!full.is_empty(), "the queue never filled");
    assert!(ok >= 2, "nothing accepted in the burst");
    for r in &full {
        assert_eq!((r.reason().as_str(), r.header("retry-after")), ("queue_full", Some("2")), "{r:?}");
    }
    accepted += ok as f64;

    // Still healthy, and exactly the accepted samples get scored.
    assert_eq!(get(port, "/healthz").map(|r| r.code), Some(200));
    agent.wait_scored(accepted, Duration::from_secs(300));
    std::thread::sleep(Duration::from_millis(300));
    let text = agent.metrics();
    assert_eq!(support::metric(&text, "agent_samples_scored_total", &[("model", MODEL)]), Some(accepted));
    let rejected =
        |reason| support::metric(&text, "agent_samples_rejected_total", &[("reason", reason)]).unwrap();
    // Two wrong shapes from raw requests, one from tritonclient.
    assert_eq!(rejected("shape"), 3.0);
    assert_eq!((rejected("decode"), rejected("dtype")), (1.0, 1.0));
    assert_eq!(counted(&agent, "202"), accepted);
    assert_eq!(counted(&agent, "503"), full.len() as f64 + retried);
    assert_eq!(counted(&agent, "401"), 2.0);
    assert_eq!(counted(&agent, "413"), 2.0);
    assert_eq!(counted(&agent, "404"), 1.0);
    assert_eq!(counted(&agent, "408"), 1.0);
    assert_eq!(counted(&agent, "200"), 1.0);

    // A reload (SIGHUP) swaps the pipeline under the endpoint: meanwhile 503 + Retry-After, then 202.
    agent.proc.signal("-HUP");
    let reloaded =
        || support::metric(&agent.metrics(), "agent_config_reloads_total", &[("result", "success")]);
    let body = v2_body("after-reload", x.index_axis(Axis(0), 99));
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let r = post("/api/v1/samples", &[AUTH, JSON], body.as_bytes());
        assert!(matches!(r.code, 202 | 503), "{r:?}");
        if r.code == 503 {
            assert!(r.header("retry-after").is_some(), "{r:?}");
        }
        if r.code == 202 && reloaded() == Some(1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "no 202 after the reload");
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(agent.term().success());
}

#[test]
fn without_an_ingest_source_the_routes_answer_404() {
    let d = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(d.path().join("inbox")).unwrap();
    let cfg = config(
        d.path(),
        1,
        "",
        &format!("[[sources]]\ntype = \"dir\"\npath = \"{}/inbox\"", d.path().display()),
    );
    let log = d.path().join("agent.log");
    let mut agent = Daemon::start(&cfg, &log);
    agent.wait_ready();
    let x = digits();
    let r = request(
        agent.port,
        "POST",
        "/v2/models/digits/infer",
        &[JSON],
        v2_body("a", x.index_axis(Axis(0), 0)).as_bytes(),
    )
    .unwrap();
    assert_eq!((r.code, r.reason().as_str()), (404, "no_ingest_source"), "{r:?}");
    assert_eq!(
        agent.metric("agent_ingest_requests_total", &[("source", "none"), ("code", "404")]),
        Some(1.0)
    );
    assert!(agent.term().success());
}
