//! The `ingest` source's HTTP side: `POST /v2/models/{name}/infer` (also with `/versions/{v}`) and
//! `POST /api/v1/samples` on the agent's server. The contract (statuses, reasons, CloudEvents, the
//! delivery guarantee) is documented with the configuration in `plugins::sources::ingest`.
//!
//! The routes stay mounted across reloads; which pipeline they feed is [`IngestState`]: a request
//! between two pipelines answers 503 with `Retry-After`, and a configuration without an ingest source
//! answers 404.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use serde_json::json;
use tokio::sync::mpsc;

pub use super::endpoint::{IngestEndpoint, IngestState};
use super::state::AppState;
use plugins::sources::ingest::{IngestAck, IngestConfig, decode_request, is_response_event};
use plugins::sources::{Ack, Delivery};

/// Bodies above this are decoded on the blocking pool rather than on a runtime worker.
const INLINE_DECODE_BYTES: usize = 256 * 1024;

pub fn routes() -> Router<Arc<AppState>> {
    Router::new()
        .route("/v2/models/{name}/infer", post(infer))
        .route("/v2/models/{name}/versions/{version}/infer", post(infer_version))
        .route("/api/v1/samples", post(samples))
}

async fn infer(State(state): State<Arc<AppState>>, Path(name): Path<String>, req: Request) -> Response {
    handle(state, Some(name), req).await
}

async fn infer_version(
    State(state): State<Arc<AppState>>,
    Path((name, _version)): Path<(String, String)>,
    req: Request,
) -> Response {
    handle(state, Some(name), req).await
}

async fn samples(State(state): State<Arc<AppState>>, req: Request) -> Response {
    handle(state, None, req).await
}

/// An error answer: `{"error": {"reason": …, "message": …}}`.
struct Refusal {
    status: StatusCode,
    reason: &'static str,
    message: String,
    retry_after_secs: Option<u64>,
}

impl Refusal {
    fn new(status: StatusCode, reason: &'static str, message: impl Into<String>) -> Refusal {
        Refusal { status, reason, message: message.into(), retry_after_secs: None }
    }

    fn retry(mut self, secs: u64) -> Refusal {
        self.retry_after_secs = Some(secs);
        self
    }

    fn into_response(self) -> Response {
        let body = json!({"error": {"reason": self.reason, "message": self.message}});
        let mut resp = (self.status, axum::Json(body)).into_response();
        if let Some(s) = self.retry_after_secs {
            resp.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(s));
        }
        if self.status == StatusCode::UNAUTHORIZED {
            resp.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

async fn handle(state: Arc<AppState>, model: Option<String>, req: Request) -> Response {
    let endpoint = match &*super::locks::read(&state.ingest) {
        IngestState::Off => None,
        IngestState::Starting { name } => Some(Err(name.clone())),
        IngestState::Open(e) => Some(Ok(e.clone())),
    };
    let (source, result) = match endpoint {
        None => (
            "none".to_string(),
            Err(Refusal::new(StatusCode::NOT_FOUND, "no_ingest_source", "no ingest source is configured")),
        ),
        Some(Err(name)) => (
            name,
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the pipeline is starting")
                .retry(1)),
        ),
        Some(Ok(e)) => (e.cfg.name.clone(), accept(&state, &e, model, req).await),
    };
    let resp = result.unwrap_or_else(Refusal::into_response);
    state.telemetry.ingest_requests.with_label_values(&[source.as_str(), resp.status().as_str()]).inc();
    resp
}

fn header_str<'a>(h: &'a HeaderMap, name: &str) -> Option<&'a str> {
    h.get(name).and_then(|v| v.to_str().ok())
}

/// A request that reached an open endpoint: authorised, for a monitored model, not a response
/// event, its body read within the limits, decoded, and queued for the engine (202).
async fn accept(
    state: &AppState,
    e: &IngestEndpoint,
    model: Option<String>,
    req: Request,
) -> Result<Response, Refusal> {
    let cfg = &e.cfg;
    authorize(state, e, req.headers())?;
    if let Some(name) = &model {
        known_model(e, name)?;
    }
    let ce_id = header_str(req.headers(), "ce-id").map(str::to_string);
    if let Some(t) = header_str(req.headers(), "ce-type")
        && is_response_event(t)
    {
        let body = json!({"ignored": "response event", "id": ce_id});
        return Ok((StatusCode::OK, axum::Json(body)).into_response());
    }
    let (body, json_len) = read_request(cfg, req).await?;
    let seq = e.seq.fetch_add(1, Ordering::Relaxed);
    let (body_id, batch) = decode(state, e, body, json_len, seq).await?;
    let id = body_id.or(ce_id).unwrap_or_else(|| format!("request-{seq}"));
    let samples = batch.samples();
    enqueue(
        e,
        Delivery {
            source: cfg.name.clone(),
            input: format!("{}/{id}", cfg.name),
            batch,
            ack: Ack::new(IngestAck),
        },
    )?;
    let body = json!({"id": id, "model": e.model, "samples": samples});
    Ok((StatusCode::ACCEPTED, axum::Json(body)).into_response())
}

/// The source's bearer token, else the server's; none configured lets every request in.
fn authorize(state: &AppState, e: &IngestEndpoint, headers: &HeaderMap) -> Result<(), Refusal> {
    let token = e.cfg.auth_token.clone().or_else(|| super::locks::read(&state.auth_token).clone());
    match token {
        Some(token) if !super::server::bearer_ok(headers, &token) => {
            Err(Refusal::new(StatusCode::UNAUTHORIZED, "unauthorized", "missing or wrong bearer token"))
        }
        _ => Ok(()),
    }
}

/// `/v2/models/{name}/infer` for a model this agent does not monitor: 404 naming the known ones.
fn known_model(e: &IngestEndpoint, name: &str) -> Result<(), Refusal> {
    if e.accepts(name) {
        return Ok(());
    }
    let mut known = vec![e.model.clone()];
    known.extend(e.cfg.models.iter().cloned());
    Err(Refusal::new(
        StatusCode::NOT_FOUND,
        "unknown_model",
        format!("model {name:?} is not monitored here (known: {known:?})"),
    ))
}

/// The body (at most `max_body_bytes`, within `request_timeout_ms`) and the binary extension's JSON
/// header length, when given.
async fn read_request(
    cfg: &IngestConfig,
    req: Request,
) -> Result<(axum::body::Bytes, Option<usize>), Refusal> {
    let max = cfg.max_body_bytes;
    let declared = header_str(req.headers(), "content-length").and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(too_large(max));
    }
    let json_len = match header_str(req.headers(), "inference-header-content-length") {
        None => None,
        Some(v) => Some(v.parse::<usize>().map_err(|_| {
            Refusal::new(StatusCode::BAD_REQUEST, "decode", format!("Inference-Header-Content-Length {v:?}"))
        })?),
    };
    let timeout = Duration::from_millis(cfg.request_timeout_ms);
    match tokio::time::timeout(timeout, read_body(req.into_body(), max)).await {
        Err(_) => Err(Refusal::new(
            StatusCode::REQUEST_TIMEOUT,
            "timeout",
            format!("the body did not arrive within {} ms", cfg.request_timeout_ms),
        )),
        Ok(body) => Ok((body?, json_len)),
    }
}

/// Decodes the body into a batch (large bodies on the blocking pool); a bad one is counted and
/// answered 400 with the reason.
async fn decode(
    state: &AppState,
    e: &IngestEndpoint,
    body: axum::body::Bytes,
    json_len: Option<usize>,
    seq: u64,
) -> Result<(Option<String>, plugins::decode::Payload), Refusal> {
    let cfg = &e.cfg;
    let label = format!("{}/request-{seq}", cfg.name);
    let (input, opts) = (cfg.input.clone(), e.opts.clone());
    let decoded = if body.len() <= INLINE_DECODE_BYTES {
        decode_request(&label, &body, json_len, input.as_deref(), &opts)
    } else {
        let l = label.clone();
        tokio::task::spawn_blocking(move || decode_request(&l, &body, json_len, input.as_deref(), &opts))
            .await
            .map_err(|e| Refusal::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?
    };
    decoded.map_err(|r| {
        tracing::warn!(source = %cfg.name, reason = r.reason.as_str(), "rejected: {}", r.message);
        state.telemetry.rejected(&e.model, r.reason);
        Refusal::new(StatusCode::BAD_REQUEST, r.reason.as_str(), r.message)
    })
}

/// Hands the delivery to the engine's queue without waiting: a full queue or a stopping pipeline
/// answers 503 with `Retry-After`.
fn enqueue(e: &IngestEndpoint, d: Delivery) -> Result<(), Refusal> {
    let tx = super::locks::read(&e.tx).clone();
    let sent = match tx {
        Some(tx) => tx.try_send(d),
        None => Err(mpsc::error::TrySendError::Closed(d)),
    };
    match sent {
        Ok(()) => Ok(()),
        Err(mpsc::error::TrySendError::Full(_)) => Err(Refusal::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "queue_full",
            "the engine's queue is full; retry later",
        )
        .retry(e.cfg.retry_after_secs)),
        Err(mpsc::error::TrySendError::Closed(_)) => {
            Err(Refusal::new(StatusCode::SERVICE_UNAVAILABLE, "not_ready", "the pipeline is stopping")
                .retry(e.cfg.retry_after_secs))
        }
    }
}

fn too_large(max: u64) -> Refusal {
    Refusal::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "too_large",
        format!("the body exceeds max_body_bytes = {max}"),
    )
}

/// Reads at most `max` bytes of a body.
async fn read_body(body: Body, max: u64) -> Result<axum::body::Bytes, Refusal> {
    let limit = usize::try_from(max).unwrap_or(usize::MAX);
    axum::body::to_bytes(body, limit).await.map_err(|e| {
        let limited =
            std::error::Error::source(&e).is_some_and(|s| s.is::<http_body_util::LengthLimitError>());
        if limited {
            too_large(max)
        } else {
            Refusal::new(StatusCode::BAD_REQUEST, "body", format!("reading the body: {e}"))
        }
    })
}
