//! A faithful fake of Salesforce's OAuth 2.0 endpoints, served over loopback HTTP.
//!
//! Used by the integration tests (which drive the real service against it) and by
//! newcomers who want to try the service without a Salesforce org
//! (`cargo run -p fake-salesforce`). The protocol it fakes is described in
//! `docs/salesforce.md` (web-server flow with PKCE, client_secret_post, Refresh
//! Token Rotation, introspection, revocation, HMAC `signature` over `id` + `issued_at`).
//!
//! This file holds the public handle ([`FakeSalesforce`]) and its control knobs; the
//! protocol state machine lives in `state.rs` and the HTTP layer (axum) in `server.rs`.

mod server;
mod state;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use state::{State, User};

/// Options fixed when the fake starts.
#[derive(Clone, Debug)]
pub struct FakeOptions {
    /// `true` (default): an External Client App with Refresh Token Rotation — every refresh
    /// returns a new refresh token and invalidates the presented one. `false`: a legacy
    /// Connected App — refresh returns no `refresh_token` and the old one stays valid.
    pub rotate_refresh_tokens: bool,
    /// Session timeout of issued access tokens (Salesforce default: 2 hours). Not returned
    /// by the token endpoint (no `expires_in`); reported by introspection `exp`.
    pub access_token_lifetime: Duration,
    /// Lifetime of an authorization code (Salesforce: about 15 minutes).
    pub code_lifetime: Duration,
    /// Org id of the user who approves (18 characters, `00D…`).
    pub org_id: String,
    /// User id of the user who approves (`005…`).
    pub user_id: String,
    /// Username of the user who approves.
    pub username: String,
    /// `false` (default): authorize auto-approves with a 302. `true`: authorize shows an
    /// HTML Allow / Deny page, for humans.
    pub interactive: bool,
}

impl Default for FakeOptions {
    fn default() -> Self {
        FakeOptions {
            rotate_refresh_tokens: true,
            access_token_lifetime: Duration::from_secs(2 * 60 * 60),
            code_lifetime: Duration::from_secs(15 * 60),
            org_id: "00D5g000004ABCDEA4".to_owned(),
            user_id: "0055g000001XYZWAA4".to_owned(),
            username: "admin@example.com".to_owned(),
            interactive: false,
        }
    }
}

/// What the (simulated) user answers on the consent page.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub enum Approval {
    /// Approve: redirect with `code` and `state`.
    #[default]
    Approve,
    /// Deny: redirect with `error=access_denied`.
    Deny,
    /// Redirect with this error, e.g. `OAUTH_EC_APP_NOT_FOUND` (a local ECA used from
    /// another org) or `OAUTH_APP_BLOCKED`.
    Error { error: String, description: String },
}

/// An endpoint faults can be injected into.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Endpoint {
    Token,
    Introspect,
    Revoke,
}

/// A fault applied to the next request to one endpoint.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Fault {
    /// Answer that HTTP status with a small HTML (non-JSON) body, e.g. 503 during
    /// Salesforce maintenance. The request is not processed.
    Status(u16),
    /// Sleep that long, then process and answer normally. The request is processed at the
    /// end of the sleep even if the client gave up (as a slow Salesforce would), so a
    /// timed-out refresh may still rotate the refresh token.
    Hang(Duration),
    /// Hold the request that long, then answer 504 without processing it: a request lost
    /// on its way (a stalled connection, a load balancer's timeout) that Salesforce never
    /// saw, so the refresh token it carried is still good.
    Lost(Duration),
    /// 200 with an HTML body. The request is not processed.
    NonJson,
    /// That status with `{"error":…,"error_description":…}`. The request is not processed.
    OAuthError {
        status: u16,
        error: String,
        description: String,
    },
    /// Process and answer normally, but with a wrong `signature` (token endpoint only).
    BadSignature,
    /// Process and answer normally, but issue no refresh token (scope not granted). On a
    /// refresh with rotation, the presented refresh token is then not rotated out.
    NoRefreshToken,
}

impl Fault {
    /// [`Fault::OAuthError`] with that status, `error` and `error_description`.
    pub fn oauth_error(status: u16, error: &str, description: &str) -> Self {
        Self::OAuthError {
            status,
            error: error.into(),
            description: description.into(),
        }
    }
}

/// Snapshot of what the fake has seen.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Counters {
    /// Authorization codes issued (approved authorize requests).
    pub authorizations: u64,
    /// Successful `authorization_code` grants.
    pub code_exchanges: u64,
    /// Successful `refresh_token` grants.
    pub refreshes: u64,
    /// Rotated-out refresh tokens presented (each one kills its family).
    pub refresh_reuse_attempts: u64,
    /// Successful revocations.
    pub revocations: u64,
    /// All requests to the introspection endpoint.
    pub introspections: u64,
    /// All POSTs to the token endpoint.
    pub token_requests: u64,
}

/// State shared by the handle and the HTTP handlers.
pub(crate) struct Shared {
    base_url: String,
    state: Mutex<State>,
}

impl Shared {
    /// Locks the state. A poisoned lock is recovered: the state is plain data and every
    /// mutation leaves it consistent.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Handle to a running fake Salesforce. Cheap to clone; the server runs in a spawned task
/// for as long as the Tokio runtime lives.
#[derive(Clone)]
pub struct FakeSalesforce {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for FakeSalesforce {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeSalesforce")
            .field("base_url", &self.shared.base_url)
            .finish_non_exhaustive()
    }
}

impl FakeSalesforce {
    /// Starts the fake on `127.0.0.1:0` (a free port).
    pub async fn start(options: FakeOptions) -> std::io::Result<FakeSalesforce> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), options).await
    }

    /// Starts the fake on `addr`.
    pub async fn start_on(
        addr: SocketAddr,
        options: FakeOptions,
    ) -> std::io::Result<FakeSalesforce> {
        Self::start_public(addr, None, options).await
    }

    /// Starts the fake on `addr`, naming itself `public_url` (in the identity URL and
    /// `instance_url` it issues) when it is reached under another name than its listen
    /// address — in a container network, say.
    pub async fn start_public(
        addr: SocketAddr,
        public_url: Option<String>,
        options: FakeOptions,
    ) -> std::io::Result<FakeSalesforce> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let local = listener.local_addr()?;
        let base_url = public_url
            .map(|url| url.trim_end_matches('/').to_owned())
            .unwrap_or_else(|| format!("http://{local}"));
        let shared = Arc::new(Shared {
            base_url,
            state: Mutex::new(State::new(options)),
        });
        let router = server::router(shared.clone());
        tokio::spawn(async move {
            if let Err(error) = axum::serve(listener, router).await {
                tracing::error!(%error, "fake Salesforce server stopped");
            }
        });
        tracing::debug!(%local, "fake Salesforce listening");
        Ok(FakeSalesforce { shared })
    }

    /// `http://127.0.0.1:PORT`: the login URL, and also the `instance_url` it returns.
    pub fn base_url(&self) -> String {
        self.shared.base_url.clone()
    }

    /// Registers (or replaces) an app: its consumer key, consumer secret and callback URL.
    pub fn register_app(&self, client_id: &str, client_secret: &str, redirect_uri: &str) {
        self.shared
            .lock()
            .register_app(client_id, client_secret, redirect_uri);
    }

    /// Who the next approvals log in as.
    pub fn set_user(&self, org_id: &str, user_id: &str, username: &str) {
        self.shared.lock().user = User {
            org_id: org_id.to_owned(),
            user_id: user_id.to_owned(),
            username: username.to_owned(),
        };
    }

    /// Issues an access and a refresh token to a user of `client_id`'s app as if the user
    /// had just approved it, without the browser flow: for seeding many stored connections
    /// at once (the scale benchmark inserts them through the store, then lets keep-alive
    /// refresh them here). Returns `(access_token, refresh_token)`.
    pub fn grant(
        &self,
        client_id: &str,
        org_id: &str,
        user_id: &str,
        username: &str,
    ) -> (String, String) {
        let user = User {
            org_id: org_id.to_owned(),
            user_id: user_id.to_owned(),
            username: username.to_owned(),
        };
        self.shared.lock().grant(client_id, user)
    }

    /// What the next authorize requests answer.
    pub fn set_approval(&self, approval: Approval) {
        self.shared.lock().approval = approval;
    }

    /// Moves the fake's clock forward: codes and tokens expire as if `by` had passed, and new
    /// ones are stamped with the later time. Tests move time instead of sleeping.
    pub fn advance(&self, by: Duration) {
        self.shared.lock().time_offset += by;
    }

    /// How far [`FakeSalesforce::advance`] has moved the fake's clock in total.
    pub fn time_offset(&self) -> Duration {
        self.shared.lock().time_offset
    }

    /// Added to every token, introspect and revoke response.
    pub fn set_latency(&self, latency: Duration) {
        self.shared.lock().latency = latency;
    }

    /// Queues a fault for the next request to `endpoint` (FIFO, one request per fault).
    pub fn inject(&self, endpoint: Endpoint, fault: Fault) {
        self.shared
            .lock()
            .faults
            .entry(endpoint)
            .or_default()
            .push_back(fault);
    }

    /// A snapshot of the counters.
    pub fn counters(&self) -> Counters {
        self.shared.lock().counters.clone()
    }

    /// Every access and refresh token ever issued, in issue order.
    pub fn issued_tokens(&self) -> Vec<String> {
        self.shared.lock().issued.clone()
    }

    /// Whether `token` is an issued, unrevoked, unexpired access token.
    pub fn is_access_token_active(&self, token: &str) -> bool {
        self.shared.lock().access_active(token)
    }

    /// Whether `token` is an issued refresh token that a refresh would accept.
    pub fn is_refresh_token_active(&self, token: &str) -> bool {
        self.shared.lock().refresh_active(token)
    }

    /// The issued refresh tokens that a refresh would accept, oldest first.
    pub fn active_refresh_tokens(&self) -> Vec<String> {
        self.issued_where(Self::is_refresh_token_active)
    }

    /// The issued access tokens that are unrevoked and unexpired, oldest first.
    pub fn active_access_tokens(&self) -> Vec<String> {
        self.issued_where(Self::is_access_token_active)
    }

    fn issued_where(&self, keep: impl Fn(&Self, &str) -> bool) -> Vec<String> {
        let issued = self.issued_tokens();
        issued.into_iter().filter(|t| keep(self, t)).collect()
    }

    /// Expires every access token issued so far (introspection inactive, API 401), as if
    /// the session timeout had passed. Refresh tokens are unaffected.
    pub fn expire_access_tokens(&self) {
        self.shared.lock().expire_access_tokens();
    }

    /// Acts as the browser: performs the authorize request (redirects off) and returns the
    /// callback URL from the `Location` header — with `code` or with `error`. In interactive
    /// mode it clicks "Allow". `Err` carries the status and body when the fake refused to
    /// redirect (unknown client id, redirect_uri mismatch).
    pub async fn approve(&self, authorize_url: &str) -> Result<String, String> {
        let client = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .no_proxy()
            .build()
            .map_err(|e| format!("building HTTP client: {e}"))?;
        let response = client
            .get(authorize_url)
            .send()
            .await
            .map_err(|e| format!("authorize request failed: {e}"))?;
        let response = if response.status() == reqwest::StatusCode::OK {
            // Interactive consent page: submit its form with decision=allow.
            let page = response
                .text()
                .await
                .map_err(|e| format!("reading consent page: {e}"))?;
            let request_id = server::consent_request_id(&page)
                .ok_or_else(|| format!("unexpected authorize page: {page}"))?;
            let mut form = HashMap::new();
            form.insert("request_id", request_id);
            form.insert("decision", "allow".to_owned());
            client
                .post(format!("{}{}", self.shared.base_url, server::DECISION_PATH))
                .form(&form)
                .send()
                .await
                .map_err(|e| format!("consent decision failed: {e}"))?
        } else {
            response
        };
        let status = response.status();
        if status.is_redirection()
            && let Some(location) = response.headers().get(reqwest::header::LOCATION)
        {
            return location
                .to_str()
                .map(str::to_owned)
                .map_err(|e| format!("non-ASCII Location header: {e}"));
        }
        let body = response.text().await.unwrap_or_default();
        Err(format!("HTTP {status}: {body}"))
    }
}
