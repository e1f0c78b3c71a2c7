//! The one layer every request crosses: what nine tower layers did (sensitive headers, the
//! request id set and echoed, the trace span, the metrics, load shedding with a concurrency
//! limit, the request timeout and turning their errors into problems), in one hand-written
//! service. (The tenth, the body limit, is kept where bodies are read: [`super::extract`].)
//!
//! Why one: the hot path's profile (`docs/benchmarks.md`, the hot path section) found no
//! single cost worth a fix, but a share in every layer — axum clones and boxes each
//! per-route layer for every request, `TraceLayer` wraps the response body, `from_fn` boxes
//! its future, the metrics looked their labels up in locked maps. Here a request costs one
//! clone, one boxed future and no label lookup, in this order:
//!
//! 1. `Authorization` and `Cookie` are marked sensitive (their `Debug` prints `Sensitive`);
//! 2. the caller's `x-request-id` is kept, or a new one set ([`super::request_id`]); the
//!    response carries it back;
//! 3. the `http` span opens with the method, the matched route template and the request id
//!    — never the URI: the callback's query carries the authorization code and the state;
//! 4. past `max_concurrent_requests` in progress on this listener, the request is shed
//!    with 503 and `Retry-After`, without running;
//! 5. a request still running at `request_timeout` is dropped and answered 503;
//! 6. the response is counted and timed in its route's series ([`HttpRouteSeries`],
//!    resolved on the route's first request); a 5xx is logged at `error`, every response at
//!    `debug`.
//!
//! It is applied with `Router::layer`, which wraps each route (and the fallback) on its own:
//! so it sees the matched route, and each route keeps its metric series.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use axum::extract::{MatchedPath, Request};
use axum::http::{HeaderName, HeaderValue, header};
use axum::response::{IntoResponse, Response};
use tower::{Layer, Service};
use tracing::Instrument as _;

use super::problem::Problem;
use super::request_id::RequestIds;
use crate::metrics::{HttpMethod, HttpRouteSeries, Metrics, UNMATCHED_ROUTE as UNMATCHED};

/// The request id header, set when the caller sent none and echoed on every response.
pub const REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");

/// What one listener's edge needs; shared by all its routes.
pub struct EdgeSettings {
    pub metrics: Metrics,
    /// Requests in progress on the listener beyond which new ones are shed.
    pub max_concurrent_requests: usize,
    pub request_timeout: Duration,
}

struct Listener {
    settings: EdgeSettings,
    ids: RequestIds,
    in_progress: AtomicUsize,
}

/// The layer of one listener (see the module documentation).
#[derive(Clone)]
pub struct EdgeLayer {
    listener: Arc<Listener>,
}

impl EdgeLayer {
    pub fn new(settings: EdgeSettings) -> Self {
        Self {
            listener: Arc::new(Listener {
                settings,
                ids: RequestIds::new(),
                in_progress: AtomicUsize::new(0),
            }),
        }
    }
}

/// One route's part of the edge: the listener, and the route's metric series once known.
struct RouteEdge {
    listener: Arc<Listener>,
    series: OnceLock<HttpRouteSeries>,
}

impl<S> Layer<S> for EdgeLayer {
    type Service = Edge<S>;

    fn layer(&self, inner: S) -> Self::Service {
        Edge {
            inner,
            route: Arc::new(RouteEdge {
                listener: self.listener.clone(),
                series: OnceLock::new(),
            }),
        }
    }
}

/// The edge around one route.
#[derive(Clone)]
pub struct Edge<S> {
    inner: S,
    route: Arc<RouteEdge>,
}

type EdgeFuture = Pin<Box<dyn Future<Output = Result<Response, Infallible>> + Send>>;

impl<S> Service<Request> for Edge<S>
where
    S: Service<Request, Response = Response, Error = Infallible> + Send + 'static,
    S::Future: Send + 'static,
{
    type Response = Response;
    type Error = Infallible;
    type Future = EdgeFuture;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut request: Request) -> EdgeFuture {
        let started = Instant::now();
        let listener = &self.route.listener;
        for name in [header::AUTHORIZATION, header::COOKIE] {
            if let header::Entry::Occupied(mut values) = request.headers_mut().entry(name) {
                values
                    .iter_mut()
                    .for_each(|value| value.set_sensitive(true));
            }
        }
        let request_id = match request.headers().get(&REQUEST_ID) {
            Some(id) => id.clone(),
            None => {
                let id = listener.ids.next_header();
                request.headers_mut().insert(REQUEST_ID, id.clone());
                id
            }
        };
        let matched = request
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let series = self
            .route
            .series
            .get_or_init(|| listener.settings.metrics.http_route(matched));
        // One route, one template: `Router::layer` wraps each route on its own. Should a
        // wrapped service ever serve several, the request gets series of its own.
        let own_series = (matched.unwrap_or(UNMATCHED) != series.route())
            .then(|| listener.settings.metrics.http_route(matched));
        let span = tracing::info_span!(
            "http",
            method = request.method().as_str(),
            route = own_series.as_ref().unwrap_or(series).route(),
            request_id = request_id.to_str().unwrap_or_default(),
        );
        let mut exchange = Exchange {
            route: self.route.clone(),
            own_series,
            method: HttpMethod::of(request.method()),
            started,
            request_id: Some(request_id),
            in_progress: false,
        };
        if !exchange.enter() {
            let response = Problem::busy("too many requests in progress on this replica; retry")
                .into_response();
            let response = span.in_scope(|| exchange.finish(response));
            return Box::pin(std::future::ready(Ok(response)));
        }
        let timeout = listener.settings.request_timeout;
        let handled = self.inner.call(request);
        Box::pin(
            async move {
                let response = match tokio::time::timeout(timeout, handled).await {
                    Ok(Ok(response)) => response,
                    Ok(Err(never)) => match never {},
                    Err(_elapsed) => {
                        Problem::busy("the request took longer than request_timeout_secs; retry")
                            .into_response()
                    }
                };
                Ok(exchange.finish(response))
            }
            .instrument(span),
        )
    }
}

/// What the edge remembers of a request until its response. While it counts among the
/// listener's requests in progress, dropping it (the response sent, or the client gone)
/// gives the place back.
struct Exchange {
    route: Arc<RouteEdge>,
    own_series: Option<HttpRouteSeries>,
    method: HttpMethod,
    started: Instant,
    request_id: Option<HeaderValue>,
    in_progress: bool,
}

impl Exchange {
    /// Takes a place among the listener's requests in progress; false when all are taken.
    fn enter(&mut self) -> bool {
        let listener = &self.route.listener;
        let before = listener.in_progress.fetch_add(1, Ordering::AcqRel);
        if before >= listener.settings.max_concurrent_requests {
            listener.in_progress.fetch_sub(1, Ordering::AcqRel);
            return false;
        }
        self.in_progress = true;
        true
    }

    /// Records the response, logs it, and gives it the request id. Runs in the request span.
    fn finish(&mut self, mut response: Response) -> Response {
        let elapsed = self.started.elapsed();
        let status = response.status();
        if let Some(series) = self.own_series.as_ref().or(self.route.series.get()) {
            series.record(self.method, status.as_u16(), elapsed);
        }
        let latency_ms = elapsed.as_secs_f64() * 1000.0;
        if status.is_server_error() {
            tracing::error!(status = status.as_u16(), latency_ms, "response failed");
        } else {
            tracing::debug!(status = status.as_u16(), latency_ms, "response");
        }
        if let Some(request_id) = self.request_id.take() {
            response
                .headers_mut()
                .entry(REQUEST_ID)
                .or_insert(request_id);
        }
        response
    }
}

impl Drop for Exchange {
    fn drop(&mut self) {
        if self.in_progress {
            self.route
                .listener
                .in_progress
                .fetch_sub(1, Ordering::AcqRel);
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::time::Duration;

    use axum::Router;
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use axum::routing::get;
    use tower::ServiceExt as _;

    use super::{EdgeLayer, EdgeSettings, REQUEST_ID};
    use crate::metrics::Metrics;

    fn router(metrics: &Metrics, max_concurrent_requests: usize) -> Router {
        Router::new()
            .route("/items/{id}", get(|| async { "item" }))
            .route(
                "/slow",
                get(|| async {
                    tokio::time::sleep(Duration::from_millis(400)).await;
                    "late"
                }),
            )
            .fallback(|| async { StatusCode::NOT_FOUND })
            .layer(EdgeLayer::new(EdgeSettings {
                metrics: metrics.clone(),
                max_concurrent_requests,
                request_timeout: Duration::from_millis(200),
            }))
    }

    fn get_request(path: &str) -> Request<Body> {
        Request::get(path).body(Body::empty()).unwrap()
    }

    #[tokio::test]
    async fn each_route_counts_in_its_own_series_and_every_answer_carries_a_request_id() {
        let metrics = Metrics::new();
        let app = router(&metrics, 8);
        for path in ["/items/1", "/items/2", "/nowhere", "/slow"] {
            let response = app.clone().oneshot(get_request(path)).await.unwrap();
            assert!(response.headers().contains_key(&REQUEST_ID), "{path}");
        }
        // A caller's id is kept.
        let mut request = get_request("/items/3");
        request
            .headers_mut()
            .insert(REQUEST_ID, "caller-1".parse().unwrap());
        let response = app.clone().oneshot(request).await.unwrap();
        assert_eq!(response.headers()[&REQUEST_ID], "caller-1");
        let text = metrics.render();
        let count = "valo_oauth_http_request_duration_seconds_count";
        for line in [
            format!("{count}{{route=\"/items/{{id}}\",method=\"GET\",status_class=\"2xx\"}} 3"),
            format!("{count}{{route=\"unmatched\",method=\"GET\",status_class=\"4xx\"}} 1"),
            // Past the request timeout: 503, counted on its route.
            format!("{count}{{route=\"/slow\",method=\"GET\",status_class=\"5xx\"}} 1"),
        ] {
            assert!(text.contains(&format!("{line}\n")), "{line} in {text}");
        }
    }

    #[tokio::test]
    async fn past_the_concurrency_limit_a_request_is_shed_at_once_and_the_place_comes_back() {
        let metrics = Metrics::new();
        let app = router(&metrics, 1);
        let held = tokio::spawn(app.clone().oneshot(get_request("/slow")));
        tokio::time::sleep(Duration::from_millis(50)).await;
        let shed = app.clone().oneshot(get_request("/items/1")).await.unwrap();
        assert_eq!(shed.status(), StatusCode::SERVICE_UNAVAILABLE);
        assert!(shed.headers().contains_key("retry-after"));
        // The held request ends (at its timeout); its place is free again.
        assert_eq!(
            held.await.unwrap().unwrap().status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        let after = app.oneshot(get_request("/items/1")).await.unwrap();
        assert_eq!(after.status(), StatusCode::OK);
    }
}
