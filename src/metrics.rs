//! Process-wide counters, rendered in the Prometheus text format at `GET /metrics`.
//!
//! A handful of fixed counters on atomics: nothing on the hot path takes a lock. The names
//! are listed in the README's operations section; keep the two in step.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};

/// A monotonically increasing counter.
pub struct Counter(AtomicU64);

impl Counter {
    const fn new() -> Self {
        Self(AtomicU64::new(0))
    }

    pub fn inc(&self) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }

    pub fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

pub static TOKEN_CACHE_HITS: Counter = Counter::new();
pub static TOKEN_CACHE_MISSES: Counter = Counter::new();
pub static TOKEN_CACHE_EVICTIONS: Counter = Counter::new();
pub static REFRESH_SUCCESS: Counter = Counter::new();
pub static REFRESH_REAUTHORIZE: Counter = Counter::new();
pub static REFRESH_TRANSIENT: Counter = Counter::new();
pub static REFRESH_UPSTREAM: Counter = Counter::new();
pub static REFRESH_APP_CREDENTIALS: Counter = Counter::new();
pub static REFRESH_LEASE_WAITS: Counter = Counter::new();
pub static REFRESH_COMMIT_RETRIES: Counter = Counter::new();
pub static ROTATED_REFRESH_TOKEN_LOST: Counter = Counter::new();
pub static CALLBACK_CONNECTED: Counter = Counter::new();
pub static CALLBACK_FAILED: Counter = Counter::new();
pub static CALLBACK_INVALID_STATE: Counter = Counter::new();
pub static INVALID_SIGNATURES: Counter = Counter::new();
pub static KEEPALIVE_REFRESHES: Counter = Counter::new();
pub static WEBHOOK_DELIVERED: Counter = Counter::new();
pub static WEBHOOK_REJECTED: Counter = Counter::new();
pub static WEBHOOK_TIMED_OUT: Counter = Counter::new();
pub static WEBHOOK_FAILED: Counter = Counter::new();
pub static WEBHOOK_GIVEN_UP: Counter = Counter::new();
pub static AUDIT_FLUSH_FAILURES: Counter = Counter::new();
pub static AUDIT_DROPPED: Counter = Counter::new();
pub static HTTP_2XX: Counter = Counter::new();
pub static HTTP_3XX: Counter = Counter::new();
pub static HTTP_4XX: Counter = Counter::new();
pub static HTTP_5XX: Counter = Counter::new();

/// Counts one HTTP response by status class.
pub fn record_status(status: u16) {
    match status {
        200..=299 => HTTP_2XX.inc(),
        300..=399 => HTTP_3XX.inc(),
        400..=499 => HTTP_4XX.inc(),
        _ => HTTP_5XX.inc(),
    }
}

/// The Prometheus text exposition (format 0.0.4) of every counter, plus `gauges`.
/// A counter family: name, help text, and its series as (labels, counter).
type Family<'a> = (&'a str, &'a str, &'a [(&'a str, &'a Counter)]);

pub fn render(gauges: &[(&str, &str, u64)]) -> String {
    let families: [Family<'_>; 15] = [
        (
            "valo_oauth_token_cache_hits_total",
            "Access tokens served from this replica's memory.",
            &[("", &TOKEN_CACHE_HITS)],
        ),
        (
            "valo_oauth_token_cache_misses_total",
            "Access-token requests not served from this replica's memory (read from the database).",
            &[("", &TOKEN_CACHE_MISSES)],
        ),
        (
            "valo_oauth_token_cache_evictions_total",
            "Cached access tokens dropped for the capacity or because they expired.",
            &[("", &TOKEN_CACHE_EVICTIONS)],
        ),
        (
            "valo_oauth_refreshes_total",
            "Refresh-token grants sent to Salesforce, by outcome.",
            &[
                ("outcome=\"success\"", &REFRESH_SUCCESS),
                ("outcome=\"needs_reauthorization\"", &REFRESH_REAUTHORIZE),
                ("outcome=\"upstream_unavailable\"", &REFRESH_TRANSIENT),
                ("outcome=\"upstream_error\"", &REFRESH_UPSTREAM),
                (
                    "outcome=\"app_credentials_invalid\"",
                    &REFRESH_APP_CREDENTIALS,
                ),
            ],
        ),
        (
            "valo_oauth_refresh_lease_waits_total",
            "Refreshes that found the connection's lease held by another replica and waited.",
            &[("", &REFRESH_LEASE_WAITS)],
        ),
        (
            "valo_oauth_refresh_commit_retries_total",
            "Commits of a refresh result retried because the database was unreachable.",
            &[("", &REFRESH_COMMIT_RETRIES)],
        ),
        (
            "valo_oauth_rotated_refresh_tokens_lost_total",
            "Rotated refresh tokens that could not be saved (the connection will need \
             reauthorization). Alert on any increase.",
            &[("", &ROTATED_REFRESH_TOKEN_LOST)],
        ),
        (
            "valo_oauth_keepalive_refreshes_total",
            "Refreshes made by the keep-alive sweeper.",
            &[("", &KEEPALIVE_REFRESHES)],
        ),
        (
            "valo_oauth_callbacks_total",
            "OAuth callbacks, by outcome.",
            &[
                ("outcome=\"connected\"", &CALLBACK_CONNECTED),
                ("outcome=\"error\"", &CALLBACK_FAILED),
                ("outcome=\"invalid_state\"", &CALLBACK_INVALID_STATE),
            ],
        ),
        (
            "valo_oauth_invalid_signatures_total",
            "Salesforce token responses whose signature did not verify (security event).",
            &[("", &INVALID_SIGNATURES)],
        ),
        (
            "valo_oauth_webhook_attempts_total",
            "Webhook delivery attempts, by outcome (rejected: a non-2xx answer).",
            &[
                ("outcome=\"delivered\"", &WEBHOOK_DELIVERED),
                ("outcome=\"rejected\"", &WEBHOOK_REJECTED),
                ("outcome=\"timeout\"", &WEBHOOK_TIMED_OUT),
                ("outcome=\"error\"", &WEBHOOK_FAILED),
            ],
        ),
        (
            "valo_oauth_webhook_events_given_up_total",
            "Webhook events whose retry period ended undelivered. Alert on any increase.",
            &[("", &WEBHOOK_GIVEN_UP)],
        ),
        (
            "valo_oauth_audit_flush_failures_total",
            "Writes of the audit trail that failed (the counts are kept for the next one).",
            &[("", &AUDIT_FLUSH_FAILURES)],
        ),
        (
            "valo_oauth_audit_entries_dropped_total",
            "Audit aggregates dropped because too many waited for an unreachable database.",
            &[("", &AUDIT_DROPPED)],
        ),
        (
            "valo_oauth_http_responses_total",
            "HTTP responses, by status class.",
            &[
                ("class=\"2xx\"", &HTTP_2XX),
                ("class=\"3xx\"", &HTTP_3XX),
                ("class=\"4xx\"", &HTTP_4XX),
                ("class=\"5xx\"", &HTTP_5XX),
            ],
        ),
    ];
    let mut out = String::new();
    for (name, help, series) in families {
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} counter");
        for (labels, counter) in series {
            if labels.is_empty() {
                let _ = writeln!(out, "{name} {}", counter.get());
            } else {
                let _ = writeln!(out, "{name}{{{labels}}} {}", counter.get());
            }
        }
    }
    for (name, help, value) in gauges {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} gauge\n{name} {value}"
        );
    }
    out
}
