//! The token endpoint (`{login_url}/services/oauth2/token`) through the `oauth2` crate: the
//! authorization-code grant ([`SalesforceClient::exchange_code`]) and the refresh-token
//! grant ([`SalesforceClient::refresh`]), Salesforce's additions to the token response, and
//! the checks a response passes before it becomes a [`TokenGrant`] (signature, identity
//! URL, `instance_url` policy, `issued_at`).
//!
//! Not here: how a refusal or a malformed answer is classified (`errors`), the HTTP exchange
//! itself (`transport`).

use std::fmt;
use std::sync::atomic::{AtomicU16, Ordering};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::{
    AuthType, AuthorizationCode, Client, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, PkceCodeVerifier, RedirectUrl, RefreshToken, RequestTokenError,
    StandardRevocableToken, StandardTokenResponse, TokenResponse, TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{debug, instrument};

use super::errors::{log_failure, token_error};
use super::transport::{HttpCall, Transport, endpoint_path};
use super::{AppCredentials, SalesforceClient};
use crate::metrics::SalesforceEndpoint;
use crate::salesforce::{SalesforceError, parse_identity_url, verify_signature};

/// The useful content of a Salesforce token response.
pub struct TokenGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Validated by [`HostPolicy::validate_instance_url`] and normalised.
    ///
    /// [`HostPolicy::validate_instance_url`]: crate::salesforce::HostPolicy::validate_instance_url
    pub instance_url: String,
    /// 18-character org id from `id`.
    pub org_id: String,
    /// 18-character user id from `id`.
    pub user_id: String,
    /// From `issued_at` (ms since the epoch, string or number); `None` when Salesforce sent
    /// none (the caller then takes its own clock's now: this layer reads no clock).
    pub issued_at_ms: Option<i64>,
    /// Space-separated granted scopes, when Salesforce listed them.
    pub scopes: Option<String>,
    /// False only when the response carried no signature.
    pub signature_verified: bool,
}

impl fmt::Debug for TokenGrant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenGrant")
            .field("access_token", &"[redacted]")
            .field(
                "refresh_token",
                &self.refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("instance_url", &self.instance_url)
            .field("org_id", &self.org_id)
            .field("user_id", &self.user_id)
            .field("issued_at_ms", &self.issued_at_ms)
            .field("scopes", &self.scopes)
            .field("signature_verified", &self.signature_verified)
            .finish()
    }
}

/// What a refresh brought back.
pub struct RefreshAnswer {
    /// The new refresh token (Refresh Token Rotation), whether or not the answer passed
    /// the checks; `None` when Salesforce did not rotate.
    pub rotated_refresh_token: Option<SecretString>,
    /// The checked grant, or why the answer cannot be trusted.
    pub checked: Result<TokenGrant, SalesforceError>,
}

impl fmt::Debug for RefreshAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RefreshAnswer")
            .field(
                "rotated_refresh_token",
                &self.rotated_refresh_token.as_ref().map(|_| "[redacted]"),
            )
            .field("checked", &self.checked)
            .finish()
    }
}

/// What the token endpoint said about a tenant app's consumer key and secret, asked with a
/// deliberately invalid authorization code ([`SalesforceClient::check_credentials`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CredentialCheck {
    /// The client authenticated; only the made-up code was refused (`invalid_grant`).
    Accepted,
    /// `invalid_client_id`: Salesforce knows no app with this consumer key.
    KeyRefused,
    /// `invalid_client`: the key is known, the consumer secret is wrong.
    SecretRefused,
}

/// The authorization code the credential check presents: no real code looks like it, and a
/// code is single-use anyway, so the check can never consume anything.
const CHECK_CODE: &str = "valo-oauth-credential-check";
/// The PKCE verifier sent with it (RFC 7636 §4.1: 43-128 unreserved characters).
const CHECK_VERIFIER: &str = "valo-oauth-credential-check-verifier-000000000";

/// The `refresh_token` member of a JSON body, if it has a non-empty one.
fn refresh_token_in(body: &[u8]) -> Option<SecretString> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("refresh_token")? {
        serde_json::Value::String(token) if !token.is_empty() => {
            Some(SecretString::from(token.clone()))
        }
        _ => None,
    }
}

/// `issued_at` is documented as a string of milliseconds; accept a JSON number too.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(untagged)]
enum IssuedAt {
    Text(String),
    Number(serde_json::Number),
}

impl IssuedAt {
    fn as_text(&self) -> String {
        match self {
            IssuedAt::Text(s) => s.clone(),
            IssuedAt::Number(n) => n.to_string(),
        }
    }
}

/// Salesforce's additions to the RFC 6749 §5.1 token response (`docs/salesforce.md`, "Token").
#[derive(Clone, Deserialize, Serialize)]
struct SalesforceFields {
    instance_url: String,
    id: String,
    #[serde(default)]
    signature: Option<String>,
    #[serde(default)]
    issued_at: Option<IssuedAt>,
    #[serde(default)]
    id_token: Option<String>,
    #[serde(default)]
    sfdc_community_url: Option<String>,
    #[serde(default)]
    sfdc_community_id: Option<String>,
}

impl fmt::Debug for SalesforceFields {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SalesforceFields")
            .field("instance_url", &self.instance_url)
            .field("id", &self.id)
            .field("issued_at", &self.issued_at)
            .field("signature", &self.signature.as_ref().map(|_| "[present]"))
            .field("id_token", &self.id_token.as_ref().map(|_| "[redacted]"))
            .field("sfdc_community_url", &self.sfdc_community_url)
            .field("sfdc_community_id", &self.sfdc_community_id)
            .finish()
    }
}

impl ExtraTokenFields for SalesforceFields {}

type SalesforceToken = StandardTokenResponse<SalesforceFields, BasicTokenType>;

/// An `oauth2` client with only the token endpoint set.
type TokenClient = Client<
    BasicErrorResponse,
    SalesforceToken,
    BasicTokenIntrospectionResponse,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
>;

impl SalesforceClient {
    /// grant_type=authorization_code (RFC 6749 §4.1.3) with client_secret_post (RFC 6749
    /// §2.3.1), redirect_uri and code_verifier (RFC 7636 §4.5), through the `oauth2` crate.
    /// `code` is already percent-decoded once; it is form-encoded exactly once here.
    #[instrument(skip_all, fields(login_host = tracing::field::Empty, grant = "authorization_code"))]
    pub async fn exchange_code(
        &self,
        app: &AppCredentials,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &SecretString,
    ) -> Result<TokenGrant, SalesforceError> {
        self.request_code_grant(app, redirect_uri, code, pkce_verifier, true)
            .await
    }

    /// The code exchange; `log_failures` off for the credential check, whose refusal
    /// (`invalid_grant`) is the expected answer and no failure to warn operators about.
    async fn request_code_grant(
        &self,
        app: &AppCredentials,
        redirect_uri: &str,
        code: &str,
        pkce_verifier: &SecretString,
        log_failures: bool,
    ) -> Result<TokenGrant, SalesforceError> {
        let origin = self.login_origin(&app.login_url)?;
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|_| SalesforceError::Request("redirect_uri is not a valid URL".into()))?;
        let client = token_client(&origin, app)?.set_redirect_uri(redirect);
        let status = AtomicU16::new(0);
        let http = HttpCall {
            client: self,
            status: &status,
            endpoint: SalesforceEndpoint::Token,
        };
        let result = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(
                pkce_verifier.expose_secret().to_owned(),
            ))
            .request_async(&http)
            .await;
        let status = status.load(Ordering::Relaxed);
        self.finish_grant(result, status, app, log_failures)
    }

    /// Checks a tenant app's consumer key and secret before they are stored: a code exchange
    /// with a deliberately invalid code. The token endpoint authenticates the client before
    /// it looks at the grant (RFC 6749 §5.2 lists `invalid_client` before `invalid_grant`), so
    /// Salesforce answers `invalid_client_id` for an unknown key, `invalid_client` for a wrong
    /// secret, and `invalid_grant` when both are right (Salesforce Help, "OAuth flow
    /// errors"). Tolerant: any other OAuth refusal also means the client passed
    /// authentication. `Err` when no OAuth answer came (unreachable, not JSON) or the
    /// endpoint accepted the made-up code (not a Salesforce token endpoint).
    #[instrument(skip_all, fields(login_host = tracing::field::Empty, grant = "credential_check"))]
    pub async fn check_credentials(
        &self,
        app: &AppCredentials,
        redirect_uri: &str,
    ) -> Result<CredentialCheck, SalesforceError> {
        let verifier = SecretString::from(CHECK_VERIFIER.to_owned());
        let answer = self
            .request_code_grant(app, redirect_uri, CHECK_CODE, &verifier, false)
            .await;
        match answer {
            Err(SalesforceError::Refused { error, .. }) => {
                debug!(error = %error, "credential check: the token endpoint answered");
                Ok(match error.as_str() {
                    "invalid_client_id" => CredentialCheck::KeyRefused,
                    "invalid_client" => CredentialCheck::SecretRefused,
                    _ => CredentialCheck::Accepted,
                })
            }
            Err(other) => Err(other),
            Ok(_) => Err(SalesforceError::InvalidResponse(
                "the token endpoint accepted a made-up authorization code".into(),
            )),
        }
    }

    /// grant_type=refresh_token (RFC 6749 §6), client_secret_post, through the `oauth2`
    /// crate. A response without refresh_token is fine (no Refresh Token Rotation).
    ///
    /// `Err` means no usable answer arrived (a refusal, a transport failure). An answer that
    /// carries a refresh token is returned even when it fails the checks (signature,
    /// `instance_url` policy, identity, shape): with rotation, that token is now the only
    /// valid one and must be kept (Salesforce Help, "Refresh Token Rotation").
    #[instrument(skip_all, fields(login_host = tracing::field::Empty, grant = "refresh_token"))]
    pub async fn refresh(
        &self,
        app: &AppCredentials,
        refresh_token: &SecretString,
    ) -> Result<RefreshAnswer, SalesforceError> {
        let origin = self.login_origin(&app.login_url)?;
        let client = token_client(&origin, app)?;
        let status = AtomicU16::new(0);
        let http = HttpCall {
            client: self,
            status: &status,
            endpoint: SalesforceEndpoint::Token,
        };
        let token = RefreshToken::new(refresh_token.expose_secret().to_owned());
        let result = client
            .exchange_refresh_token(&token)
            .request_async(&http)
            .await;
        let status = status.load(Ordering::Relaxed);
        let rotated_refresh_token = match &result {
            Ok(token) => token
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            // A success status whose body the token response type could not take (a field
            // missing or of the wrong type): its refresh token still counts.
            Err(RequestTokenError::Parse(_, body)) if (200..300).contains(&status) => {
                refresh_token_in(body)
            }
            Err(_) => None,
        };
        let checked = self.finish_grant(result, status, app, true);
        match (checked, rotated_refresh_token) {
            (Err(e), None) => Err(e),
            (checked, rotated_refresh_token) => Ok(RefreshAnswer {
                rotated_refresh_token,
                checked,
            }),
        }
    }

    /// Turns the `oauth2` result into a [`TokenGrant`] (or a classified error).
    fn finish_grant(
        &self,
        result: Result<SalesforceToken, RequestTokenError<Transport, BasicErrorResponse>>,
        status: u16,
        app: &AppCredentials,
        log_failures: bool,
    ) -> Result<TokenGrant, SalesforceError> {
        let outcome = match result {
            Ok(token) => self.grant_from(&token, app),
            Err(e) => Err(token_error(e, status)),
        };
        match &outcome {
            Ok(grant) => debug!(
                org_id = %grant.org_id,
                signature_verified = grant.signature_verified,
                rotated = grant.refresh_token.is_some(),
                "token grant received"
            ),
            Err(e) if log_failures => log_failure(e),
            Err(_) => {}
        }
        outcome
    }

    fn grant_from(
        &self,
        token: &SalesforceToken,
        app: &AppCredentials,
    ) -> Result<TokenGrant, SalesforceError> {
        let extra = token.extra_fields();
        let issued_at = extra.issued_at.as_ref().map(IssuedAt::as_text);
        // Salesforce Help "OAuth 2.0 Web Server Flow": signature = Base64(HMAC-SHA256(
        // consumer secret, id + issued_at)). Checked before anything else is trusted.
        let signature_verified = match &extra.signature {
            Some(sig) => {
                let message_tail = issued_at.as_deref().unwrap_or("");
                if !verify_signature(&app.client_secret, &extra.id, message_tail, sig) {
                    return Err(SalesforceError::InvalidSignature);
                }
                true
            }
            None => false,
        };
        let (org_id, user_id) = parse_identity_url(&extra.id)?;
        let instance_url = self
            .hosts
            .validate_instance_url(&extra.instance_url)
            .map_err(|e| SalesforceError::InvalidResponse(e.to_string()))?;
        let issued_at_ms = match issued_at {
            Some(text) => Some(text.trim().parse::<i64>().map_err(|_| {
                SalesforceError::InvalidResponse("issued_at is not a number of milliseconds".into())
            })?),
            None => None,
        };
        if token.access_token().secret().is_empty() {
            return Err(SalesforceError::InvalidResponse(
                "access_token is empty".into(),
            ));
        }
        let scopes = token.scopes().map(|s| {
            s.iter()
                .map(|scope| scope.as_str())
                .collect::<Vec<_>>()
                .join(" ")
        });
        Ok(TokenGrant {
            access_token: SecretString::from(token.access_token().secret().clone()),
            refresh_token: token
                .refresh_token()
                .map(|t| SecretString::from(t.secret().clone())),
            instance_url,
            org_id,
            user_id,
            issued_at_ms,
            scopes,
            signature_verified,
        })
    }
}

/// An `oauth2` client for the tenant's token endpoint with client_secret_post.
fn token_client(origin: &str, app: &AppCredentials) -> Result<TokenClient, SalesforceError> {
    let token_url = TokenUrl::new(format!(
        "{origin}{}",
        endpoint_path(SalesforceEndpoint::Token)
    ))
    .map_err(|_| SalesforceError::Request("cannot build the token URL".into()))?;
    Ok(
        Client::new(ClientId::new(app.client_id.expose_secret().to_owned()))
            .set_client_secret(ClientSecret::new(
                app.client_secret.expose_secret().to_owned(),
            ))
            // RFC 6749 §2.3.1 client_secret_post: what Salesforce clients use.
            .set_auth_type(AuthType::RequestBody)
            .set_token_uri(token_url),
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use axum::http::StatusCode;

    use super::super::test_support::*;
    use super::*;
    use crate::salesforce::{ErrorClass, to_18_char_id};

    #[tokio::test]
    async fn the_credential_check_reads_the_client_errors_and_tolerates_the_rest() {
        for (error, expected) in [
            ("invalid_client_id", CredentialCheck::KeyRefused),
            ("invalid_client", CredentialCheck::SecretRefused),
            ("invalid_grant", CredentialCheck::Accepted),
            // Any other refusal came after the client authenticated.
            ("invalid_request", CredentialCheck::Accepted),
        ] {
            let respond = answer(400, oauth_error(error, Some("x")));
            let (base, seen) = server("/services/oauth2/token", respond).await;
            let check = client().check_credentials(&app(&base), REDIRECT).await;
            assert_eq!(check.unwrap(), expected, "{error}");
            let pairs = form(&seen.lock().unwrap()[0]);
            assert_eq!(get(&pairs, "grant_type"), Some("authorization_code"));
            assert_eq!(get(&pairs, "code"), Some(CHECK_CODE));
            assert_eq!(get(&pairs, "client_id"), Some(CLIENT_ID));
            assert_eq!(get(&pairs, "client_secret"), Some(CLIENT_SECRET));
        }
        // A made-up code accepted: not a Salesforce token endpoint.
        let (base, _) = server("/services/oauth2/token", |_| {
            json(StatusCode::OK, token_body(true))
        })
        .await;
        let check = client().check_credentials(&app(&base), REDIRECT).await;
        assert!(
            matches!(check, Err(SalesforceError::InvalidResponse(_))),
            "{check:?}"
        );
        // An outage is an outage.
        let (base, _) = server("/services/oauth2/token", |_| {
            json(StatusCode::SERVICE_UNAVAILABLE, serde_json::json!({}))
        })
        .await;
        let check = client().check_credentials(&app(&base), REDIRECT).await;
        assert!(
            matches!(&check, Err(e) if e.class() == ErrorClass::Transient),
            "{check:?}"
        );
    }

    #[tokio::test]
    async fn exchange_code_sends_the_right_form_and_parses_the_grant() {
        let (base, seen) = server("/services/oauth2/token", |_| {
            json(StatusCode::OK, token_body(true))
        })
        .await;
        let grant = client()
            .exchange_code(&app(&base), REDIRECT, "abc==", &secret(VERIFIER))
            .await
            .unwrap();
        let body = seen.lock().unwrap()[0].clone();
        // Form-encoded exactly once: "abc==" arrives as "abc%3D%3D".
        assert!(body.contains("code=abc%3D%3D"), "{body}");
        let pairs = form(&body);
        assert_eq!(get(&pairs, "grant_type"), Some("authorization_code"));
        assert_eq!(get(&pairs, "code"), Some("abc=="));
        assert_eq!(get(&pairs, "client_id"), Some(CLIENT_ID));
        assert_eq!(get(&pairs, "client_secret"), Some(CLIENT_SECRET));
        assert_eq!(get(&pairs, "code_verifier"), Some(VERIFIER));
        assert_eq!(get(&pairs, "redirect_uri"), Some(REDIRECT));

        assert_eq!(grant.access_token.expose_secret(), ACCESS_TOKEN);
        assert_eq!(
            grant.refresh_token.as_ref().map(|t| t.expose_secret()),
            Some(REFRESH_TOKEN)
        );
        assert_eq!(grant.instance_url, INSTANCE);
        assert_eq!(grant.org_id, to_18_char_id("00D000000000000").unwrap());
        assert_eq!(grant.user_id, "005D0000001az5dIAA");
        assert_eq!(grant.issued_at_ms, Some(1_738_348_388_166));
        assert_eq!(grant.scopes.as_deref(), Some("refresh_token api"));
        assert!(grant.signature_verified);
        let debug = format!("{grant:?}");
        assert!(
            !debug.contains(ACCESS_TOKEN) && !debug.contains(REFRESH_TOKEN),
            "{debug}"
        );
        let debug = format!("{:?}", app(&base));
        assert!(
            !debug.contains(CLIENT_SECRET) && !debug.contains(CLIENT_ID),
            "{debug}"
        );
    }

    #[tokio::test]
    async fn signature_variants() {
        // Wrong signature.
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v["signature"] = sign("another-secret", &format!("{}{ISSUED_AT}", id_url())).into();
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidSignature), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Upstream);

        // No signature: accepted, flagged; issued_at as a JSON number.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(true);
            v.as_object_mut().unwrap().remove("signature");
            v["issued_at"] = serde_json::json!(1_738_348_388_166_i64);
            json(StatusCode::OK, v)
        })
        .await;
        let grant = exchange(&base).await.unwrap();
        assert!(!grant.signature_verified);
        assert_eq!(grant.issued_at_ms, Some(1_738_348_388_166));

        // A signed numeric issued_at verifies against its decimal text.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(false);
            v["issued_at"] = serde_json::json!(1_738_348_388_166_i64);
            json(StatusCode::OK, v)
        })
        .await;
        assert!(exchange(&base).await.unwrap().signature_verified);

        // No issued_at, no signature: the caller's now.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(false);
            let o = v.as_object_mut().unwrap();
            o.remove("signature");
            o.remove("issued_at");
            json(StatusCode::OK, v)
        })
        .await;
        let grant = exchange(&base).await.unwrap();
        assert_eq!(grant.issued_at_ms, None);
    }

    /// A refresh of [`REFRESH_TOKEN`] against a token endpoint that answers `body` with
    /// `status`, and the request bodies the endpoint got.
    async fn refresh_against(
        status: u16,
        body: serde_json::Value,
    ) -> (Result<RefreshAnswer, SalesforceError>, Vec<String>) {
        let (base, seen) = server("/services/oauth2/token", answer(status, body)).await;
        let answer = client().refresh(&app(&base), &secret(REFRESH_TOKEN)).await;
        let seen = seen.lock().unwrap().clone();
        (answer, seen)
    }

    #[tokio::test]
    async fn refresh_without_refresh_token_is_accepted() {
        let (answer, seen) = refresh_against(200, token_body(false)).await;
        let answer = answer.unwrap();
        assert!(answer.rotated_refresh_token.is_none());
        let grant = answer.checked.unwrap();
        assert!(grant.signature_verified);
        assert_eq!(grant.access_token.expose_secret(), ACCESS_TOKEN);
        let pairs = form(&seen[0]);
        assert_eq!(get(&pairs, "grant_type"), Some("refresh_token"));
        assert_eq!(get(&pairs, "refresh_token"), Some(REFRESH_TOKEN));
        assert_eq!(get(&pairs, "client_id"), Some(CLIENT_ID));
        assert_eq!(get(&pairs, "client_secret"), Some(CLIENT_SECRET));
        assert_eq!(get(&pairs, "redirect_uri"), None);
    }

    #[tokio::test]
    async fn refresh_with_rotation_and_revoked_token() {
        let answer = refresh_against(200, token_body(true)).await.0.unwrap();
        assert_eq!(
            answer.rotated_refresh_token.unwrap().expose_secret(),
            REFRESH_TOKEN
        );
        assert!(answer.checked.is_ok());

        // An answer that fails a check still hands back its new refresh token (Salesforce
        // has invalidated the old one): a bad signature, and a body missing `instance_url`.
        let mut bad_signature = token_body(true);
        bad_signature["signature"] = "bm90LXRoZS1zaWduYXR1cmU=".into();
        let mut no_instance_url = token_body(true);
        no_instance_url
            .as_object_mut()
            .unwrap()
            .remove("instance_url");
        for broken in [bad_signature, no_instance_url] {
            let answer = refresh_against(200, broken).await.0.unwrap();
            let rotated = answer.rotated_refresh_token.as_ref().unwrap();
            assert_eq!(rotated.expose_secret(), REFRESH_TOKEN);
            assert!(!format!("{answer:?}").contains(REFRESH_TOKEN));
            let e = answer.checked.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Upstream, "{e:?}");
        }

        let expired = oauth_error("invalid_grant", Some("expired access/refresh token"));
        let e = refresh_against(400, expired).await.0.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Reauthorize);
        assert_no_secrets(&e);
    }
}
