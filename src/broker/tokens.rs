//! Fresh access tokens, refreshed with refresh-token rotation — exactly one refresh per
//! connection at a time.
//!
//! Salesforce invalidates a rotated refresh token at once, and presenting it again revokes
//! the whole token family (Salesforce Help, "Refresh Token Rotation"). So:
//!
//! 1. **Hot path**: a decrypted token valid for the caller's `min_ttl` is served from this
//!    replica's memory ([`TokenCache`]) without touching the database. Entries are re-read
//!    from the database after `token_cache_revalidate_secs`, so a refresh, a reauthorization
//!    or a deletion on another replica is noticed.
//! 2. **In one process** callers of one connection queue on one async mutex ("flight"); the
//!    first refreshes, the others find the new token when they get the mutex.
//! 3. **Across replicas** the refresh happens under the database row lock
//!    ([`crate::store::Store::lock_connection`]), and the row is checked again once the lock
//!    is held: another replica may have refreshed meanwhile.
//! 4. The new tokens are committed in that transaction before anyone sees them. The slow
//!    path runs in its own task, so a caller that hangs up cannot cancel a refresh between
//!    Salesforce's answer and the commit.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use super::{Broker, BrokerError, TenantId, upstream_error};
use crate::crypto::Binding;
use crate::salesforce::ErrorClass;
use crate::store::{ConnectionRecord, ConnectionStatus, Millis, RefreshFailure, RefreshedTokens};

/// A token refreshed less than this long ago is not refreshed again just to satisfy a
/// `min_ttl` longer than the org's session lifetime (that would refresh on every call).
const MIN_TTL_REFRESH_SPACING_MS: Millis = 60_000;

/// An access token as handed to the Valo backend.
#[derive(Clone)]
pub struct AccessToken {
    pub access_token: SecretString,
    pub instance_url: String,
    pub issued_at: Millis,
    pub expires_at: Millis,
}

/// Why a token is wanted, which decides whether the current one will do.
pub enum Want {
    /// Valid for at least this long.
    Fresh { min_ttl_ms: Millis },
    /// The caller's copy was refused by Salesforce: anything but that token, valid for
    /// `min_ttl_ms`.
    Replacing {
        rejected: SecretString,
        min_ttl_ms: Millis,
    },
    /// Keep-alive: a refresh if the last one is older than `refreshed_before`.
    KeepAlive { refreshed_before: Millis },
}

impl Want {
    fn rejects(&self, token: &SecretString) -> bool {
        match self {
            Self::Replacing { rejected, .. } => bool::from(
                rejected
                    .expose_secret()
                    .as_bytes()
                    .ct_eq(token.expose_secret().as_bytes()),
            ),
            _ => false,
        }
    }

    /// Whether `token` (the current one, valid until `expires_at`) serves this want without
    /// a refresh.
    fn served_by(&self, token: &SecretString, expires_at: Millis, now: Millis) -> bool {
        match self {
            Self::Fresh { min_ttl_ms } => expires_at.saturating_sub(now) >= *min_ttl_ms,
            Self::Replacing { min_ttl_ms, .. } => {
                !self.rejects(token) && expires_at.saturating_sub(now) >= *min_ttl_ms
            }
            Self::KeepAlive { .. } => false,
        }
    }

    /// Whether the stored row needs a refresh (checked again under the lock).
    fn needs_refresh(&self, row: &ConnectionRecord, token: &SecretString, now: Millis) -> bool {
        match self {
            Self::KeepAlive { refreshed_before } => row.last_refreshed_at < *refreshed_before,
            Self::Replacing { .. } if self.rejects(token) => true,
            _ => {
                let expired = row.access_expires_at <= now;
                let recently =
                    now.saturating_sub(row.last_refreshed_at) < MIN_TTL_REFRESH_SPACING_MS;
                !self.served_by(token, row.access_expires_at, now) && (expired || !recently)
            }
        }
    }
}

struct CachedToken {
    tenant_id: String,
    token: AccessToken,
    /// When the row was last read (or written) by this replica.
    checked_at: Millis,
}

/// This replica's decrypted access tokens and its per-connection refresh queues.
#[derive(Default)]
pub struct TokenCache {
    entries: RwLock<HashMap<Uuid, Arc<CachedToken>>>,
    flights: Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl TokenCache {
    fn get(&self, id: Uuid) -> Option<Arc<CachedToken>> {
        self.entries
            .read()
            .ok()
            .and_then(|map| map.get(&id).cloned())
    }

    fn put(&self, id: Uuid, tenant_id: &str, token: AccessToken, now: Millis) {
        if let Ok(mut map) = self.entries.write() {
            map.insert(
                id,
                Arc::new(CachedToken {
                    tenant_id: tenant_id.to_owned(),
                    token,
                    checked_at: now,
                }),
            );
        }
    }

    /// Drops the connection's cached token (deleted, reauthorized, needs reauthorization).
    pub fn forget(&self, id: Uuid) {
        if let Ok(mut map) = self.entries.write() {
            map.remove(&id);
        }
    }

    /// How many tokens are cached (for metrics).
    pub fn len(&self) -> usize {
        self.entries.read().map(|m| m.len()).unwrap_or(0)
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn flight(&self, id: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        match self.flights.lock() {
            Ok(mut map) => map.entry(id).or_default().clone(),
            // A poisoned map only loses coalescing; the database lock still guarantees
            // one refresh at a time.
            Err(_) => Arc::default(),
        }
    }

    fn end_flight(&self, id: Uuid, flight: Arc<tokio::sync::Mutex<()>>) {
        if let Ok(mut map) = self.flights.lock() {
            // Ours plus the map's: nobody else is queued, the entry can go.
            if Arc::strong_count(&flight) == 2 {
                map.remove(&id);
            }
        }
    }
}

impl Broker {
    /// A valid access token for the connection, refreshing it if needed.
    pub async fn access_token(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
    ) -> Result<AccessToken, BrokerError> {
        let now = self.now();
        if let Some(hit) = self.cached(tenant, id, &want, now) {
            crate::metrics::TOKEN_CACHE_HITS.inc();
            return Ok(hit);
        }
        let this = self.clone();
        let tenant = tenant.clone();
        // Own task: the caller hanging up must not cancel a refresh mid-way.
        tokio::spawn(async move { this.access_token_slow(&tenant, id, want).await })
            .await
            .map_err(|e| BrokerError::Internal(format!("token task failed: {e}")))?
    }

    /// The hot path: a cached token, recently checked, that serves the want.
    fn cached(&self, tenant: &TenantId, id: Uuid, want: &Want, now: Millis) -> Option<AccessToken> {
        let hit = self.tokens.get(id)?;
        let revalidate =
            i64::try_from(self.settings.tokens.cache_revalidate.as_millis()).unwrap_or(0);
        (hit.tenant_id == tenant.as_str()
            && now.saturating_sub(hit.checked_at) < revalidate
            && want.served_by(&hit.token.access_token, hit.token.expires_at, now))
        .then(|| hit.token.clone())
    }

    async fn access_token_slow(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
    ) -> Result<AccessToken, BrokerError> {
        let flight = self.tokens.flight(id);
        let result = {
            let _queued = flight.lock().await;
            // A caller ahead of us in the queue may have refreshed already.
            match self.cached(tenant, id, &want, self.now()) {
                Some(hit) => Ok(hit),
                None => self.refresh_if_needed(tenant, id, &want).await,
            }
        };
        self.tokens.end_flight(id, flight);
        result
    }

    /// Reads the row; refreshes under the row lock if it does not serve the want.
    async fn refresh_if_needed(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: &Want,
    ) -> Result<AccessToken, BrokerError> {
        let now = self.now();
        let Some(row) = self.store.get_connection(tenant.as_str(), id).await? else {
            self.tokens.forget(id);
            return Err(BrokerError::NotFound("no such connection for this tenant"));
        };
        if let Some(token) = self.usable_without_refresh(&row, want, now)? {
            return Ok(token);
        }
        let app = self.tenant_app(tenant).await?;
        let credentials = self.app_credentials(&app)?;

        let Some(lock) = self
            .store
            .lock_connection(
                tenant.as_str(),
                id,
                self.settings.tokens.refresh_lock_timeout,
            )
            .await?
        else {
            self.tokens.forget(id);
            return Err(BrokerError::NotFound("no such connection for this tenant"));
        };
        // Re-check under the lock: another replica may have refreshed while we waited.
        let row = lock.record().clone();
        let now = self.now();
        match self.usable_without_refresh(&row, want, now) {
            Ok(Some(token)) => {
                lock.release().await?;
                return Ok(token);
            }
            Ok(None) => {}
            Err(e) => {
                lock.release().await?;
                return Err(e);
            }
        }
        let refresh_token = self.open_connection_secret(&row, "refresh_token")?;
        let refreshed = self.salesforce.refresh(&credentials, &refresh_token).await;
        match refreshed {
            Ok(grant) => {
                // Salesforce sends no `expires_in`. The lifetime is the org's session policy,
                // so the previous token's lifetime is the estimate; introspection confirms it
                // after the commit, off the lock, so waiters get their token after one call.
                let expires_at = grant
                    .issued_at_ms
                    .saturating_add(self.lifetime_estimate(&row));
                let assumed = true;
                let row_id = row.id.to_string();
                // Legacy Connected Apps do not rotate: the old refresh token stays valid.
                let new_refresh = grant.refresh_token.as_ref().unwrap_or(&refresh_token);
                let update = RefreshedTokens {
                    instance_url: grant.instance_url.clone(),
                    scopes: grant.scopes.clone(),
                    access_token_enc: self.seal_connection_secret(
                        &row_id,
                        "access_token",
                        &grant.access_token,
                    )?,
                    refresh_token_enc: self.seal_connection_secret(
                        &row_id,
                        "refresh_token",
                        new_refresh,
                    )?,
                    issued_at: grant.issued_at_ms,
                    access_expires_at: expires_at,
                    expiry_assumed: assumed,
                    now: self.now(),
                };
                let saved = lock.commit_refreshed(update).await.map_err(|e| {
                    // Salesforce rotated the refresh token but we could not keep the new
                    // one: the connection will need reauthorization.
                    tracing::error!(
                        security_event = "rotated_refresh_token_lost",
                        connection = %id,
                        error = %e,
                        "refreshed tokens could not be saved"
                    );
                    BrokerError::from(e)
                })?;
                crate::metrics::REFRESH_SUCCESS.inc();
                tracing::info!(tenant = tenant.as_str(), connection = %id, rotated = grant.refresh_token.is_some(), "access token refreshed");
                let token = AccessToken {
                    access_token: grant.access_token,
                    instance_url: saved.instance_url,
                    issued_at: saved.issued_at,
                    expires_at: saved.access_expires_at,
                };
                self.tokens
                    .put(id, tenant.as_str(), token.clone(), self.now());
                self.confirm_expiry_later(tenant, credentials, token.clone(), id, saved.version);
                Ok(token)
            }
            Err(e) => {
                let now = self.now();
                if e.class() == ErrorClass::Reauthorize {
                    crate::metrics::REFRESH_REAUTHORIZE.inc();
                    tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), "refresh refused: connection needs reauthorization");
                    lock.commit_failure(RefreshFailure::NeedsReauthorization {
                        reason: e.summary(),
                        now,
                    })
                    .await?;
                    self.tokens.forget(id);
                    return Err(upstream_error(&e, Duration::ZERO));
                }
                if e.class() == ErrorClass::Transient {
                    crate::metrics::REFRESH_TRANSIENT.inc();
                } else {
                    crate::metrics::REFRESH_UPSTREAM.inc();
                }
                let failure_count = row.failure_count.saturating_add(1);
                let backoff = self.backoff(failure_count);
                tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), failures = failure_count, "refresh failed; refresh token kept");
                lock.commit_failure(RefreshFailure::Transient {
                    reason: e.summary(),
                    failure_count,
                    next_attempt_at: now
                        .saturating_add(i64::try_from(backoff.as_millis()).unwrap_or(i64::MAX)),
                    now,
                })
                .await?;
                Err(upstream_error(&e, backoff))
            }
        }
    }

    /// The expected lifetime of a new access token: the previous one's (introspected or
    /// assumed), within sane bounds, else the configured lifetime.
    fn lifetime_estimate(&self, row: &ConnectionRecord) -> Millis {
        let previous = row.access_expires_at.saturating_sub(row.issued_at);
        let configured =
            i64::try_from(self.settings.salesforce.assumed_token_lifetime.as_millis()).unwrap_or(0);
        if (60_000..=7 * 24 * 3_600_000).contains(&previous) {
            previous
        } else {
            configured
        }
    }

    /// Introspects a freshly refreshed token in the background (RFC 7662) and records its
    /// real expiry, unless a newer token replaced it meanwhile.
    fn confirm_expiry_later(
        &self,
        tenant: &TenantId,
        credentials: crate::salesforce::AppCredentials,
        token: AccessToken,
        id: Uuid,
        version: i64,
    ) {
        let this = self.clone();
        let tenant = tenant.clone();
        tokio::spawn(async move {
            let exp = match this
                .salesforce
                .introspect_access_token_expiry(&credentials, &token.access_token)
                .await
            {
                Ok(Some(exp)) => exp,
                Ok(None) => return,
                Err(e) => {
                    tracing::debug!(connection = %id, error = %e.summary(), "introspection failed; the estimated expiry stays");
                    return;
                }
            };
            match this
                .store
                .update_access_expiry(id, version, exp, false)
                .await
            {
                Ok(true) => {
                    let confirmed = AccessToken {
                        expires_at: exp,
                        ..token
                    };
                    this.tokens.put(id, tenant.as_str(), confirmed, this.now());
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::warn!(connection = %id, error = %e, "could not record the introspected expiry")
                }
            }
        });
    }

    /// `Some(token)` when the row's current token serves the want; an error when the
    /// connection cannot be refreshed now; `None` when a refresh is needed.
    fn usable_without_refresh(
        &self,
        row: &ConnectionRecord,
        want: &Want,
        now: Millis,
    ) -> Result<Option<AccessToken>, BrokerError> {
        match row.status {
            ConnectionStatus::Active => {}
            ConnectionStatus::NeedsReauthorization => {
                self.tokens.forget(row.id);
                return Err(BrokerError::NeedsReauthorization {
                    reason: row
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "salesforce refused the refresh token".into()),
                });
            }
            ConnectionStatus::Revoked => {
                self.tokens.forget(row.id);
                return Err(BrokerError::NeedsReauthorization {
                    reason: "the connection was revoked".into(),
                });
            }
        }
        let access_token = self.open_connection_secret(row, "access_token")?;
        if !want.needs_refresh(row, &access_token, now) {
            let token = AccessToken {
                access_token,
                instance_url: row.instance_url.clone(),
                issued_at: row.issued_at,
                expires_at: row.access_expires_at,
            };
            // A keep-alive that found nothing to do must not warm the cache.
            if !matches!(want, Want::KeepAlive { .. }) {
                self.tokens.put(row.id, &row.tenant_id, token.clone(), now);
            }
            return Ok(Some(token));
        }
        if let Some(next) = row.next_attempt_at
            && next > now
        {
            // Backing off after transient failures: don't hammer Salesforce.
            return Err(BrokerError::UpstreamUnavailable {
                reason: row
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "salesforce unavailable".into()),
                retry_after: Duration::from_millis(u64::try_from(next - now).unwrap_or(1000)),
            });
        }
        Ok(None)
    }

    fn open_connection_secret(
        &self,
        row: &ConnectionRecord,
        column: &str,
    ) -> Result<SecretString, BrokerError> {
        let sealed = if column == "refresh_token" {
            &row.refresh_token_enc
        } else {
            &row.access_token_enc
        };
        Ok(self.keyring.open(
            sealed,
            Binding::new("connections", &row.id.to_string(), column),
        )?)
    }

    /// Exponential back-off after `failures` consecutive transient failures: 1 s, 2 s, 4 s …
    /// up to the configured maximum.
    fn backoff(&self, failures: i32) -> Duration {
        let exponent = u32::try_from(failures.saturating_sub(1))
            .unwrap_or(0)
            .min(20);
        Duration::from_secs(1u64 << exponent)
            .min(self.settings.tokens.backoff_max.max(Duration::from_secs(1)))
    }
}
