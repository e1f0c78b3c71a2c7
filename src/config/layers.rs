//! The layers of raw settings and how they are loaded.
//!
//! Built-in defaults, then `config/default.toml` (if present), then the file named by
//! `--config` / `VALO_OAUTH_CONFIG`, then environment variables; later layers win. Each raw
//! value remembers where it came from, so [`Layers::err`] names it as the operator wrote it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use super::{ConfigError, Settings};

/// Every setting: its TOML name, its default (None: no default), whether it is a secret
/// (then `…_file` is accepted too), and what it means (used for `--help`-like docs).
const SETTINGS: &[(&str, Option<&str>, bool)] = &[
    ("env", Some("development"), false),
    ("listen", Some("127.0.0.1:8080"), false),
    ("internal_listen", None, false),
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
    ("token_cache_revalidate_secs", Some("5"), false),
    ("token_cache_capacity", Some("100000"), false),
    ("shutdown_grace_secs", Some("20"), false),
    ("header_read_timeout_secs", Some("10"), false),
    ("idle_timeout_secs", Some("30"), false),
    ("request_timeout_secs", Some("20"), false),
    ("max_concurrent_requests", Some("1024"), false),
    ("callback_rate_limit_per_minute", Some("60"), false),
    ("callback_rate_limit_burst", Some("20"), false),
    ("trust_forwarded_for", Some("false"), false),
    ("webhook_url", None, false),
    ("webhook_secret", None, true),
    ("webhook_timeout_ms", Some("10000"), false),
    ("webhook_retry_base_ms", Some("5000"), false),
    ("webhook_retry_max_interval_secs", Some("3600"), false),
    ("webhook_retry_period_secs", Some("86400"), false),
    ("webhook_retention_secs", Some("604800"), false),
    ("webhook_poll_ms", Some("1000"), false),
    ("audit_enabled", Some("true"), false),
    ("audit_flush_ms", Some("5000"), false),
    ("audit_retention_days", Some("90"), false),
];

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

/// Every environment variable the service reads (`…_FILE` for secrets, and
/// `VALO_OAUTH_CONFIG`), for operators and for checking deployment files against.
pub fn environment_names() -> Vec<String> {
    let mut names = vec!["VALO_OAUTH_CONFIG".to_owned()];
    for (key, _, secret) in SETTINGS {
        names.push(env_var_name(key));
        if *secret {
            names.push(format!("{}_FILE", env_var_name(key)));
        }
    }
    names
}

/// The raw settings after layering, each with its origin.
pub(super) struct Layers {
    values: BTreeMap<&'static str, Raw>,
}

impl Layers {
    /// The built-in defaults, the first layer.
    fn defaults() -> Self {
        let mut layers = Self {
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
        layers
    }

    /// The setting's name as the operator wrote it (environment variable, or key in file).
    pub(super) fn name(&self, key: &str) -> String {
        match self.values.get(key).map(|r| &r.origin) {
            Some(Origin::Env(name)) => name.clone(),
            Some(Origin::File(path)) => format!("{key} in {}", path.display()),
            _ => env_var_name(key),
        }
    }

    pub(super) fn err(&self, key: &str, problem: impl Into<String>) -> ConfigError {
        ConfigError {
            setting: self.name(key),
            problem: problem.into(),
        }
    }

    /// The raw value, None when unset or blank.
    pub(super) fn get(&self, key: &str) -> Option<&str> {
        self.values
            .get(key)
            .map(|r| r.value.as_str())
            .filter(|v| !v.trim().is_empty())
    }

    /// Whether the operator set the value (rather than it being a default).
    pub(super) fn is_explicit(&self, key: &str) -> bool {
        self.values
            .get(key)
            .is_some_and(|r| !matches!(r.origin, Origin::Default))
            && self.get(key).is_some()
    }

    pub(super) fn parse<T: std::str::FromStr>(
        &self,
        key: &str,
        what: &str,
    ) -> Result<T, ConfigError> {
        let raw = self.get(key).ok_or_else(|| self.err(key, "must be set"))?;
        raw.trim()
            .parse()
            .map_err(|_| self.err(key, format!("{raw:?} is not {what}")))
    }

    pub(super) fn millis(&self, key: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_millis(
            self.parse(key, "a whole number of milliseconds")?,
        ))
    }

    pub(super) fn secs(&self, key: &str) -> Result<Duration, ConfigError> {
        Ok(Duration::from_secs(
            self.parse(key, "a whole number of seconds")?,
        ))
    }

    pub(super) fn positive<T: std::str::FromStr + PartialOrd + Default>(
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

/// A TOML value as a raw setting (a list becomes comma-separated); None if unsupported.
fn toml_raw(value: toml::Value) -> Option<String> {
    Some(match value {
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
        _ => return None,
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
        let value = toml_raw(value).ok_or_else(|| {
            file_err(format!(
                "{key}: unsupported value (use a string, number, boolean or list)"
            ))
        })?;
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

/// The environment layer: `VALO_OAUTH_…` (or `DATABASE_URL`), then `…_FILE` for secrets.
fn load_env(env: &EnvMap, layers: &mut Layers) -> Result<(), ConfigError> {
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
    Ok(())
}

/// Loads and validates the settings from the given config file (if any) and environment.
/// `default_file` is `config/default.toml`, read when it exists.
pub fn load(
    default_file: &Path,
    config_file: Option<&Path>,
    env: &EnvMap,
) -> Result<Settings, ConfigError> {
    let mut layers = Layers::defaults();
    if default_file.exists() {
        load_toml(default_file, &mut layers)?;
    }
    let config_file = config_file
        .map(Path::to_path_buf)
        .or_else(|| env.get("VALO_OAUTH_CONFIG").map(PathBuf::from));
    if let Some(path) = config_file {
        load_toml(&path, &mut layers)?;
    }
    load_env(env, &mut layers)?;
    super::resolve(&layers)
}
