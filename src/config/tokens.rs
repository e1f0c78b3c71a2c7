//! The tokens section: refresh (wait, lease, back-off), keep-alive and the token cache.

use std::time::Duration;

use super::layers::Layers;
use super::{ConfigError, SalesforceSettings};

/// The least time a refresh lease outlives the Salesforce call's deadline.
const MIN_LEASE_GRACE: Duration = Duration::from_secs(20);

#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// How long a caller waits for a refresh (its own, or another replica's of the same
    /// connection) before it gets 503 `service_unavailable` with `Retry-After`.
    pub refresh_wait: Duration,
    /// How long a refresh lease lasts: the Salesforce request timeout (the hard deadline of
    /// the call) plus the grace in which a commit is retried while the database is away.
    pub lease_duration: Duration,
    /// Upper bound of the back-off after transient refresh failures.
    pub backoff_max: Duration,
    /// Refresh every active connection not refreshed for this long (None: disabled).
    pub keepalive_interval: Option<Duration>,
    pub keepalive_sweep: Duration,
    pub keepalive_concurrency: usize,
    /// How often a replica reads the connection change feed: the longest a refresh,
    /// reauthorization, status change or deletion made by another replica goes unnoticed
    /// by this replica's token cache.
    pub cache_revalidate: Duration,
    /// The most access tokens one replica keeps in memory (least recently used go first).
    pub cache_capacity: u64,
}

/// `refresh_…`, `keepalive_…` and `token_cache_…`; the lease and the wait
/// are checked against the Salesforce call's deadline.
pub(super) fn resolve(
    l: &Layers,
    salesforce: &SalesforceSettings,
) -> Result<TokenSettings, ConfigError> {
    let keepalive_interval = l.raw.keepalive_interval_secs;
    let lease_grace = lease_grace(l)?;
    // A caller must be able to wait for one whole Salesforce call.
    l.more_than(
        ("refresh_wait_ms", l.raw.refresh_wait_ms),
        ("salesforce_timeout_ms", salesforce.request_timeout),
    )?;
    Ok(TokenSettings {
        refresh_wait: l.raw.refresh_wait_ms,
        lease_duration: salesforce.request_timeout + lease_grace,
        backoff_max: l.raw.refresh_backoff_max_secs,
        keepalive_interval: (!keepalive_interval.is_zero()).then_some(keepalive_interval),
        keepalive_sweep: l.raw.keepalive_sweep_secs,
        keepalive_concurrency: l.raw.keepalive_concurrency,
        cache_revalidate: l.raw.token_cache_revalidate_secs,
        cache_capacity: l.raw.token_cache_capacity,
    })
}

/// `refresh_lease_grace_secs`, at least [`MIN_LEASE_GRACE`].
///
/// The lease outlives the call's hard deadline by the grace in which the rotated token's
/// commit is retried; once another replica may take the lease, no holder can still be
/// presenting the refresh token. 20 s covers a database failover or pooler restart.
fn lease_grace(l: &Layers) -> Result<Duration, ConfigError> {
    let lease_grace = l.raw.refresh_lease_grace_secs;
    if lease_grace < MIN_LEASE_GRACE {
        return Err(l.err(
            "refresh_lease_grace_secs",
            format!("must be at least {}", MIN_LEASE_GRACE.as_secs()),
        ));
    }
    Ok(lease_grace)
}
