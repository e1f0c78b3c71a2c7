//! Layered settings, validated once at start.
//!
//! Layers, later ones win: built-in defaults (`defaults.toml`) → `config/default.toml` (if
//! present) → the file named by `--config` / `VALO_OAUTH_CONFIG` → environment variables.
//! Every setting has one name: `snake_case` in TOML and `VALO_OAUTH_` + upper case in the
//! environment (`listen` ↔ `VALO_OAUTH_LISTEN`), except the database URL, which is the
//! conventional `DATABASE_URL`. Secrets also accept a `…_FILE` variant
//! (`VALO_OAUTH_API_JWT_SECRET_FILE`, or `api_jwt_secret_file` in TOML) for container secrets.
//!
//! A bad value is a [`ConfigError`] naming where the value came from and what is wrong;
//! `main` prints it on one line and exits with code 2.
//!
//! `layers` merges the layers with figment and extracts `raw::Raw` (each value parsed to
//! its type, unknown keys refused); `resolve` turns it into [`Settings`] one section at a time
//! (one file each), checking what involves more than one setting or the environment.

mod api_auth;
mod database;
mod dev_secrets;
mod events;
mod keys;
mod layers;
mod limits;
mod logging;
mod raw;
mod redirects;
mod salesforce;
mod server;
mod tokens;

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests;

use std::fmt;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use url::Url;

pub use self::api_auth::{ApiAuthSettings, ApiKey, public_key};
use self::dev_secrets::DevSecrets;
pub use self::events::{AuditSettings, WebhookSettings};
use self::layers::Layers;
pub use self::layers::{EnvMap, env_var_name, environment_names, load};
pub use self::limits::Protection;
pub use self::logging::LogFormat;
pub use self::salesforce::SalesforceSettings;
pub use self::tokens::TokenSettings;
use crate::crypto::Keyring;
use crate::salesforce::HostPolicy;

/// The callback path Salesforce redirects to; fixed because every customer's ECA is
/// configured with `{public_url}/oauth2/v1/callback/salesforce`.
pub const CALLBACK_PATH: &str = "/oauth2/v1/callback/salesforce";

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

/// The validated settings of one process. `Debug` shows no secret: every type holding one
/// redacts it.
#[derive(Clone, Debug)]
pub struct Settings {
    pub env: Environment,
    /// The public listener: the callback, its pages and `/healthz` (and everything else
    /// when `internal_listen` is unset).
    pub listen: SocketAddr,
    /// The internal listener: the API, `/metrics`, `/openapi.json`, `/readyz`, `/healthz`.
    pub internal_listen: Option<SocketAddr>,
    /// Public base URL, no trailing slash.
    pub public_url: Url,
    pub database_url: SecretString,
    pub migrate_on_start: bool,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    /// The database URL points at a transaction-mode pooler (PgBouncer).
    pub db_transaction_pooler: bool,
    pub api_auth: ApiAuthSettings,
    pub log: String,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub body_limit_bytes: usize,
    /// What the domain (the broker) is given: keys, Salesforce, tokens, events, audit.
    pub broker: BrokerSettings,
    /// What protects both listeners from slow, idle, too many or too eager clients.
    pub protection: Protection,
    /// Notes for the operator produced while loading (generated development secrets),
    /// logged once telemetry is up.
    pub warnings: Vec<String>,
}

impl Settings {
    /// The redirect URI registered in every tenant's ECA.
    pub fn callback_url(&self) -> String {
        self.broker.callback_url.clone()
    }
}

/// What the domain needs of the process's settings, and nothing more (no listener, no
/// database URL, no API authentication, no logging).
#[derive(Clone, Debug)]
pub struct BrokerSettings {
    /// The redirect URI every tenant's ECA is configured with.
    pub callback_url: String,
    /// Origins (`scheme://host[:port]`) allowed in `return_to`.
    pub return_to_origins: Vec<String>,
    /// Which login hosts a tenant's app may name.
    pub login_hosts: HostPolicy,
    /// How long a started authorization may be completed.
    pub authorization_ttl: Duration,
    pub salesforce: SalesforceSettings,
    pub tokens: TokenSettings,
    /// How long in-flight requests and refreshes get to finish and commit after SIGTERM.
    pub shutdown_grace: Duration,
    /// The encryption keys; the first seals.
    pub keyring: Arc<Keyring>,
    /// The database pool's size (`db_max_connections`), of which the refresh path takes its share.
    pub db_pool_size: u32,
    /// Signed webhooks to the Valo backend; None: no events are written.
    pub webhooks: Option<WebhookSettings>,
    pub audit: AuditSettings,
}

/// A setting that could not be used, named as the operator wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub setting: String,
    pub problem: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.setting, self.problem)
    }
}

impl std::error::Error for ConfigError {}

/// Resolves the sections in the order their settings are checked: with several bad
/// settings, the first in this order is the one reported. Development secrets are
/// generated (by the keys and API auth sections) only once the settings before them hold.
fn resolve(l: &Layers) -> Result<Settings, ConfigError> {
    let server = server::resolve(l)?;
    let production = server.production();
    let database_url = database::url(l)?;
    let mut dev = DevSecrets::new(production, &server.data_dir);
    let keyring = keys::keyring(l, &mut dev)?;
    let api_auth = api_auth::resolve(l, &mut dev)?;
    let mut warnings = dev.warnings;
    let redirects = redirects::resolve(l, production)?;
    let logging = logging::resolve(l, production)?;
    let salesforce = salesforce::resolve(l)?;
    let tokens = tokens::resolve(l, &salesforce)?;
    let pool = database::pool(l, production, &mut warnings)?;
    let limits = limits::resolve(l)?;
    if limits.protection.request_timeout <= tokens.refresh_wait {
        warnings.push(format!(
            "{} ({} s) is not more than {} ({} ms): a caller waiting for a refresh gets the request timeout's 503 first",
            l.name("request_timeout_secs"),
            limits.protection.request_timeout.as_secs(),
            l.name("refresh_wait_ms"),
            tokens.refresh_wait.as_millis()
        ));
    }
    let webhooks = events::webhooks(l)?;
    let audit = events::audit(l)?;
    let broker = BrokerSettings {
        callback_url: format!(
            "{}{CALLBACK_PATH}",
            server.public_url.as_str().trim_end_matches('/')
        ),
        return_to_origins: redirects.return_to_origins,
        login_hosts: redirects.login_hosts,
        authorization_ttl: limits.authorization_ttl,
        salesforce,
        tokens,
        shutdown_grace: limits.shutdown_grace,
        keyring: Arc::new(keyring),
        db_pool_size: pool.max_connections,
        webhooks,
        audit,
    };
    Ok(Settings {
        env: server.env,
        listen: server.listen,
        internal_listen: server.internal_listen,
        public_url: server.public_url,
        database_url,
        migrate_on_start: pool.migrate_on_start,
        db_max_connections: pool.max_connections,
        db_acquire_timeout: pool.acquire_timeout,
        db_transaction_pooler: pool.transaction_pooler,
        api_auth,
        log: logging.log,
        log_format: logging.format,
        data_dir: server.data_dir,
        body_limit_bytes: limits.body_limit_bytes,
        broker,
        protection: limits.protection,
        warnings,
    })
}
