//! What differs between the two databases, behind one small trait; everything else is the
//! generic [`super::SqlStore`].

use std::future::Future;

use sqlx::error::DatabaseError;
use sqlx::{Pool, Transaction};
use uuid::Uuid;

use super::{StoreError, StoreOptions};

/// A database the store runs on: Postgres or SQLite.
pub trait Backend: sqlx::Database {
    /// `"postgres"` or `"sqlite"`.
    const LABEL: &'static str;
    /// The statements whose text is this database's own.
    const SQL: super::sql::Dialect;

    /// How an id is bound: Postgres `UUID`, SQLite hyphenated `TEXT`.
    type Id: for<'q> sqlx::Encode<'q, Self> + sqlx::Type<Self> + Send + Sync;

    fn id_param(id: Uuid) -> Self::Id;

    /// How an id that may be absent is bound (sqlx implements `Encode` for `Option` per
    /// database, so the generic store cannot bind `Option<Self::Id>` itself).
    type OptionalId: for<'q> sqlx::Encode<'q, Self> + sqlx::Type<Self> + Send + Sync;

    fn optional_id_param(id: Option<Uuid>) -> Self::OptionalId;

    fn read_id(row: &Self::Row, column: &str) -> Result<Uuid, sqlx::Error>;

    /// An id column that may be NULL.
    fn read_optional_id(row: &Self::Row, column: &str) -> Result<Option<Uuid>, sqlx::Error>;

    /// How many rows a statement changed.
    fn rows_affected(result: &Self::QueryResult) -> u64;

    /// The backend's embedded migrations.
    fn migrator() -> sqlx::migrate::Migrator;

    /// Opens the pool (eagerly for Postgres, so a wrong host or password shows at start).
    fn connect(
        url: &str,
        options: &StoreOptions,
    ) -> impl Future<Output = Result<Pool<Self>, StoreError>> + Send;

    /// Opens the transaction of a save of the (tenant, org, user) connection and makes sure
    /// no other save of the same identity runs until it ends.
    fn begin_save<'a>(
        pool: &'a Pool<Self>,
        identity: String,
    ) -> impl Future<Output = Result<Transaction<'static, Self>, sqlx::Error>> + Send + 'a;

    /// Whether a database error means "the database did not answer in time" (a lock wait
    /// that ran out) rather than a bad statement or row.
    fn is_unavailable(error: &dyn DatabaseError) -> bool;
}
