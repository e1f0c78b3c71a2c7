//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document.
//! None needs authentication; none reveals a secret.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;

use super::AppState;
use super::problem::Problem;

/// The OpenAPI 3.1 description of the API, kept beside the code it describes.
const OPENAPI: &str = include_str!("../../docs/openapi.json");

/// `/healthz`, served on every listener (a load balancer's probe and the container's
/// health check each reach one).
pub fn health_router() -> Router<AppState> {
    Router::new().route("/healthz", get(healthz))
}

/// What operators and the Valo backend read: readiness, metrics, the API contract.
pub fn router() -> Router<AppState> {
    Router::new()
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/openapi.json", get(openapi))
}

/// Alive: the process answers. Touches nothing else, so it stays cheap.
async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// The longest a readiness probe waits for the database: an orchestrator's probe must get
/// its answer well within its own timeout, database or not.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Ready: the database answers and every migration is applied.
async fn readyz(State(state): State<AppState>) -> Response {
    let checked = tokio::time::timeout(READY_TIMEOUT, state.broker.check_ready()).await;
    match checked.unwrap_or_else(|_| {
        Err(crate::store::StoreError::Unavailable(
            sqlx::Error::PoolTimedOut,
        ))
    }) {
        Ok(()) => (
            StatusCode::OK,
            axum::Json(json!({"status": "ready", "database": state.broker.backend_name()})),
        )
            .into_response(),
        Err(e) => {
            tracing::warn!(error = %e, "not ready");
            Problem::service_unavailable(std::time::Duration::from_secs(5))
                .with_detail("the database is unreachable or not migrated")
                .into_response()
        }
    }
}

/// The Prometheus text exposition of this instance's metrics, the state gauges read now.
async fn metrics(State(state): State<AppState>) -> Response {
    state.broker.publish_gauges();
    let body = state.broker.metrics().render();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
