//! Fresh access tokens, refreshed with refresh-token rotation — exactly one refresh per
//! connection at a time, across every replica, and no rotated token dropped while it can
//! still be saved.
//!
//! Salesforce invalidates a rotated refresh token at once, and presenting it again revokes
//! the whole token family (Salesforce Help, "Refresh Token Rotation",
//! https://help.salesforce.com/s/articleView?id=sf.remoteaccess_oauth_refresh_token_rotation.htm).
//! So:
//!
//! 1. **Hot path**: a decrypted token valid for the caller's `min_ttl` is served from this
//!    replica's memory ([`super::cache::TokenCache`], bounded) without touching the
//!    database. A refresh, a reauthorization, a status change or a deletion on another
//!    replica reaches the cache through the change feed ([`super::changes`]) within
//!    `token_cache_revalidate_secs`.
//! 2. **In one process** callers of one connection queue on one async mutex ("flight"); the
//!    first refreshes, the others find the new token when they get the mutex.
//! 3. **Across replicas** a refresh runs under a fenced lease kept in the connection's row
//!    ([`crate::store::Store::acquire_lease`]), taken in one short statement when free or
//!    expired. No transaction and no pooled connection is held during the Salesforce call.
//!    Callers on other replicas poll the row until the lease is released and then read the
//!    committed token (no second refresh), or give up after `refresh_wait` with a 503.
//! 4. The Salesforce call has a hard deadline (the Salesforce timeout, counted from just
//!    before the lease was taken) that ends well before the lease does. The result is
//!    committed with a compare-and-set on the lease id, retried while the database is
//!    unreachable until the lease ends. Once another replica may take the lease, no holder
//!    can still be presenting the old refresh token, and a holder whose lease was taken over
//!    cannot overwrite newer state.
//! 5. Throughput is bounded by Salesforce, not by the pool: a refresh takes its slot of
//!    the per-replica limit on Salesforce calls ([`super::limiter`]) *before* the lease, and
//!    its statements share three quarters of the pool ([`super::refresh_db_slots`]), so
//!    unrelated reads never queue behind a fan-out.
//! 6. The slow path runs in its own task, so a caller that hangs up cannot cancel a refresh
//!    between Salesforce's answer and the commit.

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use subtle::ConstantTimeEq as _;
use uuid::Uuid;

use tokio::time::Instant;

use super::audit::{Actor, AuditAction};
use super::cache::{CachedToken, TokenView};
use super::events::{EventType, Subject};
use super::limiter::Permit;
use super::{Broker, BrokerError, SecretColumn, TenantId, upstream_error};
use crate::metrics::{Event, LeaseWait, RefreshOutcome};
use crate::salesforce::{AppCredentials, ErrorClass, RefreshAnswer, SalesforceError, TokenGrant};
use crate::store::{
    AppStatus, ConnectionRecord, ConnectionStatus, LeaseAttempt, Millis, RefreshFailure,
    RefreshLease, RefreshedTokens, StoreError,
};

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

impl AccessToken {
    /// The parts the API answers with, borrowed (as [`CachedToken::view`]).
    pub fn view(&self) -> TokenView<'_> {
        TokenView {
            access_token: self.access_token.expose_secret(),
            instance_url: &self.instance_url,
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        }
    }
}

/// A token answered to an API caller: on the hot path the cache entry itself (nothing
/// copied; [`CachedToken::rendered`] keeps the answer's rendering), otherwise a token just
/// read or refreshed.
pub enum Served {
    Cached(Arc<CachedToken>),
    Fresh(AccessToken),
}

impl Served {
    /// The token as an owned copy.
    pub fn into_token(self) -> AccessToken {
        match self {
            Self::Cached(entry) => entry.token(),
            Self::Fresh(token) => token,
        }
    }
}

/// Held while one refresh calls Salesforce (dropped once it answered).
struct SalesforceSlot {
    _replica: Permit,
    _sweep: Option<tokio::sync::OwnedSemaphorePermit>,
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
    /// Keep-alive: a refresh if the last one is older than `refreshed_before`. `calls`
    /// bounds the sweep's Salesforce calls in flight (`keepalive_concurrency`); it is held
    /// only around the call, so the sweep's reads and commits overlap other calls.
    KeepAlive {
        refreshed_before: Millis,
        calls: Arc<tokio::sync::Semaphore>,
    },
}

impl Want {
    fn rejects(&self, token: &str) -> bool {
        match self {
            Self::Replacing { rejected, .. } => {
                bool::from(rejected.expose_secret().as_bytes().ct_eq(token.as_bytes()))
            }
            _ => false,
        }
    }

    /// Whether `token` (the current one, valid until `expires_at`) serves this want without
    /// a refresh.
    fn served_by(&self, token: &str, expires_at: Millis, now: Millis) -> bool {
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
            Self::KeepAlive {
                refreshed_before, ..
            } => row.connection.last_refreshed_at < *refreshed_before,
            Self::Replacing { .. } if self.rejects(token.expose_secret()) => true,
            _ => {
                let expired = row.connection.access_expires_at <= now;
                let recently = now.saturating_sub(row.connection.last_refreshed_at)
                    < MIN_TTL_REFRESH_SPACING_MS;
                !self.served_by(token.expose_secret(), row.connection.access_expires_at, now)
                    && (expired || !recently)
            }
        }
    }
}

/// What taking the lease came to.
enum Leased {
    /// The lease is ours and the connection needs the refresh.
    Ours(Box<RefreshLease>),
    /// No refresh needed after all (another holder just committed one).
    Served(AccessToken),
}

/// Why a commit under a lease did not happen.
enum CommitLost {
    /// The row no longer carries our lease.
    LeaseLost,
    /// The database stayed unreachable (or failed) until the lease ended.
    Unreachable(StoreError),
}

/// Gives a lease back; if that fails, the lease simply expires.
async fn release_quietly(lease: &RefreshLease) {
    if let Err(e) = lease.release().await {
        tracing::warn!(connection = %lease.record().connection.id, error = %e, "could not release a refresh lease; it expires by itself");
    }
}

/// The first pause of a caller polling another replica's lease; it grows to
/// [`LEASE_POLL_MAX`].
const LEASE_POLL_FIRST: Duration = Duration::from_millis(10);
/// Polling a held lease is cheap (one indexed read and one update that matches no row), so
/// the pause stays short: a waiter should see the committed token within this of its
/// commit.
const LEASE_POLL_MAX: Duration = Duration::from_millis(50);
/// The first pause between attempts to commit while the database is unreachable; doubles
/// up to [`COMMIT_RETRY_MAX`].
const COMMIT_RETRY_FIRST: Duration = Duration::from_millis(100);
const COMMIT_RETRY_MAX: Duration = Duration::from_secs(1);

impl Broker {
    /// A valid access token for the connection, refreshing it if needed. A refresh is
    /// audited as the keep-alive's (see [`Self::access_token_for`] for API callers).
    pub async fn access_token(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
    ) -> Result<AccessToken, BrokerError> {
        self.fetch_access_token(tenant, id, want, None)
            .await
            .map(Served::into_token)
    }

    /// [`Self::access_token`] for an API caller: the read (and a refresh it caused) is
    /// recorded in the audit trail, in memory (no write on this path).
    pub async fn access_token_for(
        &self,
        actor: &Actor,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
    ) -> Result<Served, BrokerError> {
        let token = self
            .fetch_access_token(tenant, id, want, Some(actor))
            .await?;
        self.audit_at(
            Some(actor),
            tenant,
            AuditAction::TokenServed,
            Some(id),
            self.now(),
        );
        Ok(token)
    }

    async fn fetch_access_token(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
        actor: Option<&Actor>,
    ) -> Result<Served, BrokerError> {
        let now = self.now();
        if let Some(hit) = self.cached(tenant, id, &want, now) {
            self.metrics.count(Event::TokenCacheHit);
            return Ok(Served::Cached(hit));
        }
        self.metrics.count(Event::TokenCacheMiss);
        let this = self.clone();
        let tenant = tenant.clone();
        let actor = actor.cloned();
        // Own task: the caller hanging up (or giving up below) must not cancel a refresh
        // between Salesforce's answer and the commit (nor its audit entry).
        let slow = tokio::spawn(async move {
            let result = this.access_token_slow(&tenant, id, want).await;
            if let Ok((_, true)) = &result {
                this.audit_at(
                    actor.as_ref(),
                    &tenant,
                    AuditAction::TokenRefreshed,
                    Some(id),
                    this.now(),
                );
            }
            result.map(|(token, _)| Served::Fresh(token))
        });
        let wait = self.settings.tokens.refresh_wait;
        match tokio::time::timeout(wait, slow).await {
            Ok(joined) => {
                joined.map_err(|e| BrokerError::Internal(format!("token task failed: {e}")))?
            }
            Err(_) => Err(BrokerError::Busy {
                reason: "the connection's refresh did not finish in time; retry".into(),
                retry_after: Duration::from_secs(1),
            }),
        }
    }

    /// The hot path: a cached token, recently checked, that serves the want.
    fn cached(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: &Want,
        now: Millis,
    ) -> Option<Arc<CachedToken>> {
        let hit = self.tokens.get(id)?;
        // Changes made on other replicas reach the cache through the change feed
        // (`super::changes`), not by re-reading each entry.
        if hit.tenant_id() != tenant.as_str() {
            return None;
        }
        want.served_by(hit.access_token(), hit.expires_at(), now)
            .then_some(hit)
    }

    async fn access_token_slow(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: Want,
    ) -> Result<(AccessToken, bool), BrokerError> {
        let flight = self.tokens.flight(id);
        let result = {
            let _queued = flight.lock().await;
            // A caller ahead of us in the queue may have refreshed already.
            match self.cached(tenant, id, &want, self.now()) {
                Some(hit) => Ok((hit.token(), false)),
                None => self.refresh_if_needed(tenant, id, &want).await,
            }
        };
        self.tokens.end_flight(id, flight);
        result
    }

    /// Reads the row; refreshes under the connection's lease if it does not serve the want.
    /// The flag says whether this call refreshed.
    async fn refresh_if_needed(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: &Want,
    ) -> Result<(AccessToken, bool), BrokerError> {
        let read = self.store.get_connection(tenant.as_str(), id);
        let Some(row) = self.on_refresh_share(read).await? else {
            self.tokens.forget(id);
            return Err(BrokerError::NotFound("no such connection for this tenant"));
        };
        if let Some(token) = self.usable_without_refresh(&row, want, self.now())? {
            return Ok((token, false));
        }
        let app = self.on_refresh_share(self.tenant_app(tenant)).await?;
        if app.status == AppStatus::CredentialsInvalid {
            // Fail at once, without a Salesforce call: it would be refused the same way.
            return Err(BrokerError::AppCredentialsInvalid {
                reason: app
                    .status_reason
                    .unwrap_or_else(|| "salesforce refused the consumer credentials".into()),
            });
        }
        let credentials = self.app_credentials(&app)?;
        let Some(_refreshing) = self.lifecycle.start_refresh() else {
            return Err(BrokerError::Busy {
                reason: "the service is shutting down; retry on another replica".into(),
                retry_after: Duration::from_secs(1),
            });
        };
        // The Salesforce slot comes before the lease: a refresh queued behind many others
        // (a fan-out after an outage) holds no lease while it waits, and the call's deadline,
        // counted from the lease, is never eaten by the queue. A queue longer than the wait
        // answers 503 with nothing taken and nothing recorded.
        let give_up = Instant::now() + self.settings.tokens.refresh_wait;
        let Ok(slot) = tokio::time::timeout_at(give_up, self.salesforce_slot(tenant, want)).await
        else {
            return Err(BrokerError::Busy {
                reason: "too many refreshes queue for Salesforce on this replica; retry".into(),
                retry_after: Duration::from_secs(1),
            });
        };
        // A shutdown that began while this refresh queued for its slot: start nothing now
        // (the lease is not taken, nothing was sent).
        if self.lifecycle.is_draining() {
            return Err(BrokerError::Busy {
                reason: "the service is shutting down; retry on another replica".into(),
                retry_after: Duration::from_secs(1),
            });
        }
        let (lease, lease_started) = self.take_lease(tenant, id, want).await?;
        let lease = match lease {
            Leased::Ours(lease) => lease,
            Leased::Served(token) => return Ok((token, false)),
        };
        self.refresh_under_lease(
            tenant,
            &lease,
            lease_started,
            slot,
            &credentials,
            app.credentials_version,
        )
        .await
        .map(|token| (token, true))
    }

    /// The right to call Salesforce for this refresh: a slot of the replica's limit and,
    /// for a keep-alive, one of the sweep's calls too.
    async fn salesforce_slot(&self, tenant: &TenantId, want: &Want) -> SalesforceSlot {
        let sweep = match want {
            Want::KeepAlive { calls, .. } => calls.clone().acquire_owned().await.ok(),
            _ => None,
        };
        SalesforceSlot {
            _replica: self.limiter.acquire(tenant.as_str()).await,
            _sweep: sweep,
        }
    }

    /// Runs one statement of the refresh path within the path's share of the pool.
    async fn on_refresh_share<T>(&self, statement: impl std::future::Future<Output = T>) -> T {
        // The semaphore is never closed, so the permit is always granted.
        let _slot = self.refresh_db.acquire().await.ok();
        statement.await
    }

    /// Takes the connection's lease, waiting (polling) while another replica holds it.
    /// The row is checked again once the lease is ours: the other holder may have refreshed.
    async fn take_lease(
        &self,
        tenant: &TenantId,
        id: Uuid,
        want: &Want,
    ) -> Result<(Leased, Instant), BrokerError> {
        let give_up = Instant::now() + self.settings.tokens.refresh_wait;
        let mut pause = LEASE_POLL_FIRST;
        // Set while waiting for another replica's lease: observed when this returns.
        let mut waiting: Option<LeaseWait> = None;
        loop {
            // Taken before the statement: the Salesforce call's deadline counts from here,
            // so it ends before the lease (counted by the database from later) does.
            let started = Instant::now();
            let attempt = self.store.acquire_lease(
                tenant.as_str(),
                id,
                &self.holder,
                self.settings.tokens.lease_duration,
            );
            match self.on_refresh_share(attempt).await? {
                LeaseAttempt::Acquired(lease) => {
                    let row = lease.record().clone();
                    // Nothing to do after all (another holder refreshed just before, or the
                    // connection cannot be refreshed): give the lease back at once.
                    return match self.usable_without_refresh(&row, want, self.now()) {
                        Ok(None) => Ok((Leased::Ours(Box::new(lease)), started)),
                        Ok(Some(token)) => {
                            release_quietly(&lease).await;
                            Ok((Leased::Served(token), started))
                        }
                        Err(e) => {
                            release_quietly(&lease).await;
                            Err(e)
                        }
                    };
                }
                LeaseAttempt::Held(row) => {
                    if waiting.is_none() {
                        waiting = Some(self.metrics.lease_wait());
                    }
                    if let Some(token) = self.usable_without_refresh(&row, want, self.now())? {
                        return Ok((Leased::Served(token), started));
                    }
                }
                LeaseAttempt::NotFound => {
                    self.tokens.forget(id);
                    return Err(BrokerError::NotFound("no such connection for this tenant"));
                }
            }
            if Instant::now() + pause > give_up {
                return Err(BrokerError::Busy {
                    reason: "another replica is refreshing this connection; retry".into(),
                    retry_after: Duration::from_secs(1),
                });
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(LEASE_POLL_MAX);
        }
    }

    /// Calls Salesforce under the lease and commits what it answered.
    async fn refresh_under_lease(
        &self,
        tenant: &TenantId,
        lease: &RefreshLease,
        lease_started: Instant,
        salesforce_slot: SalesforceSlot,
        credentials: &AppCredentials,
        credentials_version: i64,
    ) -> Result<AccessToken, BrokerError> {
        let row = lease.record().clone();
        let id = row.connection.id;
        let deadline = lease_started + self.settings.salesforce.request_timeout;
        // Past this, another replica may take the lease: stop retrying the commit.
        let lease_end = lease_started + self.settings.tokens.lease_duration;
        let refresh_token = self.open_connection_secret(&row, SecretColumn::RefreshToken)?;

        let answer = tokio::time::timeout_at(
            deadline,
            self.salesforce.refresh(credentials, &refresh_token),
        )
        .await
        .unwrap_or_else(|_| {
            // The hard deadline: whatever Salesforce does with this request now, no later
            // attempt overlaps it (the lease outlives the deadline).
            Err(SalesforceError::Unavailable(
                "no answer before the refresh deadline".into(),
            ))
        });
        // The slot serves the next refresh while this one commits.
        drop(salesforce_slot);
        let now = self.now();
        match answer {
            Ok(RefreshAnswer {
                rotated_refresh_token,
                checked: Ok(grant),
            }) => {
                self.commit_success(
                    tenant,
                    lease,
                    lease_end,
                    credentials,
                    &row,
                    grant,
                    rotated_refresh_token,
                    &refresh_token,
                )
                .await
            }
            Ok(RefreshAnswer {
                rotated_refresh_token: Some(rotated),
                checked: Err(e),
            }) => {
                // Salesforce has invalidated the old refresh token: keep the new one, never
                // present the old one again, and report the answer as unusable.
                self.metrics.refresh(RefreshOutcome::UpstreamError);
                let failure_count = row.failure_count.saturating_add(1);
                tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), "refresh answer failed a check; its new refresh token is kept");
                let failure = RefreshFailure::UnverifiedRotation {
                    refresh_token_enc: self.seal_connection_secret(
                        &id.to_string(),
                        SecretColumn::RefreshToken,
                        &rotated,
                    )?,
                    reason: e.summary(),
                    failure_count,
                    next_attempt_at: self.after_backoff(now, failure_count),
                    now,
                };
                match self
                    .commit_with_retry(lease, lease_end, |l| l.commit_failure(&failure))
                    .await
                {
                    Ok(_) => {}
                    Err(lost) => {
                        self.rotated_token_not_saved(tenant, &row, &rotated, credentials, lost)
                            .await
                    }
                }
                self.tokens.forget(id);
                Err(BrokerError::Upstream(e.summary()))
            }
            Ok(RefreshAnswer {
                rotated_refresh_token: None,
                checked: Err(e),
            })
            | Err(e) => {
                self.commit_refusal(tenant, lease, lease_end, &row, credentials_version, e, now)
                    .await
            }
        }
    }

    /// A verified answer: the new tokens are committed before anyone sees them.
    #[allow(clippy::too_many_arguments, reason = "one refresh's whole context")]
    async fn commit_success(
        &self,
        tenant: &TenantId,
        lease: &RefreshLease,
        lease_end: Instant,
        credentials: &AppCredentials,
        row: &ConnectionRecord,
        grant: TokenGrant,
        rotated: Option<SecretString>,
        old_refresh_token: &SecretString,
    ) -> Result<AccessToken, BrokerError> {
        let id = row.connection.id;
        // Salesforce sends no `expires_in`. The lifetime is the org's session policy, so the
        // previous token's lifetime is the estimate; when that was not measured,
        // introspection confirms it after the commit, off the caller's path (and off the
        // Salesforce budget of a refresh storm).
        let (lifetime, measured) = self.lifetime_estimate(row);
        let issued_at = grant.issued_at_ms.unwrap_or_else(|| self.now());
        let expires_at = issued_at.saturating_add(lifetime);
        // Legacy Connected Apps do not rotate: the old refresh token stays valid.
        let new_refresh = rotated.as_ref().unwrap_or(old_refresh_token);
        let row_id = id.to_string();
        let update = RefreshedTokens {
            instance_url: grant.instance_url.clone(),
            scopes: grant.scopes.clone(),
            access_token_enc: self.seal_connection_secret(
                &row_id,
                SecretColumn::AccessToken,
                &grant.access_token,
            )?,
            refresh_token_enc: self.seal_connection_secret(
                &row_id,
                SecretColumn::RefreshToken,
                new_refresh,
            )?,
            issued_at,
            access_expires_at: expires_at,
            expiry_assumed: !measured,
            now: self.now(),
        };
        let saved = match self
            .commit_with_retry(lease, lease_end, |l| l.commit_refreshed(&update))
            .await
        {
            Ok(saved) => saved,
            Err(lost) => {
                if let Some(rotated) = &rotated {
                    self.rotated_token_not_saved(tenant, row, rotated, credentials, lost)
                        .await;
                }
                self.tokens.forget(id);
                return Err(BrokerError::Unavailable(
                    "the refreshed tokens could not be saved".into(),
                ));
            }
        };
        self.metrics.refresh(RefreshOutcome::Success);
        tracing::info!(tenant = tenant.as_str(), connection = %id, rotated = rotated.is_some(), "access token refreshed");
        let version = saved.version;
        let token = AccessToken {
            access_token: grant.access_token,
            instance_url: saved.connection.instance_url,
            issued_at: saved.issued_at,
            expires_at: saved.connection.access_expires_at,
        };
        self.tokens
            .put(id, tenant.as_str(), token.clone(), version, self.now());
        if !measured {
            self.confirm_expiry_later(
                tenant,
                credentials.clone(),
                token.clone(),
                id,
                saved.version,
            );
        }
        Ok(token)
    }

    /// Salesforce refused, failed or timed out, and no new refresh token came back: record
    /// the failure on what failed (the app or the connection) and release the lease.
    #[allow(clippy::too_many_arguments, reason = "one refresh's whole context")]
    async fn commit_refusal(
        &self,
        tenant: &TenantId,
        lease: &RefreshLease,
        lease_end: Instant,
        row: &ConnectionRecord,
        credentials_version: i64,
        e: SalesforceError,
        now: Millis,
    ) -> Result<AccessToken, BrokerError> {
        let id = row.connection.id;
        let class = e.class();
        let failure = match class {
            ErrorClass::AppCredentials => {
                // The app's state, not the connection's: nothing was consumed, the refresh
                // token stays good for when the credentials are fixed.
                self.metrics.refresh(RefreshOutcome::AppCredentialsInvalid);
                tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), "refresh refused: the tenant app's credentials are invalid");
                let event = self.event_about(
                    EventType::AppCredentialsInvalid,
                    Subject::App(tenant.as_str()),
                    AppStatus::CredentialsInvalid.as_str(),
                    Some(&e.summary()),
                );
                let marked = self
                    .store
                    .mark_app_credentials_invalid_with_event(
                        tenant.as_str(),
                        credentials_version,
                        &e.summary(),
                        now,
                        event.as_ref(),
                    )
                    .await;
                self.wake_outbox();
                if let Err(store_error) = marked {
                    tracing::warn!(tenant = tenant.as_str(), error = %store_error, "could not record the app's invalid credentials");
                }
                release_quietly(lease).await;
                return Err(upstream_error(&e, Duration::ZERO));
            }
            ErrorClass::Reauthorize => {
                self.metrics.refresh(RefreshOutcome::NeedsReauthorization);
                tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), "refresh refused: connection needs reauthorization");
                RefreshFailure::NeedsReauthorization {
                    reason: e.summary(),
                    now,
                }
            }
            ErrorClass::Transient | ErrorClass::Upstream => {
                if class == ErrorClass::Transient {
                    self.metrics.refresh(RefreshOutcome::UpstreamUnavailable);
                } else {
                    self.metrics.refresh(RefreshOutcome::UpstreamError);
                }
                let failure_count = row.failure_count.saturating_add(1);
                tracing::warn!(tenant = tenant.as_str(), connection = %id, error = %e.summary(), failures = failure_count, "refresh failed; refresh token kept");
                RefreshFailure::Transient {
                    reason: e.summary(),
                    failure_count,
                    next_attempt_at: self.after_backoff(now, failure_count),
                    now,
                }
            }
        };
        let backoff = match &failure {
            RefreshFailure::Transient { failure_count, .. } => self.backoff(*failure_count),
            _ => Duration::ZERO,
        };
        // The change of status is reported to the Valo backend, written with it.
        let event = match &failure {
            RefreshFailure::NeedsReauthorization { reason, .. } => self.event_about(
                EventType::ConnectionNeedsReauthorization,
                Subject::Connection(row),
                ConnectionStatus::NeedsReauthorization.as_str(),
                Some(reason),
            ),
            _ => None,
        };
        let committed = self
            .commit_with_retry(lease, lease_end, |l| {
                l.commit_failure_with_event(&failure, event.as_ref())
            })
            .await;
        if event.is_some() {
            self.wake_outbox();
        }
        match committed {
            Ok(_) | Err(CommitLost::LeaseLost) => {}
            Err(CommitLost::Unreachable(store_error)) => {
                // Only the failure's bookkeeping is lost: the refresh token is unchanged.
                tracing::warn!(connection = %id, error = %store_error, "could not record the refresh failure");
            }
        }
        if class == ErrorClass::Reauthorize {
            self.tokens.forget(id);
        }
        Err(upstream_error(&e, backoff))
    }

    /// Runs `commit` (a compare-and-set on the lease) until it succeeds, the lease is lost,
    /// or the lease ends while the database stays unreachable. Each attempt reconnects
    /// through the pool.
    async fn commit_with_retry<'a, F, Fut>(
        &self,
        lease: &'a RefreshLease,
        lease_end: Instant,
        commit: F,
    ) -> Result<ConnectionRecord, CommitLost>
    where
        F: Fn(&'a RefreshLease) -> Fut,
        Fut: std::future::Future<Output = Result<ConnectionRecord, StoreError>>,
    {
        let mut pause = COMMIT_RETRY_FIRST;
        loop {
            match self.on_refresh_share(commit(lease)).await {
                Ok(saved) => return Ok(saved),
                Err(StoreError::LeaseLost) => return Err(CommitLost::LeaseLost),
                Err(StoreError::Unavailable(e)) if Instant::now() + pause < lease_end => {
                    tracing::warn!(connection = %lease.record().connection.id, error = %e, "database unreachable while committing a refresh; retrying until the lease ends");
                    self.metrics.count(Event::RefreshCommitRetry);
                    tokio::time::sleep(pause).await;
                    pause = (pause * 2).min(COMMIT_RETRY_MAX);
                }
                Err(e) => return Err(CommitLost::Unreachable(e)),
            }
        }
    }

    /// A rotated refresh token could not be committed. Tells a true loss (the database
    /// stayed away for the whole lease, or another holder took the lease over and presented
    /// the old token) from a superseded one (the connection was deleted or re-authorized
    /// meanwhile: the new token is revoked, as nobody will use it).
    async fn rotated_token_not_saved(
        &self,
        tenant: &TenantId,
        row: &ConnectionRecord,
        rotated: &SecretString,
        credentials: &AppCredentials,
        why: CommitLost,
    ) {
        let id = row.connection.id;
        let superseded = match &why {
            CommitLost::LeaseLost => match self.store.get_connection(tenant.as_str(), id).await {
                Ok(None) => Some("the connection was deleted"),
                Ok(Some(now)) if now.lease_id.is_none() && now.version != row.version => {
                    Some("the connection was re-authorized")
                }
                _ => None,
            },
            CommitLost::Unreachable(_) => None,
        };
        if let Some(reason) = superseded {
            tracing::info!(tenant = tenant.as_str(), connection = %id, reason, "refresh result superseded; revoking its new refresh token");
            let _permit = self.limiter.acquire(tenant.as_str()).await;
            if let Err(e) = self
                .salesforce
                .revoke(&credentials.login_url, rotated)
                .await
            {
                tracing::warn!(connection = %id, error = %e.summary(), "could not revoke a superseded refresh token");
            }
            return;
        }
        self.metrics.count(Event::RotatedRefreshTokenLost);
        let error = match &why {
            CommitLost::LeaseLost => "the refresh lease was taken over".to_owned(),
            CommitLost::Unreachable(e) => e.to_string(),
        };
        tracing::error!(
            security_event = "rotated_refresh_token_lost",
            tenant = tenant.as_str(),
            connection = %id,
            error = %error,
            "a rotated refresh token could not be saved: the connection will need reauthorization"
        );
    }

    fn after_backoff(&self, now: Millis, failure_count: i32) -> Millis {
        now.saturating_add(
            i64::try_from(self.backoff(failure_count).as_millis()).unwrap_or(i64::MAX),
        )
    }
    /// The expected lifetime of a new access token, and whether it is measured: the
    /// previous token's lifetime when Salesforce told it (introspection) and it is within
    /// sane bounds — the org's session policy rarely changes, and a token that dies early is
    /// reported back as `rejected_token` — else the previous assumed one or the configured
    /// lifetime, to be confirmed by introspection.
    fn lifetime_estimate(&self, row: &ConnectionRecord) -> (Millis, bool) {
        let previous = row
            .connection
            .access_expires_at
            .saturating_sub(row.issued_at);
        let configured =
            i64::try_from(self.settings.salesforce.assumed_token_lifetime.as_millis()).unwrap_or(0);
        if (60_000..=7 * 24 * 3_600_000).contains(&previous) {
            (previous, !row.connection.expiry_assumed)
        } else {
            (configured, false)
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
                    this.tokens
                        .put(id, tenant.as_str(), confirmed, version, this.now());
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
        let connection = &row.connection;
        match connection.status {
            ConnectionStatus::Active => {}
            ConnectionStatus::NeedsReauthorization => {
                self.tokens.forget(connection.id);
                return Err(BrokerError::NeedsReauthorization {
                    reason: connection
                        .last_error
                        .clone()
                        .unwrap_or_else(|| "salesforce refused the refresh token".into()),
                });
            }
            ConnectionStatus::Revoked => {
                self.tokens.forget(connection.id);
                return Err(BrokerError::NeedsReauthorization {
                    reason: "the connection was revoked".into(),
                });
            }
        }
        let access_token = self.open_connection_secret(row, SecretColumn::AccessToken)?;
        if !want.needs_refresh(row, &access_token, now) {
            let token = AccessToken {
                access_token,
                instance_url: connection.instance_url.clone(),
                issued_at: row.issued_at,
                expires_at: connection.access_expires_at,
            };
            // A keep-alive that found nothing to do must not warm the cache.
            if !matches!(want, Want::KeepAlive { .. }) {
                self.tokens.put(
                    connection.id,
                    &connection.tenant_id,
                    token.clone(),
                    row.version,
                    now,
                );
            }
            return Ok(Some(token));
        }
        if let Some(next) = row.next_attempt_at
            && next > now
        {
            // Backing off after transient failures: don't hammer Salesforce.
            return Err(BrokerError::UpstreamUnavailable {
                reason: connection
                    .last_error
                    .clone()
                    .unwrap_or_else(|| "salesforce unavailable".into()),
                retry_after: Duration::from_millis(u64::try_from(next - now).unwrap_or(1000)),
            });
        }
        Ok(None)
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
