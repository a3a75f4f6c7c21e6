//! What the integration tests share: the test models and ONNX Runtime runs ([`models`]), and for the
//! tests that run the real `agent` binary on the demo model over loopback HTTP: its configuration
//! ([`DemoConfig`]), starting and stopping it, raw HTTP/1.1 requests, bounded waits, reading a scrape.
//! Every wait is bounded.
#![allow(dead_code)]

mod demo;
mod models;

pub use demo::*;
pub use models::*;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};
use ndarray_npy::{ReadNpyExt, WriteNpyExt};

pub const MODEL: &str = "digits";

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A child process with its output appended to a log, killed (SIGKILL) and reaped when dropped.
pub struct Proc {
    child: Option<Child>,
}

impl Proc {
    pub fn spawn(cmd: &mut Command, log: &Path, what: &str) -> Proc {
        let log = std::fs::OpenOptions::new().create(true).append(true).open(log).unwrap();
        let child = cmd
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {what}: {e}"));
        Proc { child: Some(child) }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends `sig` (as `kill` takes it: `-HUP`, `-TERM`).
    pub fn signal(&self, sig: &str) {
        let ok = Command::new("kill").args([sig, &self.pid().to_string()]).status().unwrap().success();
        assert!(ok, "kill {sig} {}", self.pid());
    }

    /// SIGKILL, and reaped.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// The exit status, once it has exited.
    pub fn exited(&mut self) -> Option<ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Prints the end of each log when the test fails.
pub struct LogsOnFailure(pub Vec<PathBuf>);

impl Drop for LogsOnFailure {
    fn drop(&mut self) {
        if !std::thread::panicking() {
            return;
        }
        for p in &self.0 {
            eprintln!("\n----- last lines of {} -----\n{}", p.display(), log_tail(p, 60));
        }
    }
}

fn log_tail(path: &Path, n: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

/// The agent binary, killed when dropped.
pub struct Daemon {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl Daemon {
    /// Starts `agent --config cfg` on a free loopback port, its log appended to `log`.
    pub fn start(cfg: &Path, log: &Path) -> Daemon {
        Daemon::start_on(cfg, log, free_port())
    }

    /// Starts `agent --config cfg` listening on `127.0.0.1:port`, its log appended to `log`.
    pub fn start_on(cfg: &Path, log: &Path, port: u16) -> Daemon {
        let proc = Proc::spawn(
            Command::new(env!("CARGO_BIN_EXE_agent"))
                .arg("--config")
                .arg(cfg)
                .env("AGENT__SERVER__LISTEN", format!("127.0.0.1:{port}")),
            log,
            "the agent",
        );
        Daemon { proc, port, log: log.to_path_buf() }
    }

    /// Waits for `/readyz` (the baseline may be built first).
    pub fn wait_ready(&self) {
        wait_until("/readyz", Duration::from_secs(300), &self.log, || {
            get(self.port, "/readyz").filter(|r| r.code == 200)
        });
    }

    pub fn metrics(&self) -> String {
        get(self.port, "/metrics").map(|r| r.body).unwrap_or_default()
    }

    /// A metric's value in a fresh scrape.
    pub fn metric(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        metric(&self.metrics(), name, labels)
    }

    pub fn scored(&self) -> f64 {
        self.metric("agent_samples_scored_total", &[("model", MODEL)]).unwrap_or(-1.0)
    }

    /// Waits until `agent_samples_scored_total` reaches `n`.
    pub fn wait_scored(&self, n: f64, timeout: Duration) {
        wait_until(&format!("{n} samples scored"), timeout, &self.log, || {
            Some(()).filter(|_| self.scored() >= n)
        });
    }

    pub fn kill9(&mut self) {
        self.proc.kill();
    }

    /// SIGTERM, and the exit status within 60 s.
    pub fn term(&mut self) -> ExitStatus {
        self.proc.signal("-TERM");
        wait_for("the agent's exit after SIGTERM", Duration::from_secs(60), || self.proc.exited())
    }
}

/// An HTTP response.
#[derive(Debug, Clone)]
pub struct Response {
    pub code: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Response {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {}", self.body))
    }

    /// `error.reason` of a JSON error answer.
    pub fn reason(&self) -> String {
        self.json()["error"]["reason"].as_str().unwrap_or_default().to_string()
    }
}

/// One HTTP/1.1 request on a fresh connection (`Connection: close`); `None` when nothing listens.
pub fn request(
    port: u16,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &[u8],
) -> Option<Response> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(30))).ok()?;
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n");
    for (k, v) in headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    if method != "GET" {
        head.push_str(&format!("Content-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    s.write_all(head.as_bytes()).ok()?;
    // The server may answer (413, 401) before reading the body and close: a failed write is fine.
    let _ = s.write_all(body);
    let mut buf = Vec::new();
    let _ = s.read_to_end(&mut buf);
    parse_response(&buf)
}

pub fn parse_response(buf: &[u8]) -> Option<Response> {
    let text = String::from_utf8_lossy(buf);
    let (head, body) = text.split_once("\r\n\r\n")?;
    let mut lines = head.lines();
    let code = lines.next()?.split_whitespace().nth(1)?.parse().ok()?;
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect::<Vec<_>>();
    let chunked =
        headers.iter().any(|(k, v)| k.eq_ignore_ascii_case("transfer-encoding") && v.contains("chunked"));
    let body = if chunked { dechunk(body) } else { body.to_string() };
    Some(Response { code, headers, body })
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].strip_prefix("\r\n").unwrap_or(&rest[n..]);
    }
    out
}

pub fn get(port: u16, path: &str) -> Option<Response> {
    request(port, "GET", path, &[], b"")
}

/// Polls `f` every 50 ms until it gives a value; panics with the agent's log after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, log: &Path, f: impl FnMut() -> Option<T>) -> T {
    poll(what, timeout, f).unwrap_or_else(|| {
        panic!("timed out after {timeout:?} waiting for {what}; agent log (tail):\n{}", log_tail(log, 60))
    })
}

/// Polls `f` every 50 ms until it gives a value; panics after `timeout`.
pub fn wait_for<T>(what: &str, timeout: Duration, f: impl FnMut() -> Option<T>) -> T {
    poll(what, timeout, f).unwrap_or_else(|| panic!("timed out after {timeout:?} waiting for {what}"))
}

fn poll<T>(_what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Every `(labels, value)` of metric `name` in a text exposition, the labels as written between
/// the braces (`model="digits",layer="a"`).
pub fn series(text: &str, name: &str) -> Vec<(String, f64)> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            (n == name).then(|| (rest.trim_end_matches('}').to_string(), value.parse().unwrap_or(f64::NAN)))
        })
        .collect()
}

/// The value of one series: `name` with every `(label, value)` pair given.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text, name)
        .into_iter()
        .find(|(rest, _)| labels.iter().all(|(k, v)| rest.contains(&format!("{k}=\"{v}\""))))
        .map(|(_, v)| v)
}

/// The demo model's held-out digits, `[256, 1, 28, 28]` in [0, 1].
pub fn digits() -> Array4<f32> {
    let f = std::fs::File::open(repo_root().join("models/digits/stream.npy")).unwrap();
    Array4::<f32>::read_npy(f).unwrap()
}

/// A configuration for the demo model on the CPU (cheap scores: `smoothing_points` points, two
/// layers, vanilla), with the baseline built from 16 reference digits into `dir`, and the given
/// `[engine]` lines and sources.
pub fn config(dir: &Path, smoothing_points: usize, engine: &str, sources: &str) -> PathBuf {
    let f = std::fs::File::open(repo_root().join("models/digits/reference.npy")).unwrap();
    let reference = Array4::<f32>::read_npy(f).unwrap();
    let reference = reference.slice_axis(Axis(0), (0..16).into()).to_owned();
    reference.write_npy(std::fs::File::create(dir.join("reference.npy")).unwrap()).unwrap();
    DemoConfig {
        model: format!("methods = [\"vanilla\"]\nsmoothing_points = {smoothing_points}"),
        engine: format!("providers = [\"cpu\"]\n{engine}"),
        baseline: format!(
            "path = \"{d}/baseline.json\"\nreference_dir = \"{d}/reference.npy\"",
            d = dir.display()
        ),
        window: "samples = 64".into(),
        rest: format!(
            "{sources}\n\n[logging]\nlevel = \"info,agent::daemon::engine_loop=debug\"\nformat = \"json\"\n"
        ),
        ..DemoConfig::default()
    }
    .write(dir)
}

/// A V2 inference request body for one digit: FP32, shape `[1, 1, 28, 28]`, flat data.
pub fn v2_body(id: &str, x: ndarray::ArrayView3<f32>) -> String {
    let data: Vec<String> = x.iter().map(|v| format!("{v}")).collect();
    format!(
        r#"{{"id":"{id}","inputs":[{{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":[{}]}}]}}"#,
        data.join(",")
    )
}

/// Serves HTTP on `127.0.0.1:0` from a thread, one more thread per connection, each connection handed
/// to `answer`; returns the URL `http://ADDR/feed` (the feed servers of the http-source tests).
pub fn serve_feed(answer: impl Fn(TcpStream) + Send + Sync + 'static) -> String {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/feed", listener.local_addr().unwrap());
    let answer = std::sync::Arc::new(answer);
    std::thread::spawn(move || {
        for conn in listener.incoming().flatten() {
            let answer = answer.clone();
            std::thread::spawn(move || answer(conn));
        }
    });
    url
}

/// Reads a request's first line and skips its headers (the feed servers answer GETs without bodies).
pub fn read_request_line(conn: &TcpStream) -> std::io::Result<String> {
    use std::io::BufRead;
    let mut r = std::io::BufReader::new(conn.try_clone()?);
    let mut first = String::new();
    r.read_line(&mut first)?;
    loop {
        let mut header = String::new();
        if r.read_line(&mut header)? == 0 || header == "\r\n" {
            return Ok(first);
        }
    }
}

/// The first record a feed request asks for: `after=N` in the request line → `N + 1`, else 0.
pub fn feed_start(request_line: &str) -> usize {
    request_line
        .split_whitespace()
        .nth(1)
        .and_then(|p| p.split_once("after="))
        .and_then(|(_, v)| v.parse::<usize>().ok())
        .map_or(0, |c| c + 1)
}

/// Runs the `agent` binary with `args` and waits for it.
pub fn run_agent(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_agent")).args(args).output().expect("running agent")
}

/// The stdout of a run that must have succeeded; a failure names `what` and shows both streams.
pub fn agent_ok(out: std::process::Output, what: &str) -> String {
    let stdout = String::from_utf8_lossy(&out.stdout).to_string();
    assert!(out.status.success(), "{what} failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    stdout
}

/// A baseline file, parsed (format checked).
pub fn read_baseline(p: &Path) -> agent::drift::Baseline {
    agent::drift::Baseline::from_json(&std::fs::read_to_string(p).unwrap()).unwrap()
}

/// `agent baseline --shard i/n` for every `i`, into `dir/shard-{i}.json`: each partial's path and
/// the command's stdout.
pub fn baseline_shards(config: &str, reference: &str, dir: &Path, n: usize) -> Vec<(String, String)> {
    (0..n)
        .map(|i| {
            let p = dir.join(format!("shard-{i}.json")).to_str().unwrap().to_string();
            let shard = format!("{i}/{n}");
            let args =
                ["baseline", "--config", config, "--reference", reference, "--out", &p, "--shard", &shard];
            let out = agent_ok(run_agent(&args), &format!("shard {shard}"));
            (p, out)
        })
        .collect()
}
