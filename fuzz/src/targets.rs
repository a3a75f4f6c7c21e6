//! The fuzz targets' bodies, one function per parser of outside bytes. The libFuzzer binaries in
//! `fuzz/fuzz_targets/` call them, and `tests/fuzz_regressions.rs` replays the committed corpus and
//! every crash found through the same functions in an ordinary `cargo test`.
//!
//! Each target runs the real entry point the daemon uses on that input, with small limits, so that
//! `cap.rs` turns any allocation the limits should have prevented into an abort. A `Result::Err` is
//! the expected outcome of most inputs; only a panic, an abort or a timeout is a finding.

use std::path::PathBuf;
use std::sync::{Arc, OnceLock};

use agent::compiler::{CompileOptions, compile};
use agent::daemon::ingest::{IngestEndpoint, IngestState};
use agent::daemon::state::AppState;
use agent::scores::{Aggregation, Method};
use axum::body::Body;
use axum::http::{HeaderName, HeaderValue, Method as HttpMethod, Request};
use plugins::decode::{DecodeOptions, ImageOptions, Layout, Normalization, decode_bytes};
use plugins::limits::Limits;
use plugins::sources::Delivery;
use plugins::sources::http::record::{Lines, Piece, parse_line};
use plugins::sources::ingest::{IngestConfig, decode_request};
use tokio::sync::mpsc;
use tower::ServiceExt;

/// Limits small enough that everything they admit stays far below `cap::CAP_BYTES`.
pub fn limits() -> Limits {
    Limits {
        max_elements_per_sample: 1 << 18,
        max_elements_per_file: 1 << 20,
        max_decompressed_bytes: 8 << 20,
        max_json_depth: 32,
    }
}

/// Decoding options as the daemon builds them, with the small limits and a normalisation (so the
/// `uint8` path runs it).
pub fn opts(input_shape: &[usize], layout: Layout) -> DecodeOptions {
    DecodeOptions {
        input_shape: input_shape.to_vec(),
        max_bytes: 0,
        normalization: Normalization { mean: vec![0.5], std: vec![0.25], layout },
        image: ImageOptions { max_pixels: 1 << 20, ..ImageOptions::default() },
        limits: limits(),
        tokens: None,
    }
}

/// `.npy`: any shape (the leading axis a batch), then a fixed one.
pub fn npy(data: &[u8]) {
    let _ = decode_bytes("fuzz.npy", "npy", data, &opts(&[], Layout::Nchw));
    let _ = decode_bytes("fuzz.npy", "npy", data, &opts(&[2, 3], Layout::Nchw));
}

/// `.npz`: the zip container, then the member as `.npy`.
pub fn npz(data: &[u8]) {
    let _ = decode_bytes("fuzz.npz", "npz", data, &opts(&[], Layout::Nchw));
}

/// PNG and JPEG (the format is sniffed from the bytes): resized to a model's `[3, 16, 16]` NCHW and
/// `[8, 8, 1]` NHWC inputs, and as is with no model shape.
pub fn image(data: &[u8]) {
    let _ = decode_bytes("fuzz.png", "png", data, &opts(&[3, 16, 16], Layout::Nchw));
    let _ = decode_bytes("fuzz.jpg", "jpg", data, &opts(&[8, 8, 1], Layout::Nhwc));
    let _ = decode_bytes("fuzz.jpeg", "jpeg", data, &opts(&[], Layout::Nchw));
}

/// A V2 request body as the ingest endpoint decodes it. Byte 0: bit 0 = the binary extension is
/// used, bit 1 = the model's input shape is unknown; bytes 1–2: `Inference-Header-Content-Length`
/// (little-endian); the rest is the body.
pub fn v2(data: &[u8]) {
    let [flags, lo, hi, body @ ..] = data else { return };
    let json_len = (flags & 1 == 1).then(|| usize::from(u16::from_le_bytes([*lo, *hi])));
    let shape: &[usize] = if flags & 2 == 2 { &[] } else { &[2, 3] };
    let _ = decode_request("fuzz", body, json_len, None, &opts(shape, Layout::Nchw));
    let _ = decode_request("fuzz", body, json_len, Some("x"), &opts(shape, Layout::Nchw));
}

/// An NDJSON feed response: split into bounded lines, each parsed and decoded as the `http` source
/// does (V2 tensors, or a base64 file of any format).
pub fn feed(data: &[u8]) {
    let mut lines = Lines::new(16 * 1024);
    let mut pieces = lines.push(data);
    pieces.extend(lines.finish());
    for piece in pieces {
        if let Piece::Line(line) = piece
            && let Ok(record) = parse_line(&line, &limits())
        {
            let _ = record.decode("feed", None, &opts(&[2, 2], Layout::Nchw));
        }
    }
}

struct Ingest {
    runtime: tokio::runtime::Runtime,
    router: axum::Router,
    queue: std::sync::Mutex<mpsc::Receiver<Delivery>>,
}

fn ingest_server() -> &'static Ingest {
    static SERVER: OnceLock<Ingest> = OnceLock::new();
    SERVER.get_or_init(|| {
        let state = Arc::new(AppState::new());
        *state.auth_token.write().unwrap() = Some("s3cret".into());
        let (tx, rx) = mpsc::channel(4);
        let cfg =
            IngestConfig { name: "fuzz".into(), models: vec!["alias".into()], ..IngestConfig::default() };
        let endpoint = IngestEndpoint::new(cfg, "digits".into(), tx, opts(&[2, 3], Layout::Nchw));
        *state.ingest.write().unwrap() = IngestState::Open(Arc::new(endpoint));
        let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let router = agent::daemon::server::router(state);
        Ingest { runtime, router, queue: std::sync::Mutex::new(rx) }
    })
}

/// A whole HTTP request to the agent's server, after the HTTP parser: the first line is
/// `METHOD PATH`, then `name: value` header lines (CloudEvents `ce-*`, `Authorization`,
/// `Content-Length`, `Inference-Header-Content-Length`, …) up to an empty line, then the body.
/// The server has a bearer token (`s3cret`) and an open ingest endpoint for the model `digits`.
pub fn http(data: &[u8]) {
    let split = data.windows(2).position(|w| w == b"\n\n");
    let (head, body) = match split {
        Some(i) => (&data[..i], &data[i + 2..]),
        None => (data, &[][..]),
    };
    let mut lines = head.split(|b| *b == b'\n');
    let first = lines.next().unwrap_or_default();
    let mut parts = first.splitn(2, |b| *b == b' ');
    let method = HttpMethod::from_bytes(parts.next().unwrap_or_default()).unwrap_or(HttpMethod::POST);
    let path = std::str::from_utf8(parts.next().unwrap_or_default()).unwrap_or("/api/v1/samples");
    let mut req = match Request::builder().method(method).uri(path).body(Body::from(body.to_vec())) {
        Ok(r) => r,
        Err(_) => return,
    };
    for line in lines {
        let Some(colon) = line.iter().position(|b| *b == b':') else { continue };
        let value = line[colon + 1..].strip_prefix(b" ").unwrap_or(&line[colon + 1..]);
        if let (Ok(n), Ok(v)) = (HeaderName::from_bytes(&line[..colon]), HeaderValue::from_bytes(value)) {
            req.headers_mut().append(n, v);
        }
    }
    let server = ingest_server();
    let Ok(resp) = server.runtime.block_on(server.router.clone().oneshot(req));
    let _ = server.runtime.block_on(axum::body::to_bytes(resp.into_body(), 1 << 20));
    // Accepted samples are dropped, as if scored, so the queue never stays full.
    while server.queue.lock().unwrap().try_recv().is_ok() {}
}

/// The ONNX protobuf decoder, then the compiler on what decodes (its shape probe runs the model in
/// ONNX Runtime). Byte 0 picks the layer among the nodes' outputs, byte 1 the embedding among the
/// graph's outputs and the methods; the rest is the model.
pub fn onnx(data: &[u8]) {
    let [layer_pick, embedding_pick, bytes @ ..] = data else { return };
    let Ok(model) = agent::onnx::decode(bytes) else { return };
    let Some(graph) = &model.graph else { return };
    let outputs: Vec<&String> = graph.node.iter().flat_map(|n| n.output.iter()).collect();
    if outputs.is_empty() || graph.output.is_empty() {
        return;
    }
    let layer = outputs[usize::from(*layer_pick) % outputs.len()].clone();
    let embedding = graph.output[usize::from(*embedding_pick) % graph.output.len()].name.clone();
    let methods = match embedding_pick >> 6 {
        0 => vec![Method::Vanilla],
        1 => vec![Method::ActGrad],
        2 => vec![Method::GradCam],
        _ => Method::ALL.to_vec(),
    };
    let opts = CompileOptions {
        embedding,
        layers: vec![layer],
        methods,
        channel_agg: Some(Aggregation::Abs),
        smoothing_samples: 1 + usize::from(embedding_pick >> 5 & 1),
        layouts: vec![],
    };
    let _ = compile(&model, "fuzz", &opts);
}

/// A configuration file: parsed (TOML, no environment overrides), validated, turned into the
/// engine's specification and decode options.
pub fn config(data: &[u8]) {
    static DIR: OnceLock<PathBuf> = OnceLock::new();
    let dir = DIR.get_or_init(|| {
        let d = std::env::temp_dir().join(format!("agent-fuzz-config-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d
    });
    let path = dir.join("agent.toml");
    std::fs::write(&path, data).unwrap();
    let Ok(cfg) = agent::config::Config::load_with_env(&path, Default::default()) else { return };
    let problems = cfg.validate();
    let _ = cfg.to_engine_spec();
    if problems.is_empty() {
        let _ = agent::daemon::baseline::decode_options(&cfg, &[1, 8, 8]);
    }
}
