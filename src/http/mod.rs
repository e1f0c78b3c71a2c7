//! The HTTP layer (axum only): the router, the tower layers, extractors and responses.
//! Handlers translate between HTTP and [`crate::broker`]; they hold no domain logic.
//!
//! - [`apps`], [`authorizations`], [`connections`], [`eca_settings`], [`audit`]: the
//!   internal JSON API (bearer JWT);
//! - [`callback`], [`pages`] and [`guidance`]: the public callback Salesforce redirects
//!   browsers to, its result pages, and what those pages tell an admin to fix;
//! - [`ops`]: health, readiness, metrics, OpenAPI;
//! - [`auth`], [`problem`], [`extract`]: authentication, RFC 9457 errors, body and path parsing.
//!
//! [`router`] serves everything on one listener; with an internal listener configured,
//! [`public_router`] (the callback and `/healthz`) faces the internet and
//! [`internal_router`] serves the rest.

pub mod apps;
pub mod audit;
pub mod auth;
pub mod authorizations;
pub mod callback;
pub mod connections;
pub mod docs;
pub mod eca_settings;
pub mod edge;
pub mod extract;
pub mod guidance;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod problem;
pub mod request_id;
pub mod serve;

use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::http::header;
use axum::response::{IntoResponse, Response};
use edge::{EdgeLayer, EdgeSettings};
use governor::middleware::NoOpMiddleware;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::{KeyExtractor, SmartIpKeyExtractor};

use crate::broker::Broker;
use crate::config::Protection;
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
    /// Timeouts, concurrency and rate limits of each listener.
    pub protection: Protection,
}

/// Everything on one listener (when `VALO_OAUTH_INTERNAL_LISTEN` is unset): the public
/// routes and the internal ones.
pub fn router(state: AppState) -> Router {
    let routes = public_routes(&state.protection)
        .merge(internal_routes())
        .merge(ops::health_router());
    with_layers(routes, state)
}

/// The listener that faces the internet: the callback Salesforce redirects browsers to,
/// its pages, and `/healthz`. Everything else answers a 404 problem here.
pub fn public_router(state: AppState) -> Router {
    with_layers(
        public_routes(&state.protection).merge(ops::health_router()),
        state,
    )
}

/// The internal listener: the API, `/metrics`, `/openapi.json`, `/readyz` and `/healthz`.
pub fn internal_router(state: AppState) -> Router {
    with_layers(internal_routes().merge(ops::health_router()), state)
}

/// The callback, under a per-client-IP rate limit (tower_governor's GCRA). Behind a proxy
/// the peer is the proxy: with `trust_forwarded_for` the client is read from
/// `X-Forwarded-For` / `X-Real-IP` / `Forwarded`, which only a proxy that overwrites them
/// makes trustworthy.
fn public_routes(protection: &Protection) -> Router<AppState> {
    let routes = callback::router();
    let per_minute = protection.callback_rate_per_minute;
    if per_minute == 0 {
        return routes;
    }
    // One request's worth of quota comes back every `period`.
    let period = Duration::from_millis((60_000 / u64::from(per_minute)).max(1));
    let mut builder = GovernorConfigBuilder::default();
    builder.period(period).burst_size(protection.callback_burst);
    if protection.trust_forwarded_for {
        routes.layer(rate_limit(
            builder.key_extractor(SmartIpKeyExtractor).finish(),
        ))
    } else {
        routes.layer(rate_limit(builder.finish()))
    }
}

/// The rate-limit layer of `config`, answering 429 problems, and a task that forgets idle
/// clients every minute (the limiter keeps one entry per address it has seen).
fn rate_limit<K>(
    config: Option<GovernorConfig<K, NoOpMiddleware>>,
) -> GovernorLayer<K, NoOpMiddleware, axum::body::Body>
where
    K: KeyExtractor + Send + Sync + 'static,
    K::Key: Send + Sync,
{
    // The settings are validated (burst and period above zero), so the builder succeeds.
    let config = Arc::new(config.unwrap_or_else(|| unreachable!("validated quota")));
    let weak = Arc::downgrade(&config);
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(60));
        loop {
            tick.tick().await;
            let Some(config) = weak.upgrade() else { break };
            config.limiter().retain_recent();
        }
    });
    GovernorLayer::new(config).error_handler(|error| match error {
        GovernorError::TooManyRequests { wait_time, .. } => {
            Problem::rate_limited(Duration::from_secs(wait_time)).into_response()
        }
        _ => Problem::internal().into_response(),
    })
}

fn internal_routes() -> Router<AppState> {
    Router::new()
        .merge(apps::router())
        .merge(authorizations::router())
        .merge(connections::router())
        .merge(eca_settings::router())
        .merge(audit::router())
        .merge(ops::router())
}

/// The layers every listener has: the fallbacks, and the edge ([`edge`]) around each route.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let edge = EdgeLayer::new(EdgeSettings {
        metrics: state.broker.metrics().clone(),
        max_concurrent_requests: state.protection.max_concurrent_requests,
        request_timeout: state.protection.request_timeout,
    });
    routes
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(edge)
        .with_state(state)
}

/// Handlers answer `Result<_, Problem>`; this keeps their signatures short.
pub type ApiResult<T = Response> = Result<T, Problem>;

/// 200 with `body`, as [`no_store_json`].
pub fn ok<T: serde::Serialize>(body: T) -> ApiResult {
    Ok(no_store_json(axum::http::StatusCode::OK, body))
}

/// 204, the answer of a deletion.
pub fn no_content() -> ApiResult {
    Ok(axum::http::StatusCode::NO_CONTENT.into_response())
}

/// A JSON response with `Cache-Control: no-store` (RFC 6749 §5.1 asks it of token
/// responses; nothing this API returns belongs in a cache). Serialised into a buffer sized
/// for the usual answer, so the token response is written without growing it.
pub fn no_store_json<T: serde::Serialize>(status: axum::http::StatusCode, body: T) -> Response {
    let mut bytes = Vec::with_capacity(512);
    if let Err(e) = serde_json::to_writer(&mut bytes, &body) {
        tracing::error!(error = %e, "cannot serialise a response");
        return Problem::internal().into_response();
    }
    no_store_json_bytes(status, bytes.into())
}

/// [`no_store_json`] of a body already serialised.
pub fn no_store_json_bytes(status: axum::http::StatusCode, body: axum::body::Bytes) -> Response {
    let mut response = Response::new(axum::body::Body::from(body));
    *response.status_mut() = status;
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        header::HeaderValue::from_static("application/json"),
    );
    headers.insert(
        header::CACHE_CONTROL,
        header::HeaderValue::from_static("no-store"),
    );
    response
}
