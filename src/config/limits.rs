//! The limits section: request body size, pending-authorization lifetime, shutdown grace,
//! and the protective limits of both listeners (timeouts, concurrency, the callback's
//! per-IP rate).

use std::time::Duration;

use super::ConfigError;
use super::layers::Layers;

pub(super) struct Limits {
    pub(super) body_limit_bytes: usize,
    pub(super) authorization_ttl: Duration,
    /// How long in-flight refreshes get to finish and commit after SIGTERM.
    pub(super) shutdown_grace: Duration,
    pub(super) protection: Protection,
}

/// What protects each listener from slow, idle, too many or too eager clients.
#[derive(Clone, Debug)]
pub struct Protection {
    /// A request head not complete within this closes the connection.
    pub header_read_timeout: Duration,
    /// A connection with no byte arriving for this long is closed.
    pub idle_timeout: Duration,
    /// A request not answered within this gets 503 `service_unavailable`.
    pub request_timeout: Duration,
    /// Requests in progress per listener; beyond it, 503 with `Retry-After` at once.
    pub max_concurrent_requests: usize,
    /// Callback requests per minute and client IP (0: no limit), with this burst.
    pub callback_rate_per_minute: u32,
    pub callback_burst: u32,
    /// Key the callback's rate limit by `X-Forwarded-For` / `X-Real-IP` / `Forwarded`
    /// (behind a proxy that sets them) instead of the peer address.
    pub trust_forwarded_for: bool,
}

/// `body_limit_bytes`, `authorization_ttl_secs` and `shutdown_grace_secs`.
pub(super) fn resolve(l: &Layers) -> Result<Limits, ConfigError> {
    Ok(Limits {
        body_limit_bytes: l.raw.body_limit_bytes,
        authorization_ttl: l.raw.authorization_ttl_secs,
        shutdown_grace: l.raw.shutdown_grace_secs,
        protection: protection(l)?,
    })
}

fn protection(l: &Layers) -> Result<Protection, ConfigError> {
    let (idle_timeout, request_timeout) = (l.raw.idle_timeout_secs, l.raw.request_timeout_secs);
    // The idle timeout must not cut a request still being answered.
    l.more_than(
        ("idle_timeout_secs", idle_timeout),
        ("request_timeout_secs", request_timeout),
    )?;
    Ok(Protection {
        header_read_timeout: l.raw.header_read_timeout_secs,
        idle_timeout,
        request_timeout,
        max_concurrent_requests: l.raw.max_concurrent_requests,
        callback_rate_per_minute: l.raw.callback_rate_limit_per_minute,
        callback_burst: l.raw.callback_rate_limit_burst,
        trust_forwarded_for: l.raw.trust_forwarded_for,
    })
}
