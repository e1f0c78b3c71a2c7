//! The module's error type: [`SalesforceError`], everything that can go wrong when talking
//! to Salesforce, and [`ErrorClass`], what the caller should do about it (the error table of
//! `docs/salesforce.md`), plus the secret-free summary stored as a connection's last error.
//!
//! Not here: how a Salesforce answer (an OAuth error body, an HTTP status, a malformed body)
//! becomes a [`SalesforceError`]; that is `client/errors.rs`.

/// Longest Salesforce-provided text (an `error_description`) kept in a summary.
const MAX_DESCRIPTION_CHARS: usize = 200;

/// Everything that can go wrong when talking to Salesforce.
///
/// Every string inside is built by this module from non-secret material: OAuth error codes
/// and descriptions sent by Salesforce, HTTP statuses, and our own wording. Raw response
/// bodies are never stored here.
#[derive(Debug, thiserror::Error)]
pub enum SalesforceError {
    /// Salesforce answered with an OAuth error body `{"error","error_description"}`.
    #[error("salesforce refused the request: {error}")]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    /// Timeout, connect failure, 5xx, 429, non-JSON body: worth retrying later.
    #[error("salesforce unavailable: {0}")]
    Unavailable(String),
    /// The response's `signature` did not verify with the consumer secret.
    #[error("token response signature did not verify")]
    InvalidSignature,
    /// A 2xx response that breaks the protocol (missing fields, bad id URL, instance_url not
    /// allowed, too large).
    #[error("invalid response from salesforce: {0}")]
    InvalidResponse(String),
    /// Building the request failed (bad URL etc.).
    #[error("cannot build the request to salesforce: {0}")]
    Request(String),
}

/// What the caller should do about an error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// The grant is gone (revoked, expired, user or org inactive, wrong app credentials): the
    /// customer must connect again.
    Reauthorize,
    /// The tenant's consumer key or secret was refused (`invalid_client_id`,
    /// `invalid_client`): the app's credentials must be fixed; the grant itself is intact.
    AppCredentials,
    /// Worth retrying later (outage, rate limit, admin login-hours policy).
    Transient,
    /// Salesforce or our configuration misbehaves: neither retrying nor reconnecting helps.
    Upstream,
}

impl SalesforceError {
    /// The classification of the error table in `docs/salesforce.md` ("Token-endpoint errors"):
    /// `invalid_grant` (except "IP restricted or invalid login hours", which is Transient),
    /// `inactive_user`, `inactive_org` → Reauthorize; `invalid_client_id`, `invalid_client`
    /// → AppCredentials;
    /// `rate_limit_exceeded` (and `LOGIN_RATE_EXCEEDED`), any `Unavailable` → Transient;
    /// everything else → Upstream.
    pub fn class(&self) -> ErrorClass {
        match self {
            SalesforceError::Refused {
                error, description, ..
            } => {
                let code = error.to_ascii_lowercase();
                let desc = description
                    .as_deref()
                    .map(str::to_ascii_lowercase)
                    .unwrap_or_default();
                match code.as_str() {
                    "invalid_grant" if desc.contains("ip restricted") => ErrorClass::Transient,
                    "invalid_grant" if desc.contains("login_rate_exceeded") => {
                        ErrorClass::Transient
                    }
                    "invalid_grant" | "inactive_user" | "inactive_org" => ErrorClass::Reauthorize,
                    "invalid_client_id" | "invalid_client" => ErrorClass::AppCredentials,
                    "rate_limit_exceeded" | "login_rate_exceeded" => ErrorClass::Transient,
                    _ => ErrorClass::Upstream,
                }
            }
            SalesforceError::Unavailable(_) => ErrorClass::Transient,
            SalesforceError::InvalidSignature
            | SalesforceError::InvalidResponse(_)
            | SalesforceError::Request(_) => ErrorClass::Upstream,
        }
    }

    /// The OAuth error code if Salesforce sent one.
    pub fn oauth_error(&self) -> Option<&str> {
        match self {
            SalesforceError::Refused { error, .. } => Some(error),
            _ => None,
        }
    }

    /// A short, secret-free description for storing as a connection's last error and for
    /// logs (never the raw body).
    pub fn summary(&self) -> String {
        let text = match self {
            SalesforceError::Refused {
                status,
                error,
                description,
            } => match description.as_deref().map(sanitize) {
                Some(d) if !d.is_empty() => format!("{} (HTTP {status}): {d}", sanitize(error)),
                _ => format!("{} (HTTP {status})", sanitize(error)),
            },
            other => other.to_string(),
        };
        truncate(&text, MAX_DESCRIPTION_CHARS + 64)
    }
}

/// Keeps printable characters of Salesforce-provided text, bounded in length.
pub(crate) fn sanitize(s: &str) -> String {
    let cleaned: String = s
        .chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    truncate(cleaned.trim(), MAX_DESCRIPTION_CHARS)
}

fn truncate(s: &str, max_chars: usize) -> String {
    if s.chars().count() <= max_chars {
        s.to_owned()
    } else {
        let mut out: String = s.chars().take(max_chars).collect();
        out.push('…');
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(error: &str, description: Option<&str>) -> SalesforceError {
        SalesforceError::Refused {
            status: 400,
            error: error.into(),
            description: description.map(Into::into),
        }
    }

    #[test]
    fn classification_follows_the_error_table() {
        let reauth = [
            refused("invalid_grant", Some("expired access/refresh token")),
            refused("invalid_grant", Some("authentication failure")),
            refused("invalid_grant", None),
            refused("inactive_user", None),
            refused("inactive_org", None),
        ];
        for e in reauth {
            assert_eq!(e.class(), ErrorClass::Reauthorize, "{e:?}");
        }
        let credentials = [
            refused("invalid_client_id", Some("client identifier invalid")),
            refused("invalid_client", Some("invalid client credentials")),
        ];
        for e in credentials {
            assert_eq!(e.class(), ErrorClass::AppCredentials, "{e:?}");
        }
        let transient = [
            refused(
                "invalid_grant",
                Some("IP restricted or invalid login hours"),
            ),
            refused("rate_limit_exceeded", None),
            SalesforceError::Unavailable("HTTP 503".into()),
        ];
        for e in transient {
            assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
        }
        let upstream = [
            refused("unsupported_grant_type", None),
            refused("OAUTH_EC_APP_NOT_FOUND", None),
            SalesforceError::InvalidSignature,
            SalesforceError::InvalidResponse("x".into()),
            SalesforceError::Request("x".into()),
        ];
        for e in upstream {
            assert_eq!(e.class(), ErrorClass::Upstream, "{e:?}");
        }
    }

    #[test]
    fn oauth_error_and_summary() {
        let e = refused("invalid_grant", Some("expired\nauthorization code"));
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert_eq!(
            e.summary(),
            "invalid_grant (HTTP 400): expired authorization code"
        );
        assert_eq!(SalesforceError::InvalidSignature.oauth_error(), None);
        let long = refused("x", Some(&"a".repeat(1000)));
        assert!(long.summary().chars().count() < 300);
    }
}
