//! The fake's protocol state machine, free of HTTP: registered apps, authorization codes,
//! token families (one per approval: its access tokens and its chain of rotated refresh
//! tokens), counters and queued faults. Every method runs under the `Shared` mutex and
//! never awaits.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use hmac::{Hmac, Mac};
use rand::Rng as _;
use rand::RngCore as _;
use sha2::{Digest, Sha256};

use super::{Approval, Counters, Endpoint, FakeOptions, Fault};

/// The user whom approvals log in as.
#[derive(Clone, Debug)]
pub(crate) struct User {
    pub org_id: String,
    pub user_id: String,
    pub username: String,
}

/// A registered External Client App.
struct App {
    secret: String,
    redirect_uri: String,
}

/// What a validated authorize request asked for.
#[derive(Clone, Debug)]
pub(crate) struct AuthorizeRequest {
    pub client_id: String,
    pub redirect_uri: String,
    pub code_challenge: String,
    pub scope: String,
    pub state: Option<String>,
}

struct Code {
    request: AuthorizeRequest,
    user: User,
    expires_at: Instant,
    used: bool,
    /// The family the first exchange issued, revoked if the code is presented again.
    family: Option<usize>,
}

struct Family {
    client_id: String,
    scope: String,
    user: User,
}

struct Access {
    family: usize,
    iat: u64,
    exp: u64,
    expires_at: Instant,
    revoked: bool,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum RefreshStatus {
    Active,
    RotatedOut,
    Revoked,
}

struct Refresh {
    family: usize,
    status: RefreshStatus,
}

/// An OAuth error answer: HTTP status, `error`, `error_description`.
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct OAuthError {
    pub status: u16,
    pub error: &'static str,
    pub description: &'static str,
}

const fn oauth_error(error: &'static str, description: &'static str) -> OAuthError {
    OAuthError {
        status: 400,
        error,
        description,
    }
}

/// Salesforce's answer to a revoked, expired, rotated-out or unknown refresh token.
pub(crate) const EXPIRED_TOKEN: OAuthError =
    oauth_error("invalid_grant", "expired access/refresh token");
pub(crate) const EXPIRED_CODE: OAuthError =
    oauth_error("invalid_grant", "expired authorization code");
pub(crate) const INVALID_CLIENT_ID: OAuthError =
    oauth_error("invalid_client_id", "client identifier invalid");
pub(crate) const INVALID_CLIENT: OAuthError =
    oauth_error("invalid_client", "invalid client credentials");

/// A successful token-endpoint answer, before serialisation.
pub(crate) struct Issued {
    pub access_token: String,
    pub refresh_token: Option<String>,
    pub scope: String,
    pub org_id: String,
    pub user_id: String,
    pub issued_at_ms: u128,
    /// The client secret, the HMAC key of `signature`.
    pub secret: String,
}

/// Token introspection answer for an active access token.
pub(crate) struct Introspection {
    pub scope: String,
    pub client_id: String,
    pub username: String,
    pub sub: String,
    pub iat: u64,
    pub exp: u64,
}

pub(crate) struct State {
    pub options: FakeOptions,
    pub user: User,
    pub approval: Approval,
    pub latency: Duration,
    pub faults: HashMap<Endpoint, VecDeque<Fault>>,
    pub counters: Counters,
    pub issued: Vec<String>,
    /// How far the fake's clock is ahead of the wall clock (tests move time with it instead
    /// of sleeping): codes and tokens expire, and `issued_at`/`exp` are stamped, by it.
    pub time_offset: Duration,
    /// Interactive consent pages waiting for a decision, by request id.
    pub pending: HashMap<String, AuthorizeRequest>,
    apps: HashMap<String, App>,
    codes: HashMap<String, Code>,
    families: Vec<Family>,
    access: HashMap<String, Access>,
    refresh: HashMap<String, Refresh>,
}

/// Random characters from Salesforce's token alphabet (letters, digits, `.` and `_`).
fn random_token_chars(len: usize) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._";
    let mut rng = rand::thread_rng();
    (0..len)
        .map(|_| char::from(ALPHABET[rng.gen_range(0..ALPHABET.len())]))
        .collect()
}

/// An authorization code shaped like Salesforce's: `aPrx` + standard base64 ending in `==`
/// (43 random bytes), so that it must be percent-encoded (`%3D`, and `%2B`/`%2F` when `+` or
/// `/` occur) in the callback URL.
fn new_code() -> String {
    let mut bytes = [0u8; 43];
    rand::thread_rng().fill_bytes(&mut bytes);
    format!("aPrx{}", STANDARD.encode(bytes))
}

/// `signature` of a token response: base64(HMAC-SHA256(key = consumer secret,
/// message = `id` + `issued_at`)).
pub(crate) fn signature(secret: &[u8], id: &str, issued_at: &str) -> String {
    // HMAC accepts keys of any length, so this cannot fail.
    let Ok(mut mac) = Hmac::<Sha256>::new_from_slice(secret) else {
        return String::new();
    };
    mac.update(id.as_bytes());
    mac.update(issued_at.as_bytes());
    STANDARD.encode(mac.finalize().into_bytes())
}

/// Whether a granted scope allows a refresh token (`refresh_token` or `offline_access`).
fn allows_refresh(scope: &str) -> bool {
    scope
        .split_whitespace()
        .any(|s| s == "refresh_token" || s == "offline_access")
}

impl State {
    pub fn new(options: FakeOptions) -> State {
        let user = User {
            org_id: options.org_id.clone(),
            user_id: options.user_id.clone(),
            username: options.username.clone(),
        };
        State {
            options,
            user,
            approval: Approval::Approve,
            latency: Duration::ZERO,
            faults: HashMap::new(),
            counters: Counters::default(),
            issued: Vec::new(),
            time_offset: Duration::ZERO,
            pending: HashMap::new(),
            apps: HashMap::new(),
            codes: HashMap::new(),
            families: Vec::new(),
            access: HashMap::new(),
            refresh: HashMap::new(),
        }
    }

    /// The fake's monotonic now (the wall clock's, moved by `time_offset`).
    fn now(&self) -> Instant {
        Instant::now() + self.time_offset
    }

    /// The fake's time since the Unix epoch.
    fn now_since_epoch(&self) -> Duration {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default()
            + self.time_offset
    }

    pub fn register_app(&mut self, client_id: &str, secret: &str, redirect_uri: &str) {
        self.apps.insert(
            client_id.to_owned(),
            App {
                secret: secret.to_owned(),
                redirect_uri: redirect_uri.to_owned(),
            },
        );
    }

    /// The registered callback URL of `client_id`, if the app exists.
    pub fn redirect_uri_of(&self, client_id: &str) -> Option<&str> {
        self.apps.get(client_id).map(|a| a.redirect_uri.as_str())
    }

    pub fn next_fault(&mut self, endpoint: Endpoint) -> Option<Fault> {
        self.faults.get_mut(&endpoint).and_then(VecDeque::pop_front)
    }

    /// Issues an authorization code for an approved request, as the current user.
    pub fn issue_code(&mut self, request: AuthorizeRequest) -> String {
        let code = new_code();
        self.codes.insert(
            code.clone(),
            Code {
                request,
                user: self.user.clone(),
                expires_at: self.now() + self.options.code_lifetime,
                used: false,
                family: None,
            },
        );
        self.counters.authorizations += 1;
        code
    }

    /// Client authentication, client_secret_post only. Returns the client secret.
    pub fn authenticate_client(
        &self,
        client_id: Option<&str>,
        client_secret: Option<&str>,
        has_basic_header: bool,
    ) -> Result<String, OAuthError> {
        let Some(client_id) = client_id else {
            // Salesforce's ECAs read credentials from the body: a Basic header alone fails.
            return Err(if has_basic_header {
                INVALID_CLIENT
            } else {
                INVALID_CLIENT_ID
            });
        };
        let app = self.apps.get(client_id).ok_or(INVALID_CLIENT_ID)?;
        match client_secret {
            Some(secret) if secret == app.secret => Ok(app.secret.clone()),
            _ => Err(INVALID_CLIENT),
        }
    }

    /// `grant_type=authorization_code`, after client authentication.
    pub fn exchange_code(
        &mut self,
        client_id: &str,
        secret: String,
        code: &str,
        redirect_uri: Option<&str>,
        code_verifier: Option<&str>,
        issue_refresh: bool,
    ) -> Result<Issued, OAuthError> {
        let now = self.now();
        let Some(entry) = self.codes.get_mut(code) else {
            return Err(oauth_error("invalid_grant", "invalid authorization code"));
        };
        if entry.request.client_id != client_id {
            return Err(oauth_error("invalid_grant", "invalid authorization code"));
        }
        if entry.used {
            // RFC 6749 §4.1.2: a reused code revokes the tokens issued from it.
            if let Some(family) = entry.family {
                self.revoke_family(family);
            }
            return Err(EXPIRED_CODE);
        }
        // Any attempt consumes the code, successful or not.
        entry.used = true;
        if now >= entry.expires_at {
            return Err(EXPIRED_CODE);
        }
        if redirect_uri != Some(entry.request.redirect_uri.as_str()) {
            return Err(oauth_error(
                "redirect_uri_mismatch",
                "redirect_uri must match configuration",
            ));
        }
        let verified = code_verifier.is_some_and(|verifier| {
            URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
                == entry.request.code_challenge
        });
        if !verified {
            return Err(oauth_error("invalid_grant", "invalid code verifier"));
        }
        let family = self.families.len();
        entry.family = Some(family);
        let scope = entry.request.scope.clone();
        let user = entry.user.clone();
        self.families.push(Family {
            client_id: client_id.to_owned(),
            scope: scope.clone(),
            user,
        });
        let with_refresh = issue_refresh && allows_refresh(&scope);
        self.counters.code_exchanges += 1;
        Ok(self.issue(family, with_refresh, secret))
    }

    /// `grant_type=refresh_token`, after client authentication.
    pub fn refresh(
        &mut self,
        client_id: &str,
        secret: String,
        refresh_token: &str,
        issue_refresh: bool,
    ) -> Result<Issued, OAuthError> {
        let Some(entry) = self.refresh.get(refresh_token) else {
            return Err(EXPIRED_TOKEN);
        };
        let family = entry.family;
        if self.families[family].client_id != client_id {
            return Err(EXPIRED_TOKEN);
        }
        match entry.status {
            RefreshStatus::Active => {}
            RefreshStatus::Revoked => return Err(EXPIRED_TOKEN),
            RefreshStatus::RotatedOut => {
                // Refresh Token Rotation: presenting a rotated-out token revokes the
                // current refresh token and all access tokens of the family.
                self.counters.refresh_reuse_attempts += 1;
                self.revoke_family(family);
                return Err(EXPIRED_TOKEN);
            }
        }
        let rotate = self.options.rotate_refresh_tokens && issue_refresh;
        if rotate && let Some(entry) = self.refresh.get_mut(refresh_token) {
            entry.status = RefreshStatus::RotatedOut;
        }
        self.counters.refreshes += 1;
        Ok(self.issue(family, rotate, secret))
    }

    /// A new token family for `user` of `client_id`'s app, as if a code had just been
    /// exchanged (no browser, no code, not counted as an exchange): (access, refresh).
    pub fn grant(&mut self, client_id: &str, user: User) -> (String, String) {
        let family = self.families.len();
        self.families.push(Family {
            client_id: client_id.to_owned(),
            scope: "api refresh_token offline_access".to_owned(),
            user,
        });
        let issued = self.issue(family, true, String::new());
        (
            issued.access_token,
            issued.refresh_token.unwrap_or_default(),
        )
    }

    /// Issues an access token (and optionally a refresh token) in `family`.
    fn issue(&mut self, family: usize, with_refresh: bool, secret: String) -> Issued {
        let since_epoch = self.now_since_epoch();
        let lifetime = self.options.access_token_lifetime;
        let fam = &self.families[family];
        let org15 = fam.user.org_id.get(..15).unwrap_or(&fam.user.org_id);
        let access_token = format!("{org15}!AQ{}", random_token_chars(96));
        let iat = since_epoch.as_secs();
        self.access.insert(
            access_token.clone(),
            Access {
                family,
                iat,
                exp: iat + lifetime.as_secs(),
                expires_at: self.now() + lifetime,
                revoked: false,
            },
        );
        self.issued.push(access_token.clone());
        let refresh_token = with_refresh.then(|| {
            let token = format!("5Aep861{}", random_token_chars(80));
            self.refresh.insert(
                token.clone(),
                Refresh {
                    family,
                    status: RefreshStatus::Active,
                },
            );
            self.issued.push(token.clone());
            token
        });
        let fam = &self.families[family];
        Issued {
            access_token,
            refresh_token,
            scope: fam.scope.clone(),
            org_id: fam.user.org_id.clone(),
            user_id: fam.user.user_id.clone(),
            issued_at_ms: since_epoch.as_millis(),
            secret,
        }
    }

    /// Revokes every refresh and access token of a family.
    fn revoke_family(&mut self, family: usize) {
        for refresh in self.refresh.values_mut() {
            if refresh.family == family && refresh.status == RefreshStatus::Active {
                refresh.status = RefreshStatus::Revoked;
            }
        }
        for access in self.access.values_mut() {
            if access.family == family {
                access.revoked = true;
            }
        }
    }

    pub fn access_active(&self, token: &str) -> bool {
        self.access
            .get(token)
            .is_some_and(|a| !a.revoked && self.now() < a.expires_at)
    }

    pub fn refresh_active(&self, token: &str) -> bool {
        self.refresh
            .get(token)
            .is_some_and(|r| r.status == RefreshStatus::Active)
    }

    pub fn expire_access_tokens(&mut self) {
        let now = self.now();
        for access in self.access.values_mut() {
            access.expires_at = now;
        }
    }

    /// Introspection of an access token on behalf of `client_id`; `None` = inactive.
    pub fn introspect(&self, client_id: &str, token: &str) -> Option<Introspection> {
        if !self.access_active(token) {
            return None;
        }
        let access = self.access.get(token)?;
        let family = &self.families[access.family];
        if family.client_id != client_id {
            return None;
        }
        Some(Introspection {
            scope: family.scope.clone(),
            client_id: family.client_id.clone(),
            username: family.user.username.clone(),
            sub: family.user.user_id.clone(),
            iat: access.iat,
            exp: access.exp,
        })
    }

    /// Revokes an active access token (that token only) or an active refresh token (its
    /// whole family). `false` if the token is unknown or no longer active.
    pub fn revoke(&mut self, token: &str) -> bool {
        if self.refresh_active(token) {
            if let Some(family) = self.refresh.get(token).map(|r| r.family) {
                self.revoke_family(family);
            }
        } else if self.access_active(token) {
            if let Some(access) = self.access.get_mut(token) {
                access.revoked = true;
            }
        } else {
            return false;
        }
        self.counters.revocations += 1;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn code_has_padding_and_prefix() {
        let code = new_code();
        assert!(code.starts_with("aPrx"));
        assert!(code.ends_with("=="));
    }

    #[test]
    fn signature_is_known_hmac() {
        // HMAC-SHA256("key", "The quick brown fox jumps over the lazy dog") from RFC 4231-style
        // published test vectors: f7bc83f4...
        let sig = signature(b"key", "The quick brown fox ", "jumps over the lazy dog");
        assert_eq!(sig, "97yD9DBThCSxMpjmqm+xQ+9NWaFJRhdZl0edvC0aPNg=");
    }
}
