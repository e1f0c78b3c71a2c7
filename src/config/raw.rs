//! The raw settings, one field per setting, as figment extracts them from the layers.
//!
//! Every value is read as text first, the way an environment variable holds it (a TOML number,
//! boolean or list is written back as text, a list comma-separated), then parsed by the field's
//! deserializer; a value that does not parse is an error naming what was expected, which
//! `layers` turns into one line naming the setting. What one setting alone cannot tell (one
//! setting against another, production rules) is checked by the section resolvers.
//!
//! Unknown keys are refused (`deny_unknown_fields`): a typo in a TOML file does not pass
//! silently. The field names are the settings' names (`layers::setting_keys` lists them).

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Error as _, SeqAccess, Unexpected, Visitor};

/// The settings after layering; blank text is unset (`None`).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Raw {
    // Server.
    #[serde(default, deserialize_with = "text")]
    pub(super) env: Option<String>,
    #[serde(deserialize_with = "socket")]
    pub(super) listen: SocketAddr,
    #[serde(default, deserialize_with = "internal_socket")]
    pub(super) internal_listen: Option<SocketAddr>,
    #[serde(default, deserialize_with = "text")]
    pub(super) public_url: Option<String>,
    // Database.
    #[serde(default, deserialize_with = "secret")]
    pub(super) database_url: Option<SecretString>,
    #[serde(deserialize_with = "flag")]
    pub(super) migrate_on_start: bool,
    #[serde(deserialize_with = "positive")]
    pub(super) db_max_connections: u32,
    #[serde(deserialize_with = "millis")]
    pub(super) db_acquire_timeout_ms: Duration,
    #[serde(deserialize_with = "flag")]
    pub(super) db_transaction_pooler: bool,
    // Keys and API auth.
    #[serde(default, deserialize_with = "secret")]
    pub(super) encryption_keys: Option<SecretString>,
    #[serde(default, deserialize_with = "secret")]
    pub(super) api_jwt_secret: Option<SecretString>,
    #[serde(default, deserialize_with = "text")]
    pub(super) api_jwt_public_key_file: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) api_jwt_audience: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) api_jwt_issuer: Option<String>,
    #[serde(deserialize_with = "whole")]
    pub(super) api_jwt_cache_capacity: usize,
    // Redirects and logging.
    #[serde(default, deserialize_with = "text")]
    pub(super) login_hosts: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) return_to_origins: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) log: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) log_format: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) data_dir: Option<String>,
    #[serde(deserialize_with = "bytes")]
    pub(super) body_limit_bytes: usize,
    // Salesforce.
    #[serde(default, deserialize_with = "text")]
    pub(super) salesforce_scopes: Option<String>,
    #[serde(default, deserialize_with = "text")]
    pub(super) salesforce_prompt: Option<String>,
    #[serde(deserialize_with = "millis")]
    pub(super) salesforce_connect_timeout_ms: Duration,
    #[serde(deserialize_with = "positive_millis")]
    pub(super) salesforce_timeout_ms: Duration,
    #[serde(deserialize_with = "bytes")]
    pub(super) salesforce_max_response_bytes: usize,
    #[serde(deserialize_with = "positive")]
    pub(super) salesforce_max_in_flight: usize,
    #[serde(deserialize_with = "secs")]
    pub(super) assumed_token_lifetime_secs: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) authorization_ttl_secs: Duration,
    // Tokens.
    #[serde(deserialize_with = "millis")]
    pub(super) refresh_wait_ms: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) refresh_lease_grace_secs: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) refresh_backoff_max_secs: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) keepalive_interval_secs: Duration,
    #[serde(deserialize_with = "positive_secs")]
    pub(super) keepalive_sweep_secs: Duration,
    #[serde(deserialize_with = "positive")]
    pub(super) keepalive_concurrency: usize,
    #[serde(deserialize_with = "secs")]
    pub(super) token_cache_revalidate_secs: Duration,
    #[serde(deserialize_with = "positive")]
    pub(super) token_cache_capacity: u64,
    // Limits and protection.
    #[serde(deserialize_with = "secs")]
    pub(super) shutdown_grace_secs: Duration,
    #[serde(deserialize_with = "positive_secs")]
    pub(super) header_read_timeout_secs: Duration,
    #[serde(deserialize_with = "positive_secs")]
    pub(super) idle_timeout_secs: Duration,
    #[serde(deserialize_with = "positive_secs")]
    pub(super) request_timeout_secs: Duration,
    #[serde(deserialize_with = "positive")]
    pub(super) max_concurrent_requests: usize,
    #[serde(deserialize_with = "whole")]
    pub(super) callback_rate_limit_per_minute: u32,
    #[serde(deserialize_with = "positive")]
    pub(super) callback_rate_limit_burst: u32,
    #[serde(deserialize_with = "flag")]
    pub(super) trust_forwarded_for: bool,
    // Events: webhooks and audit.
    #[serde(default, deserialize_with = "text")]
    pub(super) webhook_url: Option<String>,
    #[serde(default, deserialize_with = "secret")]
    pub(super) webhook_secret: Option<SecretString>,
    #[serde(deserialize_with = "millis")]
    pub(super) webhook_timeout_ms: Duration,
    #[serde(deserialize_with = "millis")]
    pub(super) webhook_retry_base_ms: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) webhook_retry_max_interval_secs: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) webhook_retry_period_secs: Duration,
    #[serde(deserialize_with = "secs")]
    pub(super) webhook_retention_secs: Duration,
    #[serde(deserialize_with = "millis")]
    pub(super) webhook_poll_ms: Duration,
    #[serde(deserialize_with = "flag")]
    pub(super) audit_enabled: bool,
    #[serde(deserialize_with = "millis")]
    pub(super) audit_flush_ms: Duration,
    #[serde(deserialize_with = "days")]
    pub(super) audit_retention_days: Duration,
}

/// A setting's value as text: a string as it is, a number or boolean as written, a list
/// (of strings or numbers) comma-separated.
struct Text;

impl<'de> Visitor<'de> for Text {
    type Value = String;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a string, number, boolean or list")
    }

    fn visit_str<E: de::Error>(self, v: &str) -> Result<String, E> {
        Ok(v.to_owned())
    }

    fn visit_bool<E: de::Error>(self, v: bool) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_i64<E: de::Error>(self, v: i64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_u64<E: de::Error>(self, v: u64) -> Result<String, E> {
        Ok(v.to_string())
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<String, A::Error> {
        let mut items = Vec::new();
        while let Some(Item(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(items.join(","))
    }
}

/// One element of a list.
struct Item(String);

impl<'de> Deserialize<'de> for Item {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        d.deserialize_any(Text).map(Item)
    }
}

/// Set and not blank: the text; unset or blank: None (a blank variable unsets a setting).
fn text<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    Ok(Option::<Item>::deserialize(d)?
        .map(|Item(v)| v)
        .filter(|v| !v.trim().is_empty()))
}

/// The text parsed as `T`; blank is "must be set", and a value that does not parse is
/// echoed with `what` was expected (secrets are not parsed here, so none is echoed).
fn parsed<'de, D: Deserializer<'de>, T: FromStr>(d: D, what: &'static str) -> Result<T, D::Error> {
    let raw = text(d)?.ok_or_else(|| D::Error::custom("must be set"))?;
    parse(&raw, what)
}

fn parse<T: FromStr, E: de::Error>(raw: &str, what: &'static str) -> Result<T, E> {
    raw.trim()
        .parse()
        .map_err(|_| E::invalid_value(Unexpected::Str(raw), &what))
}

/// Parsed as `T` and more than zero.
fn more_than_zero<'de, D, T>(d: D, what: &'static str) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + PartialOrd + Default,
{
    let v: T = parsed(d, what)?;
    if v <= T::default() {
        return Err(D::Error::custom("must be greater than zero"));
    }
    Ok(v)
}

fn flag<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
    parsed(d, "true or false")
}

fn whole<'de, D: Deserializer<'de>, T: FromStr>(d: D) -> Result<T, D::Error> {
    parsed(d, "a whole number")
}

fn positive<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: Deserializer<'de>,
    T: FromStr + PartialOrd + Default,
{
    more_than_zero(d, "a whole number")
}

fn bytes<'de, D: Deserializer<'de>>(d: D) -> Result<usize, D::Error> {
    more_than_zero(d, "a number of bytes")
}

const MILLIS: &str = "a whole number of milliseconds";
const SECS: &str = "a whole number of seconds";

fn millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, MILLIS).map(Duration::from_millis)
}

fn positive_millis<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    more_than_zero(d, MILLIS).map(Duration::from_millis)
}

fn secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    parsed(d, SECS).map(Duration::from_secs)
}

fn positive_secs<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    more_than_zero(d, SECS).map(Duration::from_secs)
}

fn days<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    more_than_zero::<D, u64>(d, "a whole number of days")
        .map(|days| Duration::from_secs(days.saturating_mul(86_400)))
}

fn socket<'de, D: Deserializer<'de>>(d: D) -> Result<SocketAddr, D::Error> {
    parsed(d, "a socket address like 127.0.0.1:8080")
}

/// `internal_listen`: unset or blank is None (one listener).
fn internal_socket<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    text(d)?
        .map(|raw| parse(&raw, "a socket address like 0.0.0.0:8081"))
        .transpose()
}

/// A secret: held as [`SecretString`] from here on, so it is never printed.
fn secret<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SecretString>, D::Error> {
    Ok(text(d)?.map(SecretString::from))
}
