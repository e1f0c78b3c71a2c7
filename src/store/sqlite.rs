//! The SQLite backend: the embedded default, for one replica.
//!
//! What is SQLite-specific lives here: connecting (file and folder created when missing,
//! WAL, foreign keys on every connection), the embedded migrations, ids as hyphenated `TEXT`,
//! and locking. SQLite has no row locks: the refresh lock is the database's single write
//! lock, taken up front with `BEGIN IMMEDIATE` and waited for up to the busy timeout. That
//! serialises all writers for the length of a refresh, which is acceptable for the
//! single-replica default. Everything else comes from [`super::sql`].

use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqlitePoolOptions, SqliteRow,
    SqliteSynchronous,
};
use sqlx::{Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::sql::{self, store_methods};
use super::{ConnectionRecord, StoreError, StoreOptions};

type Db = Sqlite;

/// The embedded migrations (`migrations/sqlite/`).
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "initial",
    include_str!("../../migrations/sqlite/0001_initial.sql"),
)];

fn migrator() -> sqlx::migrate::Migrator {
    sql::embedded_migrator(MIGRATIONS)
}

/// Ids are stored as hyphenated text (sqlx would bind a bare `Uuid` as a 16-byte BLOB).
fn id_param(id: Uuid) -> Hyphenated {
    id.hyphenated()
}

fn read_id(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
    row.try_get::<Hyphenated, _>(column).map(Uuid::from)
}

/// How long a statement waits for the write lock. A refresh holds it while it calls
/// Salesforce (up to ~10 s), so this must be comfortably longer than that.
const BUSY_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
}

impl SqliteStore {
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|error| sql::invalid_url("sqlite", &error))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(BUSY_TIMEOUT)
            // Per connection: without it ON DELETE CASCADE silently does nothing.
            .foreign_keys(true);
        let file = connect_options.get_filename();
        if let Some(folder) = file.parent()
            && !folder.as_os_str().is_empty()
        {
            std::fs::create_dir_all(folder)
                .map_err(|error| StoreError::Unavailable(sqlx::Error::Io(error)))?;
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(options.max_connections)
            .acquire_timeout(options.acquire_timeout)
            .connect_with(connect_options)
            .await
            .map_err(sql::map_err)?;
        Ok(Self { pool })
    }

    /// Opens the transaction of a save and reads the (tenant, org, user) row, if any.
    /// `BEGIN IMMEDIATE` takes the write lock up front, which serialises all saves (and
    /// keeps a deferred transaction from failing with `SQLITE_BUSY` when it starts writing).
    async fn begin_save(
        &self,
        tenant_id: &str,
        org_id: &str,
        user_id: &str,
    ) -> Result<(Transaction<'static, Sqlite>, Option<ConnectionRecord>), StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql::map_err)?;
        let row = sqlx::query(sql::SELECT_CONNECTION_BY_IDENTITY)
            .bind(tenant_id)
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::map_err)?;
        let existing = row.as_ref().map(connection_from_row).transpose()?;
        Ok((tx, existing))
    }

    /// Takes the database's write lock and reads one connection of one tenant under it.
    ///
    /// `_lock_timeout` is not used: the wait is bounded by the busy timeout of the
    /// connection (30 s), after which this fails with [`StoreError::LockTimeout`].
    pub async fn lock_connection(
        &self,
        tenant_id: &str,
        id: Uuid,
        _lock_timeout: Duration,
    ) -> Result<Option<SqliteConnectionLock>, StoreError> {
        let mut tx = self
            .pool
            .begin_with("BEGIN IMMEDIATE")
            .await
            .map_err(sql::map_lock_err)?;
        let row = sqlx::query(sql::SELECT_CONNECTION)
            .bind(tenant_id)
            .bind(id_param(id))
            .fetch_optional(&mut *tx)
            .await
            .map_err(sql::map_err)?;
        match row {
            None => {
                tx.rollback().await.map_err(sql::map_err)?;
                Ok(None)
            }
            Some(row) => Ok(Some(SqliteConnectionLock {
                record: connection_from_row(&row)?,
                tx,
            })),
        }
    }
}

/// A connection row read inside a `BEGIN IMMEDIATE` transaction (the database's write lock).
/// Dropping it rolls back.
pub struct SqliteConnectionLock {
    tx: Transaction<'static, Sqlite>,
    record: ConnectionRecord,
}

store_methods!(SqliteStore, SqliteConnectionLock);
