//! SSRF-safe URL policy for the hosts this service sends credentials to.
//!
//! A tenant's login URL receives the client secret and refresh tokens, so it must be a
//! Salesforce login host the operator allowed (`docs/salesforce.md` "Hosts": `login.salesforce.com`,
//! `test.salesforce.com`, My Domain `*.my.salesforce.com`); `instance_url` from a token
//! response must be a Salesforce-operated host. Plain http and IP literals are refused
//! unless explicitly listed (tests and local development use `http://127.0.0.1`).

use std::fmt;
use std::net::IpAddr;

use url::{Host, Url};

/// DNS suffixes Salesforce serves instances from (Salesforce Help "Identity URLs",
/// instance and My Domain hostnames, Government Cloud, China).
const INSTANCE_SUFFIXES: &[&str] = &[
    ".salesforce.com",
    ".force.com",
    ".salesforce.mil",
    ".cloudforce.com",
    ".database.com",
    ".sfcrmproducts.cn",
];

/// Which URL a policy error is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UrlField {
    /// The tenant's login URL (authorize / token / revoke / introspect host).
    LoginUrl,
    /// `instance_url` from a token response.
    InstanceUrl,
}

impl UrlField {
    fn host_kind(self) -> &'static str {
        match self {
            UrlField::LoginUrl => "login",
            UrlField::InstanceUrl => "instance",
        }
    }
}

impl fmt::Display for UrlField {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            UrlField::LoginUrl => "login_url",
            UrlField::InstanceUrl => "instance_url",
        })
    }
}

/// Why a URL was refused. Display is one precise sentence, safe to show to the tenant.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum UrlPolicyError {
    #[error("{0} is not a valid URL")]
    InvalidUrl(UrlField),
    #[error("{0} must use https")]
    NotHttps(UrlField),
    #[error("{0} must not contain user info")]
    UserInfo(UrlField),
    #[error("{0} must not have a path, query or fragment")]
    PathQueryFragment(UrlField),
    #[error(
        "lightning.force.com hosts do not serve OAuth: use your My Domain URL https://NAME.my.salesforce.com"
    )]
    LightningHost,
    #[error("{field} must not be an IP address ({host}) unless that address is explicitly allowed")]
    IpLiteral { field: UrlField, host: String },
    #[error("host {host} is not an allowed Salesforce {} host", .field.host_kind())]
    HostNotAllowed { field: UrlField, host: String },
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Entry {
    /// Exact DNS host (lower-case).
    Exact(String),
    /// `*.suffix`: stored as ".suffix" (lower-case); matches one or more leading labels.
    Wildcard(String),
    /// Exact IP address.
    Ip(IpAddr),
}

impl Entry {
    fn matches(&self, host: &Host<String>) -> bool {
        match (self, host) {
            (Entry::Exact(e), Host::Domain(d)) => e.eq_ignore_ascii_case(d),
            (Entry::Wildcard(suffix), Host::Domain(d)) => {
                let d = d.to_ascii_lowercase();
                d.len() > suffix.len()
                    && d.ends_with(suffix.as_str())
                    && !d[..d.len() - suffix.len()].ends_with('.')
            }
            (Entry::Ip(ip), Host::Ipv4(v4)) => *ip == IpAddr::V4(*v4),
            (Entry::Ip(ip), Host::Ipv6(v6)) => *ip == IpAddr::V6(*v6),
            _ => false,
        }
    }
}

/// The operator's list of allowed Salesforce login hosts (see [`HostPolicy::parse`]).
#[derive(Clone, Debug)]
pub struct HostPolicy {
    /// Hosts allowed over https.
    https: Vec<Entry>,
    /// Hosts additionally allowed over plain http (any port); exact hosts or IPs only.
    http: Vec<Entry>,
}

impl HostPolicy {
    /// Comma-separated entries: exact host ("login.salesforce.com"), a wildcard for one or
    /// more leading labels ("*.my.salesforce.com" matches "acme.my.salesforce.com" and
    /// "acme--dev.sandbox.my.salesforce.com" but NOT "my.salesforce.com" itself), or
    /// "http://HOST" which ALSO allows plain http to exactly that host on any port (tests use
    /// "http://127.0.0.1"). Hosts compared case-insensitively. Errors name the bad entry.
    /// "https://HOST" is accepted as a synonym of "HOST"; an exact IP entry allows that IP
    /// only; empty entries are skipped, but an empty list is an error.
    pub fn parse(list: &str) -> Result<HostPolicy, String> {
        let mut policy = HostPolicy {
            https: Vec::new(),
            http: Vec::new(),
        };
        for raw in list.split(',') {
            let entry = raw.trim();
            if entry.is_empty() {
                continue;
            }
            let bad = |why: &str| format!("invalid allowed-host entry {entry:?}: {why}");
            let lower = entry.to_ascii_lowercase();
            let (plain_http, host) = if let Some(rest) = lower.strip_prefix("http://") {
                (true, rest)
            } else if let Some(rest) = lower.strip_prefix("https://") {
                (false, rest)
            } else if lower.contains("://") {
                return Err(bad("only http:// or https:// prefixes are supported"));
            } else {
                (false, lower.as_str())
            };
            let host = host.strip_suffix('/').unwrap_or(host);
            if host.is_empty() {
                return Err(bad("empty host"));
            }
            if host.contains(['/', '?', '#', '@']) {
                return Err(bad("expected a host name without path, port or user info"));
            }
            let parsed = if let Some(suffix) = host.strip_prefix("*.") {
                if plain_http {
                    return Err(bad("wildcards cannot be allowed over http"));
                }
                if !is_dns_name(suffix) || !suffix.contains('.') {
                    return Err(bad(
                        "a wildcard needs a domain of at least two labels after \"*.\"",
                    ));
                }
                Entry::Wildcard(format!(".{suffix}"))
            } else {
                match Host::parse(host) {
                    Ok(Host::Domain(d)) if is_dns_name(&d) => Entry::Exact(d),
                    Ok(Host::Ipv4(ip)) => Entry::Ip(IpAddr::V4(ip)),
                    Ok(Host::Ipv6(ip)) => Entry::Ip(IpAddr::V6(ip)),
                    _ => return Err(bad("not a valid host name (ports are not allowed here)")),
                }
            };
            if plain_http {
                policy.http.push(parsed.clone());
            }
            policy.https.push(parsed);
        }
        if policy.https.is_empty() {
            return Err("the allowed-host list is empty".to_owned());
        }
        Ok(policy)
    }

    /// A tenant's login URL: https (or http only to an http-allowed host), host allowed, no
    /// user-info, no query/fragment, path empty or "/" (trailing slashes normalised away), IP
    /// literals refused unless the exact IP is listed, `*.lightning.force.com` refused with a
    /// hint to use the My Domain `*.my.salesforce.com` URL. Returns the normalised origin
    /// string `https://host[:port]`.
    pub fn validate_login_url(&self, raw: &str) -> Result<String, UrlPolicyError> {
        let field = UrlField::LoginUrl;
        let (url, host) = self.check_shape(raw, field)?;
        if let Host::Domain(d) = &host {
            let d = d.to_ascii_lowercase();
            if d == "lightning.force.com" || d.ends_with(".lightning.force.com") {
                return Err(UrlPolicyError::LightningHost);
            }
        }
        let allowed = self.https.iter().any(|e| e.matches(&host));
        self.finish(url, host, allowed, field)
    }

    /// `instance_url` from a token response: https to any DNS host ending in
    /// ".salesforce.com", ".force.com", ".salesforce.mil", ".cloudforce.com", ".database.com",
    /// ".sfcrmproducts.cn" or to an allowed login host, or http only to an http-allowed host.
    /// Normalised like [`HostPolicy::validate_login_url`].
    pub fn validate_instance_url(&self, raw: &str) -> Result<String, UrlPolicyError> {
        let field = UrlField::InstanceUrl;
        let (url, host) = self.check_shape(raw, field)?;
        let salesforce_dns = match &host {
            Host::Domain(d) => {
                let d = d.to_ascii_lowercase();
                is_dns_name(&d)
                    && INSTANCE_SUFFIXES
                        .iter()
                        .any(|s| d.len() > s.len() && d.ends_with(s))
            }
            _ => false,
        };
        let allowed = salesforce_dns || self.https.iter().any(|e| e.matches(&host));
        self.finish(url, host, allowed, field)
    }

    /// Scheme, user info, path/query/fragment checks common to both URL kinds.
    fn check_shape(
        &self,
        raw: &str,
        field: UrlField,
    ) -> Result<(Url, Host<String>), UrlPolicyError> {
        let url = Url::parse(raw.trim()).map_err(|_| UrlPolicyError::InvalidUrl(field))?;
        let host = url
            .host()
            .map(|h| h.to_owned())
            .ok_or(UrlPolicyError::InvalidUrl(field))?;
        match url.scheme() {
            "https" => {}
            "http" if self.http.iter().any(|e| e.matches(&host)) => {}
            _ => return Err(UrlPolicyError::NotHttps(field)),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(UrlPolicyError::UserInfo(field));
        }
        if url.query().is_some()
            || url.fragment().is_some()
            || !url.path().trim_end_matches('/').is_empty()
        {
            return Err(UrlPolicyError::PathQueryFragment(field));
        }
        Ok((url, host))
    }

    fn finish(
        &self,
        url: Url,
        host: Host<String>,
        allowed: bool,
        field: UrlField,
    ) -> Result<String, UrlPolicyError> {
        if !allowed {
            return Err(match host {
                Host::Domain(d) => UrlPolicyError::HostNotAllowed {
                    field,
                    host: d.to_ascii_lowercase(),
                },
                ip => UrlPolicyError::IpLiteral {
                    field,
                    host: ip.to_string(),
                },
            });
        }
        Ok(url.origin().ascii_serialization())
    }
}

/// Letters, digits and hyphens in dot-separated, non-empty labels.
fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.split('.').all(|label| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'-')
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;

    fn policy() -> HostPolicy {
        HostPolicy::parse(
            "login.salesforce.com, test.salesforce.com, *.my.salesforce.com, http://127.0.0.1",
        )
        .unwrap()
    }

    #[test]
    fn parse_rejects_bad_entries_and_names_them() {
        for bad in [
            "ftp://x.com",
            "*.com",
            "exa mple.com",
            "*.",
            "http://*.x.y.com",
            "host:443",
            "a/b",
        ] {
            let err = HostPolicy::parse(&format!("login.salesforce.com,{bad}")).unwrap_err();
            assert!(err.contains(bad), "{err}");
        }
        assert!(HostPolicy::parse("").is_err());
        assert!(HostPolicy::parse(" , ").is_err());
        assert!(HostPolicy::parse("LOGIN.Salesforce.com").is_ok());
    }

    #[test]
    fn exact_hosts_and_normalisation() {
        let p = policy();
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com")
                .unwrap(),
            "https://login.salesforce.com"
        );
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com/")
                .unwrap(),
            "https://login.salesforce.com"
        );
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com///")
                .unwrap(),
            "https://login.salesforce.com"
        );
        // Case-insensitive, both in the URL and in the policy.
        assert_eq!(
            p.validate_login_url("HTTPS://LOGIN.SalesForce.COM/")
                .unwrap(),
            "https://login.salesforce.com"
        );
        let upper = HostPolicy::parse("LOGIN.SALESFORCE.COM").unwrap();
        assert!(
            upper
                .validate_login_url("https://login.salesforce.com")
                .is_ok()
        );
        // Explicit ports are kept, the default one is dropped.
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com:8443")
                .unwrap(),
            "https://login.salesforce.com:8443"
        );
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com:443")
                .unwrap(),
            "https://login.salesforce.com"
        );
    }

    #[test]
    fn refusals() {
        let p = policy();
        let f = UrlField::LoginUrl;
        for (bad, error) in [
            ("http://login.salesforce.com", UrlPolicyError::NotHttps(f)),
            ("ftp://login.salesforce.com", UrlPolicyError::NotHttps(f)),
            (
                "https://user:pw@login.salesforce.com",
                UrlPolicyError::UserInfo(f),
            ),
            (
                "https://user@login.salesforce.com",
                UrlPolicyError::UserInfo(f),
            ),
            (
                "https://login.salesforce.com/services",
                UrlPolicyError::PathQueryFragment(f),
            ),
            (
                "https://login.salesforce.com/?a=b",
                UrlPolicyError::PathQueryFragment(f),
            ),
            (
                "https://login.salesforce.com#x",
                UrlPolicyError::PathQueryFragment(f),
            ),
            ("not a url", UrlPolicyError::InvalidUrl(f)),
        ] {
            assert_eq!(p.validate_login_url(bad), Err(error), "{bad}");
        }
        assert_eq!(
            p.validate_login_url("https://login.salesforce.com.evil.com"),
            Err(UrlPolicyError::HostNotAllowed {
                field: f,
                host: "login.salesforce.com.evil.com".into()
            })
        );
        // What the caller reads.
        for (bad, message) in [
            (
                "https://evil.example.com",
                "host evil.example.com is not an allowed Salesforce login host",
            ),
            (
                "https://login.salesforce.com.",
                "host login.salesforce.com. is not an allowed Salesforce login host",
            ),
            ("http://login.salesforce.com", "login_url must use https"),
            (
                "https://u@login.salesforce.com",
                "login_url must not contain user info",
            ),
            (
                "https://login.salesforce.com/x",
                "login_url must not have a path, query or fragment",
            ),
            ("::", "login_url is not a valid URL"),
        ] {
            let e = p.validate_login_url(bad).unwrap_err();
            assert_eq!(e.to_string(), message, "{bad}");
        }
    }

    #[test]
    fn lightning_hint() {
        let p = HostPolicy::parse("*.force.com,*.my.salesforce.com").unwrap();
        let e = p
            .validate_login_url("https://acme.lightning.force.com")
            .unwrap_err();
        assert_eq!(e, UrlPolicyError::LightningHost);
        assert!(e.to_string().contains("my.salesforce.com"));
        assert!(
            e.to_string()
                .starts_with("lightning.force.com hosts do not serve OAuth")
        );
    }

    #[test]
    fn wildcard() {
        let p = policy();
        for (url, allowed) in [
            ("https://acme.my.salesforce.com", true),
            ("https://acme--dev.sandbox.my.salesforce.com/", true),
            ("https://ACME.My.Salesforce.com", true),
            // Not the bare suffix, nor look-alikes.
            ("https://my.salesforce.com", false),
            ("https://acmemy.salesforce.com", false),
            ("https://acme.my.salesforce.com.evil.io", false),
        ] {
            assert_eq!(p.validate_login_url(url).is_ok(), allowed, "{url}");
        }
        assert!(matches!(
            p.validate_login_url("https://my.salesforce.com"),
            Err(UrlPolicyError::HostNotAllowed { .. })
        ));
    }

    #[test]
    fn ip_literals() {
        let p = policy();
        // The listed IP: http on any port, and https.
        assert_eq!(
            p.validate_login_url("http://127.0.0.1:8080/").unwrap(),
            "http://127.0.0.1:8080"
        );
        assert_eq!(
            p.validate_login_url("http://127.0.0.1:1").unwrap(),
            "http://127.0.0.1:1"
        );
        assert!(p.validate_login_url("https://127.0.0.1:9").is_ok());
        // Other IPs (and other spellings resolving elsewhere) are refused.
        let e = p.validate_login_url("https://10.0.0.1").unwrap_err();
        assert!(matches!(e, UrlPolicyError::IpLiteral { .. }), "{e:?}");
        assert!(matches!(
            p.validate_login_url("http://169.254.169.254"),
            Err(UrlPolicyError::NotHttps(_))
        ));
        assert!(matches!(
            p.validate_login_url("https://[::1]"),
            Err(UrlPolicyError::IpLiteral { .. })
        ));
        // Hex/short IPv4 forms are parsed as IPs, not as host names.
        assert_eq!(
            p.validate_login_url("http://0x7f.0.0.1:5").unwrap(),
            "http://127.0.0.1:5"
        );
        assert!(matches!(
            p.validate_login_url("https://0x0a000001"),
            Err(UrlPolicyError::IpLiteral { .. })
        ));
        // Plain http stays limited to the http entry.
        assert!(matches!(
            p.validate_login_url("http://localhost:8080"),
            Err(UrlPolicyError::NotHttps(_))
        ));
        // A plain IP entry allows https only.
        let ip_https = HostPolicy::parse("10.1.2.3").unwrap();
        assert!(ip_https.validate_login_url("https://10.1.2.3").is_ok());
        assert!(ip_https.validate_login_url("http://10.1.2.3").is_err());
        let v6 = HostPolicy::parse("http://[::1]").unwrap();
        assert_eq!(
            v6.validate_login_url("http://[::1]:99").unwrap(),
            "http://[::1]:99"
        );
    }

    #[test]
    fn instance_urls() {
        let p = policy();
        for ok in [
            "https://acme.my.salesforce.com",
            "https://na1.salesforce.com/",
            "https://acme.lightning.force.com",
            "https://acme.my.salesforce.mil",
            "https://x.cloudforce.com",
            "https://x.database.com",
            "https://acme.my.sfcrmproducts.cn",
            "https://login.salesforce.com",
            "http://127.0.0.1:4000",
        ] {
            assert!(p.validate_instance_url(ok).is_ok(), "{ok}");
        }
        assert_eq!(
            p.validate_instance_url("https://ACME.my.salesforce.com/")
                .unwrap(),
            "https://acme.my.salesforce.com"
        );
        for bad in [
            "https://salesforce.com",
            "https://evilsalesforce.com",
            "https://salesforce.com.evil.io",
            "http://acme.my.salesforce.com",
            "https://u@acme.my.salesforce.com",
            "https://acme.my.salesforce.com/services/data",
            "https://10.0.0.1",
        ] {
            assert!(p.validate_instance_url(bad).is_err(), "{bad}");
        }
        assert_eq!(
            p.validate_instance_url("https://evil.example.com")
                .unwrap_err()
                .to_string(),
            "host evil.example.com is not an allowed Salesforce instance host"
        );
        assert_eq!(
            p.validate_instance_url("http://x.salesforce.com")
                .unwrap_err()
                .to_string(),
            "instance_url must use https"
        );
    }
}
