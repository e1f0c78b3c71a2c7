//! The HTTP layer (axum only): the router, the tower layers, extractors and responses.
//! Handlers translate between HTTP and [`crate::broker`]; they hold no domain logic.
//!
//! - [`apps`], [`authorizations`], [`connections`], [`audit`]: the internal JSON API (bearer
//!   JWT);
//! - [`callback`] and [`pages`]: the public callback Salesforce redirects browsers to;
//! - [`ops`]: health, readiness, metrics, OpenAPI;
//! - [`auth`], [`problem`], [`extract`]: authentication, RFC 9457 errors, body and path parsing.

pub mod apps;
pub mod audit;
pub mod auth;
pub mod authorizations;
pub mod callback;
pub mod connections;
pub mod extract;
pub mod ops;
pub mod pages;
pub mod problem;

use std::sync::Arc;

use axum::Router;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request};
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::broker::Broker;
use problem::Problem;

/// The state every handler gets.
#[derive(Clone)]
pub struct AppState {
    /// The domain: store, keyring, Salesforce client, token cache.
    pub broker: Broker,
    /// The bearer-token verifier of the internal API.
    pub auth: Arc<auth::ApiAuth>,
    /// The largest request body accepted (413 above).
    pub body_limit_bytes: usize,
}

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// The whole application: every route, with the layers in one place.
pub fn router(state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    Router::new()
        .merge(apps::router())
        .merge(authorizations::router())
        .merge(connections::router())
        .merge(audit::router())
        .merge(callback::router())
        .merge(ops::router())
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn(count_responses))
        // The span names the matched route, never the URI: the callback's query string
        // carries the authorization code and the state.
        .layer(
            TraceLayer::new_for_http().make_span_with(|request: &Request| {
                let route = request
                    .extensions()
                    .get::<MatchedPath>()
                    .map_or("unmatched", MatchedPath::as_str);
                let request_id = request
                    .headers()
                    .get(&REQUEST_ID)
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or_default();
                tracing::info_span!("http", method = %request.method(), route, request_id)
            }),
        )
        .layer(PropagateRequestIdLayer::new(REQUEST_ID))
        .layer(SetRequestIdLayer::new(REQUEST_ID, MakeRequestUuid))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

async fn count_responses(request: Request, next: Next) -> Response {
    let response = next.run(request).await;
    crate::metrics::record_status(response.status().as_u16());
    response
}

/// Handlers answer `Result<_, Problem>`; this keeps their signatures short.
pub type ApiResult<T = Response> = Result<T, Problem>;

/// A JSON response with `Cache-Control: no-store` (RFC 6749 §5.1 asks it of token
/// responses; nothing this API returns belongs in a cache).
pub fn no_store_json<T: serde::Serialize>(status: axum::http::StatusCode, body: T) -> Response {
    (
        status,
        [(header::CACHE_CONTROL, "no-store")],
        axum::Json(body),
    )
        .into_response()
}
