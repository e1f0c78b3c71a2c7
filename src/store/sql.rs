//! What the two backends share: the SQL text, the error classification, and (through
//! [`store_methods!`]) the bodies of every method that is the same on both.
//!
//! The backends differ only in how they connect, which migrations they embed, how a UUID is
//! bound and read (Postgres `UUID`, SQLite hyphenated `TEXT`) and how they lock. Each backend
//! module defines those pieces under fixed names (`id_param`, `read_id`, `migrator`,
//! `begin_save`, `Db`) and then invokes [`store_methods!`], which stamps out the rest.
//!
//! All SQL here uses `$N` placeholders, which SQLite accepts too (as named parameters).

use std::borrow::Cow;

use sqlx::SqlSafeStr;
use sqlx::migrate::{Migration, MigrationType, Migrator};

use super::StoreError;

/// The columns of `connections`, in the order the row readers expect them.
macro_rules! connection_columns {
    () => {
        "id, tenant_id, org_id, user_id, login_url, instance_url, scopes, access_token_enc, \
         refresh_token_enc, issued_at, access_expires_at, expiry_assumed, status, last_error, \
         failure_count, next_attempt_at, created_at, updated_at, last_refreshed_at, version"
    };
}

macro_rules! tenant_app_columns {
    () => {
        "tenant_id, login_url, consumer_key_enc, consumer_key_hint, consumer_secret_enc, \
         created_at, updated_at"
    };
}

macro_rules! session_columns {
    () => {
        "state_hash, id, tenant_id, pkce_verifier_enc, return_to, created_at, expires_at, \
         consumed_at"
    };
}

pub(super) const SELECT_ONE: &str = "SELECT 1";

/// The bookkeeping table of sqlx's migrator (`Migrator::DEFAULT.table_name`).
pub(super) const SELECT_APPLIED_MIGRATIONS: &str =
    "SELECT version, success, checksum FROM _sqlx_migrations";

// --- tenant apps ---------------------------------------------------------------------------

/// Creates the app unless the tenant has one (then no row comes back).
pub(super) const INSERT_TENANT_APP: &str = concat!(
    "INSERT INTO tenant_apps (",
    tenant_app_columns!(),
    ") VALUES ($1, $2, $3, $4, $5, $6, $7) ON CONFLICT (tenant_id) DO NOTHING RETURNING ",
    tenant_app_columns!()
);

/// Replaces the app's credentials; `created_at` stays.
pub(super) const UPDATE_TENANT_APP: &str = concat!(
    "UPDATE tenant_apps SET login_url = $2, consumer_key_enc = $3, consumer_key_hint = $4, \
     consumer_secret_enc = $5, updated_at = $6 WHERE tenant_id = $1 RETURNING ",
    tenant_app_columns!()
);

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
    ") VALUES ($1, $2, $3, $4, $5, $6, $7, $8)"
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

// --- connections ---------------------------------------------------------------------------

pub(super) const SELECT_CONNECTION_BY_IDENTITY: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE tenant_id = $1 AND org_id = $2 AND user_id = $3"
);

/// Postgres: also waits for (and then blocks) a refresh holding the row, so that the row
/// returned as `replaced` carries the latest refresh token.
pub(super) const SELECT_CONNECTION_BY_IDENTITY_FOR_UPDATE: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE tenant_id = $1 AND org_id = $2 AND user_id = $3 FOR UPDATE"
);

pub(super) const INSERT_AUTHORIZED_CONNECTION: &str = concat!(
    "INSERT INTO connections (id, tenant_id, org_id, user_id, login_url, instance_url, scopes, \
     access_token_enc, refresh_token_enc, issued_at, access_expires_at, expiry_assumed, status, \
     failure_count, version, created_at, updated_at, last_refreshed_at) \
     VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, 'active', 0, 1, $13, $13, $13) \
     RETURNING ",
    connection_columns!()
);

/// A re-authorization: new tokens, failure state cleared, `created_at` kept.
pub(super) const UPDATE_AUTHORIZED_CONNECTION: &str = concat!(
    "UPDATE connections SET login_url = $2, instance_url = $3, scopes = $4, \
     access_token_enc = $5, refresh_token_enc = $6, issued_at = $7, access_expires_at = $8, \
     expiry_assumed = $9, status = 'active', last_error = NULL, failure_count = 0, \
     next_attempt_at = NULL, updated_at = $10, last_refreshed_at = $10, version = version + 1 \
     WHERE id = $1 RETURNING ",
    connection_columns!()
);

pub(super) const LIST_CONNECTIONS: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE tenant_id = $1 ORDER BY created_at, id"
);

pub(super) const SELECT_CONNECTION: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE tenant_id = $1 AND id = $2"
);

/// Postgres: the refresh lock (waits under `lock_timeout`).
pub(super) const SELECT_CONNECTION_FOR_UPDATE: &str = concat!(
    "SELECT ",
    connection_columns!(),
    " FROM connections WHERE tenant_id = $1 AND id = $2 FOR UPDATE"
);

pub(super) const DELETE_CONNECTION: &str =
    "DELETE FROM connections WHERE tenant_id = $1 AND id = $2";

/// The introspected expiry of the current access token; a no-op once the token changed.
pub(super) const UPDATE_ACCESS_EXPIRY: &str = "UPDATE connections SET access_expires_at = $3, \
     expiry_assumed = $4 WHERE id = $1 AND version = $2";

pub(super) const CONNECTIONS_DUE_FOR_KEEPALIVE: &str = "SELECT tenant_id, id FROM connections \
     WHERE status = 'active' AND last_refreshed_at < $1 \
     AND (next_attempt_at IS NULL OR next_attempt_at <= $2) \
     ORDER BY last_refreshed_at, id LIMIT $3";

/// A successful refresh. `version = $10` re-states what the lock guarantees (nobody else
/// changed the row since it was read); `scopes` stays when the response had none.
pub(super) const COMMIT_REFRESHED: &str = concat!(
    "UPDATE connections SET instance_url = $2, scopes = COALESCE($3, scopes), \
     access_token_enc = $4, refresh_token_enc = $5, issued_at = $6, access_expires_at = $7, \
     expiry_assumed = $8, last_refreshed_at = $9, updated_at = $9, last_error = NULL, \
     failure_count = 0, next_attempt_at = NULL, version = version + 1 \
     WHERE id = $1 AND version = $10 RETURNING ",
    connection_columns!()
);

/// `invalid_grant`: the tokens are dead, so the token material (and `version`) stays as is.
pub(super) const COMMIT_NEEDS_REAUTHORIZATION: &str = concat!(
    "UPDATE connections SET status = 'needs_reauthorization', last_error = $2, updated_at = $3 \
     WHERE id = $1 AND version = $4 RETURNING ",
    connection_columns!()
);

/// A transient failure: status and refresh token stay, the back-off grows.
pub(super) const COMMIT_TRANSIENT_FAILURE: &str = concat!(
    "UPDATE connections SET last_error = $2, failure_count = $3, next_attempt_at = $4, \
     updated_at = $5 WHERE id = $1 AND version = $6 RETURNING ",
    connection_columns!()
);

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

/// Postgres SQLSTATE `lock_not_available`: `lock_timeout` expired (or `NOWAIT`).
const PG_LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLite primary result codes `SQLITE_BUSY` and `SQLITE_LOCKED` (extended codes keep them in
/// their low byte).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

/// Whether the error is "someone else holds the lock and the wait ran out".
fn is_lock_wait_exceeded(error: &sqlx::Error) -> bool {
    let Some(db) = error.as_database_error() else {
        return false;
    };
    if db
        .try_downcast_ref::<sqlx::postgres::PgDatabaseError>()
        .is_some()
    {
        return db.code().as_deref() == Some(PG_LOCK_NOT_AVAILABLE);
    }
    if db.try_downcast_ref::<sqlx::sqlite::SqliteError>().is_some() {
        return db
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED));
    }
    false
}

/// Maps a sqlx error met outside of taking a refresh lock.
///
/// A lock wait that ran out here (SQLite's busy timeout on its single write lock) means the
/// database did not answer in time: `Unavailable`, like a pool timeout.
pub(super) fn map_err(error: sqlx::Error) -> StoreError {
    match error {
        sqlx::Error::PoolTimedOut
        | sqlx::Error::PoolClosed
        | sqlx::Error::Io(_)
        | sqlx::Error::Tls(_)
        | sqlx::Error::WorkerCrashed => StoreError::Unavailable(error),
        error if is_lock_wait_exceeded(&error) => StoreError::Unavailable(error),
        error => StoreError::Database(error),
    }
}

/// Maps a sqlx error met while taking a connection's refresh lock: an exceeded lock wait is
/// a [`StoreError::LockTimeout`].
pub(super) fn map_lock_err(error: sqlx::Error) -> StoreError {
    if is_lock_wait_exceeded(&error) {
        StoreError::LockTimeout
    } else {
        map_err(error)
    }
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

/// Stamps out the methods both backends share. Expects in scope, at the invocation site:
/// `Db` (the sqlx database type), `id_param(Uuid)` (the bind value of an id),
/// `read_id(&Row, &str)` (an id column), `migrator()`, and on the store type
/// `pool: sqlx::Pool<Db>` and `begin_save(&self, tenant, org, user)`, which opens the
/// transaction that serialises saves of one (tenant, org, user) and reads its row.
macro_rules! store_methods {
    ($Store:ident, $Lock:ident) => {
        fn tenant_app_from_row(
            row: &<Db as sqlx::Database>::Row,
        ) -> Result<$crate::store::TenantAppRecord, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::TenantAppRecord {
                tenant_id: row.try_get("tenant_id")?,
                login_url: row.try_get("login_url")?,
                consumer_key_enc: row.try_get("consumer_key_enc")?,
                consumer_key_hint: row.try_get("consumer_key_hint")?,
                consumer_secret_enc: row.try_get("consumer_secret_enc")?,
                created_at: row.try_get("created_at")?,
                updated_at: row.try_get("updated_at")?,
            })
        }

        fn session_from_row(
            row: &<Db as sqlx::Database>::Row,
        ) -> Result<$crate::store::AuthorizationSession, sqlx::Error> {
            use sqlx::Row as _;
            Ok($crate::store::AuthorizationSession {
                state_hash: row.try_get("state_hash")?,
                id: read_id(row, "id")?,
                tenant_id: row.try_get("tenant_id")?,
                pkce_verifier_enc: row.try_get("pkce_verifier_enc")?,
                return_to: row.try_get("return_to")?,
                created_at: row.try_get("created_at")?,
                expires_at: row.try_get("expires_at")?,
                consumed_at: row.try_get("consumed_at")?,
            })
        }

        fn connection_from_row(
            row: &<Db as sqlx::Database>::Row,
        ) -> Result<$crate::store::ConnectionRecord, $crate::store::StoreError> {
            use sqlx::Row as _;
            let map = $crate::store::sql::map_err;
            let status: String = row.try_get("status").map_err(map)?;
            let status = $crate::store::ConnectionStatus::parse(&status).ok_or_else(|| {
                $crate::store::StoreError::Corrupt(format!("unknown connection status {status:?}"))
            })?;
            Ok($crate::store::ConnectionRecord {
                id: read_id(row, "id").map_err(map)?,
                tenant_id: row.try_get("tenant_id").map_err(map)?,
                org_id: row.try_get("org_id").map_err(map)?,
                user_id: row.try_get("user_id").map_err(map)?,
                login_url: row.try_get("login_url").map_err(map)?,
                instance_url: row.try_get("instance_url").map_err(map)?,
                scopes: row.try_get("scopes").map_err(map)?,
                access_token_enc: row.try_get("access_token_enc").map_err(map)?,
                refresh_token_enc: row.try_get("refresh_token_enc").map_err(map)?,
                issued_at: row.try_get("issued_at").map_err(map)?,
                access_expires_at: row.try_get("access_expires_at").map_err(map)?,
                expiry_assumed: row.try_get("expiry_assumed").map_err(map)?,
                status,
                last_error: row.try_get("last_error").map_err(map)?,
                failure_count: row.try_get("failure_count").map_err(map)?,
                next_attempt_at: row.try_get("next_attempt_at").map_err(map)?,
                created_at: row.try_get("created_at").map_err(map)?,
                updated_at: row.try_get("updated_at").map_err(map)?,
                last_refreshed_at: row.try_get("last_refreshed_at").map_err(map)?,
                version: row.try_get("version").map_err(map)?,
            })
        }

        impl $Store {
            /// Applies the embedded migrations (idempotent; sqlx serialises concurrent
            /// migrators with a database lock).
            pub async fn migrate(&self) -> Result<(), $crate::store::StoreError> {
                migrator().run(&self.pool).await?;
                Ok(())
            }

            /// The database answers and every embedded migration is applied.
            pub async fn check_ready(&self) -> Result<(), $crate::store::StoreError> {
                use sqlx::Row as _;
                let map = $crate::store::sql::map_err;
                sqlx::query($crate::store::sql::SELECT_ONE)
                    .execute(&self.pool)
                    .await
                    .map_err(map)?;
                let rows = sqlx::query($crate::store::sql::SELECT_APPLIED_MIGRATIONS)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(|error| match map(error) {
                        // No migrations table: never migrated.
                        $crate::store::StoreError::Database(error) => {
                            $crate::store::StoreError::Migration(
                                sqlx::migrate::MigrateError::Execute(error),
                            )
                        }
                        other => other,
                    })?;
                let applied = rows
                    .iter()
                    .map(|row| {
                        Ok((
                            row.try_get::<i64, _>("version")?,
                            row.try_get::<bool, _>("success")?,
                            row.try_get::<Vec<u8>, _>("checksum")?,
                        ))
                    })
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(map)?;
                $crate::store::sql::check_applied(&migrator(), &applied)
            }

            pub async fn close(&self) {
                self.pool.close().await;
            }

            pub async fn put_tenant_app(
                &self,
                app: &$crate::store::TenantAppRecord,
            ) -> Result<($crate::store::TenantAppRecord, bool), $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                // Insert-or-update in two statements so that the caller learns which one
                // happened; the loop covers a delete racing between the two.
                for _ in 0..3 {
                    let inserted = sqlx::query($crate::store::sql::INSERT_TENANT_APP)
                        .bind(&app.tenant_id)
                        .bind(&app.login_url)
                        .bind(&app.consumer_key_enc)
                        .bind(&app.consumer_key_hint)
                        .bind(&app.consumer_secret_enc)
                        .bind(app.created_at)
                        .bind(app.updated_at)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map)?;
                    if let Some(row) = inserted {
                        return Ok((tenant_app_from_row(&row).map_err(map)?, true));
                    }
                    let updated = sqlx::query($crate::store::sql::UPDATE_TENANT_APP)
                        .bind(&app.tenant_id)
                        .bind(&app.login_url)
                        .bind(&app.consumer_key_enc)
                        .bind(&app.consumer_key_hint)
                        .bind(&app.consumer_secret_enc)
                        .bind(app.updated_at)
                        .fetch_optional(&self.pool)
                        .await
                        .map_err(map)?;
                    if let Some(row) = updated {
                        return Ok((tenant_app_from_row(&row).map_err(map)?, false));
                    }
                }
                Err($crate::store::StoreError::Database(sqlx::Error::RowNotFound))
            }

            pub async fn get_tenant_app(
                &self,
                tenant_id: &str,
            ) -> Result<Option<$crate::store::TenantAppRecord>, $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                let row = sqlx::query($crate::store::sql::SELECT_TENANT_APP)
                    .bind(tenant_id)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map)?;
                row.as_ref()
                    .map(tenant_app_from_row)
                    .transpose()
                    .map_err(map)
            }

            pub async fn delete_tenant_app(
                &self,
                tenant_id: &str,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::sql::DELETE_TENANT_APP)
                    .bind(tenant_id)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok(done.rows_affected() > 0)
            }

            pub async fn insert_authorization_session(
                &self,
                session: &$crate::store::AuthorizationSession,
            ) -> Result<(), $crate::store::StoreError> {
                sqlx::query($crate::store::sql::INSERT_SESSION)
                    .bind(&session.state_hash)
                    .bind(id_param(session.id))
                    .bind(&session.tenant_id)
                    .bind(&session.pkce_verifier_enc)
                    .bind(&session.return_to)
                    .bind(session.created_at)
                    .bind(session.expires_at)
                    .bind(session.consumed_at)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok(())
            }

            pub async fn consume_authorization_session(
                &self,
                state_hash: &[u8],
                now: $crate::store::Millis,
            ) -> Result<$crate::store::ConsumeOutcome, $crate::store::StoreError> {
                use sqlx::Row as _;
                let map = $crate::store::sql::map_err;
                // One statement marks it consumed and reads it: atomic single use.
                let consumed = sqlx::query($crate::store::sql::CONSUME_SESSION)
                    .bind(state_hash)
                    .bind(now)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map)?;
                if let Some(row) = consumed {
                    let session = session_from_row(&row).map_err(map)?;
                    return Ok(if session.expires_at <= now {
                        $crate::store::ConsumeOutcome::Expired
                    } else {
                        $crate::store::ConsumeOutcome::Consumed(session)
                    });
                }
                let existing = sqlx::query($crate::store::sql::SELECT_SESSION_CONSUMED_AT)
                    .bind(state_hash)
                    .fetch_optional(&self.pool)
                    .await
                    .map_err(map)?;
                match existing {
                    None => Ok($crate::store::ConsumeOutcome::Unknown),
                    Some(row) => match row.try_get::<Option<i64>, _>("consumed_at").map_err(map)? {
                        Some(_) => Ok($crate::store::ConsumeOutcome::AlreadyConsumed),
                        // Unconsumed yet missed by the UPDATE: cannot happen, as the UPDATE
                        // saw the latest committed row. Refuse rather than guess.
                        None => Err($crate::store::StoreError::Corrupt(
                            "authorization session neither consumable nor consumed".into(),
                        )),
                    },
                }
            }

            pub async fn delete_expired_authorization_sessions(
                &self,
                before: $crate::store::Millis,
            ) -> Result<u64, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::sql::DELETE_EXPIRED_SESSIONS)
                    .bind(before)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok(done.rows_affected())
            }

            #[allow(clippy::too_many_arguments, reason = "mirrors Store::save_authorized_connection")]
            pub async fn save_authorized_connection<E>(
                &self,
                tenant_id: &str,
                org_id: &str,
                user_id: &str,
                new_id: uuid::Uuid,
                now: $crate::store::Millis,
                build: impl FnOnce(uuid::Uuid) -> Result<$crate::store::AuthorizedConnection, E> + Send,
            ) -> Result<Result<$crate::store::SavedConnection, E>, $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                // From here until commit no other save of this (tenant, org, user) can run,
                // so the id handed to `build` is the id the row ends up with: the tokens'
                // associated data names the right row.
                let (mut tx, existing) = self.begin_save(tenant_id, org_id, user_id).await?;
                let id = existing.as_ref().map_or(new_id, |row| row.id);
                let new = match build(id) {
                    Ok(new) => new,
                    Err(error) => {
                        tx.rollback().await.map_err(map)?;
                        return Ok(Err(error));
                    }
                };
                let row = if existing.is_some() {
                    sqlx::query($crate::store::sql::UPDATE_AUTHORIZED_CONNECTION)
                        .bind(id_param(id))
                        .bind(&new.login_url)
                        .bind(&new.instance_url)
                        .bind(&new.scopes)
                        .bind(&new.access_token_enc)
                        .bind(&new.refresh_token_enc)
                        .bind(new.issued_at)
                        .bind(new.access_expires_at)
                        .bind(new.expiry_assumed)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map)?
                } else {
                    sqlx::query($crate::store::sql::INSERT_AUTHORIZED_CONNECTION)
                        .bind(id_param(id))
                        .bind(tenant_id)
                        .bind(org_id)
                        .bind(user_id)
                        .bind(&new.login_url)
                        .bind(&new.instance_url)
                        .bind(&new.scopes)
                        .bind(&new.access_token_enc)
                        .bind(&new.refresh_token_enc)
                        .bind(new.issued_at)
                        .bind(new.access_expires_at)
                        .bind(new.expiry_assumed)
                        .bind(now)
                        .fetch_one(&mut *tx)
                        .await
                        .map_err(map)?
                };
                let connection = connection_from_row(&row)?;
                tx.commit().await.map_err(map)?;
                Ok(Ok($crate::store::SavedConnection {
                    connection,
                    replaced: existing,
                }))
            }

            pub async fn list_connections(
                &self,
                tenant_id: &str,
            ) -> Result<Vec<$crate::store::ConnectionRecord>, $crate::store::StoreError> {
                let rows = sqlx::query($crate::store::sql::LIST_CONNECTIONS)
                    .bind(tenant_id)
                    .fetch_all(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                rows.iter().map(connection_from_row).collect()
            }

            pub async fn get_connection(
                &self,
                tenant_id: &str,
                id: uuid::Uuid,
            ) -> Result<Option<$crate::store::ConnectionRecord>, $crate::store::StoreError> {
                let row = sqlx::query($crate::store::sql::SELECT_CONNECTION)
                    .bind(tenant_id)
                    .bind(id_param(id))
                    .fetch_optional(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                row.as_ref().map(connection_from_row).transpose()
            }

            pub async fn update_access_expiry(
                &self,
                id: uuid::Uuid,
                version: i64,
                access_expires_at: $crate::store::Millis,
                expiry_assumed: bool,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::sql::UPDATE_ACCESS_EXPIRY)
                    .bind(id_param(id))
                    .bind(version)
                    .bind(access_expires_at)
                    .bind(expiry_assumed)
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok(done.rows_affected() > 0)
            }

            pub async fn delete_connection(
                &self,
                tenant_id: &str,
                id: uuid::Uuid,
            ) -> Result<bool, $crate::store::StoreError> {
                let done = sqlx::query($crate::store::sql::DELETE_CONNECTION)
                    .bind(tenant_id)
                    .bind(id_param(id))
                    .execute(&self.pool)
                    .await
                    .map_err($crate::store::sql::map_err)?;
                Ok(done.rows_affected() > 0)
            }

            pub async fn connections_due_for_keepalive(
                &self,
                refreshed_before: $crate::store::Millis,
                now: $crate::store::Millis,
                limit: i64,
            ) -> Result<Vec<(String, uuid::Uuid)>, $crate::store::StoreError> {
                use sqlx::Row as _;
                let map = $crate::store::sql::map_err;
                let rows = sqlx::query($crate::store::sql::CONNECTIONS_DUE_FOR_KEEPALIVE)
                    .bind(refreshed_before)
                    .bind(now)
                    .bind(limit)
                    .fetch_all(&self.pool)
                    .await
                    .map_err(map)?;
                rows.iter()
                    .map(|row| Ok((row.try_get("tenant_id")?, read_id(row, "id")?)))
                    .collect::<Result<Vec<_>, sqlx::Error>>()
                    .map_err(map)
            }
        }

        impl $Lock {
            /// The row as read under the lock.
            pub fn record(&self) -> &$crate::store::ConnectionRecord {
                &self.record
            }

            pub async fn commit_refreshed(
                mut self,
                update: $crate::store::RefreshedTokens,
            ) -> Result<$crate::store::ConnectionRecord, $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                let row = sqlx::query($crate::store::sql::COMMIT_REFRESHED)
                    .bind(id_param(self.record.id))
                    .bind(&update.instance_url)
                    .bind(&update.scopes)
                    .bind(&update.access_token_enc)
                    .bind(&update.refresh_token_enc)
                    .bind(update.issued_at)
                    .bind(update.access_expires_at)
                    .bind(update.expiry_assumed)
                    .bind(update.now)
                    .bind(self.record.version)
                    .fetch_optional(&mut *self.tx)
                    .await
                    .map_err(map)?;
                self.finish(row).await
            }

            pub async fn commit_failure(
                mut self,
                failure: $crate::store::RefreshFailure,
            ) -> Result<$crate::store::ConnectionRecord, $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                let row = match &failure {
                    $crate::store::RefreshFailure::NeedsReauthorization { reason, now } => {
                        sqlx::query($crate::store::sql::COMMIT_NEEDS_REAUTHORIZATION)
                            .bind(id_param(self.record.id))
                            .bind(reason)
                            .bind(*now)
                            .bind(self.record.version)
                            .fetch_optional(&mut *self.tx)
                            .await
                    }
                    $crate::store::RefreshFailure::Transient {
                        reason,
                        failure_count,
                        next_attempt_at,
                        now,
                    } => {
                        sqlx::query($crate::store::sql::COMMIT_TRANSIENT_FAILURE)
                            .bind(id_param(self.record.id))
                            .bind(reason)
                            .bind(*failure_count)
                            .bind(*next_attempt_at)
                            .bind(*now)
                            .bind(self.record.version)
                            .fetch_optional(&mut *self.tx)
                            .await
                    }
                }
                .map_err(map)?;
                self.finish(row).await
            }

            /// Commits the update that returned `row`; no row means the locked row changed
            /// or vanished, which the lock rules out: roll back and report it.
            async fn finish(
                self,
                row: Option<<Db as sqlx::Database>::Row>,
            ) -> Result<$crate::store::ConnectionRecord, $crate::store::StoreError> {
                let map = $crate::store::sql::map_err;
                let Some(row) = row else {
                    self.tx.rollback().await.map_err(map)?;
                    return Err($crate::store::StoreError::Corrupt(
                        "connection row changed while locked".into(),
                    ));
                };
                let record = connection_from_row(&row)?;
                self.tx.commit().await.map_err(map)?;
                Ok(record)
            }

            pub async fn release(self) -> Result<(), $crate::store::StoreError> {
                self.tx.rollback().await.map_err($crate::store::sql::map_err)
            }
        }
    };
}

pub(super) use store_methods;
