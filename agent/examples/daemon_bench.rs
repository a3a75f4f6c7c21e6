//! Daemon throughput and memory, measured on the real binary: `cargo build --release -p agent &&
//! cargo run --release -p agent --example daemon_bench [-- FILES]`.
//!
//! For each setting it starts `target/release/agent` on a temporary directory with the demo encoder,
//! waits until it is ready (baseline from 256 reference digits), drops FILES digit files (default 1000)
//! into the watched directory as fast as it can, and times them until every one is in `done/`. Peak
//! memory is the process's high-water mark (`VmHWM` in /proc); CPU time is the daemon's own (all its
//! threads, /proc/PID/stat) over the same span, the figure to compare on a shared machine. Results go
//! to stdout as a table.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use ndarray::{Array4, Axis};

#[path = "common/proc_stats.rs"]
mod proc_stats;
use proc_stats::{load_average, vm_hwm_kib};

/// The daemon's CPU time (every thread) in seconds.
fn cpu_seconds(pid: u32) -> f64 {
    proc_stats::cpu_seconds_of(&pid.to_string()).unwrap_or(0.0)
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap().to_path_buf()
}

fn get(port: u16, path: &str) -> Option<String> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\n\r\n").as_bytes()).ok()?;
    let mut b = String::new();
    s.read_to_string(&mut b).ok()?;
    Some(b)
}

fn count(dir: &Path) -> usize {
    std::fs::read_dir(dir).map(|r| r.count()).unwrap_or(0)
}

struct Killed(Child);
impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `extra_model` and `extra_engine`: additional `[model]` and `[engine]` lines (overrides).
#[allow(clippy::too_many_arguments)]
fn run(
    label: &str,
    samples: usize,
    methods: &str,
    extra_model: &str,
    extra_engine: &str,
    files: usize,
    digits: &Array4<f32>,
) -> Figures {
    let d = tempfile::tempdir().unwrap();
    let inbox = d.path().join("inbox");
    std::fs::create_dir_all(&inbox).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let cfg = d.path().join("agent.toml");
    std::fs::write(
        &cfg,
        format!(
            r#"[model]
name = "digits"
path = "{repo}/models/digits/encoder.onnx"
embedding = "embedding"
layers = [{{ name = "conv2_in", tensor = "/pool1/MaxPool_output_0" }}, {{ name = "block2", tensor = "/pool2/MaxPool_output_0" }}]
methods = {methods}
smoothing_points = {samples}
{extra_model}
[engine]
providers = ["cpu"]
batch_size = 16
queue_capacity = 64
{extra_engine}
[baseline]
reference_dir = "{repo}/models/digits/reference.npy"
[window]
samples = 200
[server]
listen = "127.0.0.1:{port}"
[[sources]]
type = "dir"
name = "inbox"
path = "{inbox}"
[logging]
level = "warn"
"#,
            repo = repo().display(),
            inbox = inbox.display()
        ),
    )
    .unwrap();
    let exe = std::env::current_exe().unwrap().parent().unwrap().parent().unwrap().join("agent");
    assert!(exe.is_file(), "{} missing: run `cargo build --release -p agent` first", exe.display());
    let start = Instant::now();
    let child = Command::new(&exe).arg("--config").arg(&cfg).stdout(Stdio::null()).spawn().unwrap();
    let child = Killed(child);
    while !get(port, "/readyz")
        .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
    {
        assert!(start.elapsed() < Duration::from_secs(600), "not ready");
        std::thread::sleep(Duration::from_millis(50));
    }
    let ready = start.elapsed();
    let cpu0 = cpu_seconds(child.0.id());
    let t0 = Instant::now();
    for i in 0..files {
        let x = digits.index_axis(Axis(0), i % digits.shape()[0]).to_owned();
        let tmp = inbox.join(format!("f{i:05}.tmp"));
        ndarray_npy::write_npy(&tmp, &x).unwrap();
        std::fs::rename(&tmp, inbox.join(format!("f{i:05}.npy"))).unwrap();
    }
    let done = inbox.join("done");
    while count(&done) < files {
        assert!(t0.elapsed() < Duration::from_secs(3600), "too slow");
        std::thread::sleep(Duration::from_millis(20));
    }
    let secs = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds(child.0.id()) - cpu0;
    let hwm = vm_hwm_kib(child.0.id());
    println!(
        "| {label} | {samples} | {methods} | {:.1} | {:.0} | {:.1} | {:.1} | {:.0} |",
        ready.as_secs_f64(),
        files as f64 / secs,
        1000.0 * secs / files as f64,
        1000.0 * cpu / files as f64,
        hwm as f64 / 1024.0
    );
    Figures {
        per_sec: files as f64 / secs,
        cpu_ms: 1000.0 * cpu / files as f64,
        peak_mib: hwm as f64 / 1024.0,
    }
}

struct Figures {
    per_sec: f64,
    cpu_ms: f64,
    peak_mib: f64,
}

fn main() {
    let files: usize = std::env::args().nth(1).and_then(|a| a.parse().ok()).unwrap_or(1000);
    let digits: ndarray::ArrayD<f32> =
        ndarray_npy::read_npy(repo().join("models/digits/stream.npy")).unwrap();
    let digits: Array4<f32> = digits.into_dimensionality().unwrap();
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
    println!("{files} files per run, CPU, {cores} cores, load average at start: {}", load_average());
    println!(
        "| setting | samples S | methods | ready (s) | samples/s | ms per sample | CPU ms per sample | peak RSS (MiB) |"
    );
    println!("|---|---|---|---|---|---|---|---|");
    let two = r#"["vanilla", "actgrad"]"#;
    run("plain gradient", 1, two, "", "", files, &digits);
    let default = run("smoothed, the demo's methods (vanilla + actgrad)", 16, two, "", "", files, &digits);
    // The daemon's defaults: `methods` vanilla alone, whose smoothed maps average the points before
    // conv2's gradient, over the masks (docs/spec/attribution-graph.md).
    let vanilla =
        run("smoothed, the daemon's defaults (vanilla)", 16, r#"["vanilla"]"#, "", "", files, &digits);
    // ONNX Runtime's intra-op spinning, off by default (`engine.intra_op_spinning`).
    run(
        "smoothed, the daemon's defaults, intra_op_spinning = true",
        16,
        r#"["vanilla"]"#,
        "",
        "intra_op_spinning = true",
        files,
        &digits,
    );
    // The fixed chunking the engine used before its runs were sized from the memory limit.
    run(
        "smoothed, before: rows_per_run = 32, whole batch per run",
        16,
        two,
        "rows_per_run = 32",
        "memory_limit_bytes = 1099511627776",
        files,
        &digits,
    );
    run(
        "smoothed, memory_limit_bytes = 32 MiB",
        16,
        two,
        "",
        "memory_limit_bytes = 33554432",
        files,
        &digits,
    );
    run("smoothed, all methods", 16, r#"["vanilla", "actgrad", "gradcam"]"#, "", "", files, &digits);
    // Issue 11's target for the defaults: ≥ 200 samples/s at S = 16 with peak RSS ≤ 256 MiB. On a
    // shared machine the wall-clock rate measures the other work too; the CPU time bounds what the
    // cores could do: `cores × 1000 / CPU ms` samples/s if the daemon had them to itself.
    println!();
    for (what, f) in
        [("the daemon's defaults (vanilla)", &vanilla), ("the demo's methods (vanilla + actgrad)", &default)]
    {
        println!(
            "{what}, S = 16: {:.0} samples/s (CPU-bound ceiling on {cores} cores: {:.0}), peak RSS {:.0} MiB; target ≥ 200 samples/s and ≤ 256 MiB: {}",
            f.per_sec,
            cores as f64 * 1000.0 / f.cpu_ms.max(1e-9),
            f.peak_mib,
            if f.per_sec >= 200.0 && f.peak_mib <= 256.0 { "met" } else { "not met" }
        );
    }
    println!("load average at the end: {}", load_average());
}
