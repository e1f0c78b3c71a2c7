//! The SQL text, written once for both databases, and what the backends share around it:
//! the embedded-migration helpers and the classification of database errors.
//!
//! All SQL here uses `$N` placeholders, which SQLite accepts too (as named parameters). The
//! one statement that differs, taking a refresh lease, reads the database's clock; each
//! [`super::Backend`] builds it with [`acquire_lease_sql!`] and its own clock expression.

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::StoreError;

/// The columns a connection is read from (the row reader takes each by name).
macro_rules! connection_columns {
    () => {
        "id, tenant_id, org_id, user_id, login_url, instance_url, scopes, access_token_enc, \
         refresh_token_enc, issued_at, access_expires_at, expiry_assumed, status, last_error, \
         failure_count, next_attempt_at, created_at, updated_at, last_refreshed_at, version, \
         lease_id, username"
    };
}

/// A `SELECT` of whole `connections` rows, then `$rest` (the `WHERE` clause and what follows).
macro_rules! select_connections {
    ($rest:literal) => {
        concat!(
            "SELECT ",
            connection_columns!(),
            " FROM connections ",
            $rest
        )
    };
}

macro_rules! tenant_app_columns {
    () => {
        "tenant_id, login_url, consumer_key_enc, consumer_key_hint, consumer_secret_enc, \
         status, status_reason, credentials_version, created_at, updated_at"
    };
}

macro_rules! session_columns {
    () => {
        "state_hash, id, tenant_id, pkce_verifier_enc, return_to, created_at, expires_at, \
         consumed_at, connection_id"
    };
}

pub(super) const SELECT_ONE: &str = "SELECT 1";

/// The bookkeeping table of sqlx's migrator (`Migrator::DEFAULT.table_name`).
pub(super) const SELECT_APPLIED_MIGRATIONS: &str =
    "SELECT version, success, checksum FROM _sqlx_migrations";

// --- tenant apps ---------------------------------------------------------------------------

/// Creates the app unless the tenant has one (then no row comes back).
pub(super) const INSERT_TENANT_APP: &str = concat!(
    "INSERT INTO tenant_apps (tenant_id, login_url, consumer_key_enc, consumer_key_hint, \
     consumer_secret_enc, status, credentials_version, created_at, updated_at) \
     VALUES ($1, $2, $3, $4, $5, 'active', 1, $6, $7) ON CONFLICT (tenant_id) DO NOTHING \
     RETURNING ",
    tenant_app_columns!()
);

/// Replaces the app's credentials; `created_at` stays. New credentials are untested: the
/// status returns to `active` and the version grows, so that a refresh still running with
/// the old ones cannot mark the new ones invalid.
pub(super) const UPDATE_TENANT_APP: &str = concat!(
    "UPDATE tenant_apps SET login_url = $2, consumer_key_enc = $3, consumer_key_hint = $4, \
     consumer_secret_enc = $5, updated_at = $6, status = 'active', status_reason = NULL, \
     credentials_version = credentials_version + 1 WHERE tenant_id = $1 RETURNING ",
    tenant_app_columns!()
);

/// `invalid_client` / `invalid_client_id` on a refresh, for the credentials of version $2.
pub(super) const MARK_APP_CREDENTIALS_INVALID: &str = "UPDATE tenant_apps \
     SET status = 'credentials_invalid', status_reason = $3, updated_at = $4 \
     WHERE tenant_id = $1 AND credentials_version = $2";

pub(super) const SELECT_TENANT_APP: &str = concat!(
    "SELECT ",
    tenant_app_columns!(),
    " FROM tenant_apps WHERE tenant_id = $1"
);

pub(super) const DELETE_TENANT_APP: &str = "DELETE FROM tenant_apps WHERE tenant_id = $1";

// --- authorization sessions ----------------------------------------------------------------

pub(super) const INSERT_SESSION: &str = concat!(
    "INSERT INTO authorization_sessions (",
    session_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)"
);

/// Single use: of concurrent callers, only the first finds `consumed_at IS NULL` (the row is
/// locked by the first UPDATE; the others re-check it after that commits).
pub(super) const CONSUME_SESSION: &str = concat!(
    "UPDATE authorization_sessions SET consumed_at = $2 \
     WHERE state_hash = $1 AND consumed_at IS NULL RETURNING ",
    session_columns!()
);

pub(super) const SELECT_SESSION_CONSUMED_AT: &str =
    "SELECT consumed_at FROM authorization_sessions WHERE state_hash = $1";

pub(super) const DELETE_EXPIRED_SESSIONS: &str =
    "DELETE FROM authorization_sessions WHERE expires_at < $1";

// --- sealed values (key rotation) ----------------------------------------------------------

/// The page and compare-and-set statements of one sealed column, keyed by `$key`. The page
/// reads rows after `$1` whose value does not start with the `$2`-character prefix `$3`
/// (`$2 = 0`: every row), in key order, at most `$4`.
macro_rules! sealed_sql {
    ($table:literal, $key:literal, $column:literal) => {
        (
            concat!(
                "SELECT ",
                $key,
                " AS row_key, ",
                $column,
                " AS sealed FROM ",
                $table,
                " WHERE ",
                $key,
                " > $1 AND ($2 = 0 OR substr(",
                $column,
                ", 1, CAST($2 AS INTEGER)) <> $3) ORDER BY ",
                $key,
                " LIMIT $4"
            ),
            concat!(
                "UPDATE ",
                $table,
                " SET ",
                $column,
                " = $3 WHERE ",
                $key,
                " = $1 AND ",
                $column,
                " = $2"
            ),
        )
    };
}

/// (page, compare-and-set) for each [`super::SealedField`].
pub(super) const SEALED_APP_CONSUMER_KEY: (&str, &str) =
    sealed_sql!("tenant_apps", "tenant_id", "consumer_key_enc");
pub(super) const SEALED_APP_CONSUMER_SECRET: (&str, &str) =
    sealed_sql!("tenant_apps", "tenant_id", "consumer_secret_enc");
pub(super) const SEALED_CONNECTION_ACCESS_TOKEN: (&str, &str) =
    sealed_sql!("connections", "id", "access_token_enc");
pub(super) const SEALED_CONNECTION_REFRESH_TOKEN: (&str, &str) =
    sealed_sql!("connections", "id", "refresh_token_enc");
pub(super) const SEALED_SESSION_PKCE_VERIFIER: (&str, &str) =
    sealed_sql!("authorization_sessions", "id", "pkce_verifier_enc");

// --- connections ---------------------------------------------------------------------------

pub(super) const SELECT_CONNECTION_BY_IDENTITY: &str =
    select_connections!("WHERE tenant_id = $1 AND org_id = $2 AND user_id = $3");

/// Postgres: also waits for (and then blocks) a refresh commit on the row, so that the
/// row returned as `replaced` carries the latest refresh token.
const SELECT_CONNECTION_BY_IDENTITY_FOR_UPDATE: &str =
    select_connections!("WHERE tenant_id = $1 AND org_id = $2 AND user_id = $3 FOR UPDATE");

pub(super) const INSERT_AUTHORIZED_CONNECTION: &str = concat!(
    "INSERT INTO connections (id, tenant_id, org_id, user_id, login_url, instance_url, scopes, \
     access_token_enc, refresh_token_enc, issued_at, access_expires_at, expiry_assumed, status, \
     failure_count, version, created_at, updated_at, last_refreshed_at, username) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'active', 0, 1, $13, $13, $13, \
     $14) \
     RETURNING ",
    connection_columns!()
);

/// A re-authorization: new tokens, failure state cleared, `created_at` kept. A refresh
/// lease in flight is cleared: its holder presented the replaced family's token, and its
/// compare-and-set commit must not overwrite the new tokens. A username the new
/// authorization did not learn keeps the one known before.
pub(super) const UPDATE_AUTHORIZED_CONNECTION: &str = concat!(
    "UPDATE connections SET login_url = $2, instance_url = $3, scopes = $4, \
     access_token_enc = $5, refresh_token_enc = $6, issued_at = $7, access_expires_at = $8, \
     expiry_assumed = $9, status = 'active', last_error = NULL, failure_count = 0, \
     next_attempt_at = NULL, updated_at = $10, last_refreshed_at = $10, version = version + 1, \
     lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL, \
     username = COALESCE($11, username) \
     WHERE id = $1 RETURNING ",
    connection_columns!()
);

/// How many rows one statement of a bulk insert carries: at 14 parameters a row, 500 rows
/// stay well under SQLite's 32,766 and Postgres' 65,535 bound parameters per statement.
pub(super) const INSERT_CONNECTIONS_BATCH: usize = 500;

/// A bulk insert of `rows` new connections: the columns of [`INSERT_AUTHORIZED_CONNECTION`],
/// 14 parameters a row (`created_at` also stands for `updated_at` and `last_refreshed_at`).
/// The text is made of constants and numbers only.
pub(super) fn insert_connections_sql(rows: usize) -> String {
    const PER_ROW: usize = 14;
    let mut sql = String::from(
        "INSERT INTO connections (id, tenant_id, org_id, user_id, login_url, instance_url, \
         scopes, access_token_enc, refresh_token_enc, issued_at, access_expires_at, \
         expiry_assumed, status, failure_count, version, created_at, updated_at, \
         last_refreshed_at, username) VALUES ",
    );
    for row in 0..rows {
        let p = |column: usize| row * PER_ROW + column;
        if row > 0 {
            sql.push_str(", ");
        }
        sql.push('(');
        for column in 1..=12 {
            sql.push_str(&format!("${}, ", p(column)));
        }
        let (at, username) = (p(13), p(14));
        sql.push_str(&format!(
            "'active', 0, 1, ${at}, ${at}, ${at}, ${username})"
        ));
    }
    sql
}

pub(super) const LIST_CONNECTIONS: &str =
    select_connections!("WHERE tenant_id = $1 ORDER BY created_at, id");

pub(super) const SELECT_CONNECTION: &str = select_connections!("WHERE tenant_id = $1 AND id = $2");

pub(super) const DELETE_CONNECTION: &str =
    "DELETE FROM connections WHERE tenant_id = $1 AND id = $2";

/// The introspected expiry of the current access token; a no-op once the token changed.
pub(super) const UPDATE_ACCESS_EXPIRY: &str = "UPDATE connections SET access_expires_at = $3, \
     expiry_assumed = $4 WHERE id = $1 AND version = $2";

/// Apps whose credentials were refused are skipped (their refreshes would fail the same
/// way), and so are connections whose lease is taken (a refresh is under way).
pub(super) const CONNECTIONS_DUE_FOR_KEEPALIVE: &str = "SELECT c.tenant_id, c.id \
     FROM connections c JOIN tenant_apps a ON a.tenant_id = c.tenant_id \
     WHERE c.status = 'active' AND a.status = 'active' AND c.last_refreshed_at < $1 \
     AND (c.next_attempt_at IS NULL OR c.next_attempt_at <= $2) AND c.lease_id IS NULL \
     ORDER BY c.last_refreshed_at, c.id LIMIT $3";

// --- the refresh lease -----------------------------------------------------------------------
//
// Every statement below is one short autocommit statement. The lease's id is the fence: a
// commit writes only while the row still carries the id its holder got, and releases the
// lease in the same statement.

/// Takes the lease of one connection of one tenant when it is free or expired, for `$5` ms
/// of the database's clock (`$now`, an SQL expression of Unix milliseconds). The database's
/// clock, not the replicas': one clock for every replica, so that no replica's clock skew
/// can end another's lease early.
macro_rules! acquire_lease_sql {
    ($now:literal) => {
        concat!(
            "UPDATE connections SET lease_id = $3, lease_holder = $4, lease_expires_at = ",
            $now,
            " + $5 WHERE tenant_id = $1 AND id = $2 AND (lease_id IS NULL OR lease_expires_at <= ",
            $now,
            ") RETURNING ",
            connection_columns!()
        )
    };
}

/// Postgres: `clock_timestamp()`, the time of the statement (not of the transaction).
const ACQUIRE_LEASE_POSTGRES: &str =
    acquire_lease_sql!("(EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT");

/// SQLite: `julianday('now')`, the process's clock (SQLite serves one replica).
const ACQUIRE_LEASE_SQLITE: &str =
    acquire_lease_sql!("CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER)");

/// Postgres: the database's clock, as the lease and the change feed's triggers read it.
const SELECT_NOW_POSTGRES: &str =
    "SELECT (EXTRACT(EPOCH FROM clock_timestamp()) * 1000)::BIGINT AS now";

/// SQLite: the same, from `julianday('now')`.
const SELECT_NOW_SQLITE: &str =
    "SELECT CAST((julianday('now') - 2440587.5) * 86400000.0 AS INTEGER) AS now";

/// The change feed (migration 0005): what changed at or after `$1`, database time.
pub(super) const CONNECTION_CHANGES_SINCE: &str =
    "SELECT connection_id, min_version FROM connection_changes WHERE changed_at >= $1";

pub(super) const PRUNE_CONNECTION_CHANGES: &str =
    "DELETE FROM connection_changes WHERE changed_at < $1";

/// A successful refresh: the new tokens, the failure state cleared, the lease released.
/// `scopes` stays when the response had none.
pub(super) const COMMIT_REFRESHED: &str = concat!(
    "UPDATE connections SET instance_url = $3, scopes = COALESCE($4, scopes), \
     access_token_enc = $5, refresh_token_enc = $6, issued_at = $7, access_expires_at = $8, \
     expiry_assumed = $9, last_refreshed_at = $10, updated_at = $10, last_error = NULL, \
     failure_count = 0, next_attempt_at = NULL, version = version + 1, \
     lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_id = $2 RETURNING ",
    connection_columns!()
);

/// `invalid_grant` and the like: the tokens are dead, so the token material (and
/// `version`) stays as is.
pub(super) const COMMIT_NEEDS_REAUTHORIZATION: &str = concat!(
    "UPDATE connections SET status = 'needs_reauthorization', last_error = $3, updated_at = $4, \
     lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_id = $2 RETURNING ",
    connection_columns!()
);

/// A transient failure: status and refresh token stay, the back-off grows.
pub(super) const COMMIT_TRANSIENT_FAILURE: &str = concat!(
    "UPDATE connections SET last_error = $3, failure_count = $4, next_attempt_at = $5, \
     updated_at = $6, lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_id = $2 RETURNING ",
    connection_columns!()
);

/// An answer with a new refresh token that failed a check: the new refresh token is kept
/// (Salesforce has invalidated the old one), the access token stays, the back-off grows.
pub(super) const COMMIT_UNVERIFIED_ROTATION: &str = concat!(
    "UPDATE connections SET refresh_token_enc = $3, last_error = $4, failure_count = $5, \
     next_attempt_at = $6, updated_at = $7, version = version + 1, \
     lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_id = $2 RETURNING ",
    connection_columns!()
);

/// Gives the lease back unchanged (another holder had already refreshed).
pub(super) const RELEASE_LEASE: &str = "UPDATE connections \
     SET lease_id = NULL, lease_holder = NULL, lease_expires_at = NULL \
     WHERE id = $1 AND lease_id = $2";

// --- the webhook outbox ----------------------------------------------------------------------
//
// An event row is inserted in the same transaction as the state change it reports. Workers
// on every replica claim due rows with a claim that expires (a worker that dies releases
// nothing; its claims simply end), and finish them with a compare-and-set on the claim id.

pub(super) const INSERT_EVENT: &str = "INSERT INTO webhook_events (id, tenant_id, ordering_key, \
     event_type, payload, created_at, next_attempt_at, attempts) \
     VALUES ($1, $2, $3, $4, $5, $6, $6, 0)";

/// Claims up to `$4` due events, each the oldest unfinished one of its ordering key (so a
/// connection's events go out in order, one at a time), until `$3`. `$1` is the claim id,
/// `$2` now. `$lock` is Postgres's `FOR UPDATE SKIP LOCKED` (two replicas claiming at once
/// skip each other's rows instead of waiting); SQLite has one writer and needs none.
macro_rules! claim_events_sql {
    ($lock:literal) => {
        concat!(
            "UPDATE webhook_events SET claim_id = $1, claim_expires_at = $3 WHERE seq IN (\
             SELECT e.seq FROM webhook_events e \
             WHERE e.delivered_at IS NULL AND e.failed_at IS NULL AND e.next_attempt_at <= $2 \
             AND (e.claim_id IS NULL OR e.claim_expires_at <= $2) \
             AND NOT EXISTS (SELECT 1 FROM webhook_events p WHERE p.ordering_key = e.ordering_key \
             AND p.seq < e.seq AND p.delivered_at IS NULL AND p.failed_at IS NULL) \
             ORDER BY e.seq LIMIT $4",
            $lock,
            ") RETURNING seq, id, event_type, payload, created_at, attempts"
        )
    };
}

const CLAIM_EVENTS_POSTGRES: &str = claim_events_sql!(" FOR UPDATE SKIP LOCKED");
const CLAIM_EVENTS_SQLITE: &str = claim_events_sql!("");

pub(super) const MARK_EVENT_DELIVERED: &str = "UPDATE webhook_events SET delivered_at = $3, \
     attempts = attempts + 1, last_error = NULL, claim_id = NULL, claim_expires_at = NULL \
     WHERE seq = $1 AND claim_id = $2";

pub(super) const MARK_EVENT_RETRY: &str = "UPDATE webhook_events SET next_attempt_at = $3, \
     last_error = $4, attempts = attempts + 1, claim_id = NULL, claim_expires_at = NULL \
     WHERE seq = $1 AND claim_id = $2";

pub(super) const MARK_EVENT_GIVEN_UP: &str = "UPDATE webhook_events SET failed_at = $3, \
     last_error = $4, attempts = attempts + 1, claim_id = NULL, claim_expires_at = NULL \
     WHERE seq = $1 AND claim_id = $2";

pub(super) const OUTBOX_STATS: &str = "SELECT COUNT(*) AS pending, MIN(created_at) AS oldest \
     FROM webhook_events WHERE delivered_at IS NULL AND failed_at IS NULL";

/// Finished events (delivered or given up) written before `$1`; pending ones stay, however
/// old. By `created_at`, which is indexed.
pub(super) const PRUNE_EVENTS: &str = "DELETE FROM webhook_events WHERE created_at < $1 \
     AND (delivered_at IS NOT NULL OR failed_at IS NOT NULL)";

// --- state changes that write an event --------------------------------------------------------

/// The part of a PUT that tells whether it fixes refused credentials (then
/// `app.credentials_valid` is written): changes only an app marked invalid.
pub(super) const CLEAR_APP_CREDENTIALS_INVALID: &str = "UPDATE tenant_apps \
     SET status = 'active', status_reason = NULL WHERE tenant_id = $1 \
     AND status = 'credentials_invalid'";

/// Like [`MARK_APP_CREDENTIALS_INVALID`], but only the change from `active`: the one that
/// writes `app.credentials_invalid` (refusals of other refreshes in flight write none).
pub(super) const MARK_APP_CREDENTIALS_INVALID_FROM_ACTIVE: &str = "UPDATE tenant_apps \
     SET status = 'credentials_invalid', status_reason = $3, updated_at = $4 \
     WHERE tenant_id = $1 AND credentials_version = $2 AND status = 'active'";

// --- the audit trail --------------------------------------------------------------------------

/// Adds an aggregate to its entry: a later flush (or another replica) reporting the same
/// (tenant, minute, actor, action, connection, request) adds its count.
pub(super) const UPSERT_AUDIT: &str = "INSERT INTO audit_entries (tenant_id, at, actor, action, \
     connection_id, request_id, count) VALUES ($1, $2, $3, $4, $5, $6, $7) \
     ON CONFLICT (tenant_id, at, actor, action, connection_id, request_id) \
     DO UPDATE SET count = audit_entries.count + excluded.count";

/// One page of a tenant's trail in (at, id) order, after the cursor (`$5`, `$6`); `$2` is a
/// connection id or '' for all.
pub(super) const LIST_AUDIT: &str = "SELECT id, at, actor, action, connection_id, request_id, \
     count FROM audit_entries WHERE tenant_id = $1 AND ($2 = '' OR connection_id = $2) \
     AND at >= $3 AND at < $4 AND (at > $5 OR (at = $5 AND id > $6)) \
     ORDER BY at, id LIMIT $7";

pub(super) const PRUNE_AUDIT: &str = "DELETE FROM audit_entries WHERE at < $1";

// --- migrations ----------------------------------------------------------------------------

/// A migrator over migrations embedded in the binary (no `migrate!` macro, no folder at run
/// time). `migrations` is `(version, description, sql)`.
pub(super) fn embedded_migrator(migrations: &[(i64, &'static str, &'static str)]) -> Migrator {
    Migrator::with_migrations(
        migrations
            .iter()
            .map(|&(version, description, sql)| {
                Migration::new(
                    version,
                    Cow::Borrowed(description),
                    MigrationType::Simple,
                    sql.into_sql_str(),
                    false,
                )
            })
            .collect(),
    )
}

/// Readiness: every embedded migration is recorded as applied, successfully, with the same
/// checksum. `applied` is `(version, success, checksum)` from the migrations table.
pub(super) fn check_applied(
    migrator: &Migrator,
    applied: &[(i64, bool, Vec<u8>)],
) -> Result<(), StoreError> {
    use sqlx::migrate::MigrateError;
    for migration in migrator.iter() {
        match applied.iter().find(|(v, _, _)| *v == migration.version) {
            None => {
                return Err(StoreError::Migration(MigrateError::Source(
                    format!(
                        "migration {} ({}) is not applied",
                        migration.version, migration.description
                    )
                    .into(),
                )));
            }
            Some((version, false, _)) => {
                return Err(StoreError::Migration(MigrateError::Dirty(*version)));
            }
            Some((version, true, checksum)) if checksum.as_slice() != &*migration.checksum => {
                return Err(StoreError::Migration(MigrateError::VersionMismatch(
                    *version,
                )));
            }
            Some(_) => {}
        }
    }
    Ok(())
}

// --- errors --------------------------------------------------------------------------------

/// Maps a sqlx error. A lock wait that ran out (SQLite's busy timeout on its single write
/// lock, a Postgres `lock_timeout`) means the database did not answer in time:
/// `Unavailable`, like a pool timeout or a connection that died.
pub(super) fn map_err<DB: super::Backend>(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::Protocol(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
        error if error.as_database_error().is_some_and(DB::is_unavailable) => {
            StoreError::Unavailable(error)
        }
        error => StoreError::Database(error),
    }
}

/// Opens a pool of at most `max_connections` connections made with `connect`, eagerly (a
/// wrong host, password or path shows at start-up, not on the first request); a statement
/// waits at most `acquire_timeout` for a connection.
pub(super) async fn open_pool<DB: super::Backend>(
    connect: <DB::Connection as sqlx::Connection>::Options,
    max_connections: u32,
    acquire_timeout: std::time::Duration,
) -> Result<sqlx::Pool<DB>, StoreError> {
    sqlx::pool::PoolOptions::<DB>::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        .connect_with(connect)
        .await
        .map_err(map_err::<DB>)
}

/// A bad database URL, reported without echoing the URL (it may carry a password).
pub(super) fn invalid_url(backend: &str, error: &sqlx::Error) -> StoreError {
    // The parse errors of sqlx and `url` name the offending part, never the whole URL; this
    // keeps only their message and makes sure it cannot contain the URL either way.
    let reason = match error {
        sqlx::Error::Configuration(source) => source.to_string(),
        other => other.to_string(),
    };
    StoreError::Database(sqlx::Error::Configuration(
        format!("invalid {backend} database URL: {reason}").into(),
    ))
}

// --- what differs per database ---------------------------------------------------------------

/// The statements whose text differs between the two databases; each backend names its own
/// ([`super::Backend::SQL`]).
pub struct Dialect {
    /// Takes a refresh lease, reading the database's own clock.
    pub acquire_lease: &'static str,
    /// Reads the (tenant, org, user) row inside a save's transaction.
    pub select_for_save: &'static str,
    /// Claims due webhook events.
    pub claim_events: &'static str,
    /// Reads the database's clock (Unix milliseconds): the clock of the change feed.
    pub select_now: &'static str,
}

pub(super) const POSTGRES: Dialect = Dialect {
    acquire_lease: ACQUIRE_LEASE_POSTGRES,
    select_for_save: SELECT_CONNECTION_BY_IDENTITY_FOR_UPDATE,
    claim_events: CLAIM_EVENTS_POSTGRES,
    select_now: SELECT_NOW_POSTGRES,
};

pub(super) const SQLITE: Dialect = Dialect {
    acquire_lease: ACQUIRE_LEASE_SQLITE,
    select_for_save: SELECT_CONNECTION_BY_IDENTITY,
    claim_events: CLAIM_EVENTS_SQLITE,
    select_now: SELECT_NOW_SQLITE,
};
