//! HTTP: `/metrics`, `/`, `/healthz`, `/readyz`, `/api/v1/status`, and the ingest endpoints
//! (`super::ingest`).

use std::sync::Arc;

use axum::Router;
use axum::extract::{Request, State};
use axum::http::{StatusCode, header};
use axum::middleware::{self, Next};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::get;

use super::state::AppState;
use crate::telemetry::CONTENT_TYPE;

pub fn router(state: Arc<AppState>) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
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
    let expected = state.auth_token.read().expect("lock").clone();
    if let Some(token) = expected {
        let given = req.headers().get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
        if given != Some(format!("Bearer {token}").as_str()) {
            return (StatusCode::UNAUTHORIZED, [(header::WWW_AUTHENTICATE, "Bearer")], "unauthorized\n")
                .into_response();
        }
    }
    next.run(req).await
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
    Html(format!(
        "<!doctype html>\n<html><head><meta charset=\"utf-8\"><title>agent: {model}</title></head><body>\n\
         <h1>agent {version}</h1>\n<p>model <b>{model}</b>, provider <b>{provider}</b>, {ready}, \
         {n} samples in the window, {scored} scored.</p>\n\
         <table border=\"1\" cellpadding=\"4\"><tr><th>layer</th><th>method</th><th>NS (window)</th>\
         <th>NS (baseline)</th><th>ΔNS</th><th>VS (window)</th><th>NS bench</th></tr>\n{rows}</table>\n\
         <p><a href=\"/metrics\">/metrics</a> · <a href=\"/api/v1/status\">/api/v1/status</a> · \
         <a href=\"/healthz\">/healthz</a> · <a href=\"/readyz\">/readyz</a></p>\n</body></html>\n",
        model = esc(&st.model),
        version = env!("CARGO_PKG_VERSION"),
        provider = esc(st.provider.as_deref().unwrap_or("not loaded")),
        ready = if st.ready { "ready" } else { "not ready" },
        n = st.window_samples,
        scored = st.samples_scored,
    ))
}
