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
/// Prometheus text exposition format (refreshes, callbacks, token cache, responses by status).
#[utoipa::path(
    get, path = "/metrics", operation_id = "metrics", tag = "operations",
    responses((status = 200, description = "Metrics.", body = String, content_type = "text/plain; version=0.0.4")),
)]
async fn metrics(State(state): State<AppState>) -> Response {
    let gauge = |n: usize| u64::try_from(n).unwrap_or(u64::MAX);
    let now = state.broker.gauges();
    let outbox = state.broker.outbox_gauges();
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
        (
            "valo_oauth_webhook_outbox_depth",
            "Webhook events not yet delivered nor given up (the shared outbox, as this replica last counted it).",
            outbox.pending,
        ),
        (
            "valo_oauth_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook event not yet delivered nor given up (0: none).",
            outbox.oldest_age_secs,
        ),
    ]);
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4")], body).into_response()
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
