//! The one store: every query, written once, generic over the [`Backend`].
//!
//! Statements run one at a time on the pool (or in one short transaction for a save); none
//! stays open across anything slow. With `transaction_pooler` set (Postgres behind
//! PgBouncer in transaction mode) no named prepared statement is made and every statement
//! runs in a transaction of its own, so that nothing relies on one server session lasting
//! from one statement to the next.

use sqlx::query::Query;
use sqlx::{Database, Decode, Encode, Executor, IntoArguments, Pool, Row, Type};
use uuid::Uuid;

use super::backend::Backend;
use super::sql;
use super::{
    AppStatus, AuditEntry, AuditQuery, AuditRecord, AuthorizationSession, AuthorizedConnection,
    ClaimedEvent, Connection, ConnectionChanges, ConnectionRecord, ConnectionStatus,
    ConsumeOutcome, DeliveryOutcome, Millis, NewConnection, NewEvent, OutboxStats, RefreshFailure,
    RefreshedTokens, RowKey, SavedConnection, SealedField, SealedValue, StoreError, StoreOptions,
    TenantAppRecord,
};

/// Runs one statement (`query.method(executor)`) on the pool; behind a transaction pooler,
/// in a transaction of its own (see the module's documentation).
macro_rules! run_statement {
    ($store:ident, $query:ident . $method:ident) => {{
        let map = sql::map_err::<DB>;
        if $store.transaction_pooler {
            let mut tx = $store.pool.begin().await.map_err(map)?;
            let out = $query.$method(&mut *tx).await.map_err(map)?;
            tx.commit().await.map_err(map)?;
            Ok(out)
        } else {
            $query.$method(&$store.pool).await.map_err(map)
        }
    }};
}

/// A record read from `$row`: the fields listed before `;` from the columns of the same
/// names (so a field and its column cannot drift apart), the rest from the expressions given.
macro_rules! from_columns {
    ($row:ident => $record:ident { $($column:ident),+ ; $($field:ident $(: $value:expr)?),* $(,)? }) => {
        $record {
            $($column: $row.try_get(stringify!($column)).map_err(sql::map_err::<DB>)?,)+
            $($field $(: $value)?,)*
        }
    };
}

/// The store over one database.
pub struct SqlStore<DB: Database> {
    pool: Pool<DB>,
    transaction_pooler: bool,
}

impl<DB: Database> Clone for SqlStore<DB> {
    fn clone(&self) -> Self {
        Self {
            pool: self.pool.clone(),
            transaction_pooler: self.transaction_pooler,
        }
    }
}

type Q<DB> = Query<'static, DB, <DB as Database>::Arguments>;

impl<DB> SqlStore<DB>
where
    DB: Backend + sqlx::database::HasStatementCache,
    for<'c> &'c mut DB::Connection: Executor<'c, Database = DB>,
    DB::Connection: sqlx::migrate::Migrate,
    DB::Arguments: IntoArguments<DB>,
    for<'a> &'a str: Encode<'a, DB> + Type<DB> + sqlx::ColumnIndex<DB::Row>,
    for<'a> &'a [u8]: Encode<'a, DB> + Type<DB>,
    for<'a> String: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i64: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> i32: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> bool: Encode<'a, DB> + Decode<'a, DB> + Type<DB>,
    for<'a> Vec<u8>: Decode<'a, DB> + Type<DB>,
    for<'a> Option<&'a str>: Encode<'a, DB> + Type<DB>,
    for<'a> Option<i64>: Encode<'a, DB> + Type<DB>,
{
    pub async fn connect(url: &str, options: &StoreOptions) -> Result<Self, StoreError> {
        Ok(Self {
            pool: DB::connect(url, options).await?,
            transaction_pooler: options.transaction_pooler && DB::LABEL == "postgres",
        })
    }

    pub fn backend_name(&self) -> &'static str {
        DB::LABEL
    }

    // --- running statements ----------------------------------------------------------------

    /// A statement: a named (cached) prepared statement, unless behind a transaction pooler.
    fn query(&self, sql: &'static str) -> Q<DB> {
        sqlx::query(sql).persistent(!self.transaction_pooler)
    }

    async fn fetch_optional(&self, query: Q<DB>) -> Result<Option<DB::Row>, StoreError> {
        run_statement!(self, query.fetch_optional)
    }

    async fn fetch_all(&self, query: Q<DB>) -> Result<Vec<DB::Row>, StoreError> {
        run_statement!(self, query.fetch_all)
    }

    /// Runs a statement; returns the rows it affected.
    async fn execute(&self, query: Q<DB>) -> Result<u64, StoreError> {
        let done = run_statement!(self, query.execute)?;
        Ok(DB::rows_affected(&done))
    }

    async fn fetch_connection(&self, query: Q<DB>) -> Result<Option<ConnectionRecord>, StoreError> {
        Self::connection_from_optional(self.fetch_optional(query).await?)
    }

    /// Runs a change and, when there is an event to report it and the change wrote, the
    /// event, in one transaction (the outbox's guarantee: an event exists exactly when its
    /// change does). Returns the rows it affected.
    async fn execute_reported(
        &self,
        change: Q<DB>,
        event: Option<&NewEvent>,
    ) -> Result<u64, StoreError> {
        let Some(event) = event else {
            return self.execute(change).await;
        };
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let affected = DB::rows_affected(&change.execute(&mut *tx).await.map_err(map)?);
        if affected > 0 {
            self.insert_event(&mut tx, event).await?;
        }
        tx.commit().await.map_err(map)?;
        Ok(affected)
    }

    /// [`Self::execute_reported`] for a change that returns the row it wrote.
    async fn fetch_reported(
        &self,
        change: Q<DB>,
        event: Option<&NewEvent>,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        let Some(event) = event else {
            return self.fetch_connection(change).await;
        };
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let row = change.fetch_optional(&mut *tx).await.map_err(map)?;
        let record = Self::connection_from_optional(row)?;
        if record.is_some() {
            self.insert_event(&mut tx, event).await?;
        }
        tx.commit().await.map_err(map)?;
        Ok(record)
    }

    // --- parameters ------------------------------------------------------------------------

    /// Binds an app's credentials in the order both statements that write them take them.
    fn bind_app_credentials(query: Q<DB>, app: &TenantAppRecord) -> Q<DB> {
        query
            .bind(app.tenant_id.as_str())
            .bind(app.login_url.as_str())
            .bind(app.consumer_key_enc.as_str())
            .bind(app.consumer_key_hint.as_str())
            .bind(app.consumer_secret_enc.as_str())
    }

    /// Binds an authorized connection's columns in the order every statement that writes one
    /// takes them: the token material and its metadata, `at` (the time of the save), then
    /// the username.
    fn bind_authorized(query: Q<DB>, new: &AuthorizedConnection, at: Millis) -> Q<DB> {
        query
            .bind(new.login_url.as_str())
            .bind(new.instance_url.as_str())
            .bind(new.scopes.as_str())
            .bind(new.access_token_enc.as_str())
            .bind(new.refresh_token_enc.as_str())
            .bind(new.issued_at)
            .bind(new.access_expires_at)
            .bind(new.expiry_assumed)
            .bind(at)
            .bind(new.username.as_deref())
    }

    // --- rows ------------------------------------------------------------------------------

    fn tenant_app_from_row(row: &DB::Row) -> Result<TenantAppRecord, StoreError> {
        let map = sql::map_err::<DB>;
        let status: String = row.try_get("status").map_err(map)?;
        let status = AppStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown app status {status:?}")))?;
        Ok(from_columns!(row => TenantAppRecord {
            tenant_id, login_url, consumer_key_enc, consumer_key_hint, consumer_secret_enc,
            status_reason, credentials_version, created_at, updated_at;
            status,
        }))
    }

    fn session_from_row(row: &DB::Row) -> Result<AuthorizationSession, StoreError> {
        let map = sql::map_err::<DB>;
        Ok(from_columns!(row => AuthorizationSession {
            state_hash, tenant_id, pkce_verifier_enc, return_to, created_at, expires_at,
            consumed_at;
            id: DB::read_id(row, "id").map_err(map)?,
            connection_id: DB::read_optional_id(row, "connection_id").map_err(map)?,
        }))
    }

    fn connection_from_row(row: &DB::Row) -> Result<ConnectionRecord, StoreError> {
        let map = sql::map_err::<DB>;
        let status: String = row.try_get("status").map_err(map)?;
        let status = ConnectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status {status:?}")))?;
        let scopes: String = row.try_get("scopes").map_err(map)?;
        let connection = from_columns!(row => Connection {
            tenant_id, org_id, user_id, username, login_url, instance_url, access_expires_at,
            expiry_assumed, created_at, updated_at, last_refreshed_at, last_error;
            id: DB::read_id(row, "id").map_err(map)?,
            status,
            scopes: scopes.split_whitespace().map(str::to_owned).collect(),
        });
        Ok(from_columns!(row => ConnectionRecord {
            access_token_enc, refresh_token_enc, issued_at, failure_count, next_attempt_at,
            version, lease_id;
            connection,
        }))
    }

    fn connection_from_optional(
        row: Option<DB::Row>,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        row.as_ref().map(Self::connection_from_row).transpose()
    }

    // --- schema ------------------------------------------------------------------------------

    /// Applies the embedded migrations (idempotent; sqlx serialises concurrent migrators
    /// with a database lock).
    pub async fn migrate(&self) -> Result<(), StoreError> {
        DB::migrator().run(&self.pool).await?;
        Ok(())
    }

    /// The database answers and every embedded migration is applied.
    pub async fn check_ready(&self) -> Result<(), StoreError> {
        let map = sql::map_err::<DB>;
        self.execute(self.query(sql::SELECT_ONE)).await?;
        let rows = self
            .fetch_all(self.query(sql::SELECT_APPLIED_MIGRATIONS))
            .await
            .map_err(|error| match error {
                // No migrations table: never migrated.
                StoreError::Database(error) => {
                    StoreError::Migration(sqlx::migrate::MigrateError::Execute(error))
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
        sql::check_applied(&DB::migrator(), &applied)
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }

    // --- tenant apps -----------------------------------------------------------------------

    pub async fn put_tenant_app(
        &self,
        app: &TenantAppRecord,
        fixed_event: Option<&NewEvent>,
    ) -> Result<(TenantAppRecord, bool), StoreError> {
        // Insert-or-update in two statements so that the caller learns which one happened;
        // the loop covers a delete racing between the two.
        for _ in 0..3 {
            let insert = Self::bind_app_credentials(self.query(sql::INSERT_TENANT_APP), app)
                .bind(app.created_at)
                .bind(app.updated_at);
            let inserted = self.fetch_optional(insert).await?;
            if let Some(row) = inserted {
                return Ok((Self::tenant_app_from_row(&row)?, true));
            }
            let update = Self::bind_app_credentials(self.query(sql::UPDATE_TENANT_APP), app)
                .bind(app.updated_at);
            let updated = match fixed_event {
                None => self.fetch_optional(update).await?,
                Some(event) => {
                    // One transaction: whether the credentials were marked invalid, the new
                    // ones, and the event that says they are fixed.
                    let map = sql::map_err::<DB>;
                    let mut tx = self.pool.begin().await.map_err(map)?;
                    let fixed = self
                        .query(sql::CLEAR_APP_CREDENTIALS_INVALID)
                        .bind(app.tenant_id.as_str())
                        .execute(&mut *tx)
                        .await
                        .map_err(map)?;
                    let row = update.fetch_optional(&mut *tx).await.map_err(map)?;
                    if row.is_some() && DB::rows_affected(&fixed) > 0 {
                        self.insert_event(&mut tx, event).await?;
                    }
                    tx.commit().await.map_err(map)?;
                    row
                }
            };
            if let Some(row) = updated {
                return Ok((Self::tenant_app_from_row(&row)?, false));
            }
        }
        Err(StoreError::Database(sqlx::Error::RowNotFound))
    }

    pub async fn get_tenant_app(
        &self,
        tenant_id: &str,
    ) -> Result<Option<TenantAppRecord>, StoreError> {
        let row = self
            .fetch_optional(self.query(sql::SELECT_TENANT_APP).bind(tenant_id))
            .await?;
        row.as_ref().map(Self::tenant_app_from_row).transpose()
    }

    pub async fn mark_app_credentials_invalid(
        &self,
        tenant_id: &str,
        credentials_version: i64,
        reason: &str,
        now: Millis,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let mark = self
            .query(sql::MARK_APP_CREDENTIALS_INVALID)
            .bind(tenant_id)
            .bind(credentials_version)
            .bind(reason)
            .bind(now);
        if event.is_some() {
            // The change from `active` writes the event; an app already marked only gets the
            // newer reason, below. Between the two, a PUT of new credentials raises the
            // version, which the second statement then no longer matches.
            let from_active = self
                .query(sql::MARK_APP_CREDENTIALS_INVALID_FROM_ACTIVE)
                .bind(tenant_id)
                .bind(credentials_version)
                .bind(reason)
                .bind(now);
            if self.execute_reported(from_active, event).await? > 0 {
                return Ok(true);
            }
        }
        Ok(self.execute(mark).await? > 0)
    }

    pub async fn delete_tenant_app(&self, tenant_id: &str) -> Result<bool, StoreError> {
        let affected = self
            .execute(self.query(sql::DELETE_TENANT_APP).bind(tenant_id))
            .await?;
        Ok(affected > 0)
    }

    // --- authorization sessions ------------------------------------------------------------

    pub async fn insert_authorization_session(
        &self,
        session: &AuthorizationSession,
    ) -> Result<(), StoreError> {
        self.execute(
            self.query(sql::INSERT_SESSION)
                .bind(session.state_hash.as_slice())
                .bind(DB::id_param(session.id))
                .bind(session.tenant_id.as_str())
                .bind(session.pkce_verifier_enc.as_str())
                .bind(session.return_to.as_deref())
                .bind(session.created_at)
                .bind(session.expires_at)
                .bind(session.consumed_at)
                .bind(DB::optional_id_param(session.connection_id)),
        )
        .await?;
        Ok(())
    }

    pub async fn consume_authorization_session(
        &self,
        state_hash: &[u8],
        now: Millis,
    ) -> Result<ConsumeOutcome, StoreError> {
        // One statement marks it consumed and reads it: atomic single use.
        let consumed = self
            .fetch_optional(self.query(sql::CONSUME_SESSION).bind(state_hash).bind(now))
            .await?;
        if let Some(row) = consumed {
            let session = Self::session_from_row(&row)?;
            return Ok(if session.expires_at <= now {
                ConsumeOutcome::Expired
            } else {
                ConsumeOutcome::Consumed(session)
            });
        }
        let existing = self
            .fetch_optional(self.query(sql::SELECT_SESSION_CONSUMED_AT).bind(state_hash))
            .await?;
        match existing {
            None => Ok(ConsumeOutcome::Unknown),
            Some(row) => match row
                .try_get::<Option<i64>, _>("consumed_at")
                .map_err(sql::map_err::<DB>)?
            {
                Some(_) => Ok(ConsumeOutcome::AlreadyConsumed),
                // Unconsumed yet missed by the UPDATE: cannot happen, as the UPDATE saw the
                // latest committed row. Refuse rather than guess.
                None => Err(StoreError::Corrupt(
                    "authorization session neither consumable nor consumed".into(),
                )),
            },
        }
    }

    pub async fn delete_expired_authorization_sessions(
        &self,
        before: Millis,
    ) -> Result<u64, StoreError> {
        self.execute(self.query(sql::DELETE_EXPIRED_SESSIONS).bind(before))
            .await
    }

    // --- sealed values (key rotation) --------------------------------------------------------

    fn sealed_statements(field: SealedField) -> (&'static str, &'static str) {
        match field {
            SealedField::AppConsumerKey => sql::SEALED_APP_CONSUMER_KEY,
            SealedField::AppConsumerSecret => sql::SEALED_APP_CONSUMER_SECRET,
            SealedField::ConnectionAccessToken => sql::SEALED_CONNECTION_ACCESS_TOKEN,
            SealedField::ConnectionRefreshToken => sql::SEALED_CONNECTION_REFRESH_TOKEN,
            SealedField::SessionPkceVerifier => sql::SEALED_SESSION_PKCE_VERIFIER,
        }
    }

    /// Binds a row key as its column's type.
    fn bind_key(query: Q<DB>, key: &RowKey) -> Q<DB> {
        match key {
            RowKey::Tenant(tenant) => query.bind(tenant.clone()),
            RowKey::Id(id) => query.bind(DB::id_param(*id)),
        }
    }

    pub async fn sealed_page(
        &self,
        field: SealedField,
        after: Option<&RowKey>,
        skip_prefix: Option<&str>,
        limit: i64,
    ) -> Result<Vec<SealedValue>, StoreError> {
        let map = sql::map_err::<DB>;
        let first = if field.keyed_by_tenant() {
            RowKey::Tenant(String::new())
        } else {
            RowKey::Id(Uuid::nil())
        };
        let prefix = skip_prefix.unwrap_or_default();
        let query = Self::bind_key(
            self.query(Self::sealed_statements(field).0),
            after.unwrap_or(&first),
        )
        .bind(i64::try_from(prefix.len()).unwrap_or(i64::MAX))
        .bind(prefix.to_owned())
        .bind(limit);
        let rows = self.fetch_all(query).await?;
        rows.iter()
            .map(|row| {
                let key = if field.keyed_by_tenant() {
                    RowKey::Tenant(row.try_get("row_key").map_err(map)?)
                } else {
                    RowKey::Id(DB::read_id(row, "row_key").map_err(map)?)
                };
                Ok(SealedValue {
                    key,
                    sealed: row.try_get("sealed").map_err(map)?,
                })
            })
            .collect()
    }

    pub async fn replace_sealed(
        &self,
        field: SealedField,
        key: &RowKey,
        old: &str,
        new: &str,
    ) -> Result<bool, StoreError> {
        let query = Self::bind_key(self.query(Self::sealed_statements(field).1), key)
            .bind(old.to_owned())
            .bind(new.to_owned());
        Ok(self.execute(query).await? == 1)
    }

    // --- connections -------------------------------------------------------------------------

    #[expect(clippy::too_many_arguments, reason = "the save's whole context")]
    pub async fn save_authorized_connection<E>(
        &self,
        tenant_id: &str,
        org_id: &str,
        user_id: &str,
        new_id: Uuid,
        now: Millis,
        build: impl FnOnce(Uuid) -> Result<AuthorizedConnection, E> + Send,
        event: impl FnOnce(&ConnectionRecord, bool) -> Option<NewEvent> + Send,
    ) -> Result<Result<SavedConnection, E>, StoreError> {
        let map = sql::map_err::<DB>;
        // From here until commit no other save of this (tenant, org, user) can run, so the
        // id handed to `build` is the id the row ends up with: the tokens' associated data
        // names the right row.
        let mut tx = DB::begin_save(
            &self.pool,
            format!("valo-oauth/connections/{tenant_id}/{org_id}/{user_id}"),
        )
        .await
        .map_err(map)?;
        let row = self
            .query(DB::SQL.select_for_save)
            .bind(tenant_id)
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map)?;
        let existing = Self::connection_from_optional(row)?;
        let id = existing.as_ref().map_or(new_id, |row| row.connection.id);
        let new = match build(id) {
            Ok(new) => new,
            Err(error) => {
                tx.rollback().await.map_err(map)?;
                return Ok(Err(error));
            }
        };
        let save = if existing.is_some() {
            self.query(sql::UPDATE_AUTHORIZED_CONNECTION)
                .bind(DB::id_param(id))
        } else {
            self.query(sql::INSERT_AUTHORIZED_CONNECTION)
                .bind(DB::id_param(id))
                .bind(tenant_id)
                .bind(org_id)
                .bind(user_id)
        };
        let row = Self::bind_authorized(save, &new, now)
            .fetch_one(&mut *tx)
            .await
            .map_err(map)?;
        let connection = Self::connection_from_row(&row)?;
        if let Some(event) = event(&connection, existing.is_some()) {
            self.insert_event(&mut tx, &event).await?;
        }
        tx.commit().await.map_err(map)?;
        Ok(Ok(SavedConnection {
            connection,
            replaced: existing,
        }))
    }

    pub async fn insert_connections(&self, rows: &[NewConnection]) -> Result<u64, StoreError> {
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let mut inserted = 0;
        for chunk in rows.chunks(sql::INSERT_CONNECTIONS_BATCH) {
            let text = sqlx::AssertSqlSafe(sql::insert_connections_sql(chunk.len()));
            // A few distinct texts at most (full batches and one remainder): cacheable.
            let mut query = sqlx::query(text).persistent(!self.transaction_pooler);
            for row in chunk {
                query = query
                    .bind(DB::id_param(row.id))
                    .bind(row.tenant_id.as_str())
                    .bind(row.org_id.as_str())
                    .bind(row.user_id.as_str());
                query = Self::bind_authorized(query, &row.tokens, row.created_at);
            }
            let done = query.execute(&mut *tx).await.map_err(map)?;
            inserted += DB::rows_affected(&done);
        }
        tx.commit().await.map_err(map)?;
        Ok(inserted)
    }

    pub async fn list_connections(
        &self,
        tenant_id: &str,
    ) -> Result<Vec<ConnectionRecord>, StoreError> {
        let rows = self
            .fetch_all(self.query(sql::LIST_CONNECTIONS).bind(tenant_id))
            .await?;
        rows.iter().map(Self::connection_from_row).collect()
    }

    pub async fn get_connection(
        &self,
        tenant_id: &str,
        id: Uuid,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        self.fetch_connection(
            self.query(sql::SELECT_CONNECTION)
                .bind(tenant_id)
                .bind(DB::id_param(id)),
        )
        .await
    }

    pub async fn update_access_expiry(
        &self,
        id: Uuid,
        version: i64,
        access_expires_at: Millis,
        expiry_assumed: bool,
    ) -> Result<bool, StoreError> {
        let affected = self
            .execute(
                self.query(sql::UPDATE_ACCESS_EXPIRY)
                    .bind(DB::id_param(id))
                    .bind(version)
                    .bind(access_expires_at)
                    .bind(expiry_assumed),
            )
            .await?;
        Ok(affected > 0)
    }

    pub async fn delete_connection(
        &self,
        tenant_id: &str,
        id: Uuid,
        event: Option<&NewEvent>,
    ) -> Result<bool, StoreError> {
        let delete = self
            .query(sql::DELETE_CONNECTION)
            .bind(tenant_id)
            .bind(DB::id_param(id));
        Ok(self.execute_reported(delete, event).await? > 0)
    }

    pub async fn connections_due_for_keepalive(
        &self,
        refreshed_before: Millis,
        now: Millis,
        limit: i64,
    ) -> Result<Vec<(String, Uuid)>, StoreError> {
        let rows = self
            .fetch_all(
                self.query(sql::CONNECTIONS_DUE_FOR_KEEPALIVE)
                    .bind(refreshed_before)
                    .bind(now)
                    .bind(limit),
            )
            .await?;
        rows.iter()
            .map(|row| Ok((row.try_get("tenant_id")?, DB::read_id(row, "id")?)))
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(sql::map_err::<DB>)
    }

    // --- the change feed -------------------------------------------------------------------

    pub async fn connection_changes(
        &self,
        since: Option<Millis>,
    ) -> Result<ConnectionChanges, StoreError> {
        let map = sql::map_err::<DB>;
        let now_row = self.fetch_optional(self.query(DB::SQL.select_now)).await?;
        let now = match now_row {
            Some(row) => row.try_get("now").map_err(map)?,
            None => return Err(StoreError::Corrupt("the database clock read no row".into())),
        };
        let Some(since) = since else {
            return Ok(ConnectionChanges {
                now,
                changes: Vec::new(),
            });
        };
        let rows = self
            .fetch_all(self.query(sql::CONNECTION_CHANGES_SINCE).bind(since))
            .await?;
        let changes = rows
            .iter()
            .map(|row| {
                Ok((
                    DB::read_id(row, "connection_id")?,
                    row.try_get("min_version")?,
                ))
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(map)?;
        Ok(ConnectionChanges { now, changes })
    }

    pub async fn prune_connection_changes(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(self.query(sql::PRUNE_CONNECTION_CHANGES).bind(before))
            .await
    }

    // --- the refresh lease -----------------------------------------------------------------

    /// The row with the lease taken, or `None` when it is held by someone else or the
    /// connection does not exist.
    pub async fn acquire_lease(
        &self,
        tenant_id: &str,
        id: Uuid,
        lease_id: &str,
        holder: &str,
        duration_ms: i64,
    ) -> Result<Option<ConnectionRecord>, StoreError> {
        self.fetch_connection(
            self.query(DB::SQL.acquire_lease)
                .bind(tenant_id)
                .bind(DB::id_param(id))
                .bind(lease_id)
                .bind(holder)
                .bind(duration_ms),
        )
        .await
    }

    pub async fn commit_refreshed(
        &self,
        id: Uuid,
        lease_id: &str,
        update: &RefreshedTokens,
    ) -> Result<ConnectionRecord, StoreError> {
        self.fetch_connection(
            self.query(sql::COMMIT_REFRESHED)
                .bind(DB::id_param(id))
                .bind(lease_id)
                .bind(update.instance_url.as_str())
                .bind(update.scopes.as_deref())
                .bind(update.access_token_enc.as_str())
                .bind(update.refresh_token_enc.as_str())
                .bind(update.issued_at)
                .bind(update.access_expires_at)
                .bind(update.expiry_assumed)
                .bind(update.now),
        )
        .await?
        .ok_or(StoreError::LeaseLost)
    }

    pub async fn commit_failure(
        &self,
        id: Uuid,
        lease_id: &str,
        failure: &RefreshFailure,
    ) -> Result<ConnectionRecord, StoreError> {
        self.commit_failure_with_event(id, lease_id, failure, None)
            .await
    }

    /// The compare-and-set of a failure and, when it wrote, `event`, in one transaction.
    pub async fn commit_failure_with_event(
        &self,
        id: Uuid,
        lease_id: &str,
        failure: &RefreshFailure,
        event: Option<&NewEvent>,
    ) -> Result<ConnectionRecord, StoreError> {
        let query = match failure {
            RefreshFailure::NeedsReauthorization { reason, now } => self
                .query(sql::COMMIT_NEEDS_REAUTHORIZATION)
                .bind(DB::id_param(id))
                .bind(lease_id)
                .bind(reason.as_str())
                .bind(*now),
            RefreshFailure::Transient {
                reason,
                failure_count,
                next_attempt_at,
                now,
            } => self
                .query(sql::COMMIT_TRANSIENT_FAILURE)
                .bind(DB::id_param(id))
                .bind(lease_id)
                .bind(reason.as_str())
                .bind(*failure_count)
                .bind(*next_attempt_at)
                .bind(*now),
            RefreshFailure::UnverifiedRotation {
                refresh_token_enc,
                reason,
                failure_count,
                next_attempt_at,
                now,
            } => self
                .query(sql::COMMIT_UNVERIFIED_ROTATION)
                .bind(DB::id_param(id))
                .bind(lease_id)
                .bind(refresh_token_enc.as_str())
                .bind(reason.as_str())
                .bind(*failure_count)
                .bind(*next_attempt_at)
                .bind(*now),
        };
        self.fetch_reported(query, event)
            .await?
            .ok_or(StoreError::LeaseLost)
    }

    pub async fn release_lease(&self, id: Uuid, lease_id: &str) -> Result<bool, StoreError> {
        let affected = self
            .execute(
                self.query(sql::RELEASE_LEASE)
                    .bind(DB::id_param(id))
                    .bind(lease_id),
            )
            .await?;
        Ok(affected > 0)
    }
    // --- the webhook outbox ------------------------------------------------------------------

    /// Writes an event inside the transaction of the state change it reports.
    async fn insert_event(
        &self,
        tx: &mut sqlx::Transaction<'static, DB>,
        event: &NewEvent,
    ) -> Result<(), StoreError> {
        self.query(sql::INSERT_EVENT)
            .bind(event.id.as_str())
            .bind(event.tenant_id.as_str())
            .bind(event.ordering_key.as_str())
            .bind(event.event_type)
            .bind(event.payload.as_str())
            .bind(event.created_at)
            .execute(&mut **tx)
            .await
            .map_err(sql::map_err::<DB>)?;
        Ok(())
    }

    pub async fn claim_events(
        &self,
        claim_id: &str,
        now: Millis,
        until: Millis,
        limit: i64,
    ) -> Result<Vec<ClaimedEvent>, StoreError> {
        let rows = self
            .fetch_all(
                self.query(DB::SQL.claim_events)
                    .bind(claim_id)
                    .bind(now)
                    .bind(until)
                    .bind(limit),
            )
            .await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(from_columns!(row => ClaimedEvent {
                    seq, id, event_type, payload, created_at, attempts;
                }))
            })
            .collect::<Result<Vec<_>, StoreError>>()?;
        // RETURNING keeps no order.
        events.sort_by_key(|e| e.seq);
        Ok(events)
    }

    pub async fn finish_event(
        &self,
        seq: i64,
        claim_id: &str,
        outcome: &DeliveryOutcome,
    ) -> Result<bool, StoreError> {
        let query = match outcome {
            DeliveryOutcome::Delivered { now } => self
                .query(sql::MARK_EVENT_DELIVERED)
                .bind(seq)
                .bind(claim_id)
                .bind(*now),
            DeliveryOutcome::Retry {
                next_attempt_at,
                error,
            } => self
                .query(sql::MARK_EVENT_RETRY)
                .bind(seq)
                .bind(claim_id)
                .bind(*next_attempt_at)
                .bind(error.as_str()),
            DeliveryOutcome::GiveUp { now, error } => self
                .query(sql::MARK_EVENT_GIVEN_UP)
                .bind(seq)
                .bind(claim_id)
                .bind(*now)
                .bind(error.as_str()),
        };
        Ok(self.execute(query).await? > 0)
    }

    pub async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let map = sql::map_err::<DB>;
        let row = self
            .fetch_optional(self.query(sql::OUTBOX_STATS))
            .await?
            .ok_or(StoreError::Database(sqlx::Error::RowNotFound))?;
        Ok(OutboxStats {
            pending: row.try_get("pending").map_err(map)?,
            oldest_created_at: row.try_get("oldest").map_err(map)?,
        })
    }

    pub async fn prune_events(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(self.query(sql::PRUNE_EVENTS).bind(before))
            .await
    }

    // --- the audit trail ---------------------------------------------------------------------

    pub async fn write_audit(&self, records: &[AuditRecord]) -> Result<(), StoreError> {
        if records.is_empty() {
            return Ok(());
        }
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        for record in records {
            let connection_id = record
                .connection_id
                .map(|id| id.hyphenated().to_string())
                .unwrap_or_default();
            self.query(sql::UPSERT_AUDIT)
                .bind(record.tenant_id.as_str())
                .bind(record.at)
                .bind(record.actor.as_str())
                .bind(record.action)
                .bind(connection_id)
                .bind(record.request_id.clone().unwrap_or_default())
                .bind(record.count)
                .execute(&mut *tx)
                .await
                .map_err(map)?;
        }
        tx.commit().await.map_err(map)?;
        Ok(())
    }

    pub async fn list_audit(&self, query: &AuditQuery) -> Result<Vec<AuditEntry>, StoreError> {
        let (after_at, after_id) = query.after.unwrap_or((Millis::MIN, 0));
        let rows = self
            .fetch_all(
                self.query(sql::LIST_AUDIT)
                    .bind(query.tenant_id.as_str())
                    .bind(
                        query
                            .connection_id
                            .map(|id| id.hyphenated().to_string())
                            .unwrap_or_default(),
                    )
                    .bind(query.since)
                    .bind(query.until)
                    .bind(after_at)
                    .bind(after_id)
                    .bind(query.limit),
            )
            .await?;
        rows.iter()
            .map(|row| {
                let map = sql::map_err::<DB>;
                let connection_id: String = row.try_get("connection_id").map_err(map)?;
                let request_id: String = row.try_get("request_id").map_err(map)?;
                let connection_id = if connection_id.is_empty() {
                    None
                } else {
                    Some(Uuid::parse_str(&connection_id).map_err(|_| {
                        StoreError::Corrupt("audit entry with a malformed connection id".into())
                    })?)
                };
                Ok(from_columns!(row => AuditEntry {
                    id, at, actor, action, count;
                    connection_id,
                    request_id: (!request_id.is_empty()).then_some(request_id),
                }))
            })
            .collect()
    }

    pub async fn prune_audit(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(self.query(sql::PRUNE_AUDIT).bind(before))
            .await
    }
}
