//! The events section: signed webhooks to the Valo backend (and their outbox), and the audit
//! trail of token reads.

use std::time::Duration;

use url::Url;

use super::ConfigError;
use super::layers::Layers;
use crate::webhooks::{WebhookSecret, WebhookTarget};

/// The audit flush must keep its promise of "within 10 s".
const MAX_AUDIT_FLUSH: Duration = Duration::from_secs(10);

/// Webhook delivery, when `webhook_url` is set.
#[derive(Clone, Debug)]
pub struct WebhookSettings {
    pub target: WebhookTarget,
    /// The first retry's delay; each further one doubles, up to `retry_max_interval`.
    pub retry_base: Duration,
    pub retry_max_interval: Duration,
    /// Retries stop this long after the event was written (the event is then given up).
    pub retry_period: Duration,
    /// Delivered and given-up events are deleted once this old.
    pub retention: Duration,
    /// How often a replica's worker looks for due events written by other replicas (its
    /// own state changes wake it at once).
    pub poll: Duration,
}

#[derive(Clone, Debug)]
pub struct AuditSettings {
    /// Whether token reads and changes are recorded at all.
    pub enabled: bool,
    /// How often the aggregates in memory are written.
    pub flush_interval: Duration,
    /// Entries are deleted after this long.
    pub retention: Duration,
}

/// `webhook_…`: none without `webhook_url`; then the secret is required.
pub(super) fn webhooks(l: &Layers) -> Result<Option<WebhookSettings>, ConfigError> {
    let Some(raw_url) = l.raw.webhook_url.as_deref() else {
        if l.raw.webhook_secret.is_some() {
            return Err(l.err(
                "webhook_secret",
                format!("is set but {} is not", l.name("webhook_url")),
            ));
        }
        return Ok(None);
    };
    let url = Url::parse(raw_url.trim())
        .ok()
        .filter(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some())
        .filter(|u| u.username().is_empty() && u.password().is_none())
        .ok_or_else(|| {
            l.err(
                "webhook_url",
                "must be an absolute http(s) URL without user info, e.g. https://valo.internal/hooks/valo-oauth",
            )
        })?;
    let secret = l
        .raw
        .webhook_secret
        .as_ref()
        .ok_or_else(|| {
            l.err(
                "webhook_secret",
                format!(
                    "must be set with {} (generate one with `valo-oauth keygen --webhook-secret`)",
                    l.name("webhook_url")
                ),
            )
        })
        .and_then(|raw| WebhookSecret::parse(raw).map_err(|e| l.err("webhook_secret", e)))?;
    let timeout = l.raw.webhook_timeout_ms;
    let retry_base = l.raw.webhook_retry_base_ms;
    let retry_max_interval = l.raw.webhook_retry_max_interval_secs;
    let poll = l.raw.webhook_poll_ms;
    for (key, value) in [
        ("webhook_timeout_ms", timeout),
        ("webhook_retry_base_ms", retry_base),
        ("webhook_poll_ms", poll),
    ] {
        if value.is_zero() {
            return Err(l.err(key, "must be greater than zero"));
        }
    }
    if retry_max_interval < retry_base {
        return Err(l.err(
            "webhook_retry_max_interval_secs",
            format!("must be at least {}", l.name("webhook_retry_base_ms")),
        ));
    }
    Ok(Some(WebhookSettings {
        target: WebhookTarget {
            url,
            secret,
            timeout,
        },
        retry_base,
        retry_max_interval,
        retry_period: l.raw.webhook_retry_period_secs,
        retention: l.raw.webhook_retention_secs,
        poll,
    }))
}

/// `audit_…`.
pub(super) fn audit(l: &Layers) -> Result<AuditSettings, ConfigError> {
    let flush_interval = l.raw.audit_flush_ms;
    if flush_interval.is_zero() || flush_interval > MAX_AUDIT_FLUSH {
        return Err(l.err(
            "audit_flush_ms",
            format!("must be between 1 and {}", MAX_AUDIT_FLUSH.as_millis()),
        ));
    }
    Ok(AuditSettings {
        enabled: l.raw.audit_enabled,
        flush_interval,
        retention: l.raw.audit_retention_days,
    })
}
