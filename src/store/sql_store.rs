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
    ClaimedEvent, ConnectionChanges, ConnectionRecord, ConnectionStatus, ConsumeOutcome,
    DeliveryOutcome, Millis, NewConnection, NewEvent, OutboxStats, RefreshFailure, RefreshedTokens,
    RowKey, SavedConnection, SealedField, SealedValue, StoreError, StoreOptions, TenantAppRecord,
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

    // --- rows ------------------------------------------------------------------------------

    fn tenant_app_from_row(row: &DB::Row) -> Result<TenantAppRecord, StoreError> {
        let map = sql::map_err::<DB>;
        let status: String = row.try_get("status").map_err(map)?;
        let status = AppStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown app status {status:?}")))?;
        Ok(TenantAppRecord {
            tenant_id: row.try_get("tenant_id").map_err(map)?,
            login_url: row.try_get("login_url").map_err(map)?,
            consumer_key_enc: row.try_get("consumer_key_enc").map_err(map)?,
            consumer_key_hint: row.try_get("consumer_key_hint").map_err(map)?,
            consumer_secret_enc: row.try_get("consumer_secret_enc").map_err(map)?,
            status,
            status_reason: row.try_get("status_reason").map_err(map)?,
            credentials_version: row.try_get("credentials_version").map_err(map)?,
            created_at: row.try_get("created_at").map_err(map)?,
            updated_at: row.try_get("updated_at").map_err(map)?,
        })
    }

    fn session_from_row(row: &DB::Row) -> Result<AuthorizationSession, StoreError> {
        let map = sql::map_err::<DB>;
        Ok(AuthorizationSession {
            state_hash: row.try_get("state_hash").map_err(map)?,
            id: DB::read_id(row, "id").map_err(map)?,
            tenant_id: row.try_get("tenant_id").map_err(map)?,
            pkce_verifier_enc: row.try_get("pkce_verifier_enc").map_err(map)?,
            return_to: row.try_get("return_to").map_err(map)?,
            created_at: row.try_get("created_at").map_err(map)?,
            expires_at: row.try_get("expires_at").map_err(map)?,
            consumed_at: row.try_get("consumed_at").map_err(map)?,
            connection_id: DB::read_optional_id(row, "connection_id").map_err(map)?,
        })
    }

    fn connection_from_row(row: &DB::Row) -> Result<ConnectionRecord, StoreError> {
        let map = sql::map_err::<DB>;
        let status: String = row.try_get("status").map_err(map)?;
        let status = ConnectionStatus::parse(&status)
            .ok_or_else(|| StoreError::Corrupt(format!("unknown connection status {status:?}")))?;
        Ok(ConnectionRecord {
            id: DB::read_id(row, "id").map_err(map)?,
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
            lease_id: row.try_get("lease_id").map_err(map)?,
            lease_expires_at: row.try_get("lease_expires_at").map_err(map)?,
            username: row.try_get("username").map_err(map)?,
        })
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
            let inserted = self
                .fetch_optional(
                    self.query(sql::INSERT_TENANT_APP)
                        .bind(app.tenant_id.as_str())
                        .bind(app.login_url.as_str())
                        .bind(app.consumer_key_enc.as_str())
                        .bind(app.consumer_key_hint.as_str())
                        .bind(app.consumer_secret_enc.as_str())
                        .bind(app.created_at)
                        .bind(app.updated_at),
                )
                .await?;
            if let Some(row) = inserted {
                return Ok((Self::tenant_app_from_row(&row)?, true));
            }
            let update = self
                .query(sql::UPDATE_TENANT_APP)
                .bind(app.tenant_id.as_str())
                .bind(app.login_url.as_str())
                .bind(app.consumer_key_enc.as_str())
                .bind(app.consumer_key_hint.as_str())
                .bind(app.consumer_secret_enc.as_str())
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
        let Some(event) = event else {
            return Ok(self.execute(mark).await? > 0);
        };
        // One transaction: the change from `active` writes the event; an app already marked
        // only gets the newer reason.
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let from_active = self
            .query(sql::MARK_APP_CREDENTIALS_INVALID_FROM_ACTIVE)
            .bind(tenant_id)
            .bind(credentials_version)
            .bind(reason)
            .bind(now)
            .execute(&mut *tx)
            .await
            .map_err(map)?;
        let marked = if DB::rows_affected(&from_active) > 0 {
            self.insert_event(&mut tx, event).await?;
            true
        } else {
            DB::rows_affected(&mark.execute(&mut *tx).await.map_err(map)?) > 0
        };
        tx.commit().await.map_err(map)?;
        Ok(marked)
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
            .query(DB::SELECT_FOR_SAVE)
            .bind(tenant_id)
            .bind(org_id)
            .bind(user_id)
            .fetch_optional(&mut *tx)
            .await
            .map_err(map)?;
        let existing = Self::connection_from_optional(row)?;
        let id = existing.as_ref().map_or(new_id, |row| row.id);
        let new = match build(id) {
            Ok(new) => new,
            Err(error) => {
                tx.rollback().await.map_err(map)?;
                return Ok(Err(error));
            }
        };
        let row = if existing.is_some() {
            self.query(sql::UPDATE_AUTHORIZED_CONNECTION)
                .bind(DB::id_param(id))
                .bind(new.login_url.as_str())
                .bind(new.instance_url.as_str())
                .bind(new.scopes.as_str())
                .bind(new.access_token_enc.as_str())
                .bind(new.refresh_token_enc.as_str())
                .bind(new.issued_at)
                .bind(new.access_expires_at)
                .bind(new.expiry_assumed)
                .bind(now)
                .bind(new.username.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(map)?
        } else {
            self.query(sql::INSERT_AUTHORIZED_CONNECTION)
                .bind(DB::id_param(id))
                .bind(tenant_id)
                .bind(org_id)
                .bind(user_id)
                .bind(new.login_url.as_str())
                .bind(new.instance_url.as_str())
                .bind(new.scopes.as_str())
                .bind(new.access_token_enc.as_str())
                .bind(new.refresh_token_enc.as_str())
                .bind(new.issued_at)
                .bind(new.access_expires_at)
                .bind(new.expiry_assumed)
                .bind(now)
                .bind(new.username.as_deref())
                .fetch_one(&mut *tx)
                .await
                .map_err(map)?
        };
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
                let tokens = &row.tokens;
                query = query
                    .bind(DB::id_param(row.id))
                    .bind(row.tenant_id.as_str())
                    .bind(row.org_id.as_str())
                    .bind(row.user_id.as_str())
                    .bind(tokens.login_url.as_str())
                    .bind(tokens.instance_url.as_str())
                    .bind(tokens.scopes.as_str())
                    .bind(tokens.access_token_enc.as_str())
                    .bind(tokens.refresh_token_enc.as_str())
                    .bind(tokens.issued_at)
                    .bind(tokens.access_expires_at)
                    .bind(tokens.expiry_assumed)
                    .bind(row.created_at)
                    .bind(tokens.username.as_deref());
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
        let row = self
            .fetch_optional(
                self.query(sql::SELECT_CONNECTION)
                    .bind(tenant_id)
                    .bind(DB::id_param(id)),
            )
            .await?;
        Self::connection_from_optional(row)
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
        let Some(event) = event else {
            return Ok(self.execute(delete).await? > 0);
        };
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let deleted = DB::rows_affected(&delete.execute(&mut *tx).await.map_err(map)?) > 0;
        if deleted {
            self.insert_event(&mut tx, event).await?;
        }
        tx.commit().await.map_err(map)?;
        Ok(deleted)
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
        let now_row = self.fetch_optional(self.query(DB::SELECT_NOW)).await?;
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
        let row = self
            .fetch_optional(
                self.query(DB::ACQUIRE_LEASE)
                    .bind(tenant_id)
                    .bind(DB::id_param(id))
                    .bind(lease_id)
                    .bind(holder)
                    .bind(duration_ms),
            )
            .await?;
        Self::connection_from_optional(row)
    }

    pub async fn commit_refreshed(
        &self,
        id: Uuid,
        lease_id: &str,
        update: &RefreshedTokens,
    ) -> Result<ConnectionRecord, StoreError> {
        let row = self
            .fetch_optional(
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
            .await?;
        Self::connection_from_optional(row)?.ok_or(StoreError::LeaseLost)
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
        let Some(event) = event else {
            let row = self.fetch_optional(query).await?;
            return Self::connection_from_optional(row)?.ok_or(StoreError::LeaseLost);
        };
        let map = sql::map_err::<DB>;
        let mut tx = self.pool.begin().await.map_err(map)?;
        let row = query.fetch_optional(&mut *tx).await.map_err(map)?;
        let Some(record) = Self::connection_from_optional(row)? else {
            tx.rollback().await.map_err(map)?;
            return Err(StoreError::LeaseLost);
        };
        self.insert_event(&mut tx, event).await?;
        tx.commit().await.map_err(map)?;
        Ok(record)
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
                self.query(DB::CLAIM_EVENTS)
                    .bind(claim_id)
                    .bind(now)
                    .bind(until)
                    .bind(limit),
            )
            .await?;
        let mut events = rows
            .iter()
            .map(|row| {
                Ok(ClaimedEvent {
                    seq: row.try_get("seq")?,
                    id: row.try_get("id")?,
                    event_type: row.try_get("event_type")?,
                    payload: row.try_get("payload")?,
                    created_at: row.try_get("created_at")?,
                    attempts: row.try_get("attempts")?,
                })
            })
            .collect::<Result<Vec<_>, sqlx::Error>>()
            .map_err(sql::map_err::<DB>)?;
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
                Ok(AuditEntry {
                    id: row.try_get("id").map_err(map)?,
                    at: row.try_get("at").map_err(map)?,
                    actor: row.try_get("actor").map_err(map)?,
                    action: row.try_get("action").map_err(map)?,
                    connection_id: if connection_id.is_empty() {
                        None
                    } else {
                        Some(Uuid::parse_str(&connection_id).map_err(|_| {
                            StoreError::Corrupt("audit entry with a malformed connection id".into())
                        })?)
                    },
                    request_id: (!request_id.is_empty()).then_some(request_id),
                    count: row.try_get("count").map_err(map)?,
                })
            })
            .collect()
    }

    pub async fn prune_audit(&self, before: Millis) -> Result<u64, StoreError> {
        self.execute(self.query(sql::PRUNE_AUDIT).bind(before))
            .await
    }
}
