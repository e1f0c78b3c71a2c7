//! Storage: one interface ([`Store`]) over two sqlx backends, Postgres for production and
//! multi-replica deployments, SQLite as the embedded single-replica default.
//!
//! Only this module knows SQL. Every secret column arrives here already encrypted by
//! [`crate::crypto::Keyring`] (a `…_enc` string); the store never sees plaintext secrets.
//! Timestamps are Unix milliseconds (`i64`) in both databases so that the same SQL and the
//! same comparisons work on both.
//!
//! The SQL is written once ([`sql`]) and run by one generic store ([`SqlStore`]); a small
//! [`Backend`] trait supplies what differs between the databases: how to connect, the
//! embedded migrations, the id type, the database clock used by the refresh lease, and how
//! a save of a new connection is serialised.
//!
//! A refresh is fenced by a lease stored in the connection's row ([`Store::acquire_lease`]):
//! taken in one short statement, committed with a compare-and-set on its id. No transaction
//! and no pooled connection is held while Salesforce is called.

mod backend;
mod postgres;
mod sealed;
mod sql;
mod sql_store;
mod sqlite;

use std::time::Duration;

use uuid::Uuid;

pub use backend::Backend;
pub use sealed::{RowKey, SealedField, SealedValue};
pub use sql_store::SqlStore;

/// Runs the same call on whichever backend this store is.
macro_rules! dispatch {
    ($self:expr, $s:ident => $call:expr) => {
        match $self {
            Store::Postgres($s) => $call,
            Store::Sqlite($s) => $call,
        }
    };
}

/// Defines [`Store`] methods that only hand their arguments to the same method of the backend
/// (or, after `=`, to the call given), so that the facade lists each signature once and the
/// backends' methods are not written out again as dispatching bodies.
macro_rules! delegate {
    ($(
        $(#[$meta:meta])*
        fn $name:ident$(<$generic:ident>)?($($arg:ident: $ty:ty),* $(,)?) $(-> $ret:ty)?
            $(= $target:ident($($pass:expr),* $(,)?))?;
    )*) => {$(
        $(#[$meta])*
        pub async fn $name$(<$generic>)?(&self, $($arg: $ty),*) $(-> $ret)? {
            delegate!(@call self, $name($($arg),*) $(=> $target($($pass),*))?)
        }
    )*};
    (@call $self:tt, $name:ident($($arg:ident),*)) => {
        dispatch!($self, s => s.$name($($arg),*).await)
    };
    (@call $self:tt, $name:ident($($arg:ident),*) => $target:ident($($pass:expr),*)) => {
        dispatch!($self, s => s.$target($($pass),*).await)
    };
}

/// Unix time in milliseconds, the one time representation of the storage layer.
pub type Millis = i64;

/// A customer's External Client App credentials (one per tenant).
#[derive(Clone)]
pub struct TenantAppRecord {
    pub tenant_id: String,
    /// `https://…` login host, normalised (no trailing slash).
    pub login_url: String,
    /// Encrypted consumer key (AAD: `tenant_apps/{tenant_id}/consumer_key`).
    pub consumer_key_enc: String,
    /// A masked hint of the consumer key, safe to show (`3MVG…Xy9Q`).
    pub consumer_key_hint: String,
    /// Encrypted consumer secret (AAD: `tenant_apps/{tenant_id}/consumer_secret`).
    pub consumer_secret_enc: String,
    /// Whether Salesforce accepted the credentials at the last refresh that tried them.
    pub status: AppStatus,
    /// Why the credentials were refused (a short, secret-free reason).
    pub status_reason: Option<String>,
    /// Grows with every PUT of new credentials (compare-and-set for [`AppStatus`]).
    pub credentials_version: i64,
    pub created_at: Millis,
    pub updated_at: Millis,
}

/// The state of a tenant's app credentials.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AppStatus {
    /// Usable (or not known to be wrong).
    Active,
    /// Salesforce answered `invalid_client` / `invalid_client_id` to a refresh: every
    /// connection of the app keeps its tokens and waits for a PUT of new credentials.
    CredentialsInvalid,
}

impl AppStatus {
    pub const ALL: [Self; 2] = [Self::Active, Self::CredentialsInvalid];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::CredentialsInvalid => "credentials_invalid",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One pending authorization-code flow (RFC 6749 §4.1), keyed by the SHA-256 of its state.
#[derive(Clone)]
pub struct AuthorizationSession {
    /// SHA-256 of the state value; the state itself is never stored.
    pub state_hash: Vec<u8>,
    pub id: Uuid,
    pub tenant_id: String,
    /// Encrypted PKCE verifier (AAD: `authorization_sessions/{id}/pkce_verifier`).
    pub pkce_verifier_enc: String,
    pub return_to: Option<String>,
    pub created_at: Millis,
    pub expires_at: Millis,
    pub consumed_at: Option<Millis>,
    /// The connection this flow re-authorizes (a reconnect), if any.
    pub connection_id: Option<Uuid>,
}

/// What consuming a state found. Consumption is atomic: of two concurrent callers with the
/// same state, exactly one gets `Consumed`.
pub enum ConsumeOutcome {
    Consumed(AuthorizationSession),
    /// No session has that state hash.
    Unknown,
    /// The session was consumed before (a replay).
    AlreadyConsumed,
    /// The session exists but expired; it is marked consumed all the same.
    Expired,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConnectionStatus {
    Active,
    NeedsReauthorization,
    Revoked,
}

impl ConnectionStatus {
    pub const ALL: [Self; 3] = [Self::Active, Self::NeedsReauthorization, Self::Revoked];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Active => "active",
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::Revoked => "revoked",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|status| status.as_str() == s)
    }
}

/// One Salesforce user of one org, connected for one tenant, as the domain shows it:
/// everything but the token material and the refresh's bookkeeping.
#[derive(Clone, Debug)]
pub struct Connection {
    pub id: Uuid,
    pub tenant_id: String,
    /// 18-character Salesforce org id (`00D…`).
    pub org_id: String,
    /// 18-character Salesforce user id (`005…`).
    pub user_id: String,
    /// The user's Salesforce username (from introspection), when known; a reconnect passes
    /// it as `login_hint`.
    pub username: Option<String>,
    pub login_url: String,
    pub instance_url: String,
    pub status: ConnectionStatus,
    /// Granted scopes, as Salesforce listed them (stored space-separated).
    pub scopes: Vec<String>,
    /// When the current access token expires (introspected, or assumed).
    pub access_expires_at: Millis,
    /// True when `access_expires_at` is the configured lifetime, not Salesforce's answer.
    pub expiry_assumed: bool,
    pub created_at: Millis,
    pub updated_at: Millis,
    /// Last successful token issue (authorization or refresh).
    pub last_refreshed_at: Millis,
    /// Why the last refresh failed (a short, secret-free reason).
    pub last_error: Option<String>,
}

/// A stored connection: what the domain shows of it, its sealed tokens, and the state of
/// its refreshes.
#[derive(Clone)]
pub struct ConnectionRecord {
    pub connection: Connection,
    /// Encrypted access token (AAD: `connections/{id}/access_token`).
    pub access_token_enc: String,
    /// Encrypted refresh token (AAD: `connections/{id}/refresh_token`).
    pub refresh_token_enc: String,
    /// When Salesforce issued the current access token.
    pub issued_at: Millis,
    /// Consecutive transient refresh failures (for back-off).
    pub failure_count: i32,
    /// No refresh attempt before this time (back-off after transient failures).
    pub next_attempt_at: Option<Millis>,
    /// Incremented on every change of the token material.
    pub version: i64,
    /// The refresh lease, when one was taken and not released (it may have expired).
    pub lease_id: Option<String>,
}

/// The token material and metadata of a freshly authorized connection.
pub struct AuthorizedConnection {
    pub login_url: String,
    pub instance_url: String,
    pub scopes: String,
    pub access_token_enc: String,
    pub refresh_token_enc: String,
    pub issued_at: Millis,
    pub access_expires_at: Millis,
    pub expiry_assumed: bool,
    /// The user's Salesforce username, when introspection told it (`None` keeps the one
    /// stored before).
    pub username: Option<String>,
}

/// A connection for [`Store::insert_connections`]: its id is chosen by the caller, who has
/// sealed the tokens under it (the id is in their associated data).
pub struct NewConnection {
    pub id: Uuid,
    pub tenant_id: String,
    pub org_id: String,
    pub user_id: String,
    pub tokens: AuthorizedConnection,
    /// Its `created_at`, `updated_at` and `last_refreshed_at`.
    pub created_at: Millis,
}

/// The result of upserting an authorized connection.
pub struct SavedConnection {
    pub connection: ConnectionRecord,
    /// The row as it was before, when the same org user re-authorized: its refresh token
    /// is now replaced and should be revoked at Salesforce.
    pub replaced: Option<ConnectionRecord>,
}

/// A successful refresh, committed with the lease's compare-and-set.
pub struct RefreshedTokens {
    pub instance_url: String,
    pub scopes: Option<String>,
    pub access_token_enc: String,
    /// The rotated refresh token, or the old one when Salesforce did not rotate.
    pub refresh_token_enc: String,
    pub issued_at: Millis,
    pub access_expires_at: Millis,
    pub expiry_assumed: bool,
    pub now: Millis,
}

/// A failed refresh, committed with the lease's compare-and-set (which also releases it).
pub enum RefreshFailure {
    /// Salesforce refused the grant for good: status becomes `needs_reauthorization`.
    NeedsReauthorization { reason: String, now: Millis },
    /// A passing fault: the status and the refresh token stay, the back-off grows.
    Transient {
        reason: String,
        failure_count: i32,
        next_attempt_at: Millis,
        now: Millis,
    },
    /// Salesforce answered with a new refresh token, but the answer failed a check
    /// (signature, `instance_url` policy, identity): the new refresh token replaces the old
    /// one (which Salesforce has invalidated), the access token stays, the back-off grows.
    UnverifiedRotation {
        refresh_token_enc: String,
        reason: String,
        failure_count: i32,
        next_attempt_at: Millis,
        now: Millis,
    },
}

/// What an attempt to take a connection's refresh lease found.
pub enum LeaseAttempt {
    /// The lease is ours; the row as it was when we took it (re-check it: another holder
    /// may have refreshed just before).
    Acquired(RefreshLease),
    /// Another holder's lease is live; the row as read just now.
    Held(ConnectionRecord),
    /// No such connection for this tenant.
    NotFound,
}

/// A refresh lease held on one connection: the right to present its refresh token until the
/// lease ends. Committing with it succeeds only while the row still carries this lease.
pub struct RefreshLease {
    store: Store,
    lease_id: String,
    record: ConnectionRecord,
}

impl RefreshLease {
    /// The row as read when the lease was taken.
    pub fn record(&self) -> &ConnectionRecord {
        &self.record
    }

    /// Writes the refreshed tokens and releases the lease in one statement, only if the row
    /// still carries this lease ([`StoreError::LeaseLost`] otherwise). Safe to retry.
    pub async fn commit_refreshed(
        &self,
        update: &RefreshedTokens,
    ) -> Result<ConnectionRecord, StoreError> {
        dispatch!(&self.store, s => s.commit_refreshed(self.record.connection.id, &self.lease_id, update).await)
    }

    /// Records a failed refresh and releases the lease in one statement, only if the row
    /// still carries this lease. Safe to retry.
    pub async fn commit_failure(
        &self,
        failure: &RefreshFailure,
    ) -> Result<ConnectionRecord, StoreError> {
        dispatch!(&self.store, s => s.commit_failure(self.record.connection.id, &self.lease_id, failure).await)
    }

    /// [`Self::commit_failure`], writing `event` in the same transaction when the failure
    /// is recorded. Safe to retry (the event is written once: a retry after a commit finds
    /// the lease gone).
    pub async fn commit_failure_with_event(
        &self,
        failure: &RefreshFailure,
        event: Option<&NewEvent>,
    ) -> Result<ConnectionRecord, StoreError> {
        dispatch!(&self.store, s => s.commit_failure_with_event(self.record.connection.id, &self.lease_id, failure, event).await)
    }

    /// Releases the lease without changing anything else; `false` when it was no longer
    /// ours.
    pub async fn release(&self) -> Result<bool, StoreError> {
        dispatch!(&self.store, s => s.release_lease(self.record.connection.id, &self.lease_id).await)
    }
}

/// A webhook event, written to the outbox in the same transaction as the state change it
/// reports.
#[derive(Clone, Debug)]
pub struct NewEvent {
    /// The `webhook-id`: the same on every attempt.
    pub id: String,
    pub tenant_id: String,
    /// Events of one key are delivered in order, one at a time (a connection id, or
    /// `app:<tenant>`).
    pub ordering_key: String,
    /// `connection.created`, … (the migration lists them).
    pub event_type: &'static str,
    /// The JSON body as it will be signed and posted.
    pub payload: String,
    pub created_at: Millis,
}

/// An event claimed by a delivery worker.
#[derive(Clone, Debug)]
pub struct ClaimedEvent {
    /// Its place in the outbox (the key of the compare-and-set that finishes it).
    pub seq: i64,
    pub id: String,
    pub event_type: String,
    pub payload: String,
    pub created_at: Millis,
    /// Attempts made before this one.
    pub attempts: i32,
}

/// How one delivery attempt ended, as the outbox records it.
#[derive(Clone, Debug)]
pub enum DeliveryOutcome {
    Delivered {
        now: Millis,
    },
    /// Failed; try again at `next_attempt_at`.
    Retry {
        next_attempt_at: Millis,
        error: String,
    },
    /// Failed, and the retry period is over.
    GiveUp {
        now: Millis,
        error: String,
    },
}

/// One read of the change feed.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ConnectionChanges {
    /// The database's clock when the feed was read.
    pub now: Millis,
    /// `(connection, min_version)`: a cached token of that connection read from a row
    /// version below `min_version` must no longer be served (`i64::MAX`: deleted).
    pub changes: Vec<(Uuid, i64)>,
}

/// Events not yet delivered (nor given up), for the metrics.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct OutboxStats {
    pub pending: i64,
    pub oldest_created_at: Option<Millis>,
}

/// One aggregate of the audit trail: `count` occurrences of `action` by `actor` (on
/// `connection_id`) in the entry that starts at `at`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditRecord {
    pub tenant_id: String,
    pub at: Millis,
    pub actor: String,
    pub action: &'static str,
    pub connection_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub count: i64,
}

/// A stored entry of the audit trail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuditEntry {
    /// Its place among the entries with the same `at` (the cursor's tie-break).
    pub id: i64,
    pub at: Millis,
    pub actor: String,
    pub action: String,
    pub connection_id: Option<Uuid>,
    pub request_id: Option<String>,
    pub count: i64,
}

/// A page request of one tenant's audit trail; `until` is exclusive, `after` the last
/// (at, id) of the previous page.
#[derive(Clone, Debug)]
pub struct AuditQuery {
    pub tenant_id: String,
    pub connection_id: Option<Uuid>,
    pub since: Millis,
    pub until: Millis,
    pub after: Option<(Millis, i64)>,
    pub limit: i64,
}

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database cannot be reached or did not answer in time (pool timeout, I/O).
    #[error("database unavailable: {0}")]
    Unavailable(#[source] sqlx::Error),
    /// The refresh lease is no longer ours: it ended and another holder took it, the
    /// connection was re-authorized (which clears it), or the connection was deleted.
    #[error("the refresh lease was lost")]
    LeaseLost,
    /// The schema is not (fully) migrated.
    #[error("database migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    /// A row failed a check on read (an unknown status value and the like).
    #[error("corrupt row: {0}")]
    Corrupt(String),
    /// Any other database error.
    #[error("database error: {0}")]
    Database(#[source] sqlx::Error),
}

impl StoreError {
    /// The database could not be reached or did not answer in time: worth a retry.
    pub fn is_unavailable(&self) -> bool {
        matches!(self, Self::Unavailable(_))
    }
}

/// Pool settings shared by both backends.
#[derive(Clone, Debug)]
pub struct StoreOptions {
    pub max_connections: u32,
    /// How long a statement waits for a pooled connection (which includes connecting to a
    /// database that is down): short, so that an outage answers 503 fast.
    pub acquire_timeout: Duration,
    /// Postgres behind a transaction-mode pooler (PgBouncer `pool_mode = transaction`): no
    /// named prepared statements, every statement in a transaction of its own.
    pub transaction_pooler: bool,
}

impl Default for StoreOptions {
    fn default() -> Self {
        Self {
            max_connections: 10,
            acquire_timeout: Duration::from_millis(800),
            transaction_pooler: false,
        }
    }
}

/// The storage interface: one of the two backends, chosen by the database URL.
#[derive(Clone)]
pub enum Store {
    Postgres(SqlStore<sqlx::Postgres>),
    Sqlite(SqlStore<sqlx::Sqlite>),
}

impl Store {
    /// Connects by URL scheme: `postgres://`/`postgresql://` or `sqlite://` (the file and its
    /// folder are created when missing). Does not migrate.
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Ok(Self::Postgres(SqlStore::connect(url, options).await?))
        } else if url.starts_with("sqlite:") {
            Ok(Self::Sqlite(SqlStore::connect(url, options).await?))
        } else {
            // A configuration error, not a corrupt row (and the URL is not echoed: it may
            // carry a password).
            Err(StoreError::Database(sqlx::Error::Configuration(
                "database URL must start with postgres:// or sqlite://".into(),
            )))
        }
    }

    pub fn backend_name(&self) -> &'static str {
        dispatch!(self, s => s.backend_name())
    }

    delegate! {
        /// Applies the backend's embedded migrations (idempotent, safe from many replicas).
        fn migrate() -> Result<(), StoreError>;

        /// Readiness: the database answers and every embedded migration is applied.
        fn check_ready() -> Result<(), StoreError>;

        fn close();

        // --- tenant apps -----------------------------------------------------------------

        /// Inserts or replaces the tenant's app; `created_at` of an existing row is kept, the
        /// status becomes `active` and `credentials_version` grows. Returns the stored row and
        /// whether it was created (true) or replaced (false).
        fn put_tenant_app(app: &TenantAppRecord) -> Result<(TenantAppRecord, bool), StoreError>
            = put_tenant_app(app, None);

        /// [`Self::put_tenant_app`]; when the PUT replaces credentials marked invalid,
        /// `fixed_event` is written in the same transaction.
        fn put_tenant_app_with_event(app: &TenantAppRecord, fixed_event: Option<&NewEvent>)
            -> Result<(TenantAppRecord, bool), StoreError> = put_tenant_app(app, fixed_event);

        fn get_tenant_app(tenant_id: &str) -> Result<Option<TenantAppRecord>, StoreError>;

        /// Marks the app's credentials refused, unless they were replaced since
        /// `credentials_version` was read. Returns whether it did.
        fn mark_app_credentials_invalid(tenant_id: &str, credentials_version: i64, reason: &str, now: Millis)
            -> Result<bool, StoreError>
            = mark_app_credentials_invalid(tenant_id, credentials_version, reason, now, None);

        /// [`Self::mark_app_credentials_invalid`]; when this marks an `active` app, `event` is
        /// written in the same transaction (a second refusal writes none).
        fn mark_app_credentials_invalid_with_event(
            tenant_id: &str, credentials_version: i64, reason: &str, now: Millis, event: Option<&NewEvent>
        ) -> Result<bool, StoreError>
            = mark_app_credentials_invalid(tenant_id, credentials_version, reason, now, event);

        /// Deletes the app and, by cascade, its authorization sessions and connections.
        /// Returns whether a row was deleted.
        fn delete_tenant_app(tenant_id: &str) -> Result<bool, StoreError>;

        // --- authorization sessions ------------------------------------------------------

        fn insert_authorization_session(session: &AuthorizationSession) -> Result<(), StoreError>;

        /// Atomically marks the session with this state hash consumed (single use).
        fn consume_authorization_session(state_hash: &[u8], now: Millis)
            -> Result<ConsumeOutcome, StoreError>;

        /// Housekeeping: deletes sessions that expired before `before`. Returns how many.
        fn delete_expired_authorization_sessions(before: Millis) -> Result<u64, StoreError>;

        // --- sealed values (key rotation) ------------------------------------------------

        /// Up to `limit` values of `field` in rows after `after` (from the first row when
        /// `None`), in key order, skipping those that start with `skip_prefix` (the values
        /// already sealed under the primary key).
        fn sealed_page(field: SealedField, after: Option<&RowKey>, skip_prefix: Option<&str>, limit: i64)
            -> Result<Vec<SealedValue>, StoreError>;

        /// Replaces a sealed value if it is still `old` (a refresh or a re-registration may
        /// have written a new one meanwhile). Returns whether it was replaced.
        fn replace_sealed(field: SealedField, key: &RowKey, old: &str, new: &str) -> Result<bool, StoreError>;

        // --- connections -----------------------------------------------------------------

        /// Upserts the connection of (tenant, org, user) in one transaction. `build` gets the
        /// row id the tokens will live under (the existing row's, else `new_id`) so that they
        /// can be encrypted with that id in their associated data. Status becomes `active`,
        /// the failure state is cleared, `version` grows, and a refresh lease in flight is
        /// cleared (its holder's commit then fails instead of overwriting the new tokens).
        fn save_authorized_connection<E>(
            tenant_id: &str, org_id: &str, user_id: &str, new_id: Uuid, now: Millis,
            build: impl FnOnce(Uuid) -> Result<AuthorizedConnection, E> + Send,
        ) -> Result<Result<SavedConnection, E>, StoreError>
            = save_authorized_connection(
                tenant_id, org_id, user_id, new_id, now, build, |_: &ConnectionRecord, _: bool| None
            );

        /// [`Self::save_authorized_connection`], writing the event `event` makes of the saved
        /// row (and whether it replaced an existing one) in the same transaction.
        #[expect(clippy::too_many_arguments, reason = "the save's whole context")]
        fn save_authorized_connection_with_event<E>(
            tenant_id: &str, org_id: &str, user_id: &str, new_id: Uuid, now: Millis,
            build: impl FnOnce(Uuid) -> Result<AuthorizedConnection, E> + Send,
            event: impl FnOnce(&ConnectionRecord, bool) -> Option<NewEvent> + Send,
        ) -> Result<Result<SavedConnection, E>, StoreError>
            = save_authorized_connection(tenant_id, org_id, user_id, new_id, now, build, event);

        /// Inserts new connections in bulk, in one transaction (all or none), a few hundred
        /// rows per statement: for loading many connections at once (an import, the scale
        /// benchmark's million), where one [`Store::save_authorized_connection`] per row would
        /// take a transaction and an identity lock each. Unlike a save it neither updates nor
        /// serialises: a (tenant, org, user) that exists already fails the whole call.
        /// Returns how many rows were inserted.
        fn insert_connections(rows: &[NewConnection]) -> Result<u64, StoreError>;

        fn list_connections(tenant_id: &str) -> Result<Vec<ConnectionRecord>, StoreError>;

        /// One connection of one tenant (a connection id of another tenant is `None`).
        fn get_connection(tenant_id: &str, id: Uuid) -> Result<Option<ConnectionRecord>, StoreError>;

        /// Records the current access token's expiry, learned after the refresh was committed;
        /// only while the row still has `version` (a newer token wins). Returns whether it did.
        fn update_access_expiry(id: Uuid, version: i64, access_expires_at: Millis, expiry_assumed: bool)
            -> Result<bool, StoreError>;

        /// Deletes one connection of one tenant; returns whether a row was deleted.
        fn delete_connection(tenant_id: &str, id: Uuid) -> Result<bool, StoreError>
            = delete_connection(tenant_id, id, None);

        /// [`Self::delete_connection`], writing `event` in the same transaction when a row was
        /// deleted.
        fn delete_connection_with_event(tenant_id: &str, id: Uuid, event: Option<&NewEvent>)
            -> Result<bool, StoreError> = delete_connection(tenant_id, id, event);

        /// Ids of active connections of apps with usable credentials, last refreshed before
        /// `refreshed_before`, not backing off at `now` and not leased, oldest first, at most
        /// `limit`.
        fn connections_due_for_keepalive(refreshed_before: Millis, now: Millis, limit: i64)
            -> Result<Vec<(String, Uuid)>, StoreError>;

        /// The change feed: the database's clock now and, when `since` is given, every change
        /// recorded at or after it as `(connection, min_version)` (migration 0005; the
        /// triggers write it). Read by [`crate::broker`]'s feed follower.
        fn connection_changes(since: Option<Millis>) -> Result<ConnectionChanges, StoreError>;

        /// Forgets the feed's rows recorded before `before` (database time).
        fn prune_connection_changes(before: Millis) -> Result<u64, StoreError>;

        // --- the webhook outbox ----------------------------------------------------------

        /// Records an attempt's outcome, only while the claim is still ours; returns whether
        /// it was.
        fn finish_event(seq: i64, claim_id: &str, outcome: &DeliveryOutcome) -> Result<bool, StoreError>;

        fn outbox_stats() -> Result<OutboxStats, StoreError>;

        /// Deletes events written before `before` that were delivered or given up (pending
        /// ones stay). Returns how many.
        fn prune_events(before: Millis) -> Result<u64, StoreError>;

        // --- the audit trail -------------------------------------------------------------

        /// Adds the aggregates to the trail in one transaction.
        fn write_audit(records: &[AuditRecord]) -> Result<(), StoreError>;

        fn list_audit(query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError>;

        /// Deletes entries older than `before`. Returns how many.
        fn prune_audit(before: Millis) -> Result<u64, StoreError>;
    }

    // --- what does more than hand its arguments on -------------------------------------

    /// Takes the connection's refresh lease for `duration` (in the database's clock) when
    /// it is free or expired, in one short statement. `holder` names this replica for
    /// operators.
    pub async fn acquire_lease(
        &self,
        tenant_id: &str,
        id: Uuid,
        holder: &str,
        duration: Duration,
    ) -> Result<LeaseAttempt, StoreError> {
        let lease_id = Uuid::new_v4().to_string();
        let duration_ms = i64::try_from(duration.as_millis()).unwrap_or(i64::MAX);
        let acquired = dispatch!(self, s => s.acquire_lease(tenant_id, id, &lease_id, holder, duration_ms).await)?;
        if let Some(record) = acquired {
            return Ok(LeaseAttempt::Acquired(RefreshLease {
                store: self.clone(),
                lease_id,
                record,
            }));
        }
        Ok(match self.get_connection(tenant_id, id).await? {
            Some(record) => LeaseAttempt::Held(record),
            None => LeaseAttempt::NotFound,
        })
    }
    /// Claims up to `limit` due events (each the oldest unfinished of its ordering key) for
    /// `claim_for`, under `claim_id`.
    pub async fn claim_events(
        &self,
        claim_id: &str,
        now: Millis,
        claim_for: Duration,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let until = now.saturating_add(i64::try_from(claim_for.as_millis()).unwrap_or(i64::MAX));
        dispatch!(self, s => s.claim_events(claim_id, now, until, limit).await)
    }
}
