//! The SQLite backend: the embedded default, for one replica.
//!
//! What is SQLite-specific: connecting (file and folder created when missing, WAL, foreign
//! keys on every connection, `synchronous = FULL`), the embedded migrations, ids as
//! hyphenated `TEXT`, the clock of the refresh lease, and how saves are serialised (the
//! database's single write lock). The refresh lease is the same protocol as on Postgres: no
//! write lock is held while Salesforce is called.

use std::str::FromStr;
use std::time::Duration;

use sqlx::error::DatabaseError;
use sqlx::sqlite::{
    SqliteConnectOptions, SqliteJournalMode, SqlitePool, SqliteRow, SqliteSynchronous,
};
use sqlx::{Pool, Row, Sqlite, Transaction};
use uuid::Uuid;
use uuid::fmt::Hyphenated;

use super::backend::Backend;
use super::sql;
use super::{StoreError, StoreOptions};

/// The embedded migrations (`migrations/sqlite/`).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "refresh lease",
        include_str!("../../migrations/sqlite/0002_refresh_lease.sql"),
    ),
    (
        3,
        "salesforce username",
        include_str!("../../migrations/sqlite/0003_salesforce_username.sql"),
    ),
    (
        4,
        "events and audit",
        include_str!("../../migrations/sqlite/0004_events_and_audit.sql"),
    ),
    (
        5,
        "connection changes",
        include_str!("../../migrations/sqlite/0005_connection_changes.sql"),
    ),
];

/// How long a statement waits for the write lock. Writers hold it for one short statement
/// or transaction (never across a call to Salesforce), so this is generous.
const BUSY_TIMEOUT: Duration = Duration::from_secs(5);

/// SQLite primary result codes `SQLITE_BUSY` and `SQLITE_LOCKED` (extended codes keep them in
/// their low byte).
const SQLITE_BUSY: i32 = 5;
const SQLITE_LOCKED: i32 = 6;

impl Backend for Sqlite {
    const LABEL: &'static str = "sqlite";
    const SQL: sql::Dialect = sql::SQLITE;

    /// Ids are stored as hyphenated text (sqlx would bind a bare `Uuid` as a 16-byte BLOB).
    type Id = Hyphenated;

    fn id_param(id: Uuid) -> Hyphenated {
        id.hyphenated()
    }

    type OptionalId = Option<Hyphenated>;

    fn optional_id_param(id: Option<Uuid>) -> Option<Hyphenated> {
        id.map(Uuid::hyphenated)
    }

    fn read_id(row: &SqliteRow, column: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get::<Hyphenated, _>(column).map(Uuid::from)
    }

    fn read_optional_id(row: &SqliteRow, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
        row.try_get::<Option<Hyphenated>, _>(column)
            .map(|id| id.map(Uuid::from))
    }

    fn rows_affected(result: &sqlx::sqlite::SqliteQueryResult) -> u64 {
        result.rows_affected()
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sql::embedded_migrator(MIGRATIONS)
    }

    async fn connect(url: &str, options: &StoreOptions) -> Result<SqlitePool, StoreError> {
        let connect_options = SqliteConnectOptions::from_str(url)
            .map_err(|error| sql::invalid_url("sqlite", &error))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit that carries a rotated refresh token survives a power loss
            // (with NORMAL, the last commits in WAL mode may roll back). Writes are few.
            .synchronous(SqliteSynchronous::Full)
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
        sql::open_pool::<Sqlite>(
            connect_options,
            options.max_connections,
            options.acquire_timeout.max(BUSY_TIMEOUT),
        )
        .await
    }

    /// `BEGIN IMMEDIATE` takes the write lock up front, which serialises all saves (and
    /// keeps a deferred transaction from failing with `SQLITE_BUSY` when it starts writing).
    async fn begin_save(
        pool: &Pool<Sqlite>,
        _identity: String,
    ) -> Result<Transaction<'static, Sqlite>, sqlx::Error> {
        pool.begin_with("BEGIN IMMEDIATE").await
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        error
            .code()
            .and_then(|code| code.parse::<i32>().ok())
            .is_some_and(|code| matches!(code & 0xff, SQLITE_BUSY | SQLITE_LOCKED))
    }
}
