//! The database section: URL, migrations and connection pool.
//!
//! Resolved in two steps, `url` early and `pool` after the other sections, which is the
//! order in which the settings have always been checked: with several bad settings, the
//! same one is reported first.

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::ConfigError;
use super::layers::Layers;

/// `database_url`: Postgres or SQLite. Never echoed in errors (it may carry a password).
pub(super) fn url(l: &Layers) -> Result<SecretString, ConfigError> {
    let database_url = SecretString::from(
        l.raw
            .database_url
            .as_ref()
            .ok_or_else(|| l.err("database_url", "must be set"))?
            .expose_secret()
            .trim(),
    );
    let url = database_url.expose_secret();
    if !(url.starts_with("postgres://")
        || url.starts_with("postgresql://")
        || url.starts_with("sqlite:"))
    {
        // Never echo the URL: it may carry a password.
        return Err(l.err(
            "database_url",
            "must start with postgres://, postgresql:// or sqlite://",
        ));
    }
    Ok(database_url)
}

/// How the database is used once reached.
pub(super) struct Pool {
    pub(super) migrate_on_start: bool,
    pub(super) max_connections: u32,
    pub(super) acquire_timeout: Duration,
    /// The database URL points at a transaction-mode pooler (PgBouncer).
    pub(super) transaction_pooler: bool,
}

/// `migrate_on_start` and the `db_…` pool settings; warns when production runs on the
/// default SQLite database.
pub(super) fn pool(
    l: &Layers,
    production: bool,
    warnings: &mut Vec<String>,
) -> Result<Pool, ConfigError> {
    if production && !l.is_explicit("database_url") {
        warnings.push(
            "DATABASE_URL is not set: using the embedded SQLite default (one replica only)".into(),
        );
    }
    Ok(Pool {
        migrate_on_start: l.raw.migrate_on_start,
        max_connections: l.raw.db_max_connections,
        acquire_timeout: l.raw.db_acquire_timeout_ms,
        transaction_pooler: l.raw.db_transaction_pooler,
    })
}
