//! Operations endpoints: liveness, readiness, Prometheus metrics, the OpenAPI document and
//! its offline docs page (`/docs`, not itself part of the document).
//! None needs authentication; none reveals a secret.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use serde_json::json;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::openapi::ServiceUnavailable;
use super::problem::Problem;

/// `/healthz`, served on every listener (a load balancer's probe and the container's
/// health check each reach one).
pub fn health_router() -> Router<AppState> {
    health_routes().into()
}

/// `/healthz` with its OpenAPI operation.
pub(super) fn health_routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(healthz))
}

/// What operators and the Valo backend read: readiness, metrics, the API contract and its
/// docs page.
pub fn router() -> Router<AppState> {
    Router::<AppState>::from(routes())
        .route("/docs", get(super::docs::page))
        .route("/docs/{asset}", get(super::docs::asset))
}

/// The documented operations endpoints.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(readyz))
        .routes(routes!(metrics))
        .routes(routes!(openapi))
}

#[derive(ToSchema)]
#[allow(dead_code)] // The schema of the `json!` answer below.
struct Health {
    #[schema(schema_with = ok)]
    status: String,
}

#[derive(ToSchema)]
#[allow(dead_code)] // The schema of the `json!` answer below.
struct Ready {
    #[schema(schema_with = ready)]
    status: String,
    /// The storage backend in use.
    #[schema(schema_with = database)]
    database: String,
}

fn ok() -> utoipa::openapi::Object {
    super::openapi::string_enum(&["ok"], "")
}

fn ready() -> utoipa::openapi::Object {
    super::openapi::string_enum(&["ready"], "")
}

fn database() -> utoipa::openapi::Object {
    super::openapi::string_enum(&["postgres", "sqlite"], "")
}

/// Liveness
///
/// The process answers. Touches nothing else.
#[utoipa::path(
    get, path = "/healthz", operation_id = "healthz", tag = "operations",
    responses((status = 200, description = "Alive.", body = Health)),
)]
async fn healthz() -> Response {
    (StatusCode::OK, axum::Json(json!({"status": "ok"}))).into_response()
}

/// The longest a readiness probe waits for the database: an orchestrator's probe must get
/// its answer well within its own timeout, database or not.
const READY_TIMEOUT: std::time::Duration = std::time::Duration::from_millis(900);

/// Readiness
///
/// The database answers and every migration is applied.
#[utoipa::path(
    get, path = "/readyz", operation_id = "readyz", tag = "operations",
    responses(
        (status = 200, description = "Ready.", body = Ready),
        (status = 503, response = ServiceUnavailable),
    ),
)]
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

/// Prometheus metrics
///
/// This instance's metrics in the Prometheus text exposition format: request and
/// Salesforce-call latency histograms, refresh outcomes and lease waits, the token cache,
/// keep-alive, webhooks and the audit trail (the README's operations section lists every
/// series).
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain; version=0.0.4")),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    state.broker.publish_gauges();
    let body = state.broker.metrics().render();
    ([(header::CONTENT_TYPE, crate::metrics::CONTENT_TYPE)], body).into_response()
}

/// This document
#[utoipa::path(
    get, path = "/openapi.json", operation_id = "openapi", tag = "operations",
    responses((status = 200, description = "The OpenAPI 3.1 document.", body = Object)),
)]
async fn openapi() -> Response {
    // Generated once: the document only changes with the binary.
    static DOCUMENT: std::sync::LazyLock<String> = std::sync::LazyLock::new(super::openapi::json);
    (
        [(header::CONTENT_TYPE, "application/json")],
        DOCUMENT.as_str(),
    )
        .into_response()
}
