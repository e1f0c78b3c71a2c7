//! The Postgres backend: production and multi-replica deployments.
//!
//! What is Postgres-specific: connecting (optionally for a transaction-mode pooler such as
//! PgBouncer), the embedded migrations, ids as native `UUID`, the database clock of the
//! refresh lease, and how saves of one identity are serialised.

use std::str::FromStr;

use sqlx::error::DatabaseError;
use sqlx::postgres::{PgConnectOptions, PgPool, PgRow};
use sqlx::{Pool, Postgres, Row, Transaction};
use uuid::Uuid;

use super::backend::Backend;
use super::sql;
use super::{StoreError, StoreOptions};

/// The embedded migrations (`migrations/postgres/`).
const MIGRATIONS: &[(i64, &str, &str)] = &[
    (
        1,
        "initial",
        include_str!("../../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "refresh lease",
        include_str!("../../migrations/postgres/0002_refresh_lease.sql"),
    ),
    (
        3,
        "salesforce username",
        include_str!("../../migrations/postgres/0003_salesforce_username.sql"),
    ),
    (
        4,
        "events and audit",
        include_str!("../../migrations/postgres/0004_events_and_audit.sql"),
    ),
    (
        5,
        "connection changes",
        include_str!("../../migrations/postgres/0005_connection_changes.sql"),
    ),
];

/// SQLSTATE `lock_not_available`: a `lock_timeout` ran out.
const PG_LOCK_NOT_AVAILABLE: &str = "55P03";
/// SQLSTATE class 57 (`admin_shutdown`, `crash_shutdown`, `cannot_connect_now`, …) and
/// `too_many_connections`: the server is going away or not taking us now.
const PG_OPERATOR_INTERVENTION_CLASS: &str = "57";
const PG_TOO_MANY_CONNECTIONS: &str = "53300";

impl Backend for Postgres {
    const LABEL: &'static str = "postgres";
    const SQL: sql::Dialect = sql::POSTGRES;

    type Id = Uuid;

    fn id_param(id: Uuid) -> Uuid {
        id
    }

    type OptionalId = Option<Uuid>;

    fn optional_id_param(id: Option<Uuid>) -> Option<Uuid> {
        id
    }

    fn read_id(row: &PgRow, column: &str) -> Result<Uuid, sqlx::Error> {
        row.try_get(column)
    }

    fn read_optional_id(row: &PgRow, column: &str) -> Result<Option<Uuid>, sqlx::Error> {
        row.try_get(column)
    }

    fn rows_affected(result: &sqlx::postgres::PgQueryResult) -> u64 {
        result.rows_affected()
    }

    fn migrator() -> sqlx::migrate::Migrator {
        sql::embedded_migrator(MIGRATIONS)
    }

    async fn connect(url: &str, options: &StoreOptions) -> Result<PgPool, StoreError> {
        let mut connect_options = PgConnectOptions::from_str(url)
            .map_err(|error| sql::invalid_url("postgres", &error))?;
        if options.transaction_pooler {
            // A transaction-mode pooler hands each transaction to any server connection: a
            // named prepared statement made on one is unknown on the next.
            connect_options = connect_options.statement_cache_capacity(0);
        }
        sql::open_pool::<Postgres>(
            connect_options,
            options.max_connections,
            options.acquire_timeout,
        )
        .await
    }

    /// A row lock cannot serialise two first-time saves (there is no row yet), and a plain
    /// `INSERT` would let the second fail on the unique constraint after its `build` already
    /// encrypted the tokens under an id that is not the row's. So the transaction first takes
    /// a transaction-scoped advisory lock on the identity (a hash collision only serialises
    /// two unrelated saves; transaction-scoped, so a transaction-mode pooler is fine).
    async fn begin_save(
        pool: &Pool<Postgres>,
        identity: String,
    ) -> Result<Transaction<'static, Postgres>, sqlx::Error> {
        let mut tx = pool.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended($1, 0))")
            .persistent(false)
            .bind(identity)
            .execute(&mut *tx)
            .await?;
        Ok(tx)
    }

    fn is_unavailable(error: &dyn DatabaseError) -> bool {
        error.code().is_some_and(|code| {
            code == PG_LOCK_NOT_AVAILABLE
                || code == PG_TOO_MANY_CONNECTIONS
                || code.starts_with(PG_OPERATOR_INTERVENTION_CLASS)
        })
    }
}
