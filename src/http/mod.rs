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
pub mod extract;
pub mod guidance;
pub mod openapi;
pub mod ops;
pub mod pages;
pub mod problem;
pub mod request_id;
pub mod serve;

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::error_handling::HandleErrorLayer;
use axum::extract::{DefaultBodyLimit, MatchedPath, Request, State};
use axum::http::{HeaderName, header};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::{BoxError, Router};
use governor::middleware::NoOpMiddleware;
use tower::ServiceBuilder;
use tower::limit::GlobalConcurrencyLimitLayer;
use tower::load_shed::LoadShedLayer;
use tower::timeout::TimeoutLayer;
use tower_governor::GovernorLayer;
use tower_governor::errors::GovernorError;
use tower_governor::governor::{GovernorConfig, GovernorConfigBuilder};
use tower_governor::key_extractor::{KeyExtractor, SmartIpKeyExtractor};
use tower_http::request_id::{PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::sensitive_headers::SetSensitiveRequestHeadersLayer;
use tower_http::trace::TraceLayer;

use crate::broker::Broker;
use crate::config::Protection;
use crate::metrics::{HttpMethod, Metrics};
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

const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

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

/// What the protective layers answer: a request past its timeout, or shed because the
/// listener is at its concurrency limit, gets 503 with `Retry-After`.
async fn protective_error(error: BoxError) -> Problem {
    if error.is::<tower::timeout::error::Elapsed>() {
        Problem::busy("the request took longer than request_timeout_secs; retry")
    } else if error.is::<tower::load_shed::error::Overloaded>() {
        Problem::busy("too many requests in progress on this replica; retry")
    } else {
        tracing::error!(error = %error, "request failed in a protective layer");
        Problem::internal()
    }
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

/// The layers every listener has, in one place.
fn with_layers(routes: Router<AppState>, state: AppState) -> Router {
    let body_limit = state.body_limit_bytes;
    let protection = ServiceBuilder::new()
        .layer(HandleErrorLayer::new(protective_error))
        .layer(LoadShedLayer::new())
        // Global: `Router::layer` applies a layer to each route, and the limit is per listener.
        .layer(GlobalConcurrencyLimitLayer::new(
            state.protection.max_concurrent_requests,
        ))
        .layer(TimeoutLayer::new(state.protection.request_timeout));
    routes
        .fallback(|| async { Problem::not_found("no such route") })
        .method_not_allowed_fallback(|| async { Problem::method_not_allowed() })
        .layer(protection)
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.broker.metrics().clone(),
            count_responses,
        ))
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
        .layer(SetRequestIdLayer::new(
            REQUEST_ID,
            request_id::MakeRequestIds::new(),
        ))
        .layer(SetSensitiveRequestHeadersLayer::new([
            header::AUTHORIZATION,
            header::COOKIE,
        ]))
        .with_state(state)
}

/// Counts each response by status class and times it by route template, method and class.
/// On the hot path: no allocation once a route was seen (the template is shared), no lock
/// held across the await.
async fn count_responses(State(metrics): State<Metrics>, request: Request, next: Next) -> Response {
    let method = HttpMethod::of(request.method());
    // The template (`/v1/tenants/{tenant}/…`), never the path: ids are no label values.
    let route = request.extensions().get::<MatchedPath>().cloned();
    let started = Instant::now();
    let response = next.run(request).await;
    metrics.http_response(
        route.as_ref().map(MatchedPath::as_str),
        method,
        response.status().as_u16(),
        started.elapsed(),
    );
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
