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

async fn metrics(State(state): State<AppState>) -> Response {
    let gauge = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let now = state.broker.gauges();
    let body = crate::metrics::render(&[
        (
            "valo_oauth_token_cache_entries",
            "Access tokens held in this replica's memory.",
            gauge(now.cached_tokens),
        ),
        (
            "valo_oauth_salesforce_calls_in_flight",
            "Calls to Salesforce under way on this replica (limit: salesforce_max_in_flight).",
            gauge(now.salesforce_calls_in_flight),
        ),
        (
            "valo_oauth_salesforce_calls_waiting",
            "Calls to Salesforce queued for the in-flight limit on this replica.",
            gauge(now.salesforce_calls_waiting),
        ),
        (
            "valo_oauth_refreshes_in_flight",
            "Refreshes under way on this replica.",
            gauge(now.refreshes_in_flight),
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
}

async fn openapi() -> Response {
    ([(header::CONTENT_TYPE, "application/json")], OPENAPI).into_response()
}
