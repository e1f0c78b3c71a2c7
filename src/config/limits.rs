//! The limits section: request body size, pending-authorization lifetime and shutdown grace.

use std::time::Duration;

use super::ConfigError;
use super::layers::Layers;

pub(super) struct Limits {
    pub(super) body_limit_bytes: usize,
    pub(super) authorization_ttl: Duration,
    /// How long in-flight refreshes get to finish and commit after SIGTERM.
    pub(super) shutdown_grace: Duration,
}

/// `body_limit_bytes`, `authorization_ttl_secs` and `shutdown_grace_secs`.
pub(super) fn resolve(l: &Layers) -> Result<Limits, ConfigError> {
    Ok(Limits {
        body_limit_bytes: l.positive("body_limit_bytes", "a number of bytes")?,
        authorization_ttl: l.secs("authorization_ttl_secs")?,
        shutdown_grace: l.secs("shutdown_grace_secs")?,
    })
}
