//! The HTTP side door every service has: `GET /health` (200 only when ready, else 503 with
//! the reasons as JSON) and `GET /metrics` (Prometheus text). The gateway merges its API
//! router into the same server.

use std::net::SocketAddr;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};

use crate::{Health, Shutdown};

#[derive(Clone)]
struct AppState {
    service: String,
    health: Health,
}

async fn health_route(State(s): State<AppState>) -> Response {
    match s.health.status() {
        Ok(()) => (StatusCode::OK, Json(serde_json::json!({"status": "ok", "service": s.service}))).into_response(),
        Err(reasons) => (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(serde_json::json!({"status": "unavailable", "service": s.service, "reasons": reasons})),
        )
            .into_response(),
    }
}

async fn metrics_route() -> Response {
    let body = fc_telemetry::metrics_handle().render();
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], body).into_response()
}

/// The `/health` and `/metrics` routes, to merge with a service's own.
pub fn router(service: &str, health: Health) -> Router {
    Router::new()
        .route("/health", get(health_route))
        .route("/metrics", get(metrics_route))
        .with_state(AppState { service: service.into(), health })
}

/// Binds `addr` (port 0 picks a free port) and serves `app` until `shutdown`.
/// Returns the bound address and the server task.
pub async fn serve(
    addr: SocketAddr,
    app: Router,
    shutdown: Shutdown,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let r = axum::serve(listener, app).with_graceful_shutdown(async move { shutdown.wait().await }).await;
        if let Err(e) = r {
            tracing::error!(error = %e, "http server stopped");
        }
    });
    Ok((bound, task))
}
