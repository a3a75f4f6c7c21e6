//! The `ingest` source: samples pushed to the agent's own HTTP endpoint, in the Open Inference
//! Protocol's JSON request format, so that a Triton/KServe client or a KServe payload logger can send
//! mirrored traffic unchanged.
//!
//! Endpoints (on the agent's server, `server.listen`, 127.0.0.1 by default):
//! - `POST /v2/models/{name}/infer`: `name` is `[model] name` or one of `models`; another name is 404;
//! - `POST /api/v1/samples`: the same body, for senders that do not name a model (a payload logger).
//!
//! Behaviour (the HTTP side lives in the daemon, `agent::daemon::ingest`; this module holds the
//! configuration and the pure request decoding):
//! - the body is decoded at once ([`decode_request`]) and handed to the engine's bounded queue without
//!   waiting: `202 Accepted` with `{"id": …, "samples": B}`; scoring is asynchronous;
//! - a full queue answers `503` with `Retry-After: <retry_after_secs>`, never buffering without bound;
//! - errors are JSON `{"error": {"reason": …, "message": …}}`: `400` for a body that does not decode
//!   (`reason`: `decode`, `shape`, `dtype`, `non_finite`; counted in `agent_samples_rejected_total`),
//!   `401` without the bearer token, `404` for an unknown model, `408` when the body takes longer than
//!   `request_timeout_ms`, `413` above `max_body_bytes`, `503` while the pipeline is starting or full;
//! - CloudEvents in binary mode, as a KServe payload logger sends them (`ce-id`, `ce-type`,
//!   `ce-source`, `ce-specversion` headers): a request event (`org.kubeflow.serving.inference.request`)
//!   is a sample, `ce-id` its id; a response event (`ce-type` ending in `.response`) carries the
//!   model's output, not its input, and is answered `200` `{"ignored": "response event"}`;
//! - delivery is at most once: an accepted sample lives in memory until scored; a crash loses the
//!   queued ones (a sender needing more uses the `http` or `dir` source).

use serde::{Deserialize, Serialize};

use super::{Acknowledge, Outcome};
use crate::decode::payload::decode_text;
use crate::decode::text::text_of_record;
use crate::decode::v2::{decode_tensor, decode_token_request, parse_request, select_input};
use crate::decode::{DecodeOptions, Payload, Rejection};

/// `[[sources]]` with `type = "ingest"`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IngestConfig {
    /// Source name, the `source` metric label.
    #[serde(default = "default_name")]
    pub name: String,
    /// Model names accepted in `/v2/models/{name}/infer` besides `[model] name` (the production
    /// model's name on its server, when it differs).
    #[serde(default)]
    pub models: Vec<String>,
    /// Larger bodies are refused with 413.
    #[serde(default = "default_max_body_bytes")]
    pub max_body_bytes: u64,
    /// Longest time to receive a body; slower requests get 408.
    #[serde(default = "default_request_timeout_ms")]
    pub request_timeout_ms: u64,
    /// Required as `Authorization: Bearer <token>`; absent = `server.auth_token` (when set).
    #[serde(default)]
    pub auth_token: Option<String>,
    /// `Retry-After` of a 503 answered because the queue is full.
    #[serde(default = "default_retry_after_secs")]
    pub retry_after_secs: u64,
    /// The input tensor to score when a request holds several.
    #[serde(default)]
    pub input: Option<String>,
}

fn default_name() -> String {
    "ingest".to_string()
}
const fn default_max_body_bytes() -> u64 {
    8 * 1024 * 1024
}
const fn default_request_timeout_ms() -> u64 {
    10_000
}
const fn default_retry_after_secs() -> u64 {
    1
}

impl Default for IngestConfig {
    fn default() -> Self {
        IngestConfig {
            name: default_name(),
            models: Vec::new(),
            max_body_bytes: default_max_body_bytes(),
            request_timeout_ms: default_request_timeout_ms(),
            auth_token: None,
            retry_after_secs: default_retry_after_secs(),
            input: None,
        }
    }
}

impl IngestConfig {
    /// Every problem with this configuration, as `(key, why)`.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if self.name.is_empty() {
            out.push(("name".into(), "must not be empty".into()));
        }
        for (i, m) in self.models.iter().enumerate() {
            if m.is_empty() || m.contains('/') {
                out.push((format!("models[{i}]"), format!("{m:?} is not a model name (non-empty, no '/')")));
            }
        }
        if self.max_body_bytes == 0 {
            out.push(("max_body_bytes".into(), "must be at least 1".into()));
        }
        if self.request_timeout_ms == 0 {
            out.push(("request_timeout_ms".into(), "must be at least 1".into()));
        }
        if self.auth_token.as_deref() == Some("") {
            out.push(("auth_token".into(), "empty; remove the key to use server.auth_token".into()));
        }
        out
    }
}

/// Whether a CloudEvents `ce-type` is an inference *response* (whose body is not a model input).
pub fn is_response_event(ce_type: &str) -> bool {
    ce_type.ends_with(".response")
}

/// Decodes a request body (`json_len`: the binary extension's `Inference-Header-Content-Length`):
/// the request's `id` and the selected input's batch. A text model also takes `{"text": "…"}` (and an
/// optional `"id"`) and V2 requests with a `BYTES` text tensor or its `INT64` token inputs.
pub fn decode_request(
    name: &str,
    body: &[u8],
    json_len: Option<usize>,
    input: Option<&str>,
    opts: &DecodeOptions,
) -> Result<(Option<String>, Payload), Rejection> {
    if let Some(tokens) = &opts.tokens {
        if json_len.is_none()
            && let Some(record) = text_record(name, body, opts)?
        {
            return Ok(record);
        }
        let parsed = parse_request(name, body, json_len, &opts.limits)?;
        let samples = decode_token_request(name, &parsed, tokens, opts)?;
        return Ok((parsed.request.id, Payload::Tokens(samples)));
    }
    let parsed = parse_request(name, body, json_len, &opts.limits)?;
    let i = select_input(name, &parsed.request, input)?;
    let batch = decode_tensor(name, &parsed.request.inputs[i], parsed.binary[i], opts)?;
    Ok((parsed.request.id, Payload::Dense(batch)))
}

/// `{"text": "…", "id": …}`: `None` when the body is not an object with a `text` key (a V2 request).
fn text_record(
    name: &str,
    body: &[u8],
    opts: &DecodeOptions,
) -> Result<Option<(Option<String>, Payload)>, Rejection> {
    opts.limits.check_depth(name, body)?;
    let Ok(serde_json::Value::Object(obj)) = serde_json::from_slice::<serde_json::Value>(body) else {
        return Ok(None);
    };
    if !obj.contains_key("text") {
        return Ok(None);
    }
    let id = match obj.get("id") {
        Some(serde_json::Value::String(s)) => Some(s.clone()),
        Some(serde_json::Value::Number(n)) => Some(n.to_string()),
        _ => None,
    };
    let text = text_of_record(name, &serde_json::Value::Object(obj))?;
    Ok(Some((id, decode_text(name, &text, opts)?)))
}

/// Ingested samples have nothing durable to finish: the daemon's counters record the outcome.
pub struct IngestAck;

impl Acknowledge for IngestAck {
    fn finish(self: Box<Self>, _outcome: &Outcome) -> std::io::Result<()> {
        Ok(())
    }
}
