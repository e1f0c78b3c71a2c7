//! The raw settings, one field per setting, as figment extracts them from the layers.
//!
//! Every value is read as text first, the way an environment variable holds it (a TOML number,
//! boolean or list is written back as text, a list comma-separated), then parsed by the field's
//! deserializer; a value that does not parse is an error naming what was expected, which
//! `layers` turns into one line naming the setting. What one setting alone cannot tell (one
//! setting against another, production rules) is checked by the section resolvers.
//!
//! Unknown keys are refused (`deny_unknown_fields`): a typo in a TOML file does not pass
//! silently. The field names are the settings' names; `defaults.toml` lists every one.

use std::fmt;
use std::net::SocketAddr;
use std::str::FromStr;
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;
use serde::de::{self, Deserializer, Error as _, SeqAccess, Unexpected, Visitor};

/// Declares [`Raw`], one field per setting: each line is a deserializer, the type it gives and
/// the settings parsed so. No field has a serde default: `defaults.toml` holds every setting
/// (blank where there is no default), so a setting missing there fails every load.
macro_rules! raw_settings {
    ($($with:literal -> $ty:ty: $($field:ident),+;)+) => {
        /// The settings after layering; blank text is unset (`None`).
        #[derive(Deserialize)]
        #[serde(deny_unknown_fields)]
        pub(super) struct Raw {
            $($(
                #[serde(deserialize_with = $with)]
                pub(super) $field: $ty,
            )+)+
        }
    };
}

raw_settings! {
    "socket" -> SocketAddr: listen;
    "internal_socket" -> Option<SocketAddr>: internal_listen;
    "text" -> Option<String>: env, public_url, api_jwt_public_key_file, api_jwt_audience,
        api_jwt_issuer, login_hosts, return_to_origins, log, log_format, data_dir,
        salesforce_scopes, salesforce_prompt, webhook_url;
    "secret" -> Option<SecretString>: database_url, encryption_keys, api_jwt_secret,
        webhook_secret;
    "flag" -> bool: migrate_on_start, db_transaction_pooler, trust_forwarded_for, audit_enabled;
    "whole" -> u32: callback_rate_limit_per_minute;
    "whole" -> usize: api_jwt_cache_capacity;
    "positive" -> u32: db_max_connections, callback_rate_limit_burst;
    "positive" -> usize: salesforce_max_in_flight, keepalive_concurrency, max_concurrent_requests;
    "positive" -> u64: token_cache_capacity;
    "bytes" -> usize: body_limit_bytes, salesforce_max_response_bytes;
    "millis" -> Duration: db_acquire_timeout_ms, salesforce_connect_timeout_ms, refresh_wait_ms,
        webhook_timeout_ms, webhook_retry_base_ms, webhook_poll_ms, audit_flush_ms;
    "positive_millis" -> Duration: salesforce_timeout_ms;
    "secs" -> Duration: assumed_token_lifetime_secs, authorization_ttl_secs,
        refresh_lease_grace_secs, refresh_backoff_max_secs, keepalive_interval_secs,
        token_cache_revalidate_secs, shutdown_grace_secs, webhook_retry_max_interval_secs,
        webhook_retry_period_secs, webhook_retention_secs;
    "positive_secs" -> Duration: keepalive_sweep_secs, header_read_timeout_secs,
        idle_timeout_secs, request_timeout_secs;
    "days" -> Duration: audit_retention_days;
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
