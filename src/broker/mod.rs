//! The broker: the service's domain logic, with no HTTP-server types and no SQL.
//!
//! - [`apps`]: tenants' External Client App credentials (write-only secrets);
//! - [`flow`]: the authorization-code flow with PKCE, from start to callback;
//! - [`connections`]: reading and deleting (revoking) connections;
//! - [`tokens`]: fresh access tokens, with exactly one refresh per connection at a time;
//! - [`keepalive`]: the background sweeper that refreshes idle connections.
//!
//! Every operation takes the time from [`Clock`] so tests can control it.

pub mod apps;
pub mod connections;
pub mod flow;
pub mod keepalive;
pub mod tokens;

use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;
use crate::crypto::{Binding, Keyring, KeyringError};
use crate::salesforce::{AppCredentials, SalesforceClient, SalesforceError};
use crate::store::{Millis, Store, StoreError, TenantAppRecord};

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
    /// A bug or corrupt data (500, opaque to the caller).
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<StoreError> for BrokerError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::Unavailable(_) | StoreError::LockTimeout => {
                Self::Unavailable(e.to_string())
            }
            other => Self::Internal(other.to_string()),
        }
    }
}

impl From<KeyringError> for BrokerError {
    fn from(e: KeyringError) -> Self {
        Self::Internal(format!("keyring: {e}"))
    }
}

/// Everything the domain needs, shared by the HTTP layer and the background tasks.
#[derive(Clone)]
pub struct Broker {
    pub store: Store,
    pub keyring: Arc<Keyring>,
    pub salesforce: SalesforceClient,
    pub clock: Arc<dyn Clock>,
    pub settings: Arc<Settings>,
    pub tokens: Arc<tokens::TokenCache>,
}

impl Broker {
    pub fn new(
        store: Store,
        salesforce: SalesforceClient,
        clock: Arc<dyn Clock>,
        settings: Arc<Settings>,
    ) -> Self {
        Self {
            store,
            keyring: settings.keyring.clone(),
            salesforce,
            clock,
            settings,
            tokens: Arc::new(tokens::TokenCache::default()),
        }
    }

    pub fn now(&self) -> Millis {
        self.clock.now_ms()
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
        column: &str,
        value: &SecretString,
    ) -> Result<String, KeyringError> {
        self.keyring.seal(
            value.expose_secret(),
            Binding::new("connections", connection_id, column),
        )
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

/// A Salesforce failure during a token operation, as the caller sees it.
fn upstream_error(e: &SalesforceError, retry_after: Duration) -> BrokerError {
    use crate::salesforce::ErrorClass;
    match e.class() {
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
