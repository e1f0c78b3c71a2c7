//! Layered settings, validated once at start.
//!
//! Layers, later ones win: built-in defaults → `config/default.toml` (if present) → the file
//! named by `--config` / `VALO_OAUTH_CONFIG` → environment variables. Every setting has one
//! name: `snake_case` in TOML and `VALO_OAUTH_` + upper case in the environment
//! (`listen` ↔ `VALO_OAUTH_LISTEN`); the database URL is also read from the conventional
//! `DATABASE_URL`. Secrets also accept a `…_FILE` variant (`VALO_OAUTH_API_JWT_SECRET_FILE`,
//! or `api_jwt_secret_file` in TOML) for container secrets.
//!
//! A bad value is a [`ConfigError`] naming where the value came from and what is wrong;
//! `main` prints it on one line and exits with code 2.

use std::collections::BTreeMap;
use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use url::Url;

use crate::crypto::Keyring;
use crate::salesforce::HostPolicy;

/// The callback path Salesforce redirects to; fixed because every customer's ECA is
/// configured with `{public_url}/oauth2/v1/callback/salesforce`.
pub const CALLBACK_PATH: &str = "/oauth2/v1/callback/salesforce";

/// The least time a refresh lease outlives the Salesforce call's deadline.
const MIN_LEASE_GRACE: Duration = Duration::from_secs(20);

/// Every setting: its TOML name, its default (None: no default), whether it is a secret
/// (then `…_file` is accepted too), and what it means (used for `--help`-like docs).
const SETTINGS: &[(&str, Option<&str>, bool)] = &[
    ("env", Some("development"), false),
    ("listen", Some("127.0.0.1:8080"), false),
    ("public_url", None, false),
    ("database_url", Some("sqlite://data/valo-oauth.db"), true),
    ("migrate_on_start", Some("true"), false),
    ("db_max_connections", Some("10"), false),
    ("db_acquire_timeout_ms", Some("800"), false),
    ("db_transaction_pooler", Some("false"), false),
    ("encryption_keys", None, true),
    ("api_jwt_secret", None, true),
    ("api_jwt_public_key_file", None, false),
    ("api_jwt_audience", Some("valo-oauth"), false),
    ("api_jwt_issuer", None, false),
    ("api_jwt_cache_capacity", Some("10000"), false),
    (
        "login_hosts",
        Some("login.salesforce.com,test.salesforce.com,*.my.salesforce.com"),
        false,
    ),
    ("return_to_origins", Some(""), false),
    ("log", Some("info"), false),
    ("log_format", None, false),
    ("data_dir", Some("data"), false),
    ("body_limit_bytes", Some("65536"), false),
    (
        "salesforce_scopes",
        Some("api refresh_token offline_access"),
        false,
    ),
    ("salesforce_prompt", None, false),
    ("salesforce_connect_timeout_ms", Some("3000"), false),
    ("salesforce_timeout_ms", Some("10000"), false),
    ("salesforce_max_response_bytes", Some("65536"), false),
    ("salesforce_max_in_flight", Some("256"), false),
    ("assumed_token_lifetime_secs", Some("7200"), false),
    ("authorization_ttl_secs", Some("600"), false),
    ("refresh_wait_ms", Some("15000"), false),
    ("refresh_lease_grace_secs", Some("20"), false),
    ("refresh_backoff_max_secs", Some("300"), false),
    ("keepalive_interval_secs", Some("604800"), false),
    ("keepalive_sweep_secs", Some("60"), false),
    ("keepalive_concurrency", Some("4"), false),
    ("token_cache_revalidate_secs", Some("30"), false),
    ("shutdown_grace_secs", Some("20"), false),
];

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environment {
    Development,
    Production,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Json,
    Pretty,
}

/// How API bearer tokens are verified (the algorithm is pinned by this choice).
#[derive(Clone)]
pub enum ApiKey {
    /// HS256 with the value's UTF-8 bytes as the key.
    Hs256(SecretString),
    /// EdDSA or RS256 with a PEM public key (the PEM decides which).
    PublicKeyPem(Vec<u8>),
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Hs256(_) => f.write_str("Hs256([redacted])"),
            Self::PublicKeyPem(_) => f.write_str("PublicKeyPem(..)"),
        }
    }
}

#[derive(Clone, Debug)]
pub struct ApiAuthSettings {
    pub key: ApiKey,
    pub audience: String,
    pub issuer: Option<String>,
    /// How many verified bearer tokens to remember (0 disables the cache).
    pub cache_capacity: usize,
}

#[derive(Clone, Debug)]
pub struct SalesforceSettings {
    pub scopes: String,
    pub prompt: Option<String>,
    pub connect_timeout: Duration,
    pub request_timeout: Duration,
    pub max_response_bytes: usize,
    /// Calls to Salesforce in flight at once on this replica, shared fairly by tenants.
    pub max_in_flight: usize,
    /// Access-token lifetime assumed when introspection cannot tell (Salesforce sends no
    /// `expires_in`; the default session timeout is 2 hours).
    pub assumed_token_lifetime: Duration,
}

#[derive(Clone, Debug)]
pub struct TokenSettings {
    /// How long a caller waits for a refresh (its own, or another replica's of the same
    /// connection) before it gets 503 `service_unavailable` with `Retry-After`.
    pub refresh_wait: Duration,
    /// How long a refresh lease lasts: the Salesforce request timeout (the hard deadline of
    /// the call) plus the grace in which a commit is retried while the database is away.
    pub lease_duration: Duration,
    /// Upper bound of the back-off after transient refresh failures.
    pub backoff_max: Duration,
    /// Refresh every active connection not refreshed for this long (None: disabled).
    pub keepalive_interval: Option<Duration>,
    pub keepalive_sweep: Duration,
    pub keepalive_concurrency: usize,
    /// How long a replica serves a cached token before re-reading the row (to notice a
    /// refresh, reauthorization or deletion made by another replica).
    pub cache_revalidate: Duration,
}

/// The validated settings of one process.
#[derive(Clone)]
pub struct Settings {
    pub env: Environment,
    pub listen: SocketAddr,
    /// Public base URL, no trailing slash.
    pub public_url: Url,
    pub database_url: SecretString,
    pub migrate_on_start: bool,
    pub db_max_connections: u32,
    pub db_acquire_timeout: Duration,
    /// The database URL points at a transaction-mode pooler (PgBouncer).
    pub db_transaction_pooler: bool,
    pub keyring: Arc<Keyring>,
    pub api_auth: ApiAuthSettings,
    pub login_hosts: HostPolicy,
    /// Origins (`scheme://host[:port]`) allowed in `return_to`.
    pub return_to_origins: Vec<String>,
    pub log: String,
    pub log_format: LogFormat,
    pub data_dir: PathBuf,
    pub body_limit_bytes: usize,
    pub salesforce: SalesforceSettings,
    pub authorization_ttl: Duration,
    pub tokens: TokenSettings,
    /// How long in-flight refreshes get to finish and commit after SIGTERM.
    pub shutdown_grace: Duration,
    /// Notes for the operator produced while loading (generated development secrets),
    /// logged once telemetry is up.
    pub warnings: Vec<String>,
}

impl fmt::Debug for Settings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Settings")
            .field("env", &self.env)
            .field("listen", &self.listen)
            .field("public_url", &self.public_url.as_str())
            .field("database_url", &"[redacted]")
            .field("keyring", &self.keyring)
            .field("api_auth", &self.api_auth)
            .finish_non_exhaustive()
    }
}

impl Settings {
    /// The redirect URI registered in every tenant's ECA.
    pub fn callback_url(&self) -> String {
        format!(
            "{}{CALLBACK_PATH}",
            self.public_url.as_str().trim_end_matches('/')
        )
    }
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

/// Where a raw value came from, to name it in errors.
#[derive(Clone, Debug)]
enum Origin {
    Default,
    File(PathBuf),
    Env(String),
}

#[derive(Clone)]
struct Raw {
    value: String,
    origin: Origin,
}

/// The environment as a map, so tests can pass their own.
pub type EnvMap = BTreeMap<String, String>;

pub fn env_var_name(key: &str) -> String {
    if key == "database_url" {
        "DATABASE_URL".to_owned()
    } else {
        format!("VALO_OAUTH_{}", key.to_ascii_uppercase())
    }
}

struct Layers {
    values: BTreeMap<&'static str, Raw>,
}

impl Layers {
    fn name(&self, key: &str) -> String {
        match self.values.get(key).map(|r| &r.origin) {
            Some(Origin::Env(name)) => name.clone(),
            Some(Origin::File(path)) => format!("{key} in {}", path.display()),
            _ => env_var_name(key),
        }
    }

    fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: self.name(key),
            problem: problem.into(),
        }
    }

    fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|r| r.value.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    fn is_explicit(&self, key: &str) -> bool {
        self.values
            .get(key)
            .is_some_and(|r| !matches!(r.origin, Origin::Default))
            && self.get(key).is_some()
    }

    fn parse<T: std::str::FromStr>(&self, key: &str, what: &str) -> Result<T, ConfigError> {
        let raw = self.get(key).ok_or_else(|| self.err(key, "must be set"))?;
        raw.trim()
            .parse()
            .map_err(|_| self.err(key, format!("{raw:?} is not {what}")))
    }

    fn millis(&self, key: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(
            self.parse(key, "a whole number of milliseconds")?,
        ))
    }

    fn secs(&self, key: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            self.parse(key, "a whole number of seconds")?,
        ))
    }

    fn positive<T: std::str::FromStr + PartialOrd + Default>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<T, ConfigError> {
        let v: T = self.parse(key, what)?;
        if v <= T::default() {
            return Err(self.err(key, "must be greater than zero"));
        }
        Ok(v)
    }
}

fn known(key: &str) -> Option<&'static str> {
    SETTINGS.iter().map(|(k, _, _)| *k).find(|k| *k == key)
}

fn is_secret(key: &str) -> bool {
    SETTINGS.iter().any(|(k, _, s)| *k == key && *s)
}

fn read_secret_file(path: &Path, setting: &str) -> Result<String, ConfigError> {
    std::fs::read_to_string(path)
        .map(|s| s.trim_end_matches(['\n', '\r']).to_owned())
        .map_err(|e| ConfigError {
            setting: setting.to_owned(),
            problem: format!("cannot read {}: {e}", path.display()),
        })
}

fn load_toml(path: &Path, layers: &mut Layers) -> Result<(), ConfigError> {
    let file_err = |problem: String| ConfigError {
        setting: path.display().to_string(),
        problem,
    };
    let text = std::fs::read_to_string(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let table: toml::Table = text
        .parse()
        .map_err(|e: toml::de::Error| file_err(format!("invalid TOML: {}", e.message())))?;
    for (key, value) in table {
        let value = match value {
            toml::Value::String(s) => s,
            toml::Value::Integer(i) => i.to_string(),
            toml::Value::Boolean(b) => b.to_string(),
            toml::Value::Array(items) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    _ => String::new(),
                })
                .collect::<Vec<_>>()
                .join(","),
            _ => {
                return Err(file_err(format!(
                    "{key}: unsupported value (use a string, number, boolean or list)"
                )));
            }
        };
        let origin = Origin::File(path.to_owned());
        if let Some(base) = key
            .strip_suffix("_file")
            .and_then(known)
            .filter(|k| is_secret(k))
        {
            let setting = format!("{key} in {}", path.display());
            let value = read_secret_file(Path::new(&value), &setting)?;
            layers.values.insert(base, Raw { value, origin });
        } else if let Some(k) = known(&key) {
            layers.values.insert(k, Raw { value, origin });
        } else {
            return Err(file_err(format!("unknown setting {key:?}")));
        }
    }
    Ok(())
}

/// Loads and validates the settings from the given config file (if any) and environment.
/// `default_file` is `config/default.toml`, read when it exists.
pub fn load(
    default_file: &Path,
    config_file: Option<&Path>,
    env: &EnvMap,
) -> Result<Settings, ConfigError> {
    let mut layers = Layers {
        values: BTreeMap::new(),
    };
    for (key, default, _) in SETTINGS {
        if let Some(v) = default {
            layers.values.insert(
                key,
                Raw {
                    value: (*v).to_owned(),
                    origin: Origin::Default,
                },
            );
        }
    }
    if default_file.exists() {
        load_toml(default_file, &mut layers)?;
    }
    let config_file = config_file
        .map(Path::to_path_buf)
        .or_else(|| env.get("VALO_OAUTH_CONFIG").map(PathBuf::from));
    if let Some(path) = config_file {
        load_toml(&path, &mut layers)?;
    }
    for (key, _, secret) in SETTINGS {
        let name = env_var_name(key);
        if let Some(v) = env.get(&name) {
            layers.values.insert(
                key,
                Raw {
                    value: v.clone(),
                    origin: Origin::Env(name.clone()),
                },
            );
        }
        let file_name = format!("{name}_FILE");
        if *secret && let Some(path) = env.get(&file_name) {
            let value = read_secret_file(Path::new(path), &file_name)?;
            layers.values.insert(
                key,
                Raw {
                    value,
                    origin: Origin::Env(file_name),
                },
            );
        }
    }
    resolve(&layers)
}

fn resolve(l: &Layers) -> Result<Settings, ConfigError> {
    let env = match l.get("env").unwrap_or("development").trim() {
        "development" => Environment::Development,
        "production" => Environment::Production,
        other => {
            return Err(l.err(
                "env",
                format!("{other:?} is not one of development, production"),
            ));
        }
    };
    let production = env == Environment::Production;
    let listen: SocketAddr = l.parse("listen", "a socket address like 127.0.0.1:8080")?;
    let data_dir = PathBuf::from(l.get("data_dir").unwrap_or("data"));
    let mut warnings = Vec::new();

    let public_url = match l.get("public_url") {
        Some(raw) => {
            let url = Url::parse(raw.trim())
                .map_err(|e| l.err("public_url", format!("{raw:?} is not a URL: {e}")))?;
            if url.scheme() != "https" && url.scheme() != "http" {
                return Err(l.err("public_url", "must be an http(s) URL"));
            }
            if production && url.scheme() != "https" {
                return Err(l.err(
                    "public_url",
                    "must use https in production (the callback carries authorization codes)",
                ));
            }
            if url.query().is_some() || url.fragment().is_some() || !url.username().is_empty() {
                return Err(l.err(
                    "public_url",
                    "must not contain a query, fragment or user info",
                ));
            }
            url
        }
        None if production => {
            return Err(l.err(
                "public_url",
                "must be set in production (the callback registered in each ECA)",
            ));
        }
        None => {
            let port = listen.port();
            Url::parse(&format!("http://localhost:{port}"))
                .map_err(|e| l.err("public_url", e.to_string()))?
        }
    };

    let database_url = SecretString::from(
        l.get("database_url")
            .ok_or_else(|| l.err("database_url", "must be set"))?
            .trim()
            .to_owned(),
    );
    {
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
    }

    let encryption_keys = match l.get("encryption_keys") {
        Some(v) => SecretString::from(v.to_owned()),
        None if production => {
            return Err(l.err(
                "encryption_keys",
                "must be set in production (generate one with `valo-oauth keygen`)",
            ));
        }
        None => {
            let (value, note) = dev_secret(&data_dir, "dev-encryption-keys", || {
                Keyring::generate_key_spec("dev1")
                    .expose_secret()
                    .to_owned()
            })
            .map_err(|e| l.err("encryption_keys", e))?;
            warnings.extend(note);
            SecretString::from(value)
        }
    };
    let keyring =
        Keyring::parse(&encryption_keys).map_err(|e| l.err("encryption_keys", e.to_string()))?;

    let key = match (l.get("api_jwt_secret"), l.get("api_jwt_public_key_file")) {
        (Some(_), Some(_)) => {
            return Err(l.err(
                "api_jwt_public_key_file",
                format!("set either it or {}, not both", l.name("api_jwt_secret")),
            ));
        }
        (Some(secret), None) => {
            if secret.len() < 32 {
                return Err(l.err(
                    "api_jwt_secret",
                    "must be at least 32 bytes (RFC 7518 §3.2)",
                ));
            }
            ApiKey::Hs256(SecretString::from(secret.to_owned()))
        }
        (None, Some(path)) => {
            let pem = std::fs::read(path.trim()).map_err(|e| {
                l.err(
                    "api_jwt_public_key_file",
                    format!("cannot read {path}: {e}"),
                )
            })?;
            crate::http::auth::check_public_key(&pem)
                .map_err(|e| l.err("api_jwt_public_key_file", e))?;
            ApiKey::PublicKeyPem(pem)
        }
        (None, None) if production => {
            return Err(l.err(
                "api_jwt_secret",
                format!(
                    "must be set in production (or {})",
                    l.name("api_jwt_public_key_file")
                ),
            ));
        }
        (None, None) => {
            let (value, note) = dev_secret(&data_dir, "dev-api-jwt-secret", || {
                let mut bytes = [0u8; 32];
                rand::RngCore::fill_bytes(&mut rand::rngs::OsRng, &mut bytes);
                base64::Engine::encode(&base64::engine::general_purpose::URL_SAFE_NO_PAD, bytes)
            })
            .map_err(|e| l.err("api_jwt_secret", e))?;
            warnings.extend(note);
            ApiKey::Hs256(SecretString::from(value))
        }
    };
    let api_auth = ApiAuthSettings {
        key,
        audience: l
            .get("api_jwt_audience")
            .ok_or_else(|| l.err("api_jwt_audience", "must not be empty"))?
            .trim()
            .to_owned(),
        issuer: l.get("api_jwt_issuer").map(|s| s.trim().to_owned()),
        cache_capacity: l.parse("api_jwt_cache_capacity", "a whole number")?,
    };

    let login_hosts = HostPolicy::parse(l.get("login_hosts").unwrap_or_default())
        .map_err(|e| l.err("login_hosts", e))?;

    let mut return_to_origins = Vec::new();
    for entry in l
        .get("return_to_origins")
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
    {
        let url = Url::parse(entry)
            .map_err(|_| l.err("return_to_origins", format!("{entry:?} is not an origin")))?;
        let origin = url.origin();
        if !origin.is_tuple()
            || !(url.scheme() == "https" || url.scheme() == "http")
            || url.path() != "/"
            || url.query().is_some()
        {
            return Err(l.err(
                "return_to_origins",
                format!("{entry:?} is not an origin like https://app.valo.ai"),
            ));
        }
        if production && url.scheme() != "https" {
            return Err(l.err(
                "return_to_origins",
                format!("{entry:?} must use https in production"),
            ));
        }
        return_to_origins.push(origin.ascii_serialization());
    }

    let log_format = match l.get("log_format").map(str::trim) {
        Some("json") => LogFormat::Json,
        Some("pretty") => LogFormat::Pretty,
        Some(other) => {
            return Err(l.err(
                "log_format",
                format!("{other:?} is not one of json, pretty"),
            ));
        }
        None if production => LogFormat::Json,
        None => LogFormat::Pretty,
    };

    let prompt = match l.get("salesforce_prompt").map(str::trim) {
        None => None,
        Some(p)
            if p.split(' ')
                .all(|w| matches!(w, "login" | "consent" | "select_account")) =>
        {
            Some(p.to_owned())
        }
        Some(p) => {
            return Err(l.err(
                "salesforce_prompt",
                format!("{p:?} is not a space-separated list of login, consent, select_account"),
            ));
        }
    };
    let scopes = l
        .get("salesforce_scopes")
        .ok_or_else(|| l.err("salesforce_scopes", "must not be empty"))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let salesforce = SalesforceSettings {
        scopes,
        prompt,
        connect_timeout: l.millis("salesforce_connect_timeout_ms")?,
        request_timeout: l.millis("salesforce_timeout_ms")?,
        max_response_bytes: l.positive("salesforce_max_response_bytes", "a number of bytes")?,
        max_in_flight: l.positive("salesforce_max_in_flight", "a whole number")?,
        assumed_token_lifetime: l.secs("assumed_token_lifetime_secs")?,
    };
    if salesforce.request_timeout.is_zero() {
        return Err(l.err("salesforce_timeout_ms", "must be greater than zero"));
    }
    if salesforce.assumed_token_lifetime < Duration::from_secs(60) {
        return Err(l.err("assumed_token_lifetime_secs", "must be at least 60"));
    }

    let keepalive_interval = l.secs("keepalive_interval_secs")?;
    // The lease outlives the call's hard deadline by the grace in which the rotated token's
    // commit is retried; once another replica may take the lease, no holder can still be
    // presenting the refresh token. 20 s covers a database failover or pooler restart.
    let lease_grace = l.secs("refresh_lease_grace_secs")?;
    if lease_grace < MIN_LEASE_GRACE {
        return Err(l.err(
            "refresh_lease_grace_secs",
            format!("must be at least {}", MIN_LEASE_GRACE.as_secs()),
        ));
    }
    let tokens = TokenSettings {
        refresh_wait: l.millis("refresh_wait_ms")?,
        lease_duration: salesforce.request_timeout + lease_grace,
        backoff_max: l.secs("refresh_backoff_max_secs")?,
        keepalive_interval: (!keepalive_interval.is_zero()).then_some(keepalive_interval),
        keepalive_sweep: l.secs("keepalive_sweep_secs")?,
        keepalive_concurrency: l.positive("keepalive_concurrency", "a whole number")?,
        cache_revalidate: l.secs("token_cache_revalidate_secs")?,
    };
    // A caller must be able to wait for one whole Salesforce call.
    if tokens.refresh_wait <= salesforce.request_timeout {
        return Err(l.err(
            "refresh_wait_ms",
            format!("must be more than {}", l.name("salesforce_timeout_ms")),
        ));
    }
    if tokens.keepalive_sweep.is_zero() {
        return Err(l.err("keepalive_sweep_secs", "must be greater than zero"));
    }

    if production && !l.is_explicit("database_url") {
        warnings.push(
            "DATABASE_URL is not set: using the embedded SQLite default (one replica only)".into(),
        );
    }

    Ok(Settings {
        env,
        listen,
        public_url,
        database_url,
        migrate_on_start: l.parse("migrate_on_start", "true or false")?,
        db_max_connections: l.positive("db_max_connections", "a whole number")?,
        db_acquire_timeout: l.millis("db_acquire_timeout_ms")?,
        db_transaction_pooler: l.parse("db_transaction_pooler", "true or false")?,
        keyring: Arc::new(keyring),
        api_auth,
        login_hosts,
        return_to_origins,
        log: l.get("log").unwrap_or("info").to_owned(),
        log_format,
        data_dir,
        body_limit_bytes: l.positive("body_limit_bytes", "a number of bytes")?,
        salesforce,
        authorization_ttl: l.secs("authorization_ttl_secs")?,
        tokens,
        shutdown_grace: l.secs("shutdown_grace_secs")?,
        warnings,
    })
}

/// Reads a development secret from `data_dir/name`, generating it (mode 0600) when
/// missing. Returns the value and a warning for the operator when it was generated.
fn dev_secret(
    data_dir: &Path,
    name: &str,
    generate: impl FnOnce() -> String,
) -> Result<(String, Option<String>), String> {
    let path = data_dir.join(name);
    if let Ok(existing) = std::fs::read_to_string(&path) {
        let existing = existing.trim().to_owned();
        if !existing.is_empty() {
            return Ok((existing, None));
        }
    }
    create_private_dir(data_dir)
        .map_err(|e| format!("cannot create {}: {e}", data_dir.display()))?;
    let value = generate();
    write_private(&path, &value).map_err(|e| format!("cannot write {}: {e}", path.display()))?;
    Ok((
        value,
        Some(format!(
            "DEVELOPMENT ONLY: generated {} — never use it in production",
            path.display()
        )),
    ))
}

/// Creates the data folder readable by its owner only (it holds the SQLite database and
/// the development secrets).
#[cfg(unix)]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::DirBuilderExt as _;
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
}

#[cfg(not(unix))]
fn create_private_dir(dir: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(dir)
}

#[cfg(unix)]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(value.as_bytes())?;
    file.write_all(b"\n")
}

#[cfg(not(unix))]
fn write_private(path: &Path, value: &str) -> std::io::Result<()> {
    std::fs::write(path, format!("{value}\n"))
}

#[cfg(test)]
#[expect(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)], dir: &Path) -> EnvMap {
        let mut m: EnvMap = pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        m.entry("VALO_OAUTH_DATA_DIR".into())
            .or_insert_with(|| dir.display().to_string());
        m
    }

    fn tmp() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("valo-config-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn load_env(pairs: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = tmp();
        load(&dir.join("none.toml"), None, &env(pairs, &dir))
    }

    #[test]
    fn development_defaults_generate_private_secrets() {
        let dir = tmp();
        let s = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
        assert_eq!(s.env, Environment::Development);
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(
            s.callback_url(),
            "http://localhost:8080/oauth2/v1/callback/salesforce"
        );
        assert_eq!(s.warnings.len(), 2);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(dir.join("dev-api-jwt-secret"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let debug = format!("{s:?}");
        let secret = match &s.api_auth.key {
            ApiKey::Hs256(k) => k.expose_secret().to_owned(),
            ApiKey::PublicKeyPem(_) => unreachable!(),
        };
        assert!(
            !debug.contains(&secret),
            "Debug redacts the API secret: {debug}"
        );
        let key = std::fs::read_to_string(dir.join("dev-encryption-keys")).unwrap();
        let key_material = key.trim().split_once(':').unwrap().1;
        assert!(!debug.contains(key_material), "Debug redacts the keys");
        // The second start reuses them, silently.
        let again = load(&dir.join("none.toml"), None, &env(&[], &dir)).unwrap();
        assert!(again.warnings.is_empty());
        assert_eq!(again.keyring.primary_key_id(), "dev1");
    }

    #[test]
    fn production_refuses_missing_keys() {
        let err = load_env(&[("VALO_OAUTH_ENV", "production")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_PUBLIC_URL");
        let err = load_env(&[
            ("VALO_OAUTH_ENV", "production"),
            ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_ENCRYPTION_KEYS");
        let key = Keyring::generate_key_spec("k1");
        let err = load_env(&[
            ("VALO_OAUTH_ENV", "production"),
            ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
            ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
        ])
        .unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
        let ok = load_env(&[
            ("VALO_OAUTH_ENV", "production"),
            ("VALO_OAUTH_PUBLIC_URL", "https://api.valo.ai"),
            ("VALO_OAUTH_ENCRYPTION_KEYS", key.expose_secret()),
            (
                "VALO_OAUTH_API_JWT_SECRET",
                "0123456789abcdef0123456789abcdef",
            ),
        ])
        .unwrap();
        assert_eq!(ok.log_format, LogFormat::Json);
        assert_eq!(
            ok.callback_url(),
            "https://api.valo.ai/oauth2/v1/callback/salesforce"
        );
    }

    #[test]
    fn bad_values_name_the_setting_without_echoing_secrets() {
        let err = load_env(&[("VALO_OAUTH_LISTEN", "nonsense")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_LISTEN");
        assert!(err.problem.contains("nonsense"));
        let err = load_env(&[("DATABASE_URL", "mysql://u:hunter2@h/db")]).unwrap_err();
        assert_eq!(err.setting, "DATABASE_URL");
        assert!(!err.to_string().contains("hunter2"));
        let err = load_env(&[("VALO_OAUTH_ENCRYPTION_KEYS", "k1:c2hvcnRzZWNyZXQ=")]).unwrap_err();
        assert!(!err.to_string().contains("c2hvcnRzZWNyZXQ"));
        let err = load_env(&[("VALO_OAUTH_API_JWT_SECRET", "short")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_API_JWT_SECRET");
        let err =
            load_env(&[("VALO_OAUTH_RETURN_TO_ORIGINS", "https://app.valo.ai/path")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_RETURN_TO_ORIGINS");
        let err = load_env(&[("VALO_OAUTH_LOGIN_HOSTS", "http://")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_LOGIN_HOSTS");
        let err = load_env(&[("VALO_OAUTH_REFRESH_WAIT_MS", "5000")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_REFRESH_WAIT_MS");
        let err = load_env(&[("VALO_OAUTH_REFRESH_LEASE_GRACE_SECS", "19")]).unwrap_err();
        assert_eq!(err.setting, "VALO_OAUTH_REFRESH_LEASE_GRACE_SECS");
    }

    #[test]
    fn layers_file_then_env_and_secret_files() {
        let dir = tmp();
        let secret_file = dir.join("jwt");
        std::fs::write(&secret_file, "from-a-file-0123456789abcdef012345\n").unwrap();
        let file = dir.join("extra.toml");
        std::fs::write(
            &file,
            format!(
                "listen = \"127.0.0.1:9000\"\nreturn_to_origins = [\"https://app.valo.ai\"]\napi_jwt_secret_file = {:?}\n",
                secret_file.display().to_string()
            ),
        )
        .unwrap();
        let s = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap();
        assert_eq!(s.listen.port(), 9000);
        assert_eq!(s.return_to_origins, vec!["https://app.valo.ai".to_owned()]);
        match &s.api_auth.key {
            ApiKey::Hs256(k) => assert_eq!(k.expose_secret(), "from-a-file-0123456789abcdef012345"),
            ApiKey::PublicKeyPem(_) => unreachable!(),
        }
        let s = load(
            &dir.join("none.toml"),
            Some(&file),
            &env(&[("VALO_OAUTH_LISTEN", "127.0.0.1:9100")], &dir),
        )
        .unwrap();
        assert_eq!(s.listen.port(), 9100);
        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        let err = load(&dir.join("none.toml"), Some(&file), &env(&[], &dir)).unwrap_err();
        assert!(err.problem.contains("unknown setting \"lisen\""), "{err}");
    }
}
