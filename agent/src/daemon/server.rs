//! HTTP: `/metrics`, `/`, `/healthz`, `/readyz`, `/api/v1/status`, `/api/v1/maps`, and the ingest
//! endpoints (`super::ingest`).

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use sha2::{Digest, Sha256};

use super::state::AppState;
use crate::telemetry::CONTENT_TYPE;

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/maps", get(maps))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/", get(landing))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .merge(super::ingest::routes())
        .with_state(state)
}

/// `Authorization: Bearer <server.auth_token>` when a token is configured.
async fn auth(State(state): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let expected = super::locks::read(&state.auth_token).clone();
    if let Some(token) = expected
        && !bearer_ok(req.headers(), &token)
    {
        return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n")
            .into_response();
    }
    next.run(req).await
}

/// The one bearer-token check of every protected route (`/metrics`, `/api/v1/status`, ingest):
/// whether `headers` carry `Authorization: Bearer <token>`. Both sides are hashed and the digests
/// compared with a fold over all 32 bytes, so the time taken depends neither on where a guess
/// differs nor on the token's length.
pub fn bearer_ok(headers: &HeaderMap, token: &str) -> bool {
    let given = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    let (a, b) = (Sha256::digest(given.unwrap_or("").as_bytes()), Sha256::digest(token.as_bytes()));
    let diff = a.iter().zip(b.iter()).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    given.is_some() & (std::hint::black_box(diff) == 0)
}

/// Logs a warning when the server is reachable beyond loopback and `/metrics` and the status API
/// answer anyone; called once the listener is bound (`addr` is its real address).
pub fn warn_if_exposed(addr: SocketAddr, token: Option<&str>) -> bool {
    let exposed = !addr.ip().is_loopback() && token.is_none();
    if exposed {
        tracing::warn!(
            listen = %addr,
            "the server listens beyond loopback without server.auth_token: /metrics, /api/v1/status and \
             the ingest endpoints answer anyone who can reach it; set server.auth_token \
             (AGENT__SERVER__AUTH_TOKEN) or listen on 127.0.0.1"
        );
    }
    exposed
}

async fn metrics(State(state): State<Arc<AppState>>) -> Response {
    ([(header::CONTENT_TYPE, CONTENT_TYPE)], state.telemetry.encode()).into_response()
}

async fn readyz(State(state): State<Arc<AppState>>) -> Response {
    if state.telemetry.ready.get() == 1 {
        (StatusCode::OK, "ready\n").into_response()
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready: model, noise maps or baseline not loaded yet\n")
            .into_response()
    }
}

async fn status(State(state): State<Arc<AppState>>) -> Response {
    axum::Json(state.status()).into_response()
}

/// The reference and window maps ([`super::maps::MapsView`]); 503 before the first pipeline is up.
async fn maps(State(state): State<Arc<AppState>>) -> Response {
    match super::maps::view(&state.maps) {
        Some(v) => axum::Json(v).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            axum::Json(serde_json::json!({"error": "no maps: the pipeline is not running yet"})),
        )
            .into_response(),
    }
}

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

fn num(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.4}")).unwrap_or_else(|| "–".into())
}

async fn landing(State(state): State<Arc<AppState>>) -> Html<String> {
    let st = state.status();
    let mut rows = String::new();
    for k in &st.layers {
        rows.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.4}</td></tr>\n",
            esc(&k.layer),
            k.method.as_str(),
            num(k.noise_score),
            num(k.baseline_noise_score),
            num(k.noise_score_drift),
            num(k.variance_score),
            k.noise_benchmark
        ));
    }
    let maps = super::maps::view(&state.maps).map(|v| super::heatmap::section(&v)).unwrap_or_default();
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><meta http-equiv=\"refresh\" content=\"10\">\
         <title>agent: {model}</title></head><body>\n\
         <h1>agent {version}</h1>\n<p>model <b>{model}</b>, provider <b>{provider}</b>, {ready}, \
         {n} samples in the window, {scored} scored.</p>\n\
         <table border=\"1\" cellpadding=\"4\"><tr><th>layer</th><th>method</th><th>NS (window)</th>\
         <th>NS (baseline)</th><th>ΔNS</th><th>VS (window)</th><th>NS bench</th></tr>\n{rows}</table>\n{maps}\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/api/v1/status\">/api/v1/status</a> · \
         <a href=\"/api/v1/maps\">/api/v1/maps</a> · \
         <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n",
        model = esc(&st.model),
        version = env!("CARGO_PKG_VERSION"),
        provider = esc(st.provider.as_deref().unwrap_or("not loaded")),
        ready = if st.ready { "ready" } else { "not ready" },
        n = st.window_samples,
        scored = st.samples_scored,
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use axum::http::HeaderValue;

    fn with(auth: &[u8]) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::AUTHORIZATION, HeaderValue::from_bytes(auth).unwrap());
        h
    }

    #[test]
    fn bearer_tokens_match_exactly() {
        assert!(bearer_ok(&with(b"Bearer s3cret"), "s3cret"));
        for wrong in [
            &b"Bearer s3cre"[..],
            b"Bearer s3cret ",
            b"bearer s3cret",
            b"s3cret",
            b"Bearer ",
            b"Basic s3cret",
        ] {
            assert!(!bearer_ok(&with(wrong), "s3cret"), "{}", String::from_utf8_lossy(wrong));
        }
        assert!(!bearer_ok(&HeaderMap::new(), "s3cret"));
        // No header is not the same as an empty token.
        assert!(!bearer_ok(&HeaderMap::new(), ""));
        assert!(bearer_ok(&with(b"Bearer "), ""));
    }

    #[test]
    fn exposure_is_beyond_loopback_without_a_token() {
        let any: SocketAddr = "0.0.0.0:9717".parse().unwrap();
        let lo: SocketAddr = "127.0.0.1:9717".parse().unwrap();
        let lo6: SocketAddr = "[::1]:9717".parse().unwrap();
        assert!(warn_if_exposed(any, None));
        assert!(!warn_if_exposed(any, Some("t")));
        assert!(!warn_if_exposed(lo, None));
        assert!(!warn_if_exposed(lo6, None));
    }
}
