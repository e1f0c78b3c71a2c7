//! The authorization-code flow with PKCE (RFC 6749 §4.1, RFC 7636), from the start request
//! to Salesforce's redirect back to the callback.
//!
//! The state is 32 random bytes (RFC 9700 §4.7: CSRF protection), of which only the SHA-256
//! is stored, bound to the tenant, single-use and expiring. The PKCE verifier is fresh per
//! flow and stored sealed. The callback consumes the state atomically before anything else,
//! so of two concurrent callbacks with one state exactly one proceeds.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use rand::RngCore as _;
use secrecy::{ExposeSecret, SecretString};
use sha2::{Digest, Sha256};
use url::Url;
use uuid::Uuid;

use super::{Broker, BrokerError, SecretColumn, TenantId};
use crate::crypto::Binding;
use crate::salesforce::{AuthorizeRequest, SalesforceError, TokenGrant};
use crate::store::{AuthorizationSession, AuthorizedConnection, ConsumeOutcome, Millis};

/// The longest `login_hint` passed on (Salesforce usernames are at most 80 characters).
const MAX_LOGIN_HINT: usize = 256;
/// Encoded length of a 32-byte state in base64url without padding.
const STATE_LEN: usize = 43;

/// A started flow.
pub struct StartedAuthorization {
    pub authorization_url: Url,
    pub expires_at: Millis,
}

/// What Salesforce sent to the callback (already percent-decoded once).
#[derive(Default)]
pub struct CallbackParams {
    pub state: Option<String>,
    pub code: Option<SecretString>,
    pub error: Option<String>,
    pub error_description: Option<String>,
}

/// Why a callback cannot be tied to a flow: answered with an error page, never a redirect
/// (there is no trustworthy `return_to` without a valid state).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StateProblem {
    Missing,
    Malformed,
    Unknown,
    Replayed,
    Expired,
}

/// The end of a flow whose state was valid.
#[derive(Debug)]
pub struct CallbackOutcome {
    pub return_to: Option<String>,
    pub result: Result<Uuid, FlowError>,
}

/// A failed flow, as reported to the front end in `error=` (a contract: keep the codes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowError {
    pub code: FlowErrorCode,
    /// Why it failed, finer than the code: what the result page's guidance is chosen by.
    pub reason: FailureReason,
    /// A short, sanitised description for people.
    pub description: String,
}

impl FlowError {
    fn new(code: FlowErrorCode, reason: FailureReason, description: impl Into<String>) -> Self {
        Self {
            code,
            reason,
            description: description.into(),
        }
    }
}

/// Why a flow failed, in terms of what a customer's Salesforce admin has to change. One
/// error code can have several reasons (`exchange_failed`: a wrong secret, a refused code)
/// and one reason several codes (a refusal for IP or login hours at authorize or at the
/// exchange). `crate::http::guidance` holds the words for each.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// `access_denied`: the person clicked Deny (or Salesforce denied for them).
    AccessDenied,
    /// `OAUTH_EC_APP_NOT_FOUND`: no such ECA in the org logged in to.
    AppNotFound,
    /// `OAUTH_APP_BLOCKED`: the ECA is blocked in the org.
    AppBlocked,
    /// `OAUTH_APP_ACCESS_DENIED`: the user is not among the ECA's permitted users.
    UserNotPermitted,
    /// `OAUTH_APPROVAL_ERROR_GENERIC`: Salesforce's catch-all approval error.
    ApprovalError,
    /// `invalid_scope`: the ECA does not offer a requested scope.
    InvalidScope,
    /// `invalid_request` (e.g. PKCE settings), `unsupported_response_type`.
    InvalidRequest,
    /// `redirect_uri_mismatch`: the ECA's callback URL is not ours.
    RedirectUriMismatch,
    /// `invalid_client_id`: the consumer key is unknown to the org.
    UnknownConsumerKey,
    /// `invalid_client` at the exchange: the consumer secret is wrong.
    WrongConsumerSecret,
    /// "IP restricted or invalid login hours": the org's or the ECA's policy refused the
    /// login from here or now.
    LoginRestricted,
    /// A Salesforce code we have no words for: its own description is shown.
    OtherSalesforceError,
    /// No refresh token: the ECA lacks the `refresh_token, offline_access` scope.
    NoRefreshToken,
    /// The code was refused (expired, reused) or Salesforce sent neither code nor error.
    CodeRefused,
    /// The tenant's app was removed while the person was at Salesforce.
    AppRemoved,
    /// A reconnect completed by another Salesforce user than the connection's.
    DifferentUser,
    /// Salesforce's answer failed a check (signature aside): not the person's to fix.
    UnusableAnswer,
    /// The signature did not verify with the registered consumer secret.
    InvalidSignature,
    /// Salesforce unreachable, timing out or failing.
    UpstreamUnavailable,
    /// Our own database failed.
    ServiceUnavailable,
}

impl FailureReason {
    pub const ALL: [Self; 20] = [
        Self::AccessDenied,
        Self::AppNotFound,
        Self::AppBlocked,
        Self::UserNotPermitted,
        Self::ApprovalError,
        Self::InvalidScope,
        Self::InvalidRequest,
        Self::RedirectUriMismatch,
        Self::UnknownConsumerKey,
        Self::WrongConsumerSecret,
        Self::LoginRestricted,
        Self::OtherSalesforceError,
        Self::NoRefreshToken,
        Self::CodeRefused,
        Self::AppRemoved,
        Self::DifferentUser,
        Self::UnusableAnswer,
        Self::InvalidSignature,
        Self::UpstreamUnavailable,
        Self::ServiceUnavailable,
    ];

    /// The reason behind one of Salesforce's callback errors; the description decides for
    /// refusals Salesforce words rather than codes (IP ranges, login hours).
    fn of_salesforce_error(code: &str, description: &str) -> Self {
        let description = description.to_ascii_lowercase();
        if description.contains("ip restricted")
            || description.contains("login hours")
            || description.contains("restricted ip")
        {
            return Self::LoginRestricted;
        }
        match code {
            "access_denied" => Self::AccessDenied,
            "OAUTH_EC_APP_NOT_FOUND" => Self::AppNotFound,
            "OAUTH_APP_BLOCKED" => Self::AppBlocked,
            "OAUTH_APP_ACCESS_DENIED" => Self::UserNotPermitted,
            "OAUTH_APPROVAL_ERROR_GENERIC" => Self::ApprovalError,
            "invalid_scope" => Self::InvalidScope,
            "invalid_request" | "unsupported_response_type" => Self::InvalidRequest,
            "redirect_uri_mismatch" => Self::RedirectUriMismatch,
            "invalid_client_id" => Self::UnknownConsumerKey,
            "invalid_client" => Self::WrongConsumerSecret,
            _ => Self::OtherSalesforceError,
        }
    }
}

/// The `error` a failed callback ends with (the redirect's `error` parameter and the page's
/// code): Salesforce's own code passed through, or one of ours.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum FlowErrorCode {
    /// Salesforce's `error` from the callback (`access_denied`, `OAUTH_EC_APP_NOT_FOUND`, …),
    /// sanitised.
    Salesforce(String),
    /// The token response's signature did not verify with the consumer secret.
    InvalidSignature,
    /// The token response carried no refresh token (scope not granted).
    NoRefreshToken,
    /// The code exchange was refused or could not be completed.
    ExchangeFailed,
    /// Salesforce was unreachable or failing.
    UpstreamUnavailable,
    /// Our own database failed.
    ServiceUnavailable,
    /// The code exchange was refused for the org's IP ranges or login hours.
    LoginRestricted,
    /// A reconnect was completed by another Salesforce user than the connection's.
    DifferentUser,
}

impl FlowErrorCode {
    /// Our own codes (Salesforce's are open-ended).
    pub const OWN: [Self; 7] = [
        Self::InvalidSignature,
        Self::NoRefreshToken,
        Self::ExchangeFailed,
        Self::UpstreamUnavailable,
        Self::ServiceUnavailable,
        Self::LoginRestricted,
        Self::DifferentUser,
    ];

    pub fn as_str(&self) -> &str {
        match self {
            Self::Salesforce(code) => code,
            Self::InvalidSignature => "invalid_signature",
            Self::NoRefreshToken => "no_refresh_token",
            Self::ExchangeFailed => "exchange_failed",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::ServiceUnavailable => "service_unavailable",
            Self::LoginRestricted => "login_restricted",
            Self::DifferentUser => "different_user",
        }
    }
}

fn random_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rngs::OsRng.fill_bytes(&mut bytes);
    URL_SAFE_NO_PAD.encode(bytes)
}

fn state_hash(state: &str) -> Vec<u8> {
    Sha256::digest(state.as_bytes()).to_vec()
}

/// Keeps an error code to the characters Salesforce uses, so nothing odd is reflected.
fn sanitise_code(code: &str) -> String {
    let clean: String = code
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || *c == '_')
        .take(64)
        .collect();
    if clean.is_empty() {
        "unknown_error".to_owned()
    } else {
        clean
    }
}

/// Printable text only, at most 200 characters.
pub fn sanitise_description(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .take(200)
        .collect::<String>()
        .trim()
        .to_owned()
}

/// What we tell people about Salesforce's known callback errors.
fn explain_salesforce_error(code: &str, description: &str) -> String {
    match code {
        "OAUTH_EC_APP_NOT_FOUND" => "Salesforce did not find the External Client App in the org the user logged in to. \
            A local External Client App exists only in the org that created it: set the tenant's login URL to that org's \
            My Domain (https://NAME.my.salesforce.com) and try again."
            .to_owned(),
        "access_denied" => "The Salesforce user denied access.".to_owned(),
        "redirect_uri_mismatch" => "The External Client App's callback URL does not match this service's callback URL.".to_owned(),
        "invalid_client_id" => "Salesforce does not know the consumer key: check the registered External Client App.".to_owned(),
        "OAUTH_APP_BLOCKED" => "The External Client App is blocked in the org: ask the Salesforce admin.".to_owned(),
        "OAUTH_APP_ACCESS_DENIED" => "The Salesforce user is not permitted to use the External Client App (its Policies tab, Permitted Users).".to_owned(),
        _ => sanitise_description(description),
    }
}

impl Broker {
    /// Starts a flow: stores the hashed state and the sealed verifier, returns the URL to
    /// send the person's browser to.
    pub async fn start_authorization(
        &self,
        tenant: &TenantId,
        return_to: Option<&str>,
        login_hint: Option<&str>,
    ) -> Result<StartedAuthorization, BrokerError> {
        self.start_flow(tenant, return_to, login_hint, None).await
    }

    /// Starts a reconnect of one of the tenant's connections: a flow whose `login_hint` is
    /// the connection's Salesforce username (when known), so the person lands on the right
    /// user's login, and whose completion renews that connection (same id) or, signed in as
    /// someone else, fails with `different_user` instead of creating another connection.
    pub async fn start_reauthorization(
        &self,
        tenant: &TenantId,
        connection_id: Uuid,
        return_to: Option<&str>,
    ) -> Result<StartedAuthorization, BrokerError> {
        let username = self
            .connection_record(tenant, connection_id)
            .await?
            .connection
            .username;
        if username.is_none() {
            tracing::info!(connection = %connection_id, "reconnect without login_hint: the connection's username is not known");
        }
        self.start_flow(tenant, return_to, username.as_deref(), Some(connection_id))
            .await
    }

    async fn start_flow(
        &self,
        tenant: &TenantId,
        return_to: Option<&str>,
        login_hint: Option<&str>,
        connection_id: Option<Uuid>,
    ) -> Result<StartedAuthorization, BrokerError> {
        let return_to = return_to.map(|r| self.check_return_to(r)).transpose()?;
        if let Some(hint) = login_hint
            && (hint.is_empty()
                || hint.chars().count() > MAX_LOGIN_HINT
                || hint.chars().any(char::is_control))
        {
            return Err(BrokerError::InvalidRequest(format!(
                "login_hint must be 1-{MAX_LOGIN_HINT} printable characters"
            )));
        }
        let app = self.tenant_app(tenant).await?;
        let credentials = self.app_credentials(&app)?;

        let state = random_token();
        // RFC 7636 §4.1-4.2: a high-entropy verifier and its S256 challenge.
        let (challenge, verifier) = oauth2::PkceCodeChallenge::new_random_sha256();
        let id = Uuid::new_v4();
        let now = self.now();
        let ttl = i64::try_from(self.settings.authorization_ttl.as_millis()).unwrap_or(i64::MAX);
        let session = AuthorizationSession {
            state_hash: state_hash(&state),
            id,
            tenant_id: tenant.as_str().to_owned(),
            pkce_verifier_enc: self.keyring.seal(
                verifier.secret(),
                Binding::new("authorization_sessions", &id.to_string(), "pkce_verifier"),
            )?,
            return_to: return_to.clone(),
            created_at: now,
            expires_at: now.saturating_add(ttl),
            consumed_at: None,
            connection_id,
        };
        let url = self
            .salesforce
            .authorize_url(&AuthorizeRequest {
                login_url: &app.login_url,
                client_id: credentials.client_id.expose_secret(),
                redirect_uri: &self.settings.callback_url,
                scopes: &self.settings.salesforce.scopes,
                state: &state,
                code_challenge: challenge.as_str(),
                login_hint,
                prompt: self.settings.salesforce.prompt.as_deref(),
            })
            .map_err(|e| BrokerError::Internal(e.to_string()))?;
        self.store.insert_authorization_session(&session).await?;
        // Opportunistic housekeeping: expired sessions are useless and hold sealed verifiers.
        if let Err(e) = self.store.delete_expired_authorization_sessions(now).await {
            tracing::warn!(error = %e, "could not delete expired authorization sessions");
        }
        tracing::info!(tenant = tenant.as_str(), flow = %id, reconnect = connection_id.is_some(), "authorization started");
        Ok(StartedAuthorization {
            authorization_url: url,
            expires_at: session.expires_at,
        })
    }

    /// `return_to` must be an absolute http(s) URL whose origin is allowed exactly
    /// (RFC 9700 §4.11: no open redirector).
    fn check_return_to(&self, raw: &str) -> Result<String, BrokerError> {
        let refuse = || {
            BrokerError::InvalidRequest(
                "return_to must be an absolute URL on an allowed origin (VALO_OAUTH_RETURN_TO_ORIGINS)".into(),
            )
        };
        let url = Url::parse(raw).map_err(|_| refuse())?;
        if !matches!(url.scheme(), "https" | "http")
            || !url.username().is_empty()
            || url.password().is_some()
            || url.fragment().is_some()
        {
            return Err(refuse());
        }
        let origin = url.origin().ascii_serialization();
        if !self.settings.return_to_origins.contains(&origin) {
            return Err(refuse());
        }
        Ok(url.to_string())
    }

    /// Handles Salesforce's redirect. `Err` when the state ties it to no live flow.
    pub async fn complete_authorization(
        &self,
        params: CallbackParams,
    ) -> Result<CallbackOutcome, StateProblem> {
        let state = params.state.as_deref().ok_or(StateProblem::Missing)?;
        if state.len() != STATE_LEN
            || !state
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(StateProblem::Malformed);
        }
        let now = self.now();
        let session = match self
            .store
            .consume_authorization_session(&state_hash(state), now)
            .await
        {
            Ok(ConsumeOutcome::Consumed(session)) => session,
            Ok(ConsumeOutcome::Unknown) => return Err(StateProblem::Unknown),
            Ok(ConsumeOutcome::AlreadyConsumed) => return Err(StateProblem::Replayed),
            Ok(ConsumeOutcome::Expired) => return Err(StateProblem::Expired),
            Err(e) => {
                // The state could not be checked: no redirect target can be trusted either.
                tracing::error!(error = %e, "cannot consume authorization state");
                return Ok(CallbackOutcome {
                    return_to: None,
                    result: Err(FlowError::new(
                        FlowErrorCode::ServiceUnavailable,
                        FailureReason::ServiceUnavailable,
                        "The service could not complete the connection. Please try again.",
                    )),
                });
            }
        };
        let result = self.finish_flow(&session, params).await;
        match &result {
            Ok(id) => {
                tracing::info!(tenant = session.tenant_id.as_str(), flow = %session.id, connection = %id, "connection authorized")
            }
            Err(e) => {
                tracing::warn!(tenant = session.tenant_id.as_str(), flow = %session.id, error = e.code.as_str(), "authorization failed")
            }
        }
        Ok(CallbackOutcome {
            return_to: session.return_to.clone(),
            result,
        })
    }

    async fn finish_flow(
        &self,
        session: &AuthorizationSession,
        params: CallbackParams,
    ) -> Result<Uuid, FlowError> {
        if let Some(error) = params.error.as_deref() {
            let code = sanitise_code(error);
            let sent = params.error_description.as_deref().unwrap_or("");
            let reason = FailureReason::of_salesforce_error(&code, sent);
            let description = explain_salesforce_error(&code, sent);
            return Err(FlowError {
                code: FlowErrorCode::Salesforce(code),
                reason,
                description,
            });
        }
        let code = params.code.ok_or_else(|| {
            FlowError::new(
                FlowErrorCode::ExchangeFailed,
                FailureReason::CodeRefused,
                "Salesforce sent neither a code nor an error.",
            )
        })?;
        let tenant = TenantId(session.tenant_id.clone());
        let internal = |e: BrokerError| {
            tracing::error!(error = %e, "authorization failed inside the service");
            match e {
                e if e.is_unavailable() => FlowError::new(
                    FlowErrorCode::ServiceUnavailable,
                    FailureReason::ServiceUnavailable,
                    "The service could not complete the connection. Please try again.",
                ),
                BrokerError::NotFound(_) => FlowError::new(
                    FlowErrorCode::ExchangeFailed,
                    FailureReason::AppRemoved,
                    "The tenant's Salesforce app was removed during the authorization.",
                ),
                _ => FlowError::new(
                    FlowErrorCode::ExchangeFailed,
                    FailureReason::UnusableAnswer,
                    "The connection could not be completed.",
                ),
            }
        };
        let app = self.tenant_app(&tenant).await.map_err(internal)?;
        let credentials = self.app_credentials(&app).map_err(internal)?;
        let verifier = self
            .keyring
            .open(
                &session.pkce_verifier_enc,
                Binding::new(
                    "authorization_sessions",
                    &session.id.to_string(),
                    "pkce_verifier",
                ),
            )
            .map_err(|e| internal(e.into()))?;

        let grant = self
            .salesforce
            .exchange_code(
                &credentials,
                &self.settings.callback_url,
                code.expose_secret(),
                &verifier,
            )
            .await
            .map_err(|e| exchange_error(&tenant, &e))?;

        let Some(refresh_token) = grant.refresh_token.clone() else {
            // Without a refresh token the connection dies with the session: refuse it, and
            // do not leave the access token alive (RFC 7009).
            if let Err(e) = self
                .salesforce
                .revoke(&app.login_url, &grant.access_token)
                .await
            {
                tracing::warn!(error = %e.summary(), "could not revoke the unusable access token");
            }
            return Err(FlowError::new(
                FlowErrorCode::NoRefreshToken,
                FailureReason::NoRefreshToken,
                "Salesforce issued no refresh token. In the External Client App's OAuth settings, \
                 select the scopes \"Perform requests at any time (refresh_token, offline_access)\" \
                 and \"Manage user data via APIs (api)\", then connect again.",
            ));
        };

        if let Some(renewed) = session.connection_id {
            self.check_same_user(&tenant, renewed, &app.login_url, &grant, &refresh_token)
                .await?;
        }

        let (access_expires_at, expiry_assumed, username) =
            self.introspect_new_token(&credentials, &grant).await;
        let now = self.now();
        let saved = self
            .store
            .save_authorized_connection_with_event(
                tenant.as_str(),
                &grant.org_id,
                &grant.user_id,
                Uuid::new_v4(),
                now,
                |id| {
                    let id = id.to_string();
                    Ok::<_, crate::crypto::KeyringError>(AuthorizedConnection {
                        login_url: app.login_url.clone(),
                        instance_url: grant.instance_url.clone(),
                        scopes: grant.scopes.clone().unwrap_or_default(),
                        access_token_enc: self.seal_connection_secret(
                            &id,
                            SecretColumn::AccessToken,
                            &grant.access_token,
                        )?,
                        refresh_token_enc: self.seal_connection_secret(
                            &id,
                            SecretColumn::RefreshToken,
                            &refresh_token,
                        )?,
                        issued_at: grant.issued_at_ms.unwrap_or(now),
                        access_expires_at,
                        expiry_assumed,
                        username: username.clone(),
                    })
                },
                // Written with the connection: `connection.created`, or `reauthorized`.
                |row, existed| self.flow_event(row, existed),
            )
            .await
            .map_err(|e| internal(e.into()))?
            .map_err(|e| internal(e.into()))?;

        let connection_id = saved.connection.connection.id;
        self.flow_completed(&tenant, &saved, &grant.user_id);
        self.tokens.forget(connection_id);
        if let Some(replaced) = saved.replaced {
            // Salesforce keeps at most five refresh tokens per user and app; revoke the one
            // this authorization replaces instead of letting it linger.
            self.revoke_replaced_token(&replaced, &refresh_token).await;
        }
        Ok(connection_id)
    }

    /// A reconnect must renew its own connection: signed in as another Salesforce user, the
    /// new grant is revoked (RFC 7009) and the flow fails, rather than leaving the broken
    /// connection broken and adding a second one. A connection deleted meanwhile lets the
    /// flow end as a plain authorization.
    async fn check_same_user(
        &self,
        tenant: &TenantId,
        renewed: Uuid,
        login_url: &str,
        grant: &TokenGrant,
        refresh_token: &SecretString,
    ) -> Result<(), FlowError> {
        let existing = match self.store.get_connection(tenant.as_str(), renewed).await {
            Ok(existing) => existing,
            Err(e) => {
                tracing::error!(error = %e, "cannot read the connection a reconnect renews");
                return Err(FlowError::new(
                    FlowErrorCode::ServiceUnavailable,
                    FailureReason::ServiceUnavailable,
                    "The service could not complete the connection. Please try again.",
                ));
            }
        };
        let Some(existing) = existing else {
            return Ok(());
        };
        if existing.connection.org_id == grant.org_id
            && existing.connection.user_id == grant.user_id
        {
            return Ok(());
        }
        if let Err(e) = self.salesforce.revoke(login_url, refresh_token).await {
            tracing::warn!(error = %e.summary(), "could not revoke the other user's new grant");
        }
        tracing::warn!(connection = %renewed, "reconnect completed by another Salesforce user: refused");
        let who = existing.connection.username.map_or_else(
            || "the connection's user".to_owned(),
            |name| sanitise_description(&name),
        );
        Err(FlowError::new(
            FlowErrorCode::DifferentUser,
            FailureReason::DifferentUser,
            format!(
                "You signed in to Salesforce as another user than this connection's. Log out of \
                 Salesforce, reconnect, and sign in as {who}."
            ),
        ))
    }

    /// The new access token's expiry and its user's username, by introspection (RFC 7662);
    /// without an expiry, the configured lifetime (Salesforce's token response has no
    /// `expires_in`).
    async fn introspect_new_token(
        &self,
        credentials: &crate::salesforce::AppCredentials,
        grant: &TokenGrant,
    ) -> (Millis, bool, Option<String>) {
        let assumed = || self.assumed_expiry(grant.issued_at_ms.unwrap_or_else(|| self.now()));
        match self
            .salesforce
            .introspect_access_token(credentials, &grant.access_token)
            .await
        {
            Ok(found) => match found.expires_at {
                Some(exp) => (exp, false, found.username),
                None => {
                    tracing::warn!(
                        "introspection gave no expiry; assuming the configured lifetime"
                    );
                    (assumed(), true, found.username)
                }
            },
            Err(e) => {
                tracing::warn!(error = %e.summary(), "introspection failed; assuming the configured lifetime");
                (assumed(), true, None)
            }
        }
    }

    fn assumed_expiry(&self, issued_at: Millis) -> Millis {
        let lifetime =
            i64::try_from(self.settings.salesforce.assumed_token_lifetime.as_millis()).unwrap_or(0);
        // Count from the later of issue time and now, in case Salesforce's clock is ahead.
        issued_at.min(self.now()).saturating_add(lifetime)
    }
}

/// Maps a failed code exchange to the callback's error contract.
fn exchange_error(tenant: &TenantId, e: &SalesforceError) -> FlowError {
    use crate::salesforce::ErrorClass;
    if let SalesforceError::InvalidSignature = e {
        tracing::error!(
            security_event = "invalid_token_signature",
            tenant = tenant.as_str(),
            "token response signature did not verify: response refused"
        );
        return FlowError::new(
            FlowErrorCode::InvalidSignature,
            FailureReason::InvalidSignature,
            "Salesforce's answer could not be verified with the registered consumer secret.",
        );
    }
    let restricted = match e {
        SalesforceError::Refused {
            error, description, ..
        } => {
            let description = description.as_deref().unwrap_or("").to_ascii_lowercase();
            error == "invalid_grant"
                && (description.contains("ip restricted") || description.contains("login hours"))
        }
        _ => false,
    };
    if restricted {
        // Classified transient for refreshes (it passes with the hour or the network), but
        // at the callback the person must learn which policy refused them.
        return FlowError::new(
            FlowErrorCode::LoginRestricted,
            FailureReason::LoginRestricted,
            "Salesforce refused the login from this network or at this time of day (IP restricted or invalid login hours).",
        );
    }
    if e.class() == ErrorClass::Transient {
        return FlowError::new(
            FlowErrorCode::UpstreamUnavailable,
            FailureReason::UpstreamUnavailable,
            "Salesforce is unavailable right now. Please try again in a moment.",
        );
    }
    let (reason, detail) = match e.oauth_error() {
        Some("invalid_client") => (
            FailureReason::WrongConsumerSecret,
            "Salesforce refused the consumer secret: update the tenant's External Client App credentials.",
        ),
        Some("invalid_client_id") => (
            FailureReason::UnknownConsumerKey,
            "Salesforce refused the consumer key: update the tenant's External Client App credentials.",
        ),
        Some(_) => (
            FailureReason::CodeRefused,
            "Salesforce refused the authorization code. Please start the connection again.",
        ),
        None => (
            FailureReason::UnusableAnswer,
            "Salesforce's answer could not be used. Please start the connection again.",
        ),
    };
    FlowError::new(FlowErrorCode::ExchangeFailed, reason, detail)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_descriptions_are_sanitised() {
        for (code, sanitised) in [
            ("access_denied", "access_denied"),
            ("<script>x", "scriptx"),
            ("!!", "unknown_error"),
        ] {
            assert_eq!(sanitise_code(code), sanitised, "{code}");
        }
        assert_eq!(sanitise_description("a\nb\u{0}c"), "a b c");
        assert_eq!(sanitise_description(&"x".repeat(500)).len(), 200);
    }

    #[test]
    fn states_are_random_and_hashed() {
        let (a, b) = (random_token(), random_token());
        assert_ne!(a, b);
        assert_eq!(a.len(), STATE_LEN);
        assert_eq!(state_hash(&a).len(), 32);
        assert_ne!(state_hash(&a), a.as_bytes());
    }
}
