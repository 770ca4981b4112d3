//! The HTTP endpoint of every server process: `/metrics` (Prometheus text
//! format) and `/health`.

use std::future::Future;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

#[derive(Clone)]
struct WebState {
    registry: Arc<Registry>,
    health: Arc<serde_json::Value>,
}

async fn metrics(State(s): State<WebState>) -> impl IntoResponse {
    let mut out = String::new();
    match prometheus_client::encoding::text::encode(&mut out, &s.registry) {
        Ok(()) => (StatusCode::OK, [(header::CONTENT_TYPE, "application/openmetrics-text; version=1.0.0; charset=utf-8")], out),
        Err(e) => (StatusCode::INTERNAL_SERVER_ERROR, [(header::CONTENT_TYPE, "text/plain")], e.to_string()),
    }
}

async fn health(State(s): State<WebState>) -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "application/json")], s.health.to_string())
}

/// Serves until `shutdown` resolves. `health` is what `/health` reports
/// besides `"status": "ok"` (the roles and their addresses).
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    mut health: serde_json::Value,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    health["status"] = "ok".into();
    let state = WebState { registry, health: Arc::new(health) };
    let app = Router::new().route("/metrics", get(metrics)).route("/health", get(health_route)).with_state(state);
    axum::serve(listener, app).with_graceful_shutdown(shutdown).await
}

async fn health_route(s: State<WebState>) -> impl IntoResponse {
    health(s).await
}
