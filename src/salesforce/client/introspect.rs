//! RFC 7662 token introspection ([`SalesforceClient::introspect_access_token`]): asks
//! Salesforce whether an access token is still active, when it expires, and whose it is
//! (`username`, which a reconnect passes as `login_hint`).
//!
//! Not here: revocation (`revoke`), the classification of refusals (`errors`).

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use tracing::{debug, instrument};

use super::errors::{error_from_body, log_failure, non_conforming_body};
use super::{AppCredentials, SalesforceClient};
use crate::metrics::SalesforceEndpoint;
use crate::salesforce::SalesforceError;

/// The longest username kept (Salesforce usernames are at most 80 characters).
const MAX_USERNAME_CHARS: usize = 255;

/// What introspection told about an active access token.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Introspection {
    /// `exp`, in Unix milliseconds, when the token is active and Salesforce sent it.
    pub expires_at: Option<i64>,
    /// `username` (Salesforce Help "Token Introspection Endpoint"), when active and sent.
    pub username: Option<String>,
}

impl SalesforceClient {
    /// [`SalesforceClient::introspect_access_token`], keeping only the expiry.
    pub async fn introspect_access_token_expiry(
        &self,
        app: &AppCredentials,
        access_token: &SecretString,
    ) -> Result<Option<i64>, SalesforceError> {
        Ok(self
            .introspect_access_token(app, access_token)
            .await?
            .expires_at)
    }

    /// RFC 7662 introspection at `{login_url}/services/oauth2/introspect` (Salesforce Help
    /// "Token Introspection Endpoint"): form `token`, `token_type_hint=access_token`,
    /// `client_id`, `client_secret`. An inactive token gives an empty [`Introspection`].
    #[instrument(skip_all, fields(login_host = tracing::field::Empty))]
    pub async fn introspect_access_token(
        &self,
        app: &AppCredentials,
        access_token: &SecretString,
    ) -> Result<Introspection, SalesforceError> {
        let form = [
            ("token", access_token.expose_secret()),
            ("token_type_hint", "access_token"),
            ("client_id", app.client_id.expose_secret()),
            ("client_secret", app.client_secret.expose_secret()),
        ];
        let response = self
            .post_form(&app.login_url, SalesforceEndpoint::Introspect, &form)
            .await?;
        let status = response.status().as_u16();
        if status != 200 {
            let e = error_from_body(status, response.body());
            log_failure(&e);
            return Err(e);
        }
        // RFC 7662 §2.2: `active` is required; `exp` is seconds since the epoch.
        #[derive(Deserialize)]
        struct Answer {
            active: bool,
            #[serde(default)]
            exp: Option<serde_json::Number>,
            #[serde(default)]
            username: Option<serde_json::Value>,
        }
        let parsed: Answer = serde_json::from_slice(response.body()).map_err(|_| {
            non_conforming_body(
                200,
                response.body(),
                "introspection response lacks `active`",
            )
        })?;
        if !parsed.active {
            debug!("introspection: token inactive");
            return Ok(Introspection::default());
        }
        let exp_ms = parsed.exp.and_then(|n| {
            n.as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(|s| s.saturating_mul(1000))
        });
        // Tolerant: a username of another type or an odd shape is ignored, not an error
        // (it only improves a reconnect's login page).
        let username = match parsed.username {
            Some(serde_json::Value::String(name))
                if !name.trim().is_empty()
                    && name.chars().count() <= MAX_USERNAME_CHARS
                    && !name.chars().any(char::is_control) =>
            {
                Some(name.trim().to_owned())
            }
            _ => None,
        };
        debug!(
            has_exp = exp_ms.is_some(),
            has_username = username.is_some(),
            "introspection: token active"
        );
        Ok(Introspection {
            expires_at: exp_ms,
            username,
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use axum::http::StatusCode;

    use super::super::test_support::*;
    use super::*;
    use crate::salesforce::ErrorClass;

    #[tokio::test]
    async fn introspection() {
        let (base, seen) = server("/services/oauth2/introspect", |_| {
            json(
                StatusCode::OK,
                serde_json::json!({"active": true, "exp": 1_738_355_588_i64, "iat": 1_738_348_388_i64, "scope": "api", "username": "admin@acme.example"}),
            )
        })
        .await;
        let full = client()
            .introspect_access_token(&app(&base), &secret(ACCESS_TOKEN))
            .await
            .unwrap();
        assert_eq!(full.username.as_deref(), Some("admin@acme.example"));
        seen.lock().unwrap().clear();
        let exp = client()
            .introspect_access_token_expiry(&app(&base), &secret(ACCESS_TOKEN))
            .await
            .unwrap();
        assert_eq!(exp, Some(1_738_355_588_000));
        let pairs = form(&seen.lock().unwrap()[0]);
        assert_eq!(get(&pairs, "token"), Some(ACCESS_TOKEN));
        assert_eq!(get(&pairs, "token_type_hint"), Some("access_token"));
        assert_eq!(get(&pairs, "client_id"), Some(CLIENT_ID));
        assert_eq!(get(&pairs, "client_secret"), Some(CLIENT_SECRET));

        let (base, _) = server("/services/oauth2/introspect", |_| {
            json(StatusCode::OK, serde_json::json!({"active": false}))
        })
        .await;
        let exp = client()
            .introspect_access_token_expiry(&app(&base), &secret(ACCESS_TOKEN))
            .await
            .unwrap();
        assert_eq!(exp, None);

        let (base, _) = server("/services/oauth2/introspect", |_| {
            json(StatusCode::OK, serde_json::json!({"active": true}))
        })
        .await;
        assert_eq!(
            client()
                .introspect_access_token_expiry(&app(&base), &secret(ACCESS_TOKEN))
                .await
                .unwrap(),
            None
        );

        let (base, _) = server("/services/oauth2/introspect", |_| {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
            )
        })
        .await;
        let e = client()
            .introspect_access_token_expiry(&app(&base), &secret(ACCESS_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::AppCredentials);
        assert_no_secrets(&e);

        let (base, _) = server("/services/oauth2/introspect", |_| {
            json(StatusCode::OK, serde_json::json!({"exp": 5}))
        })
        .await;
        let e = client()
            .introspect_access_token_expiry(&app(&base), &secret(ACCESS_TOKEN))
            .await
            .unwrap_err();
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
    }
}
