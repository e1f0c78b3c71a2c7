//! HTTP client for a tenant's Salesforce login host: authorize URL, authorization-code and
//! refresh-token grants (through the `oauth2` crate), RFC 7662 introspection and RFC 7009
//! revocation.
//!
//! One shared `reqwest::Client` with redirects disabled (a redirect could carry credentials
//! to another host: SSRF), connect and total timeouts, and a bounded response size.
//!
//! This file holds the client itself ([`SalesforceClient`], its [`ClientSettings`]), the
//! tenant's [`AppCredentials`], and the login-host check every endpoint starts with. The
//! rest, one concern per file:
//! - `transport`: one HTTP exchange over the shared client (redirects refused, size cap) and
//!   the `oauth2` crate's HTTP hook;
//! - `authorize`: the authorize URL;
//! - `token`: the authorization-code and refresh-token grants and the checks on a token
//!   response;
//! - `introspect` and `revoke`: the RFC 7662 and RFC 7009 endpoints;
//! - `errors`: how Salesforce's failure answers become [`SalesforceError`]s.
//!
//! The error type and its classification live in `salesforce/error.rs`; the host policy in
//! `salesforce/hosts.rs`.

mod authorize;
mod errors;
mod introspect;
mod revoke;
#[cfg(test)]
mod test_support;
mod token;
mod transport;

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use secrecy::SecretString;
use tracing::Span;

use crate::metrics::Metrics;
use crate::salesforce::{HostPolicy, SalesforceError};

pub use authorize::AuthorizeRequest;
pub use introspect::Introspection;
pub use token::{CredentialCheck, RefreshAnswer, TokenGrant};

/// Timeouts and limits of the shared HTTP client.
#[derive(Clone, Debug)]
pub struct ClientSettings {
    /// TCP + TLS connect timeout (default 3 s).
    pub connect_timeout: Duration,
    /// Total time for one request, body included (default 10 s).
    pub request_timeout: Duration,
    /// Largest response body accepted (default 64 KiB).
    pub max_response_bytes: usize,
}

impl Default for ClientSettings {
    fn default() -> Self {
        ClientSettings {
            connect_timeout: Duration::from_secs(3),
            request_timeout: Duration::from_secs(10),
            max_response_bytes: 64 * 1024,
        }
    }
}

/// A tenant's External Client App credentials and login host.
#[derive(Clone)]
pub struct AppCredentials {
    pub login_url: String,
    pub client_id: SecretString,
    pub client_secret: SecretString,
}

impl fmt::Debug for AppCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("AppCredentials")
            .field("login_url", &self.login_url)
            .field("client_id", &"[redacted]")
            .field("client_secret", &"[redacted]")
            .finish()
    }
}

/// The OAuth client to customers' Salesforce orgs. Cheap to clone (one shared connection
/// pool).
#[derive(Clone, Debug)]
pub struct SalesforceClient {
    http: reqwest::Client,
    settings: ClientSettings,
    /// Shared: the client is cloned with the application state on every request.
    hosts: Arc<HostPolicy>,
    /// Where each call's duration and outcome are recorded.
    metrics: Metrics,
}

impl SalesforceClient {
    pub fn new(
        settings: ClientSettings,
        hosts: HostPolicy,
        metrics: Metrics,
    ) -> Result<SalesforceClient, SalesforceError> {
        let http = reqwest::Client::builder()
            // Never follow redirects: they could send credentials elsewhere (oauth2 crate
            // docs, "Security Warning"; RFC 6749 §10 / SSRF).
            .redirect(reqwest::redirect::Policy::none())
            .connect_timeout(settings.connect_timeout)
            .timeout(settings.request_timeout)
            .use_rustls_tls()
            .user_agent(concat!("valo-oauth/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|_| SalesforceError::Request("cannot build the HTTP client".into()))?;
        Ok(SalesforceClient {
            http,
            settings,
            hosts: Arc::new(hosts),
            metrics,
        })
    }

    /// Validates the login URL against the host policy and records it on the current span.
    fn login_origin(&self, login_url: &str) -> Result<String, SalesforceError> {
        let origin = self
            .hosts
            .validate_login_url(login_url)
            .map_err(|e| SalesforceError::Request(e.to_string()))?;
        Span::current().record("login_host", origin.as_str());
        Ok(origin)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::test_support::*;
    use super::*;
    use crate::salesforce::ErrorClass;

    #[tokio::test]
    async fn futures_are_send() {
        fn assert_send<T: Send>(_: T) {}
        let c = client();
        let a = app("https://login.salesforce.com");
        let s = secret("x");
        assert_send(c.exchange_code(&a, REDIRECT, "c", &s));
        assert_send(c.refresh(&a, &s));
        assert_send(c.revoke("https://login.salesforce.com", &s));
        assert_send(c.introspect_access_token_expiry(&a, &s));
    }

    #[tokio::test]
    async fn disallowed_login_url_makes_no_request() {
        let c = client();
        for url in [
            "https://evil.example.com",
            "http://login.salesforce.com",
            "https://acme.lightning.force.com",
        ] {
            let e = c
                .exchange_code(&app(url), REDIRECT, CODE, &secret(VERIFIER))
                .await
                .unwrap_err();
            assert!(matches!(e, SalesforceError::Request(_)), "{e:?}");
            assert_eq!(e.class(), ErrorClass::Upstream);
            assert_no_secrets(&e);
        }
        let e = c
            .refresh(
                &app("https://user@login.salesforce.com"),
                &secret(REFRESH_TOKEN),
            )
            .await
            .unwrap_err();
        assert!(e.to_string().contains("user info"), "{e}");
    }
}
