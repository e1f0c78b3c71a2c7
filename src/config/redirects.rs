//! The redirects section: where the authorization flow may send a user's browser — to a
//! Salesforce login host (`login_hosts`) and back to a Valo origin (`return_to_origins`).

use url::Url;

use super::ConfigError;
use super::layers::Layers;
use crate::salesforce::HostPolicy;

pub(super) struct Redirects {
    pub(super) login_hosts: HostPolicy,
    /// Origins (`scheme://host[:port]`) allowed in `return_to`.
    pub(super) return_to_origins: Vec<String>,
}

/// `login_hosts`, then each comma-separated entry of `return_to_origins` (https only in
/// production).
pub(super) fn resolve(l: &Layers, production: bool) -> Result<Redirects, ConfigError> {
    let login_hosts = HostPolicy::parse(l.raw.login_hosts.as_deref().unwrap_or_default())
        .map_err(|e| l.err("login_hosts", e))?;
    let return_to_origins: Vec<String> = l
        .raw
        .return_to_origins
        .as_deref()
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|e| !e.is_empty())
        .map(|entry| return_to_origin(l, entry, production))
        .collect::<Result<_, _>>()?;
    Ok(Redirects {
        login_hosts,
        return_to_origins,
    })
}

/// One entry of `return_to_origins`, as its ASCII serialization.
fn return_to_origin(l: &Layers, entry: &str, production: bool) -> Result<String, ConfigError> {
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
    Ok(origin.ascii_serialization())
}
