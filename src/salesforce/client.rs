//! HTTP client for a tenant's Salesforce login host: authorize URL, authorization-code and
//! refresh-token grants (through the `oauth2` crate), RFC 7662 introspection and RFC 7009
//! revocation.
//!
//! One shared `reqwest::Client` with redirects disabled (a redirect could carry credentials
//! to another host: SSRF), connect and total timeouts, and a bounded response size.

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};
use std::time::Duration;

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenIntrospectionResponse,
    BasicTokenType,
};
use oauth2::http::{self, HeaderValue, header};
use oauth2::{
    AsyncHttpClient, AuthType, AuthorizationCode, Client, ClientId, ClientSecret, EndpointNotSet,
    EndpointSet, ExtraTokenFields, HttpRequest, HttpResponse, PkceCodeVerifier, RedirectUrl,
    RefreshToken, RequestTokenError, StandardRevocableToken, StandardTokenResponse, TokenResponse,
    TokenUrl,
};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use tracing::{Span, debug, instrument};
use url::Url;

use super::{
    HostPolicy, SalesforceError, parse_identity_url, sanitize, signature::verify_signature,
};

const CONTENT_TYPE_FORM: &str = "application/x-www-form-urlencoded";
const CONTENT_TYPE_JSON: &str = "application/json";

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

/// Parameters of the authorization request (RFC 6749 §4.1.1, RFC 7636 §4.3). No `Debug`:
/// `state` is a CSRF secret until the callback.
pub struct AuthorizeRequest<'a> {
    pub login_url: &'a str,
    pub client_id: &'a str,
    pub redirect_uri: &'a str,
    /// Space-separated, e.g. `api refresh_token offline_access`.
    pub scopes: &'a str,
    pub state: &'a str,
    /// base64url(SHA-256(verifier)), unpadded (RFC 7636 §4.2).
    pub code_challenge: &'a str,
    pub login_hint: Option<&'a str>,
    /// `login`, `consent`, `select_account`, space-separated.
    pub prompt: Option<&'a str>,
}

/// The useful content of a Salesforce token response.
pub struct TokenGrant {
    pub access_token: SecretString,
    pub refresh_token: Option<SecretString>,
    /// Validated by [`HostPolicy::validate_instance_url`] and normalised.
    pub instance_url: String,
    /// 18-character org id from `id`.
    pub org_id: String,
    /// 18-character user id from `id`.
    pub user_id: String,
    /// From `issued_at` (ms since the epoch, string or number); now when missing.
    pub issued_at_ms: i64,
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

/// The future of one HTTP exchange.
type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, Transport>> + Send + 'a>>;

/// The `oauth2` crate's HTTP hook: one exchange over the shared client (see
/// [`SalesforceClient::send`]), remembering the response status. A named type rather than a
/// closure: a closure returning a borrowing future makes the request future fail the
/// compiler's higher-ranked `Send` check, and handlers need `Send` futures.
struct HttpCall<'a> {
    client: &'a SalesforceClient,
    status: &'a AtomicU16,
}

impl<'c> AsyncHttpClient<'c> for HttpCall<'_> {
    type Error = Transport;
    type Future = SendFuture<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.client.send(request, self.status))
    }
}

/// Transport-level failures of one HTTP exchange (before any OAuth interpretation).
#[derive(Debug, thiserror::Error)]
enum Transport {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("network error")]
    Network,
    #[error("unexpected redirect (HTTP {0}); redirects are not followed")]
    Redirect(u16),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("the HTTP request could not be built")]
    Build,
}

impl Transport {
    /// reqwest errors are reduced to a kind: their Display includes the URL.
    fn from_reqwest(e: &reqwest::Error) -> Transport {
        if e.is_timeout() {
            Transport::Timeout
        } else if e.is_connect() {
            Transport::Connect
        } else if e.is_builder() {
            Transport::Build
        } else {
            Transport::Network
        }
    }
}

impl From<Transport> for SalesforceError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout | Transport::Connect | Transport::Network | Transport::Status(_) => {
                SalesforceError::Unavailable(t.to_string())
            }
            Transport::Redirect(_) | Transport::TooLarge(_) => {
                SalesforceError::InvalidResponse(t.to_string())
            }
            Transport::Build => SalesforceError::Request(t.to_string()),
        }
    }
}

/// The OAuth client to customers' Salesforce orgs. Cheap to clone (one shared connection
/// pool).
#[derive(Clone, Debug)]
pub struct SalesforceClient {
    http: reqwest::Client,
    settings: ClientSettings,
    /// Shared: the client is cloned with the application state on every request.
    hosts: std::sync::Arc<HostPolicy>,
}

impl SalesforceClient {
    pub fn new(
        settings: ClientSettings,
        hosts: HostPolicy,
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
            hosts: std::sync::Arc::new(hosts),
        })
    }

    /// `{login_url}/services/oauth2/authorize?response_type=code&client_id&redirect_uri&code_challenge&code_challenge_method=S256&state&scope[&login_hint][&prompt]`
    /// (RFC 6749 §4.1.1, RFC 7636 §4.3), properly percent-encoded (spaces as `%20`).
    pub fn authorize_url(&self, req: &AuthorizeRequest<'_>) -> Result<Url, SalesforceError> {
        let origin = self.login_origin(req.login_url)?;
        let bad = |why: &str| SalesforceError::Request(why.to_owned());
        if req.client_id.is_empty() {
            return Err(bad("client_id is empty"));
        }
        Url::parse(req.redirect_uri).map_err(|_| bad("redirect_uri is not a valid URL"))?;
        if req.state.is_empty() {
            return Err(bad("state is empty"));
        }
        // RFC 7636 §4.2: S256 challenge = BASE64URL(SHA256(verifier)), 43 characters.
        if req.code_challenge.len() != 43
            || !req
                .code_challenge
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        {
            return Err(bad(
                "code_challenge is not an unpadded base64url SHA-256 digest",
            ));
        }
        if let Some(prompt) = req.prompt {
            let valid = !prompt.trim().is_empty()
                && prompt
                    .split(' ')
                    .all(|p| matches!(p, "login" | "consent" | "select_account"));
            if !valid {
                return Err(bad(
                    "prompt must be login, consent or select_account (space-separated)",
                ));
            }
        }
        let mut params: Vec<(&str, &str)> = vec![
            ("response_type", "code"),
            ("client_id", req.client_id),
            ("redirect_uri", req.redirect_uri),
            ("code_challenge", req.code_challenge),
            ("code_challenge_method", "S256"),
            ("state", req.state),
            ("scope", req.scopes),
        ];
        if let Some(hint) = req.login_hint {
            params.push(("login_hint", hint));
        }
        if let Some(prompt) = req.prompt {
            params.push(("prompt", prompt));
        }
        let query = params
            .iter()
            .map(|(k, v)| format!("{k}={}", percent_encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut url = Url::parse(&format!("{origin}/services/oauth2/authorize"))
            .map_err(|_| bad("cannot build the authorize URL"))?;
        url.set_query(Some(&query));
        Ok(url)
    }

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
        let origin = self.login_origin(&app.login_url)?;
        let redirect = RedirectUrl::new(redirect_uri.to_owned())
            .map_err(|_| SalesforceError::Request("redirect_uri is not a valid URL".into()))?;
        let client = token_client(&origin, app)?.set_redirect_uri(redirect);
        let status = AtomicU16::new(0);
        let http = HttpCall {
            client: self,
            status: &status,
        };
        let result = client
            .exchange_code(AuthorizationCode::new(code.to_owned()))
            .set_pkce_verifier(PkceCodeVerifier::new(
                pkce_verifier.expose_secret().to_owned(),
            ))
            .request_async(&http)
            .await;
        let status = status.load(Ordering::Relaxed);
        self.finish_grant(result, status, app)
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
        let checked = self.finish_grant(result, status, app);
        match (checked, rotated_refresh_token) {
            (Err(e), None) => Err(e),
            (checked, rotated_refresh_token) => Ok(RefreshAnswer {
                rotated_refresh_token,
                checked,
            }),
        }
    }

    /// RFC 7662 introspection at `{login_url}/services/oauth2/introspect` (Salesforce Help
    /// "Token Introspection Endpoint"): form `token`, `token_type_hint=access_token`,
    /// `client_id`, `client_secret`. `Ok(Some(exp in unix ms))` when active with `exp`;
    /// `Ok(None)` when inactive or without `exp`.
    #[instrument(skip_all, fields(login_host = tracing::field::Empty))]
    pub async fn introspect_access_token_expiry(
        &self,
        app: &AppCredentials,
        access_token: &SecretString,
    ) -> Result<Option<i64>, SalesforceError> {
        let origin = self.login_origin(&app.login_url)?;
        let body = form_body(&[
            ("token", access_token.expose_secret()),
            ("token_type_hint", "access_token"),
            ("client_id", app.client_id.expose_secret()),
            ("client_secret", app.client_secret.expose_secret()),
        ]);
        let response = self
            .post_form(&format!("{origin}/services/oauth2/introspect"), body)
            .await
            .inspect_err(log_failure)?;
        let status = response.status().as_u16();
        if status != 200 {
            let e = error_from_body(status, response.body());
            log_failure(&e);
            return Err(e);
        }
        // RFC 7662 §2.2: `active` is required; `exp` is seconds since the epoch.
        #[derive(Deserialize)]
        struct Introspection {
            active: bool,
            #[serde(default)]
            exp: Option<serde_json::Number>,
        }
        let parsed: Introspection = serde_json::from_slice(response.body()).map_err(|_| {
            non_conforming_body(
                200,
                response.body(),
                "introspection response lacks `active`",
            )
        })?;
        if !parsed.active {
            debug!("introspection: token inactive");
            return Ok(None);
        }
        let exp_ms = parsed.exp.and_then(|n| {
            n.as_i64()
                .or_else(|| n.as_f64().map(|f| f as i64))
                .map(|s| s.saturating_mul(1000))
        });
        debug!(has_exp = exp_ms.is_some(), "introspection: token active");
        Ok(exp_ms)
    }

    /// RFC 7009 revocation at `{login_url}/services/oauth2/revoke` (Salesforce Mobile SDK
    /// "Revoking OAuth Tokens"): form `token`, no client authentication. 200 → Ok; 400
    /// `invalid_token` (already revoked or unknown) → Ok as well, the goal is reached.
    #[instrument(skip_all, fields(login_host = tracing::field::Empty))]
    pub async fn revoke(
        &self,
        login_url: &str,
        token: &SecretString,
    ) -> Result<(), SalesforceError> {
        let origin = self.login_origin(login_url)?;
        let body = form_body(&[("token", token.expose_secret())]);
        let response = self
            .post_form(&format!("{origin}/services/oauth2/revoke"), body)
            .await
            .inspect_err(log_failure)?;
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

    /// Validates the login URL against the host policy and records it on the current span.
    fn login_origin(&self, login_url: &str) -> Result<String, SalesforceError> {
        let origin = self
            .hosts
            .validate_login_url(login_url)
            .map_err(|e| SalesforceError::Request(e.to_string()))?;
        Span::current().record("login_host", origin.as_str());
        Ok(origin)
    }

    /// Turns the `oauth2` result into a [`TokenGrant`] (or a classified error).
    fn finish_grant(
        &self,
        result: Result<SalesforceToken, RequestTokenError<Transport, BasicErrorResponse>>,
        status: u16,
        app: &AppCredentials,
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
            Err(e) => log_failure(e),
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
            Some(text) => text.trim().parse::<i64>().map_err(|_| {
                SalesforceError::InvalidResponse("issued_at is not a number of milliseconds".into())
            })?,
            None => now_ms(),
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

    async fn post_form(&self, url: &str, body: String) -> Result<HttpResponse, SalesforceError> {
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url)
            .header(header::ACCEPT, HeaderValue::from_static(CONTENT_TYPE_JSON))
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_FORM),
            )
            .body(body.into_bytes())
            .map_err(|_| SalesforceError::Request("cannot build the HTTP request".into()))?;
        let status = AtomicU16::new(0);
        Ok(self.send(request, &status).await?)
    }

    /// One HTTP exchange over the shared client; the `oauth2` crate's `AsyncHttpClient`
    /// for closures calls this. 3xx, 5xx and 429 become errors here; the body is read in
    /// chunks and refused past `max_response_bytes`. The final status is stored in `status`
    /// so that OAuth error bodies can be reported with it.
    async fn send(
        &self,
        request: HttpRequest,
        status: &AtomicU16,
    ) -> Result<HttpResponse, Transport> {
        let request = reqwest::Request::try_from(request).map_err(|_| Transport::Build)?;
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Transport::from_reqwest(&e))?;
        let code = response.status();
        status.store(code.as_u16(), Ordering::Relaxed);
        if code.is_redirection() {
            return Err(Transport::Redirect(code.as_u16()));
        }
        if code.is_server_error() || code == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Transport::Status(code.as_u16()));
        }
        let max = self.settings.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > max as u64)
        {
            return Err(Transport::TooLarge(max));
        }
        let mut builder = http::Response::builder()
            .status(code)
            .version(response.version());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Transport::from_reqwest(&e))?
        {
            if body.len() + chunk.len() > max {
                return Err(Transport::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(body).map_err(|_| Transport::Build)
    }
}

/// An `oauth2` client for the tenant's token endpoint with client_secret_post.
fn token_client(origin: &str, app: &AppCredentials) -> Result<TokenClient, SalesforceError> {
    let token_url = TokenUrl::new(format!("{origin}/services/oauth2/token"))
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

/// Classifies an `oauth2` token-request error (`docs/salesforce.md`, "Token-endpoint errors").
fn token_error(
    e: RequestTokenError<Transport, BasicErrorResponse>,
    status: u16,
) -> SalesforceError {
    match e {
        RequestTokenError::ServerResponse(r) => SalesforceError::Refused {
            status,
            error: sanitize(r.error().as_ref()),
            description: r.error_description().map(|d| sanitize(d)),
        },
        RequestTokenError::Request(t) => t.into(),
        RequestTokenError::Parse(err, body) => {
            if status == 200 {
                if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                    SalesforceError::InvalidResponse(describe_shape_error(
                        &err.inner().to_string(),
                        &err.path().to_string(),
                    ))
                } else {
                    SalesforceError::Unavailable("HTTP 200 with a non-JSON body".into())
                }
            } else {
                non_conforming_body(status, &body, "without an OAuth error body")
            }
        }
        // Empty body or a non-JSON content type.
        RequestTokenError::Other(_) => {
            SalesforceError::Unavailable(format!("HTTP {status} without a JSON body"))
        }
    }
}

/// A non-200 answer from introspect/revoke: an OAuth error body → `Refused`, else classified
/// by whether the body is JSON at all.
fn error_from_body(status: u16, body: &[u8]) -> SalesforceError {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => SalesforceError::Refused {
            status,
            error: sanitize(&e.error),
            description: e.error_description.as_deref().map(sanitize),
        },
        Err(_) => non_conforming_body(status, body, "without an OAuth error body"),
    }
}

/// JSON of the wrong shape is a protocol violation; non-JSON (HTML error pages, maintenance
/// pages) is treated as an outage (`docs/salesforce.md`: "non-JSON bodies: transient").
fn non_conforming_body(status: u16, body: &[u8], what: &str) -> SalesforceError {
    if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        SalesforceError::InvalidResponse(format!("HTTP {status} {what}"))
    } else {
        SalesforceError::Unavailable(format!("HTTP {status} with a non-JSON body"))
    }
}

/// Describes a token-response shape error without echoing values (serde's "invalid type"
/// messages quote the offending value, which could be a token).
fn describe_shape_error(message: &str, path: &str) -> String {
    if message.starts_with("missing field") {
        let field = message.split('`').nth(1).unwrap_or("?");
        format!("token response lacks `{field}`")
    } else {
        format!("token response has an unexpected value at `{path}`")
    }
}

fn log_failure(e: &SalesforceError) {
    tracing::warn!(class = ?e.class(), error = %e.summary(), "salesforce request failed");
}

/// `application/x-www-form-urlencoded` body (each value encoded exactly once).
fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

/// Percent-encodes a query value, spaces as `%20` (form encoding writes them as `+`, and a
/// literal `+` as `%2B`, so every `+` in the output is a space).
fn percent_encode(value: &str) -> String {
    url::form_urlencoded::byte_serialize(value.as_bytes())
        .collect::<String>()
        .replace('+', "%20")
}

fn now_ms() -> i64 {
    i64::try_from(time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000)
        .unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use super::*;
    use crate::salesforce::{ErrorClass, to_18_char_id};
    use axum::Router;
    use axum::http::StatusCode;
    use axum::response::IntoResponse;
    use axum::routing::post;
    use base64::Engine as _;
    use hmac::{Hmac, Mac};
    use sha2::Sha256;
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};

    const CLIENT_ID: &str = "3MVG9-client-id";
    const CLIENT_SECRET: &str = "consumer-secret-XYZ";
    const ACCESS_TOKEN: &str = "00Dxx!access-token-value";
    const REFRESH_TOKEN: &str = "5Aep-refresh-token-value";
    const VERIFIER: &str = "verifier-abcdefghijklmnopqrstuvwxyz0123456789-._~";
    const CODE: &str = "aPrx-code-value==";
    const REDIRECT: &str = "https://valo.example.com/oauth/callback";
    const ISSUED_AT: &str = "1738348388166";
    const INSTANCE: &str = "https://acme.my.salesforce.com";

    const SECRETS: &[&str] = &[CLIENT_SECRET, ACCESS_TOKEN, REFRESH_TOKEN, VERIFIER, CODE];

    fn id_url() -> String {
        format!(
            "https://login.salesforce.com/id/{}/{}",
            "00D000000000000", "005D0000001az5d"
        )
    }

    fn sign(secret: &str, msg: &str) -> String {
        let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
        mac.update(msg.as_bytes());
        base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
    }

    fn token_body(with_refresh: bool) -> serde_json::Value {
        let id = id_url();
        let mut v = serde_json::json!({
            "access_token": ACCESS_TOKEN,
            "signature": sign(CLIENT_SECRET, &format!("{id}{ISSUED_AT}")),
            "scope": "refresh_token api",
            "instance_url": INSTANCE,
            "id": id,
            "token_type": "Bearer",
            "issued_at": ISSUED_AT,
        });
        if with_refresh {
            v["refresh_token"] = REFRESH_TOKEN.into();
        }
        v
    }

    fn json(status: StatusCode, v: serde_json::Value) -> axum::response::Response {
        (
            status,
            [(
                axum::http::header::CONTENT_TYPE,
                "application/json;charset=UTF-8",
            )],
            v.to_string(),
        )
            .into_response()
    }

    async fn serve(router: Router) -> String {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, router).await.unwrap();
        });
        format!("http://{addr}")
    }

    /// A server answering `path` with `respond(body)` and recording each request body.
    async fn server<F>(path: &str, respond: F) -> (String, Arc<Mutex<Vec<String>>>)
    where
        F: Fn(String) -> axum::response::Response + Clone + Send + Sync + 'static,
    {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let seen2 = seen.clone();
        let router = Router::new().route(
            path,
            post(move |body: String| {
                let respond = respond.clone();
                let seen = seen2.clone();
                async move {
                    seen.lock().unwrap().push(body.clone());
                    respond(body)
                }
            }),
        );
        (serve(router).await, seen)
    }

    fn client_with(settings: ClientSettings) -> SalesforceClient {
        let hosts =
            HostPolicy::parse("login.salesforce.com,*.my.salesforce.com,http://127.0.0.1").unwrap();
        SalesforceClient::new(settings, hosts).unwrap()
    }

    fn client() -> SalesforceClient {
        client_with(ClientSettings::default())
    }

    fn app(login_url: &str) -> AppCredentials {
        AppCredentials {
            login_url: login_url.to_owned(),
            client_id: SecretString::from(CLIENT_ID.to_owned()),
            client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
        }
    }

    fn secret(s: &str) -> SecretString {
        SecretString::from(s.to_owned())
    }

    fn assert_no_secrets(e: &SalesforceError) {
        let texts = [e.to_string(), format!("{e:?}"), e.summary()];
        for text in texts {
            for s in SECRETS {
                assert!(!text.contains(s), "secret leaked in {text:?}");
            }
        }
    }

    fn form(body: &str) -> Vec<(String, String)> {
        url::form_urlencoded::parse(body.as_bytes())
            .into_owned()
            .collect()
    }

    fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
        pairs
            .iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    async fn exchange(base: &str) -> Result<TokenGrant, SalesforceError> {
        client()
            .exchange_code(&app(base), REDIRECT, CODE, &secret(VERIFIER))
            .await
    }

    async fn exchange_against(
        respond: impl Fn(String) -> axum::response::Response + Clone + Send + Sync + 'static,
    ) -> SalesforceError {
        let (base, _) = server("/services/oauth2/token", respond).await;
        let e = exchange(&base).await.unwrap_err();
        assert_no_secrets(&e);
        e
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
        assert_eq!(grant.issued_at_ms, 1_738_348_388_166);
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
        assert_eq!(grant.issued_at_ms, 1_738_348_388_166);

        // A signed numeric issued_at verifies against its decimal text.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(false);
            v["issued_at"] = serde_json::json!(1_738_348_388_166_i64);
            json(StatusCode::OK, v)
        })
        .await;
        assert!(exchange(&base).await.unwrap().signature_verified);

        // No issued_at, no signature: now.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(false);
            let o = v.as_object_mut().unwrap();
            o.remove("signature");
            o.remove("issued_at");
            json(StatusCode::OK, v)
        })
        .await;
        let before = now_ms();
        let grant = exchange(&base).await.unwrap();
        assert!(grant.issued_at_ms >= before && grant.issued_at_ms <= now_ms());
    }

    #[tokio::test]
    async fn oauth_errors_are_classified() {
        let e = exchange_against(|_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
            )
        })
        .await;
        assert_eq!(e.class(), ErrorClass::Reauthorize);
        assert_eq!(e.oauth_error(), Some("invalid_grant"));
        assert!(
            matches!(e, SalesforceError::Refused { status: 400, .. }),
            "{e:?}"
        );
        assert_eq!(
            e.summary(),
            "invalid_grant (HTTP 400): expired access/refresh token"
        );

        let e = exchange_against(|_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_grant", "error_description": "IP restricted or invalid login hours"}),
            )
        })
        .await;
        assert_eq!(e.class(), ErrorClass::Transient);

        let e = exchange_against(|_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "inactive_user", "error_description": "user is inactive"}),
            )
        })
        .await;
        assert_eq!(e.oauth_error(), Some("inactive_user"));
        assert_eq!(e.class(), ErrorClass::Reauthorize);

        let e = exchange_against(|_| {
            json(
                StatusCode::UNAUTHORIZED,
                serde_json::json!({"error": "invalid_client", "error_description": "invalid client credentials"}),
            )
        })
        .await;
        assert!(
            matches!(e, SalesforceError::Refused { status: 401, .. }),
            "{e:?}"
        );
        assert_eq!(e.class(), ErrorClass::AppCredentials);

        let e = exchange_against(|_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "OAUTH_EC_APP_NOT_FOUND"}),
            )
        })
        .await;
        assert_eq!(e.class(), ErrorClass::Upstream);
    }

    #[tokio::test]
    async fn outages_and_bad_bodies() {
        let e = exchange_against(|_| {
            json(
                StatusCode::SERVICE_UNAVAILABLE,
                serde_json::json!({"error": "maintenance"}),
            )
        })
        .await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Transient);

        let e = exchange_against(|_| StatusCode::TOO_MANY_REQUESTS.into_response()).await;
        assert_eq!(e.class(), ErrorClass::Transient);

        // 200 with an HTML page: non-JSON → Unavailable (transient, docs/salesforce.md).
        let e = exchange_against(|_| {
            (
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html>maintenance</html>",
            )
                .into_response()
        })
        .await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");

        // 400 with an HTML page.
        let e = exchange_against(|_| (StatusCode::BAD_REQUEST, "<html>bad</html>").into_response())
            .await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");

        // 200 JSON lacking fields: protocol violation, without echoing values.
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v.as_object_mut().unwrap().remove("instance_url");
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("instance_url"), "{e}");
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v["refresh_token"] = serde_json::json!({"weird": REFRESH_TOKEN});
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");

        // instance_url outside Salesforce.
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v["instance_url"] = "https://evil.example.com".into();
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("evil.example.com"));

        // Bad identity URL (signature computed over it, so the id check is what fails).
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            let id = "https://login.salesforce.com/id/001000000000000/005D0000001az5d";
            v["id"] = id.into();
            v["signature"] = sign(CLIENT_SECRET, &format!("{id}{ISSUED_AT}")).into();
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
    }

    #[tokio::test]
    async fn hang_times_out_as_transient() {
        let router = Router::new().route(
            "/services/oauth2/token",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let base = serve(router).await;
        let c = client_with(ClientSettings {
            request_timeout: Duration::from_millis(300),
            ..ClientSettings::default()
        });
        let started = std::time::Instant::now();
        let e = c
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("timed out"), "{e}");
        assert_no_secrets(&e);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = exchange(&base).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let small = ClientSettings {
            max_response_bytes: 1024,
            ..ClientSettings::default()
        };
        // With Content-Length.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(true);
            v["padding"] = "x".repeat(4096).into();
            json(StatusCode::OK, v)
        })
        .await;
        let e = client_with(small.clone())
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("larger than 1024"), "{e}");

        // Chunked, without Content-Length: stopped while reading.
        let base = raw_chunked_server(64);
        let e = client_with(small)
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("larger than 1024"), "{e}");
    }

    /// A one-shot raw HTTP server answering with `chunks` chunks of 1000 bytes.
    fn raw_chunked_server(chunks: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                let chunk = format!("3E8\r\n{}\r\n", " ".repeat(1000));
                for _ in 0..chunks {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            }
        });
        base
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        let router = Router::new()
            .route(
                "/services/oauth2/token",
                post(|| async {
                    (
                        StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                post(move || {
                    hits2.fetch_add(1, Ordering::SeqCst);
                    async { json(StatusCode::OK, token_body(true)) }
                })
                .get(|| async { "x" }),
            );
        let base = serve(router).await;
        let e = exchange(&base).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("302"), "{e}");
        assert_no_secrets(&e);
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

    #[tokio::test]
    async fn refresh_without_refresh_token_is_accepted() {
        let (base, seen) = server("/services/oauth2/token", |_| {
            json(StatusCode::OK, token_body(false))
        })
        .await;
        let answer = client()
            .refresh(&app(&base), &secret(REFRESH_TOKEN))
            .await
            .unwrap();
        assert!(answer.rotated_refresh_token.is_none());
        let grant = answer.checked.unwrap();
        assert!(grant.signature_verified);
        assert_eq!(grant.access_token.expose_secret(), ACCESS_TOKEN);
        let pairs = form(&seen.lock().unwrap()[0]);
        assert_eq!(get(&pairs, "grant_type"), Some("refresh_token"));
        assert_eq!(get(&pairs, "refresh_token"), Some(REFRESH_TOKEN));
        assert_eq!(get(&pairs, "client_id"), Some(CLIENT_ID));
        assert_eq!(get(&pairs, "client_secret"), Some(CLIENT_SECRET));
        assert_eq!(get(&pairs, "redirect_uri"), None);
    }

    #[tokio::test]
    async fn refresh_with_rotation_and_revoked_token() {
        let (base, _) = server("/services/oauth2/token", |_| {
            json(StatusCode::OK, token_body(true))
        })
        .await;
        let answer = client()
            .refresh(&app(&base), &secret(REFRESH_TOKEN))
            .await
            .unwrap();
        assert_eq!(
            answer.rotated_refresh_token.unwrap().expose_secret(),
            REFRESH_TOKEN
        );
        assert!(answer.checked.is_ok());

        // An answer that fails a check still hands back its new refresh token (Salesforce
        // has invalidated the old one): a bad signature, and a body missing `instance_url`.
        for broken in [
            {
                let mut v = token_body(true);
                v["signature"] = "bm90LXRoZS1zaWduYXR1cmU=".into();
                v
            },
            {
                let mut v = token_body(true);
                v.as_object_mut().unwrap().remove("instance_url");
                v
            },
        ] {
            let (base, _) = server("/services/oauth2/token", move |_| {
                json(StatusCode::OK, broken.clone())
            })
            .await;
            let answer = client()
                .refresh(&app(&base), &secret(REFRESH_TOKEN))
                .await
                .unwrap();
            assert_eq!(
                answer
                    .rotated_refresh_token
                    .as_ref()
                    .unwrap()
                    .expose_secret(),
                REFRESH_TOKEN
            );
            assert!(!format!("{answer:?}").contains(REFRESH_TOKEN));
            let e = answer.checked.unwrap_err();
            assert_eq!(e.class(), ErrorClass::Upstream, "{e:?}");
        }

        let (base, _) = server("/services/oauth2/token", |_| {
            json(
                StatusCode::BAD_REQUEST,
                serde_json::json!({"error": "invalid_grant", "error_description": "expired access/refresh token"}),
            )
        })
        .await;
        let e = client()
            .refresh(&app(&base), &secret(REFRESH_TOKEN))
            .await
            .unwrap_err();
        assert_eq!(e.class(), ErrorClass::Reauthorize);
        assert_no_secrets(&e);
    }

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

    #[tokio::test]
    async fn introspection() {
        let (base, seen) = server("/services/oauth2/introspect", |_| {
            json(
                StatusCode::OK,
                serde_json::json!({"active": true, "exp": 1_738_355_588_i64, "iat": 1_738_348_388_i64, "scope": "api"}),
            )
        })
        .await;
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

    #[test]
    fn authorize_url_is_complete_and_encoded() {
        let c = client();
        let challenge = "E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM";
        let req = AuthorizeRequest {
            login_url: "https://Acme.my.salesforce.com/",
            client_id: CLIENT_ID,
            redirect_uri: "https://valo.example.com/oauth/callback?x=1&y=2",
            scopes: "api refresh_token offline_access",
            state: "st+ate/=",
            code_challenge: challenge,
            login_hint: Some("user+1@example.com"),
            prompt: Some("login consent"),
        };
        let url = c.authorize_url(&req).unwrap();
        let s = url.as_str();
        assert!(
            s.starts_with("https://acme.my.salesforce.com/services/oauth2/authorize?response_type=code&client_id=3MVG9-client-id&redirect_uri=https%3A%2F%2Fvalo.example.com%2Foauth%2Fcallback%3Fx%3D1%26y%3D2&code_challenge=E9Melhoa2OwvFrEMTJguCHaoeK1t8URWbuGJSstw-cM&code_challenge_method=S256&state=st%2Bate%2F%3D&scope=api%20refresh_token%20offline_access"),
            "{s}"
        );
        let pairs: Vec<(String, String)> = url.query_pairs().into_owned().collect();
        assert_eq!(
            get(&pairs, "scope"),
            Some("api refresh_token offline_access")
        );
        assert_eq!(get(&pairs, "state"), Some("st+ate/="));
        assert_eq!(get(&pairs, "login_hint"), Some("user+1@example.com"));
        assert_eq!(get(&pairs, "prompt"), Some("login consent"));
        assert_eq!(
            get(&pairs, "redirect_uri"),
            Some("https://valo.example.com/oauth/callback?x=1&y=2")
        );

        let minimal = AuthorizeRequest {
            login_hint: None,
            prompt: None,
            ..req
        };
        let url = c.authorize_url(&minimal).unwrap();
        assert!(!url.as_str().contains("login_hint") && !url.as_str().contains("prompt"));

        let bad_login = AuthorizeRequest {
            login_url: "https://acme.lightning.force.com",
            ..minimal
        };
        let e = c.authorize_url(&bad_login).unwrap_err();
        assert!(e.to_string().contains("my.salesforce.com"), "{e}");
        for bad in [
            AuthorizeRequest {
                code_challenge: "short",
                ..minimal
            },
            AuthorizeRequest {
                prompt: Some("none"),
                ..minimal
            },
            AuthorizeRequest {
                state: "",
                ..minimal
            },
            AuthorizeRequest {
                redirect_uri: "not a url",
                ..minimal
            },
        ] {
            assert!(matches!(
                c.authorize_url(&bad),
                Err(SalesforceError::Request(_))
            ));
        }
    }
}
