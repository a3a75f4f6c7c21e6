//! Ingest throughput and latency on this machine: starts the real `agent` binary on the demo model
//! with an ingest source, then `--connections` clients each post V2 JSON requests (one digit,
//! `[1, 1, 28, 28]` FP32, ~8 KB) over a keep-alive loopback connection for `--secs` seconds.
//!
//! ```sh
//! cargo build --bin agent && cargo run --example ingest_bench -- --connections 8 --secs 10
//! ```
//!
//! Prints requests answered per second by status (202 accepted, 503 queue full), the latency to the
//! 202 (p50/p90/p99/max), and the samples the engine scored meanwhile. Accepting is decoupled from
//! scoring: once the queue is full, the endpoint answers 503 quickly instead of waiting.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};
use ndarray_npy::ReadNpyExt;

struct Args {
    agent: PathBuf,
    connections: usize,
    secs: u64,
    queue: usize,
    samples: usize,
}

fn args() -> Args {
    let exe = std::env::current_exe().expect("the example's path");
    // target/<profile>/examples/ingest_bench → target/<profile>/agent
    let default_agent = exe.parent().and_then(Path::parent).map(|p| p.join("agent")).unwrap_or_default();
    let mut a = Args { agent: default_agent, connections: 8, secs: 10, queue: 256, samples: 1 };
    let mut it = std::env::args().skip(1);
    while let Some(k) = it.next() {
        let v = it.next().unwrap_or_else(|| panic!("{k} needs a value"));
        match k.as_str() {
            "--agent" => a.agent = PathBuf::from(v),
            "--connections" => a.connections = v.parse().expect("a number"),
            "--secs" => a.secs = v.parse().expect("a number"),
            "--queue" => a.queue = v.parse().expect("a number"),
            "--samples" => a.samples = v.parse().expect("a number"),
            _ => panic!("unknown option {k} (--agent, --connections, --secs, --queue, --samples)"),
        }
    }
    assert!(
        a.agent.is_file(),
        "{} is missing: run `cargo build --bin agent` first, or give --agent",
        a.agent.display()
    );
    a
}

struct Agent(Child);

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// One request on a keep-alive connection: `(status, latency)`.
fn post(conn: &mut BufReader<TcpStream>, head: &[u8], body: &[u8]) -> std::io::Result<(u16, Duration)> {
    let t0 = Instant::now();
    conn.get_mut().write_all(head)?;
    conn.get_mut().write_all(body)?;
    let mut status = String::new();
    conn.read_line(&mut status)?;
    let code = status.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut len = 0usize;
    loop {
        let mut h = String::new();
        conn.read_line(&mut h)?;
        if h == "\r\n" || h.is_empty() {
            break;
        }
        if let Some((k, v)) = h.split_once(':')
            && k.eq_ignore_ascii_case("content-length")
        {
            len = v.trim().parse().unwrap_or(0);
        }
    }
    let mut sink = vec![0u8; len];
    conn.read_exact(&mut sink)?;
    Ok((code, t0.elapsed()))
}

fn get(port: u16, path: &str) -> Option<(u16, String)> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes()).ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    let code = buf.split_whitespace().nth(1)?.parse().ok()?;
    Some((code, buf.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or_default()))
}

fn scored(port: u16) -> f64 {
    get(port, "/metrics")
        .and_then(|(_, t)| {
            t.lines()
                .find(|l| l.starts_with("agent_samples_scored_total{"))
                .and_then(|l| l.rsplit_once(' ')?.1.parse().ok())
        })
        .unwrap_or(0.0)
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

fn main() {
    let a = args();
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf();
    let dir = std::env::temp_dir().join(format!("ingest-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"
[model]
name = "digits"
path = "{root}/models/digits/encoder.onnx"
embedding = "embedding"
layers = [{{ name = "conv2_in", tensor = "/pool1/MaxPool_output_0" }}, {{ name = "block2", tensor = "/pool2/MaxPool_output_0" }}]
smoothing_points = {samples}
[engine]
providers = ["cpu"]
batch_size = 32
queue_capacity = {queue}
[baseline]
path = "{dir}/baseline.json"
reference_dir = "{root}/models/digits/reference.npy"
[window]
samples = 1000
[[sources]]
type = "ingest"
[logging]
level = "warn"
"#,
            root = root.display(),
            dir = dir.display(),
            samples = a.samples,
            queue = a.queue,
        ),
    )
    .unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let _agent = Agent(
        Command::new(&a.agent)
            .arg("--config")
            .arg(&cfg)
            .env("AGENT__SERVER__LISTEN", format!("127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .spawn()
            .expect("starting the agent"),
    );
    let t0 = Instant::now();
    while get(port, "/readyz").map(|(c, _)| c) != Some(200) {
        assert!(t0.elapsed() < Duration::from_secs(300), "the agent was not ready within 300 s");
        std::thread::sleep(Duration::from_millis(100));
    }
    let x =
        Array4::<f32>::read_npy(std::fs::File::open(root.join("models/digits/stream.npy")).unwrap()).unwrap();
    let body: Vec<u8> = {
        let data: Vec<String> = x.index_axis(Axis(0), 0).iter().map(|v| v.to_string()).collect();
        format!(
            r#"{{"inputs":[{{"name":"input","shape":[1,1,28,28],"datatype":"FP32","data":[{}]}}]}}"#,
            data.join(",")
        )
        .into_bytes()
    };
    let head = format!(
        "POST /v2/models/digits/infer HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    let scored_before = scored(port);
    let until = Instant::now() + Duration::from_secs(a.secs);
    let started = Instant::now();
    let workers: Vec<_> = (0..a.connections)
        .map(|_| {
            let (head, body) = (head.clone(), body.clone());
            std::thread::spawn(move || {
                let mut conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
                conn.get_mut().set_nodelay(true).unwrap();
                let (mut ok, mut full, mut other) = (Vec::new(), 0usize, 0usize);
                while Instant::now() < until {
                    match post(&mut conn, &head, &body) {
                        Ok((202, d)) => ok.push(d),
                        Ok((503, _)) => full += 1,
                        Ok(_) => other += 1,
                        Err(_) => {
                            other += 1;
                            conn = BufReader::new(TcpStream::connect(("127.0.0.1", port)).unwrap());
                        }
                    }
                }
                (ok, full, other)
            })
        })
        .collect();
    let (mut lat, mut full, mut other) = (Vec::new(), 0, 0);
    for w in workers {
        let (o, f, e) = w.join().unwrap();
        lat.extend(o);
        full += f;
        other += e;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let scored_during = scored(port) - scored_before;
    lat.sort();
    println!(
        "{} connections, {:.1} s, body {} bytes, engine batch 32, queue {}, smoothing samples {}",
        a.connections,
        elapsed,
        body.len(),
        a.queue,
        a.samples
    );
    println!(
        "accepted (202): {} = {:.0}/s; queue full (503): {} = {:.0}/s; other: {other}",
        lat.len(),
        lat.len() as f64 / elapsed,
        full,
        full as f64 / elapsed
    );
    println!(
        "latency to 202: p50 {:.2} ms, p90 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile(&lat, 0.5).as_secs_f64() * 1e3,
        percentile(&lat, 0.9).as_secs_f64() * 1e3,
        percentile(&lat, 0.99).as_secs_f64() * 1e3,
        lat.last().copied().unwrap_or_default().as_secs_f64() * 1e3
    );
    println!("scored by the engine meanwhile: {scored_during:.0} = {:.0}/s", scored_during / elapsed);
    let _ = std::fs::remove_dir_all(&dir);
}
