//! RFC 7009 token revocation ([`SalesforceClient::revoke`]); an already revoked or unknown
//! token counts as success.
//!
//! Not here: introspection (`introspect`), the classification of refusals (`errors`).

use secrecy::{ExposeSecret, SecretString};
use tracing::{debug, instrument};

use super::SalesforceClient;
use super::errors::{error_from_body, log_failure};
use crate::metrics::SalesforceEndpoint;
use crate::salesforce::SalesforceError;

impl SalesforceClient {
    /// RFC 7009 revocation at `{login_url}/services/oauth2/revoke` (Salesforce Mobile SDK
    /// "Revoking OAuth Tokens"): form `token`, no client authentication. 200 → Ok; 400
    /// `invalid_token` (already revoked or unknown) → Ok as well, the goal is reached.
    #[instrument(skip_all, fields(login_host = tracing::field::Empty))]
    pub async fn revoke(
        &self,
        login_url: &str,
        token: &SecretString,
    ) -> Result<(), SalesforceError> {
        let form = [("token", token.expose_secret())];
        let response = self
            .post_form(login_url, SalesforceEndpoint::Revoke, &form)
            .await?;
        let status = response.status();
        if status.is_success() {
            debug!("token revoked");
            return Ok(());
        }
        match error_from_body(status.as_u16(), response.body()) {
            SalesforceError::Refused { error, .. } if error == "invalid_token" => {
                debug!("token already revoked or unknown");
                Ok(())
            }
            e => {
                log_failure(&e);
                Err(e)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::super::test_support::*;
    use crate::salesforce::ErrorClass;

    #[tokio::test]
    async fn revoke() {
        let (base, seen) = server("/services/oauth2/revoke", |_| {
            StatusCode::OK.into_response()
        })
        .await;
        client()
            .revoke(&format!("{base}/"), &secret(REFRESH_TOKEN))
            .await
            .unwrap();
        let body = seen.lock().unwrap()[0].clone();
        assert_eq!(
            form(&body),
            vec![("token".to_owned(), REFRESH_TOKEN.to_owned())]
        );

        let (base, _) = server("/services/oauth2/revoke", |_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_token", "error_description": "invalid token"}),
            )
        })
        .await;
        client()
            .revoke(&base, &secret(REFRESH_TOKEN))
            .await
            .unwrap();

        let (base, _) = server("/services/oauth2/revoke", |_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "unsupported_token_type"}),
            )
        })
        .await;
        let e = client()
            .revoke(&base, &secret(REFRESH_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.oauth_error(), Some("unsupported_token_type"));
        assert_eq!(e.class(), ErrorClass::Upstream);
        assert_no_secrets(&e);

        let (base, _) = server("/services/oauth2/revoke", |_| {
            StatusCode::BAD_GATEWAY.into_response()
        })
        .await;
        let e = client()
            .revoke(&base, &secret(REFRESH_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient);
    }
}
