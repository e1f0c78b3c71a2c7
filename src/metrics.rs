//! The service's metrics, owned by one application instance and rendered in the Prometheus
//! text format (version 0.0.4) at `GET /metrics`.
//!
//! [`Metrics`] holds its own `prometheus-client` registry: there is no global recorder and
//! no static, so several instances in one process (the tests run many) count apart.
//! `Application` creates one and hands clones to the broker (refreshes, token cache,
//! keep-alive, webhooks, audit), the Salesforce client and the HTTP layer. A clone is one
//! `Arc`.
//!
//! Counters and histograms are updated where things happen; the gauges that describe state
//! held elsewhere (cache entries, refreshes in flight, the limiter's queue, the outbox) are
//! set from that state when `/metrics` is read. Every series is listed, with the alert worth
//! setting, in the README's operations section; keep the two in step.
//!
//! Format: Prometheus text exposition 0.0.4 ("Exposition formats",
//! https://prometheus.io/docs/instrumenting/exposition_formats/), which every Prometheus
//! scrapes and which the service has always served.

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of the exposition (Prometheus text format 0.0.4), as the service has
/// always sent it and the OpenAPI document declares it (the format is UTF-8 by definition;
/// `prometheus_client`'s constant adds `; charset=utf-8`).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4";

/// HTTP request durations, seconds: the cached-token path answers in well under a
/// millisecond, a refresh waits up to the Salesforce timeout (10 s), a request is cut at the
/// request timeout (20 s).
const HTTP_BUCKETS: [f64; 15] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0,
];

/// Salesforce call durations, seconds: a token call takes 50–500 ms when Salesforce is well,
/// and is cut at the client timeout (10 s by default).
const SALESFORCE_BUCKETS: [f64; 11] =
    [0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0, 30.0];

/// Lease waits, seconds: the lease is polled from 10 ms with a doubling pause, and a caller
/// waits at most `refresh_wait_ms` (15 s).
const LEASE_WAIT_BUCKETS: [f64; 11] =
    [0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 15.0];

/// The route label of a request no route matched: raw paths carry ids and tenants, which
/// must not become label values (unbounded series).
pub const UNMATCHED_ROUTE: &str = "unmatched";

/// A closed set of label values: the enum, its `ALL` list (series created at zero up
/// front, so alerts on `increase()` see them before the first event) and its text.
macro_rules! label_values {
    ($(#[$doc:meta])* $name:ident { $($(#[$vdoc:meta])* $variant:ident => $text:literal),+ $(,)? }) => {
        $(#[$doc])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum $name {
            $($(#[$vdoc])* $variant),+
        }

        impl $name {
            /// Every value, in the order the README lists them.
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            /// The position in [`Self::ALL`].
            pub const fn index(self) -> usize {
                self as usize
            }

            /// The label value.
            pub fn as_str(self) -> &'static str {
                match self {
                    $(Self::$variant => $text),+
                }
            }
        }

        impl EncodeLabelValue for $name {
            fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> Result<(), std::fmt::Error> {
                EncodeLabelValue::encode(&self.as_str(), encoder)
            }
        }
    };
}

label_values! {
    /// How a refresh-token grant ended (`valo_oauth_refreshes_total{outcome}`).
    RefreshOutcome {
        Success => "success",
        NeedsReauthorization => "needs_reauthorization",
        UpstreamUnavailable => "upstream_unavailable",
        UpstreamError => "upstream_error",
        AppCredentialsInvalid => "app_credentials_invalid",
    }
}

label_values! {
    /// How an OAuth callback ended.
    CallbackOutcome {
        Connected => "connected",
        Error => "error",
        InvalidState => "invalid_state",
    }
}

label_values! {
    /// How one webhook delivery attempt ended (`rejected`: a non-2xx answer).
    WebhookOutcome {
        Delivered => "delivered",
        Rejected => "rejected",
        Timeout => "timeout",
        Error => "error",
    }
}

label_values! {
    /// The Salesforce endpoint a call went to.
    SalesforceEndpoint {
        /// `/services/oauth2/token`: code exchanges, credential checks, refreshes.
        Token => "token",
        /// `/services/oauth2/introspect` (RFC 7662).
        Introspect => "introspect",
        /// `/services/oauth2/revoke` (RFC 7009).
        Revoke => "revoke",
    }
}

label_values! {
    /// How one HTTP exchange with Salesforce ended, before any OAuth interpretation.
    CallOutcome {
        /// A 2xx answer.
        Success => "success",
        /// A 4xx answer other than 429: an OAuth refusal (`invalid_grant`, …) or a bad request.
        ClientError => "client_error",
        /// 429: Salesforce's rate limit.
        RateLimited => "rate_limited",
        /// A 5xx answer.
        ServerError => "server_error",
        /// The client's timeout, or the caller's deadline (a refresh's), ended the call.
        Timeout => "timeout",
        /// No connection, or it broke mid-exchange.
        Network => "network",
        /// A redirect (never followed) or a body over the size limit.
        InvalidResponse => "invalid_response",
    }
}

label_values! {
    /// An HTTP status class.
    StatusClass {
        Informational => "1xx",
        Success => "2xx",
        Redirection => "3xx",
        ClientError => "4xx",
        ServerError => "5xx",
    }
}

label_values! {
    /// An HTTP request method (the others share `other`: a client must not be able to mint
    /// label values).
    HttpMethod {
        Get => "GET",
        Post => "POST",
        Put => "PUT",
        Patch => "PATCH",
        Delete => "DELETE",
        Head => "HEAD",
        Options => "OPTIONS",
        Other => "other",
    }
}

impl StatusClass {
    /// The class of `status` (anything outside 100–599 counts as a server error).
    pub fn of(status: u16) -> Self {
        match status {
            100..=199 => Self::Informational,
            200..=299 => Self::Success,
            300..=399 => Self::Redirection,
            400..=499 => Self::ClientError,
            _ => Self::ServerError,
        }
    }
}

impl HttpMethod {
    pub fn of(method: &axum::http::Method) -> Self {
        use axum::http::Method;
        match *method {
            Method::GET => Self::Get,
            Method::POST => Self::Post,
            Method::PUT => Self::Put,
            Method::PATCH => Self::Patch,
            Method::DELETE => Self::Delete,
            Method::HEAD => Self::Head,
            Method::OPTIONS => Self::Options,
            _ => Self::Other,
        }
    }
}

/// What the counters without labels count (see [`Metrics::count`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Event {
    TokenCacheHit,
    TokenCacheMiss,
    TokenCacheEviction,
    RefreshCommitRetry,
    RotatedRefreshTokenLost,
    InvalidSignature,
    WebhookGivenUp,
    AuditFlushFailure,
    AuditDropped,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct RefreshLabels {
    outcome: RefreshOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct CallbackLabels {
    outcome: CallbackOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct WebhookLabels {
    outcome: WebhookOutcome,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct ClassLabels {
    class: StatusClass,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct HttpLabels {
    /// The matched route template (`/v1/tenants/{tenant}/…`), shared with the route table.
    route: Arc<str>,
    method: HttpMethod,
    status_class: StatusClass,
}

#[derive(Clone, Debug, PartialEq, Eq, Hash, EncodeLabelSet)]
struct SalesforceLabels {
    endpoint: SalesforceEndpoint,
    outcome: CallOutcome,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

/// Every series of one application instance. Cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics").finish_non_exhaustive()
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

const STATUS_CLASSES: usize = StatusClass::ALL.len();
const HTTP_METHODS: usize = HttpMethod::ALL.len();

/// The HTTP series of one route: the response counter of each status class and the
/// duration histogram of each method and class, each resolved from its family on first use
/// and then shared with it (a `prometheus-client` metric is a handle on one value). Recording
/// a response is then an atomic increment and a histogram observation.
pub struct HttpRouteSeries {
    metrics: Metrics,
    /// The matched route template (`/v1/tenants/{tenant}/…`), never a raw path: ids are no
    /// label values.
    route: Arc<str>,
    responses: [OnceLock<Counter>; STATUS_CLASSES],
    durations: [[OnceLock<Histogram>; STATUS_CLASSES]; HTTP_METHODS],
}

impl HttpRouteSeries {
    /// The route template these series are labelled with (`unmatched` for none).
    pub fn route(&self) -> &str {
        &self.route
    }

    /// One HTTP response: its class, and the request's duration by method and class.
    pub fn record(&self, method: HttpMethod, status: u16, elapsed: Duration) {
        let class = StatusClass::of(status);
        let inner = &self.metrics.inner;
        self.responses[class.index()]
            .get_or_init(|| {
                inner
                    .http_responses
                    .get_or_create(&ClassLabels { class })
                    .clone()
            })
            .inc();
        self.durations[method.index()][class.index()]
            .get_or_init(|| {
                let labels = HttpLabels {
                    route: self.route.clone(),
                    method,
                    status_class: class,
                };
                inner.http_duration.get_or_create(&labels).clone()
            })
            .observe(elapsed.as_secs_f64());
    }
}

struct Inner {
    registry: Registry,

    token_cache_hits: Counter,
    token_cache_misses: Counter,
    token_cache_evictions: Counter,
    token_cache_entries: Gauge,
    refreshes: Family<RefreshLabels, Counter>,
    refreshes_in_flight: Gauge,
    refresh_lease_waits: Counter,
    refresh_lease_wait_seconds: Histogram,
    refresh_commit_retries: Counter,
    rotated_refresh_tokens_lost: Counter,
    salesforce_calls_in_flight: Gauge,
    salesforce_calls_waiting: Gauge,
    salesforce_call_duration: HistogramFamily<SalesforceLabels>,
    keepalive_refreshes: Counter,
    keepalive_backlog: Gauge,
    callbacks: Family<CallbackLabels, Counter>,
    invalid_signatures: Counter,
    webhook_attempts: Family<WebhookLabels, Counter>,
    webhook_given_up: Counter,
    webhook_outbox_depth: Gauge,
    webhook_oldest_pending_age: Gauge,
    audit_flush_failures: Counter,
    audit_dropped: Counter,
    http_responses: Family<ClassLabels, Counter>,
    http_duration: HistogramFamily<HttpLabels>,
}

fn http_histogram() -> Histogram {
    Histogram::new(HTTP_BUCKETS)
}

fn salesforce_histogram() -> Histogram {
    Histogram::new(SALESFORCE_BUCKETS)
}

/// Creates the series of every value of a closed label set at zero.
fn prefill<L, V: Copy>(family: &Family<L, Counter>, values: &[V], labels: impl Fn(V) -> L)
where
    L: Clone + std::hash::Hash + Eq,
{
    for value in values {
        let _created = family.get_or_create(&labels(*value));
    }
}

impl Metrics {
    /// A fresh registry with every series at zero.
    pub fn new() -> Self {
        let inner = Inner {
            registry: Registry::default(),
            token_cache_hits: Counter::default(),
            token_cache_misses: Counter::default(),
            token_cache_evictions: Counter::default(),
            token_cache_entries: Gauge::default(),
            refreshes: Family::default(),
            refreshes_in_flight: Gauge::default(),
            refresh_lease_waits: Counter::default(),
            refresh_lease_wait_seconds: Histogram::new(LEASE_WAIT_BUCKETS),
            refresh_commit_retries: Counter::default(),
            rotated_refresh_tokens_lost: Counter::default(),
            salesforce_calls_in_flight: Gauge::default(),
            salesforce_calls_waiting: Gauge::default(),
            salesforce_call_duration: Family::new_with_constructor(salesforce_histogram),
            keepalive_refreshes: Counter::default(),
            keepalive_backlog: Gauge::default(),
            callbacks: Family::default(),
            invalid_signatures: Counter::default(),
            webhook_attempts: Family::default(),
            webhook_given_up: Counter::default(),
            webhook_outbox_depth: Gauge::default(),
            webhook_oldest_pending_age: Gauge::default(),
            audit_flush_failures: Counter::default(),
            audit_dropped: Counter::default(),
            http_responses: Family::default(),
            http_duration: Family::new_with_constructor(http_histogram),
        };
        prefill(&inner.refreshes, RefreshOutcome::ALL, |outcome| {
            RefreshLabels { outcome }
        });
        prefill(&inner.callbacks, CallbackOutcome::ALL, |outcome| {
            CallbackLabels { outcome }
        });
        prefill(&inner.webhook_attempts, WebhookOutcome::ALL, |outcome| {
            WebhookLabels { outcome }
        });
        // The four classes the service answers with (it sends no 1xx of its own).
        prefill(&inner.http_responses, &StatusClass::ALL[1..], |class| {
            ClassLabels { class }
        });
        let mut inner = inner;
        inner.register();
        Self {
            inner: Arc::new(inner),
        }
    }

    /// The exposition of every series.
    pub fn render(&self) -> String {
        let mut out = String::new();
        // Writing to a String cannot fail; an encoding error would leave a partial body,
        // which Prometheus reports as a failed scrape.
        if let Err(e) =
            prometheus_client::encoding::prometheus_text::encode(&mut out, &self.inner.registry)
        {
            tracing::error!(error = %e, "cannot encode the metrics");
        }
        out
    }

    /// The HTTP series of one route template (`None`: requests no route matched). The HTTP
    /// layer asks once per route and keeps the answer, so a response is recorded without
    /// building a label set or looking one up.
    pub fn http_route(&self, route: Option<&str>) -> HttpRouteSeries {
        HttpRouteSeries {
            metrics: self.clone(),
            route: Arc::from(route.unwrap_or(UNMATCHED_ROUTE)),
            responses: [const { OnceLock::new() }; STATUS_CLASSES],
            durations: [const { [const { OnceLock::new() }; STATUS_CLASSES] }; HTTP_METHODS],
        }
    }

    /// Starts timing one HTTP exchange with Salesforce; counted in flight until the guard
    /// is finished or dropped.
    pub fn salesforce_call(&self, endpoint: SalesforceEndpoint) -> SalesforceCall {
        self.inner.salesforce_calls_in_flight.inc();
        SalesforceCall {
            metrics: self.clone(),
            endpoint,
            started: Instant::now(),
            outcome: None,
        }
    }

    /// Starts timing a refresh's wait for another replica's lease (counted now, the wait
    /// observed when the guard drops).
    pub fn lease_wait(&self) -> LeaseWait {
        self.inner.refresh_lease_waits.inc();
        LeaseWait {
            metrics: self.clone(),
            started: Instant::now(),
        }
    }

    pub fn refresh(&self, outcome: RefreshOutcome) {
        self.inner
            .refreshes
            .get_or_create(&RefreshLabels { outcome })
            .inc();
    }

    pub fn callback(&self, outcome: CallbackOutcome) {
        self.inner
            .callbacks
            .get_or_create(&CallbackLabels { outcome })
            .inc();
    }

    pub fn webhook_attempt(&self, outcome: WebhookOutcome) {
        self.inner
            .webhook_attempts
            .get_or_create(&WebhookLabels { outcome })
            .inc();
    }

    /// Counts one `event` (the counters without labels).
    pub fn count(&self, event: Event) {
        let i = &self.inner;
        let counter = match event {
            Event::TokenCacheHit => &i.token_cache_hits,
            Event::TokenCacheMiss => &i.token_cache_misses,
            Event::TokenCacheEviction => &i.token_cache_evictions,
            Event::RefreshCommitRetry => &i.refresh_commit_retries,
            Event::RotatedRefreshTokenLost => &i.rotated_refresh_tokens_lost,
            Event::InvalidSignature => &i.invalid_signatures,
            Event::WebhookGivenUp => &i.webhook_given_up,
            Event::AuditFlushFailure => &i.audit_flush_failures,
            Event::AuditDropped => &i.audit_dropped,
        };
        counter.inc();
    }

    /// One keep-alive refresh done: counted, and out of the backlog.
    pub fn keepalive_refresh(&self) {
        self.inner.keepalive_refreshes.inc();
        self.inner.keepalive_backlog.dec();
    }

    /// A sweep found `due` connections to refresh (its batch, at most the sweep limit).
    pub fn keepalive_due(&self, due: usize) {
        self.inner.keepalive_backlog.set(gauge_value(due));
    }

    /// Sets the gauges read from state held elsewhere, just before a scrape.
    pub fn set_state(&self, state: &StateGauges) {
        let i = &self.inner;
        i.token_cache_entries.set(gauge_value(state.cached_tokens));
        i.refreshes_in_flight
            .set(gauge_value(state.refreshes_in_flight));
        i.salesforce_calls_waiting
            .set(gauge_value(state.salesforce_calls_waiting));
        i.webhook_outbox_depth
            .set(i64::try_from(state.outbox_depth).unwrap_or(i64::MAX));
        i.webhook_oldest_pending_age
            .set(i64::try_from(state.outbox_oldest_age_secs).unwrap_or(i64::MAX));
    }
}

/// The gauges `/metrics` reads from the broker before rendering.
#[derive(Clone, Copy, Debug, Default)]
pub struct StateGauges {
    pub cached_tokens: usize,
    pub refreshes_in_flight: usize,
    pub salesforce_calls_waiting: usize,
    pub outbox_depth: u64,
    pub outbox_oldest_age_secs: u64,
}

fn gauge_value(n: usize) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// One Salesforce call in flight. [`Self::finish`] records its outcome; dropped unfinished
/// (the caller's deadline cancelled it), it counts as a timeout.
pub struct SalesforceCall {
    metrics: Metrics,
    endpoint: SalesforceEndpoint,
    started: Instant,
    outcome: Option<CallOutcome>,
}

impl SalesforceCall {
    pub fn finish(mut self, outcome: CallOutcome) {
        self.outcome = Some(outcome);
    }
}

impl Drop for SalesforceCall {
    fn drop(&mut self) {
        let inner = &self.metrics.inner;
        inner.salesforce_calls_in_flight.dec();
        inner
            .salesforce_call_duration
            .get_or_create(&SalesforceLabels {
                endpoint: self.endpoint,
                outcome: self.outcome.unwrap_or(CallOutcome::Timeout),
            })
            .observe(self.started.elapsed().as_secs_f64());
    }
}

/// A refresh waiting for another replica's lease; the wait is observed when this drops
/// (the lease taken, the token found refreshed, or the wait given up).
pub struct LeaseWait {
    metrics: Metrics,
    started: Instant,
}

impl Drop for LeaseWait {
    fn drop(&mut self) {
        self.metrics
            .inner
            .refresh_lease_wait_seconds
            .observe(self.started.elapsed().as_secs_f64());
    }
}

impl Inner {
    /// Registers every series under its exposed name. Counter names are given without
    /// `_total`, which the encoder appends (OpenMetrics' counter naming).
    fn register(&mut self) {
        let r = &mut self.registry;
        r.register(
            "valo_oauth_token_cache_hits",
            "Access tokens served from this replica's memory",
            self.token_cache_hits.clone(),
        );
        r.register(
            "valo_oauth_token_cache_misses",
            "Access-token requests not served from this replica's memory (read from the database)",
            self.token_cache_misses.clone(),
        );
        r.register(
            "valo_oauth_token_cache_evictions",
            "Cached access tokens dropped for the capacity or because they expired",
            self.token_cache_evictions.clone(),
        );
        r.register(
            "valo_oauth_token_cache_entries",
            "Access tokens held in this replica's memory",
            self.token_cache_entries.clone(),
        );
        r.register(
            "valo_oauth_refreshes",
            "Refresh-token grants sent to Salesforce, by outcome",
            self.refreshes.clone(),
        );
        r.register(
            "valo_oauth_refreshes_in_flight",
            "Refreshes under way on this replica",
            self.refreshes_in_flight.clone(),
        );
        r.register(
            "valo_oauth_refresh_lease_waits",
            "Refreshes that found the connection's lease held by another replica and waited",
            self.refresh_lease_waits.clone(),
        );
        r.register(
            "valo_oauth_refresh_lease_wait_seconds",
            "How long refreshes waited for another replica's lease",
            self.refresh_lease_wait_seconds.clone(),
        );
        r.register(
            "valo_oauth_refresh_commit_retries",
            "Commits of a refresh result retried because the database was unreachable",
            self.refresh_commit_retries.clone(),
        );
        r.register(
            "valo_oauth_rotated_refresh_tokens_lost",
            "Rotated refresh tokens that could not be saved (the connection will need \
             reauthorization). Alert on any increase",
            self.rotated_refresh_tokens_lost.clone(),
        );
        r.register(
            "valo_oauth_salesforce_calls_in_flight",
            "HTTP calls to Salesforce under way on this replica",
            self.salesforce_calls_in_flight.clone(),
        );
        r.register(
            "valo_oauth_salesforce_calls_waiting",
            "Refreshes queued for a slot of salesforce_max_in_flight on this replica",
            self.salesforce_calls_waiting.clone(),
        );
        r.register(
            "valo_oauth_salesforce_call_duration_seconds",
            "HTTP calls to Salesforce, by endpoint and outcome",
            self.salesforce_call_duration.clone(),
        );
        r.register(
            "valo_oauth_keepalive_refreshes",
            "Refreshes made by the keep-alive sweeper",
            self.keepalive_refreshes.clone(),
        );
        r.register(
            "valo_oauth_keepalive_backlog",
            "Connections the last keep-alive sweep found due and has not refreshed",
            self.keepalive_backlog.clone(),
        );
        r.register(
            "valo_oauth_callbacks",
            "OAuth callbacks, by outcome",
            self.callbacks.clone(),
        );
        r.register(
            "valo_oauth_invalid_signatures",
            "Salesforce token responses whose signature did not verify (security event)",
            self.invalid_signatures.clone(),
        );
        r.register(
            "valo_oauth_webhook_attempts",
            "Webhook delivery attempts, by outcome (rejected: a non-2xx answer)",
            self.webhook_attempts.clone(),
        );
        r.register(
            "valo_oauth_webhook_events_given_up",
            "Webhook events whose retry period ended undelivered. Alert on any increase",
            self.webhook_given_up.clone(),
        );
        r.register(
            "valo_oauth_webhook_outbox_depth",
            "Webhook events not yet delivered nor given up (the shared outbox, as this replica \
             last counted it)",
            self.webhook_outbox_depth.clone(),
        );
        r.register(
            "valo_oauth_webhook_oldest_pending_age_seconds",
            "Age of the oldest webhook event not yet delivered nor given up (0: none)",
            self.webhook_oldest_pending_age.clone(),
        );
        r.register(
            "valo_oauth_audit_flush_failures",
            "Writes of the audit trail that failed (the counts are kept for the next one)",
            self.audit_flush_failures.clone(),
        );
        r.register(
            "valo_oauth_audit_entries_dropped",
            "Audit aggregates dropped because too many waited for an unreachable database",
            self.audit_dropped.clone(),
        );
        r.register(
            "valo_oauth_http_responses",
            "HTTP responses, by status class",
            self.http_responses.clone(),
        );
        r.register(
            "valo_oauth_http_request_duration_seconds",
            "HTTP requests, by matched route template, method and status class",
            self.http_duration.clone(),
        );
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    /// `text` holds `line` (a whole sample line).
    fn assert_has(text: &str, line: &str) {
        assert!(text.contains(&format!("{line}\n")), "{line} in {text}");
    }

    #[test]
    fn instances_count_apart() {
        let (a, b) = (Metrics::new(), Metrics::new());
        a.refresh(RefreshOutcome::Success);
        assert_has(
            &a.render(),
            "valo_oauth_refreshes_total{outcome=\"success\"} 1",
        );
        assert_has(
            &b.render(),
            "valo_oauth_refreshes_total{outcome=\"success\"} 0",
        );
    }

    #[test]
    fn a_route_label_is_the_template_and_unmatched_requests_share_one() {
        let m = Metrics::new();
        let ok = Duration::from_millis(2);
        let apps = m.http_route(Some("/v1/tenants/{tenant}/apps"));
        apps.record(HttpMethod::Get, 200, ok);
        apps.record(HttpMethod::Get, 200, ok);
        // Another handle on the same route counts into the same series.
        m.http_route(Some("/v1/tenants/{tenant}/apps"))
            .record(HttpMethod::Get, 201, ok);
        m.http_route(None).record(HttpMethod::Other, 404, ok);
        let text = m.render();
        let count = "valo_oauth_http_request_duration_seconds_count";
        assert_has(
            &text,
            &format!(
                "{count}{{route=\"/v1/tenants/{{tenant}}/apps\",method=\"GET\",status_class=\"2xx\"}} 3"
            ),
        );
        assert_has(
            &text,
            &format!("{count}{{route=\"unmatched\",method=\"other\",status_class=\"4xx\"}} 1"),
        );
        assert_has(&text, "valo_oauth_http_responses_total{class=\"2xx\"} 3");
    }

    #[test]
    fn an_unfinished_salesforce_call_counts_as_a_timeout_and_leaves_the_gauge() {
        let m = Metrics::new();
        let call = m.salesforce_call(SalesforceEndpoint::Token);
        assert_has(&m.render(), "valo_oauth_salesforce_calls_in_flight 1");
        drop(call);
        m.salesforce_call(SalesforceEndpoint::Revoke)
            .finish(CallOutcome::Success);
        let text = m.render();
        let count = "valo_oauth_salesforce_call_duration_seconds_count";
        assert_has(&text, "valo_oauth_salesforce_calls_in_flight 0");
        assert_has(
            &text,
            &format!("{count}{{endpoint=\"token\",outcome=\"timeout\"}} 1"),
        );
        assert_has(
            &text,
            &format!("{count}{{endpoint=\"revoke\",outcome=\"success\"}} 1"),
        );
    }
}
