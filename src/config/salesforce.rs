//! The Salesforce section: what the broker asks Salesforce for and how it calls it.

use std::time::Duration;

use super::ConfigError;
use super::layers::Layers;

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

/// `salesforce_…` and `assumed_token_lifetime_secs`.
pub(super) fn resolve(l: &Layers) -> Result<SalesforceSettings, ConfigError> {
    let prompt = prompt(l)?;
    let scopes = l
        .raw
        .salesforce_scopes
        .as_deref()
        .ok_or_else(|| l.err("salesforce_scopes", "must not be empty"))?
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ");
    let salesforce = SalesforceSettings {
        scopes,
        prompt,
        connect_timeout: l.raw.salesforce_connect_timeout_ms,
        request_timeout: l.raw.salesforce_timeout_ms,
        max_response_bytes: l.raw.salesforce_max_response_bytes,
        max_in_flight: l.raw.salesforce_max_in_flight,
        assumed_token_lifetime: l.raw.assumed_token_lifetime_secs,
    };
    if salesforce.assumed_token_lifetime < Duration::from_secs(60) {
        return Err(l.err("assumed_token_lifetime_secs", "must be at least 60"));
    }
    Ok(salesforce)
}

/// `salesforce_prompt`: a space-separated list of `login`, `consent`, `select_account`.
fn prompt(l: &Layers) -> Result<Option<String>, ConfigError> {
    match l.raw.salesforce_prompt.as_deref().map(str::trim) {
        None => Ok(None),
        Some(p)
            if p.split(' ')
                .all(|w| matches!(w, "login" | "consent" | "select_account")) =>
        {
            Ok(Some(p.to_owned()))
        }
        Some(p) => Err(l.err(
            "salesforce_prompt",
            format!("{p:?} is not a space-separated list of login, consent, select_account"),
        )),
    }
}
