//! The HTTP layer (axum only): the router, the tower layers, extractors and responses.
//! Handlers translate between HTTP and [`crate::broker`]; they hold no domain logic.
//!
//! - [`apps`], [`authorizations`], [`connections`], [`eca_settings`]: the internal JSON API
//!   (bearer JWT);
//! - [`callback`], [`pages`] and [`guidance`]: the public callback Salesforce redirects
//!   browsers to, its result pages, and what those pages tell an admin to fix;
//! - [`ops`]: health, readiness, metrics, OpenAPI;
//! - [`auth`], [`problem`], [`extract`]: authentication, RFC 9457 errors, body and path parsing.
//!
//! [`router`] serves everything on one listener; with an internal listener configured,
//! [`public_router`] (the callback and `/healthz`) faces the internet and
//! [`internal_router`] serves the rest.

pub mod apps;
pub mod auth;
pub mod authorizations;
pub mod callback;
pub mod connections;
pub mod eca_settings;
pub mod extract;
pub mod guidance;
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

/// Everything on one listener (when `VALO_OAUTH_INTERNAL_LISTEN` is unset): the public
/// routes and the internal ones.
pub fn router(state: AppState) -> Router {
    let routes = public_routes()
        .merge(internal_routes())
        .merge(ops::health_router());
    with_layers(routes, state)
}

/// The listener that faces the internet: the callback Salesforce redirects browsers to,
/// its pages, and `/healthz`. Everything else answers a 404 problem here.
pub fn public_router(state: AppState) -> Router {
    with_layers(public_routes().merge(ops::health_router()), state)
}

/// The internal listener: the API, `/metrics`, `/openapi.json`, `/readyz` and `/healthz`.
pub fn internal_router(state: AppState) -> Router {
    with_layers(internal_routes().merge(ops::health_router()), state)
}

fn public_routes() -> Router<AppState> {
    callback::router()
}

fn internal_routes() -> Router<AppState> {
    Router::new()
        .merge(apps::router())
        .merge(authorizations::router())
        .merge(connections::router())
        .merge(eca_settings::router())
        .merge(ops::router())
}

/// The layers every listener has, in one place.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    routes
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
