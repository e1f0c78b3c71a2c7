//! The Postgres backend: production and multi-replica deployments.
//!
//! What is Postgres-specific lives here: connecting, the embedded migrations, ids as native
//! `UUID`, and row locks. The refresh lock is `SELECT … FOR UPDATE` under a transaction-local
//! `lock_timeout`, so that exactly one replica refreshes a connection at a time and a waiter
//! gives up after a bounded wait. Everything else comes from [`super::sql`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::postgres::{PgConnectOptions, PgPool, PgPoolOptions, PgRow};
use sqlx::{Postgres, Row, Transaction};
use uuid::Uuid;

use super::sql::{self, store_methods};
use super::{ConnectionRecord, StoreError, StoreOptions};

type Db = Postgres;

/// The embedded migrations (`migrations/postgres/`).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../migrations/postgres/0001_initial.sql"),
)];

fn migrator() -> sqlx::migrate::Migrator {
    sql::embedded_migrator(MIGRATIONS)
}

/// Ids are native `UUID`s.
fn id_param(id: Uuid) -> Uuid {
    id
}

fn read_id(row: &PgRow, column: &str) -> Result<Uuid, sqlx::Error> {
    row.try_get(column)
}

/// The shortest idle-in-transaction limit set while a refresh lock is held.
const MIN_IDLE_IN_TRANSACTION: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct PgStore {
    pool: PgPool,
}

impl PgStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect_options = PgConnectOptions::from_str(url)
            .map_err(|error| sql::invalid_url("postgres", &error))?;
        // Eager: a wrong host or password shows at start-up, not on the first request.
        let pool = PgPoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(sql::map_err)?;
        Ok(Self { pool })
    }

    /// Opens the transaction of a save and reads the (tenant, org, user) row, if any.
    ///
    /// A row lock cannot serialise two first-time saves (there is no row yet), and a plain
    /// `INSERT` would let the second fail on the unique constraint after its `build` already
    /// encrypted the tokens under an id that is not the row's. So the transaction first takes
    /// a transaction-scoped advisory lock on the identity (a hash collision only serialises
    /// two unrelated saves), then `FOR UPDATE` also waits for a refresh holding the row so
    /// that `replaced` carries the latest refresh token.
    async fn begin_save(
        &self,
        tenant_id: &str,
        org_id: &str,
        user_id: &str,
    ) -> Result<(Transaction<'static, Postgres>, Option<ConnectionRecord>), StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql::map_err)?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .bind(format!(
                "valo-oauth/connections/{tenant_id}/{org_id}/{user_id}"
            ))
            .execute(&mut *tx)
            .await
            .map_err(sql::map_err)?;
        let row = sqlx::query(sql::SELECT_CONNECTION_BY_IDENTITY_FOR_UPDATE)
            .bind(tenant_id)
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::map_err)?;
        let existing = row.as_ref().map(connection_from_row).transpose()?;
        Ok((tx, existing))
    }

    /// Takes the row lock of one connection of one tenant, waiting at most `lock_timeout`
    /// for another holder (then [`StoreError::LockTimeout`]).
    pub async fn lock_connection(
        &self,
        tenant_id: &str,
        id: Uuid,
        lock_timeout: Duration,
    ) -> Result<Option<PgConnectionLock>, StoreError> {
        let mut tx = self.pool.begin().await.map_err(sql::map_err)?;
        // Postgres reads 0 as "no limit": wait at least 1 ms.
        let lock_ms = lock_timeout.as_millis().clamp(1, i32::MAX as u128);
        // A holder that hangs (or whose process froze) must not keep the lock forever: the
        // server ends a session idle in this transaction for longer than this. It must
        // exceed the longest refresh call made while holding the lock.
        let idle_ms = (lock_ms * 4)
            .max(MIN_IDLE_IN_TRANSACTION.as_millis())
            .min(i32::MAX as u128);
        // `set_config(…, true)` is `SET LOCAL` with bind parameters: reset at commit/rollback.
        sqlx::query(
            "SELECT set_config('lock_timeout', $1, true), \
             set_config('idle_in_transaction_session_timeout', $2, true)",
        )
        .bind(format!("{lock_ms}ms"))
        .bind(format!("{idle_ms}ms"))
        .execute(&mut *tx)
        .await
        .map_err(sql::map_err)?;
        let row = sqlx::query(sql::SELECT_CONNECTION_FOR_UPDATE)
            .bind(tenant_id)
            .bind(id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::map_lock_err)?;
        match row {
            None => {
                tx.rollback().await.map_err(sql::map_err)?;
                Ok(None)
            }
            Some(row) => Ok(Some(PgConnectionLock {
                record: connection_from_row(&row)?,
                tx,
            })),
        }
    }
}

/// A connection row locked `FOR UPDATE` in an open transaction. Dropping it rolls back.
pub struct PgConnectionLock {
    tx: Transaction<'static, Postgres>,
    record: ConnectionRecord,
}

store_methods!(PgStore, PgConnectionLock);
