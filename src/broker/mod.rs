//! The broker: the service's domain logic, with no HTTP-server types and no SQL.
//!
//! - [`apps`]: tenants' External Client App credentials (write-only secrets);
//! - [`eca`]: the External Client App settings of the setup guide, for the Valo UI;
//! - [`flow`]: the authorization-code flow with PKCE, from start to callback (and reconnects);
//! - [`connections`]: reading and deleting (revoking) connections;
//! - [`cache`]: this replica's bounded cache of decrypted access tokens;
//! - [`tokens`]: fresh access tokens, with exactly one refresh per connection at a time;
//! - [`keepalive`]: the background sweeper that refreshes idle connections;
//! - [`limiter`]: the per-replica limit on Salesforce calls in flight, fair across tenants;
//! - [`lifecycle`]: shutting down without cutting a refresh between Salesforce and commit;
//! - [`rekey`]: re-sealing stored secrets under the first key, and what each key still seals;
//! - [`events`] and [`outbox`]: the webhook events written with the state changes they
//!   report, and the worker that delivers them;
//! - [`audit`]: the audit trail of token reads and changes, aggregated off the hot path.
//!
//! Every operation takes the time from [`Clock`] so tests can control it.

pub mod apps;
pub mod audit;
pub mod cache;
pub mod changes;
pub mod connections;
pub mod eca;
pub mod events;
pub mod flow;
pub mod keepalive;
pub mod lifecycle;
pub mod limiter;
pub mod outbox;
pub mod rekey;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::BrokerSettings;
use crate::crypto::{Binding, Keyring, KeyringError};
use crate::metrics::{Metrics, StateGauges};
use crate::salesforce::{AppCredentials, SalesforceClient, SalesforceError};
use crate::store::{ConnectionRecord, Millis, Store, StoreError, TenantAppRecord};

/// The source of "now" (Unix milliseconds).
pub trait Clock: Send + Sync {
    fn now_ms(&self) -> Millis;
}

/// The wall clock.
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> Millis {
        let now = time::OffsetDateTime::now_utc();
        (now.unix_timestamp_nanos() / 1_000_000) as Millis
    }
}

/// Unix milliseconds as RFC 3339 (UTC, millisecond precision: `2026-12-04T09:30:00.250Z`),
/// as the API and the webhook events render timestamps.
pub fn rfc3339(ms: Millis) -> String {
    match rfc3339_text(ms) {
        Some(text) => text.iter().map(|&b| char::from(b)).collect(),
        None => time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000)
            .map(rfc3339_by_format)
            .unwrap_or_default(),
    }
}

/// A timestamp that serialises as [`rfc3339`] without an allocation (the token response
/// carries two).
#[derive(Clone, Copy, Debug)]
pub struct Rfc3339(pub Millis);

impl serde::Serialize for Rfc3339 {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        match rfc3339_text(self.0) {
            Some(text) => serializer.serialize_str(std::str::from_utf8(&text).unwrap_or_default()),
            None => serializer.serialize_str(&rfc3339(self.0)),
        }
    }
}

/// The 24 ASCII bytes of [`rfc3339`], written digit by digit: `time`'s formatter interprets
/// its format description on every call, and the token response renders two timestamps on
/// every request. `None` for years outside 0–9999 (never a real token's), which take that
/// formatter.
fn rfc3339_text(ms: Millis) -> Option<[u8; 24]> {
    let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000).ok()?;
    let year = u16::try_from(t.year()).ok().filter(|year| *year <= 9999)?;
    let mut text = *b"0000-00-00T00:00:00.000Z";
    let mut put = |at: usize, width: usize, value: u16| {
        let mut value = value;
        for i in (at..at + width).rev() {
            text[i] = b'0' + (value % 10) as u8;
            value /= 10;
        }
    };
    put(0, 4, year);
    put(5, 2, u8::from(t.month()).into());
    put(8, 2, t.day().into());
    put(11, 2, t.hour().into());
    put(14, 2, t.minute().into());
    put(17, 2, t.second().into());
    put(20, 3, t.millisecond());
    Some(text)
}

fn rfc3339_by_format(t: time::OffsetDateTime) -> String {
    t.format(&time::macros::format_description!(
        "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3]Z"
    ))
    .unwrap_or_default()
}

/// A tenant id: `[A-Za-z0-9_-]{1,64}` (it appears in URLs and associated data).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct TenantId(String);

impl TenantId {
    pub fn parse(raw: &str) -> Result<Self, BrokerError> {
        let ok = (1..=64).contains(&raw.len())
            && raw
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-');
        if ok {
            Ok(Self(raw.to_owned()))
        } else {
            Err(BrokerError::InvalidRequest(
                "tenant id must be 1-64 characters of A-Z a-z 0-9 _ -".into(),
            ))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Which of a tenant app's credentials Salesforce refused at registration.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialField {
    ConsumerKey,
    ConsumerSecret,
}

impl CredentialField {
    /// The name of the field in the PUT body.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::ConsumerKey => "consumer_key",
            Self::ConsumerSecret => "consumer_secret",
        }
    }
}

/// What went wrong, in the terms a caller can act on. The HTTP layer maps each variant to
/// one problem `code`; 5xx variants carry details for the log only.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The caller's input is wrong (400 `invalid_request`); the message says how.
    #[error("{0}")]
    InvalidRequest(String),
    /// No such resource for this tenant (404 `not_found`).
    #[error("{0}")]
    NotFound(&'static str),
    /// The connection must be authorized again (409 `needs_reauthorization`).
    #[error("the connection needs reauthorization: {reason}")]
    NeedsReauthorization { reason: String },
    /// Salesforce refused the tenant app's consumer key or secret; the connection is intact
    /// and serves again once the app's credentials are fixed (409
    /// `app_credentials_invalid`).
    #[error("the tenant app's credentials were refused: {reason}")]
    AppCredentialsInvalid { reason: String },
    /// Salesforce refused a tenant app's consumer key or secret at registration (422
    /// `invalid_credentials`, with the field to fix); nothing was stored.
    #[error("{detail}")]
    InvalidCredentials {
        field: CredentialField,
        detail: String,
    },
    /// Salesforce answered in a way we cannot use (502 `upstream_error`).
    #[error("salesforce error: {0}")]
    Upstream(String),
    /// Salesforce is unavailable for now (503 `upstream_unavailable`, `Retry-After`).
    #[error("salesforce unavailable: {reason}")]
    UpstreamUnavailable {
        reason: String,
        retry_after: Duration,
    },
    /// Our own infrastructure failed: database down, lock wait exceeded
    /// (503 `service_unavailable`).
    #[error("service unavailable: {0}")]
    Unavailable(String),
    /// We could not finish in time, through no fault of the database or Salesforce: another
    /// replica's refresh of the connection outlasted the wait, too many refreshes queue for
    /// Salesforce, or the process is shutting down (503 `service_unavailable`,
    /// `Retry-After`).
    #[error("not served in time: {reason}")]
    Busy {
        reason: String,
        retry_after: Duration,
    },
    /// A bug or corrupt data (500, opaque to the caller).
    #[error("internal error: {0}")]
    Internal(String),
    /// The database failed: 503 `service_unavailable` when it could not be reached or did
    /// not answer in time, else 500. The store's error is kept as the source, for the log.
    #[error("database: {0}")]
    Store(#[from] StoreError),
    /// A stored secret could not be opened or sealed (a key missing from the keyring, a
    /// corrupt value): 500. The keyring's error is kept as the source, for the log.
    #[error("keyring: {0}")]
    Keyring(#[from] KeyringError),
}

impl BrokerError {
    /// Whether our own infrastructure is unavailable for now (a 503, worth a retry).
    pub fn is_unavailable(&self) -> bool {
        match self {
            Self::Unavailable(_) => true,
            Self::Store(e) => e.is_unavailable(),
            _ => false,
        }
    }
}

/// Everything the domain needs, shared by the HTTP layer and the background tasks. Its
/// parts are private: the layers above use its operations, never its store or keys.
///
/// Cloning it (every request does, with the HTTP state) is one reference count.
#[derive(Clone)]
pub struct Broker(Arc<BrokerParts>);

/// The parts of a [`Broker`], reached through it; private to the broker module.
pub struct BrokerParts {
    store: Store,
    keyring: Arc<Keyring>,
    salesforce: SalesforceClient,
    clock: Arc<dyn Clock>,
    settings: Arc<BrokerSettings>,
    tokens: Arc<cache::TokenCache>,
    /// Calls to Salesforce in flight on this replica, fair across tenants.
    limiter: Arc<limiter::FairLimiter>,
    /// The share of the database pool the refresh path may use at once (see
    /// [`refresh_db_slots`]), so that a thousand refreshes never queue an unrelated read.
    refresh_db: Arc<tokio::sync::Semaphore>,
    /// Refreshes in flight, and whether new ones may start.
    lifecycle: Arc<lifecycle::Lifecycle>,
    /// Who holds this replica's refresh leases (host, process, instance), for operators.
    holder: Arc<str>,
    /// The webhook outbox; None when no webhook URL is configured (no events are written).
    outbox: Option<Arc<outbox::Outbox>>,
    /// The audit counters not yet written.
    audit: Arc<audit::AuditLog>,
    /// This application instance's metrics.
    metrics: Metrics,
}

/// How many of the pool's connections the refresh path (row reads, leases, commits) may
/// hold at once: three quarters, at least one. A fan-out of a thousand refreshes then
/// queues on its own share, and API reads, flows and health checks still find a free
/// connection at once (the pool itself serves waiters first come, first served).
pub fn refresh_db_slots(pool_size: u32) -> usize {
    let pool = usize::try_from(pool_size).unwrap_or(usize::MAX);
    (pool.saturating_mul(3) / 4).max(1)
}

impl std::ops::Deref for Broker {
    type Target = BrokerParts;

    fn deref(&self) -> &BrokerParts {
        &self.0
    }
}

impl Broker {
    pub fn new(
        store: Store,
        salesforce: SalesforceClient,
        clock: Arc<dyn Clock>,
        settings: BrokerSettings,
        metrics: Metrics,
    ) -> Self {
        let outbox = settings
            .webhooks
            .clone()
            .map(|w| Arc::new(outbox::Outbox::new(w)));
        let audit = Arc::new(audit::AuditLog::new(
            settings.audit.enabled,
            metrics.clone(),
        ));
        let settings = Arc::new(settings);
        Self(Arc::new(BrokerParts {
            store,
            keyring: settings.keyring.clone(),
            salesforce,
            clock,
            limiter: limiter::FairLimiter::new(settings.salesforce.max_in_flight),
            refresh_db: Arc::new(tokio::sync::Semaphore::new(refresh_db_slots(
                settings.db_pool_size,
            ))),
            tokens: Arc::new(cache::TokenCache::new(
                settings.tokens.cache_capacity,
                metrics.clone(),
            )),
            settings,
            lifecycle: Arc::new(lifecycle::Lifecycle::default()),
            holder: lease_holder_name().into(),
            outbox,
            audit,
            metrics,
        }))
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
    }

    /// The redirect URI every tenant's ECA is configured with.
    pub fn callback_url(&self) -> String {
        self.settings.callback_url.clone()
    }

    /// Readiness: the database answers and every migration is applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        self.store.check_ready().await
    }

    /// `"postgres"` or `"sqlite"`.
    pub fn backend_name(&self) -> &'static str {
        self.store.backend_name()
    }

    /// This application instance's metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    /// Sets the gauges that mirror this replica's state (cache, refreshes, the Salesforce
    /// queue, the outbox), for a scrape of the metrics endpoint.
    pub fn publish_gauges(&self) {
        // The cache counts its entries lazily: settle it first (cheap at scrape intervals).
        self.tokens.run_pending_tasks();
        let outbox = self.outbox_gauges();
        self.metrics.set_state(&StateGauges {
            cached_tokens: self.tokens.len(),
            refreshes_in_flight: self.lifecycle.in_flight(),
            salesforce_calls_waiting: self.limiter.waiting(),
            outbox_depth: outbox.pending,
            outbox_oldest_age_secs: outbox.oldest_age_secs,
        });
    }

    /// Stops new refreshes (and keep-alive items) from starting: the first step of a
    /// shutdown.
    pub fn begin_shutdown(&self) {
        self.lifecycle.drain();
    }

    /// Waits for the refreshes in flight to finish, for at most `grace`; `true` when none
    /// is left.
    pub async fn wait_for_refreshes(&self, grace: Duration) -> bool {
        self.lifecycle.wait_idle(grace).await
    }

    /// Refreshes under way on this replica.
    pub fn refreshes_in_flight(&self) -> usize {
        self.lifecycle.in_flight()
    }

    /// How long a shutdown waits for requests and refreshes in flight.
    pub fn shutdown_grace(&self) -> Duration {
        self.settings.shutdown_grace
    }

    /// Closes the database pool (the last step of a shutdown; tests use it to take the
    /// database away).
    pub async fn close(&self) {
        self.store.close().await;
    }

    /// The tenant's app, or 404.
    async fn tenant_app(&self, tenant: &TenantId) -> Result<TenantAppRecord, BrokerError> {
        self.store
            .get_tenant_app(tenant.as_str())
            .await?
            .ok_or(BrokerError::NotFound(
                "no Salesforce app is registered for this tenant",
            ))
    }

    /// Decrypts the app's credentials for a call to Salesforce.
    fn app_credentials(&self, app: &TenantAppRecord) -> Result<AppCredentials, BrokerError> {
        Ok(AppCredentials {
            login_url: app.login_url.clone(),
            client_id: self.open_app_secret(app, &app.consumer_key_enc, "consumer_key")?,
            client_secret: self.open_app_secret(
                app,
                &app.consumer_secret_enc,
                "consumer_secret",
            )?,
        })
    }

    /// Seals a connection's token bound to its row and column.
    fn seal_connection_secret(
        &self,
        connection_id: &str,
        column: SecretColumn,
        value: &SecretString,
    ) -> Result<String, KeyringError> {
        self.keyring
            .seal(value.expose_secret(), column.binding(connection_id))
    }

    /// Opens one of a connection's sealed tokens.
    fn open_connection_secret(
        &self,
        row: &ConnectionRecord,
        column: SecretColumn,
    ) -> Result<SecretString, BrokerError> {
        let sealed = match column {
            SecretColumn::AccessToken => &row.access_token_enc,
            SecretColumn::RefreshToken => &row.refresh_token_enc,
        };
        Ok(self
            .keyring
            .open(sealed, column.binding(&row.connection.id.to_string()))?)
    }

    fn open_app_secret(
        &self,
        app: &TenantAppRecord,
        sealed: &str,
        column: &str,
    ) -> Result<SecretString, BrokerError> {
        Ok(self
            .keyring
            .open(sealed, Binding::new("tenant_apps", &app.tenant_id, column))?)
    }
}

/// The sealed token columns of a connection; each ciphertext is bound to its row and column
/// (the associated data), so a ciphertext copied to another row or column fails to open.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum SecretColumn {
    AccessToken,
    RefreshToken,
}

impl SecretColumn {
    fn binding(self, connection_id: &str) -> Binding<'_> {
        let column = match self {
            Self::AccessToken => "access_token",
            Self::RefreshToken => "refresh_token",
        };
        Binding::new("connections", connection_id, column)
    }
}

/// `host:pid:instance`: enough for an operator to find the replica holding a lease.
fn lease_holder_name() -> String {
    let host = std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .or_else(|| {
            std::fs::read_to_string("/etc/hostname")
                .ok()
                .map(|h| h.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown-host".into());
    let instance = uuid::Uuid::new_v4().simple().to_string();
    format!(
        "{}:{}:{}",
        host.chars().take(64).collect::<String>(),
        std::process::id(),
        &instance[..8]
    )
}

/// A Salesforce failure during a token operation, as the caller sees it.
fn upstream_error(e: &SalesforceError, retry_after: Duration) -> BrokerError {
    use crate::salesforce::ErrorClass;
    match e.class() {
        ErrorClass::AppCredentials => BrokerError::AppCredentialsInvalid {
            reason: e.summary(),
        },
        ErrorClass::Reauthorize => BrokerError::NeedsReauthorization {
            reason: e.summary(),
        },
        ErrorClass::Transient => BrokerError::UpstreamUnavailable {
            reason: e.summary(),
            retry_after,
        },
        ErrorClass::Upstream => BrokerError::Upstream(e.summary()),
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::error::Error as _;

    use super::{BrokerError, StoreError, refresh_db_slots, rfc3339, rfc3339_by_format};

    #[test]
    fn timestamps_render_as_the_format_description_does() {
        assert_eq!(rfc3339(1_796_376_600_250), "2026-12-04T09:30:00.250Z");
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00.000Z");
        // Before 1970, leap days, the last millisecond of a year, and years 1–9999.
        let cases = [
            -1,
            -86_400_001,
            951_782_400_000,
            1_704_067_199_999,
            -62_135_596_800_000,
            253_402_300_799_999,
        ];
        let mut ms: i64 = -2_000_000_000_000;
        let samples = cases.into_iter().chain(std::iter::from_fn(|| {
            ms += 7_777_777_777;
            (ms < 4_000_000_000_000).then_some(ms)
        }));
        for ms in samples {
            let t = time::OffsetDateTime::from_unix_timestamp_nanos(i128::from(ms) * 1_000_000);
            let t = t.unwrap();
            assert_eq!(rfc3339(ms), rfc3339_by_format(t), "{ms}");
            let serialised = serde_json::to_string(&super::Rfc3339(ms)).unwrap();
            assert_eq!(serialised, format!("\"{}\"", rfc3339_by_format(t)), "{ms}");
        }
    }

    #[test]
    fn store_errors_keep_their_source_and_class() {
        let down = BrokerError::from(StoreError::Unavailable(sqlx::Error::PoolTimedOut));
        assert!(down.is_unavailable());
        let source = down.source().map(ToString::to_string);
        assert_eq!(
            source.as_deref(),
            Some("database unavailable: pool timed out while waiting for an open connection")
        );
        assert!(
            down.source().and_then(|s| s.source()).is_some(),
            "the sqlx error is the store error's source"
        );
        let corrupt = BrokerError::from(StoreError::Corrupt("status \"x\"".into()));
        assert!(!corrupt.is_unavailable());
        assert!(corrupt.source().is_some());
    }

    #[test]
    fn the_refresh_path_leaves_a_quarter_of_the_pool_to_everything_else() {
        assert_eq!(refresh_db_slots(10), 7);
        assert_eq!(refresh_db_slots(4), 3);
        assert_eq!(refresh_db_slots(2), 1);
        assert_eq!(refresh_db_slots(1), 1, "a pool of one still refreshes");
    }
}
