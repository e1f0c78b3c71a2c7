//! Internal API authentication: a bearer JWT signed by the Valo backend (RFC 7519, RFC 6750).
//!
//! The algorithm is pinned by configuration — HS256 for a shared secret, EdDSA or RS256 for
//! a public key — so `alg: none` and algorithm-confusion tokens fail. `aud` and `exp` are
//! required, `iss` when configured. `scope` (one space-separated string) grants what is
//! allowed; an optional `tenant` claim confines the caller to one tenant.
//!
//! Verifying a signature on every request dominates the hot path, so verified tokens are
//! remembered by the SHA-256 of their exact bytes until their `exp` (bounded in number).

use std::collections::HashMap;
use std::marker::PhantomData;
use std::sync::{Arc, RwLock};

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use axum::http::{HeaderValue, header};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use secrecy::ExposeSecret;
use serde::Deserialize;
use sha2::{Digest, Sha256};
use uuid::Uuid;

use super::AppState;
use super::extract::Target;
use super::problem::Problem;
use crate::broker::audit::{Actor, AuditAction};
use crate::broker::{Broker, TenantId};
use crate::config::{ApiAuthSettings, ApiKey, public_key};

/// Clock skew tolerated on `exp` (RFC 7519 §4.1.4 allows "a small leeway").
const LEEWAY_SECS: u64 = 30;

/// The claims this service reads.
#[derive(Deserialize)]
struct Claims {
    exp: u64,
    /// Who the caller is (RFC 7519 §4.1.2): the audit trail's actor.
    #[serde(default)]
    sub: Option<String>,
    #[serde(default)]
    scope: String,
    #[serde(default)]
    tenant: Option<String>,
}

/// The scopes of the internal API (one space-separated `scope` claim grants several).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Scope {
    /// Register, read and delete the tenant's Salesforce app.
    AppsWrite,
    /// Start authorizations, delete connections.
    ConnectionsWrite,
    /// List and read connections.
    ConnectionsRead,
    /// Get access tokens.
    TokensRead,
    /// Read the tenant's audit trail.
    AuditRead,
}

impl Scope {
    pub const ALL: [Self; 5] = [
        Self::AppsWrite,
        Self::ConnectionsWrite,
        Self::ConnectionsRead,
        Self::TokensRead,
        Self::AuditRead,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::AppsWrite => "apps:write",
            Self::ConnectionsWrite => "connections:write",
            Self::ConnectionsRead => "connections:read",
            Self::TokensRead => "tokens:read",
            Self::AuditRead => "audit:read",
        }
    }
}

/// An authenticated caller.
#[derive(Debug)]
pub struct Caller {
    /// The token's `sub` (or [`NO_SUBJECT`]) as the audit trail names it, outside any
    /// request.
    actor: Actor,
    scopes: Vec<String>,
    tenant: Option<String>,
    expires_at: u64,
}

/// The audit trail's actor for a token without a `sub` claim.
pub const NO_SUBJECT: &str = "(no sub)";

impl Caller {
    /// The caller as the audit trail names it, for an action of the request `request_id`.
    pub fn actor(&self, request_id: Option<Arc<str>>) -> Actor {
        Actor::new(self.actor.sub.clone(), request_id)
    }

    /// The caller as the audit trail names it for aggregated actions (no request id),
    /// borrowed: the token path records a read without cloning anything.
    pub fn aggregate_actor(&self) -> &Actor {
        &self.actor
    }

    /// 403 unless the token grants `scope` and, if confined to a tenant, this tenant.
    pub fn require(&self, scope: Scope, tenant: &TenantId) -> Result<(), Problem> {
        self.require_scope(scope)?;
        if let Some(own) = &self.tenant
            && own != tenant.as_str()
        {
            return Err(Problem::forbidden(
                "the token is confined to another tenant",
            ));
        }
        Ok(())
    }

    /// 403 unless the token grants `scope`; for resources that belong to no tenant (a
    /// tenant-confined token may read them too).
    pub fn require_scope(&self, scope: Scope) -> Result<(), Problem> {
        let scope = scope.as_str();
        if self.scopes.iter().any(|s| s == scope) {
            Ok(())
        } else {
            Err(Problem::forbidden(format!(
                "the token lacks the scope {scope}"
            )))
        }
    }
}

/// The verifier, with its cache of verified tokens.
pub struct ApiAuth {
    key: DecodingKey,
    validation: Validation,
    capacity: usize,
    verified: RwLock<HashMap<[u8; 32], Arc<Caller>>>,
}

impl ApiAuth {
    pub fn new(settings: &ApiAuthSettings) -> Result<Self, String> {
        let (key, algorithm) = match &settings.key {
            ApiKey::Hs256(secret) => (
                DecodingKey::from_secret(secret.expose_secret().as_bytes()),
                Algorithm::HS256,
            ),
            ApiKey::PublicKeyPem(pem) => public_key(pem)?,
        };
        let mut validation = Validation::new(algorithm);
        validation.algorithms = vec![algorithm];
        validation.leeway = LEEWAY_SECS;
        validation.set_audience(&[settings.audience.as_str()]);
        let mut required = vec!["exp", "aud"];
        if let Some(issuer) = &settings.issuer {
            validation.set_issuer(&[issuer.as_str()]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        Ok(Self {
            key,
            validation,
            capacity: settings.cache_capacity,
            verified: RwLock::new(HashMap::new()),
        })
    }

    /// Verifies a bearer token (or finds it verified before and not yet expired).
    pub fn verify(&self, token: &str, now_secs: u64) -> Result<Arc<Caller>, Problem> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(caller) = self
            .verified
            .read()
            .ok()
            .and_then(|m| m.get(&digest).cloned())
            && now_secs < caller.expires_at.saturating_add(LEEWAY_SECS)
        {
            return Ok(caller);
        }
        let data = jsonwebtoken::decode::<Claims>(token, &self.key, &self.validation)
            .map_err(|e| {
                tracing::debug!(reason = %e.kind_name(), "bearer token refused");
                Problem::unauthenticated("the bearer token is missing, malformed, expired or not signed for this service")
            })?;
        let sub = data
            .claims
            .sub
            .filter(|sub| !sub.is_empty())
            .map_or_else(|| Arc::from(NO_SUBJECT), Arc::from);
        let caller = Arc::new(Caller {
            actor: Actor::new(sub, None),
            scopes: data
                .claims
                .scope
                .split(' ')
                .filter(|s| !s.is_empty())
                .map(str::to_owned)
                .collect(),
            tenant: data.claims.tenant,
            expires_at: data.claims.exp,
        });
        if self.capacity > 0
            && let Ok(mut map) = self.verified.write()
        {
            if map.len() >= self.capacity {
                // Drop what expired; if the cache is still full, start over (bounded memory).
                map.retain(|_, c| now_secs < c.expires_at.saturating_add(LEEWAY_SECS));
                if map.len() >= self.capacity {
                    map.clear();
                }
            }
            map.insert(digest, caller.clone());
        }
        Ok(caller)
    }
}

/// Names the error kind without its payload.
trait KindName {
    fn kind_name(&self) -> String;
}

impl KindName for jsonwebtoken::errors::Error {
    fn kind_name(&self) -> String {
        format!("{:?}", self.kind())
            .split(['(', ' ', '{'])
            .next()
            .unwrap_or_default()
            .to_owned()
    }
}

/// The scope an operation requires, as a type: what [`Granted`] checks.
pub trait RequiredScope: Send + Sync + 'static {
    const SCOPE: Scope;
}

/// One type per scope, for [`Granted`] (`Granted<needs::TokensRead>`).
pub mod needs {
    use super::{RequiredScope, Scope};

    macro_rules! scope_types {
        ($($name:ident),+) => {$(
            #[doc = concat!("The `", stringify!($name), "` scope.")]
            pub struct $name;

            impl RequiredScope for $name {
                const SCOPE: Scope = Scope::$name;
            }
        )+};
    }

    scope_types!(
        AppsWrite,
        ConnectionsWrite,
        ConnectionsRead,
        TokensRead,
        AuditRead
    );
}

/// A caller granted the scope `S` on the path's tenant: the bearer token verified, the path's
/// tenant (and connection id) read, the scope and the token's tenant confinement checked.
/// An operation that takes it cannot forget the check, and runs it before its body is read,
/// so a caller who may not call the operation learns nothing about its input rules.
pub struct Granted<S> {
    /// The domain: an operation of the internal API reaches it only through a grant.
    pub broker: Broker,
    pub caller: Arc<Caller>,
    pub target: Target,
    /// The request's id (set or kept by the edge), for [`Granted::audit`]; the header's
    /// bytes are shared, not copied, so a request that records nothing pays nothing.
    request_id: Option<HeaderValue>,
    scope: PhantomData<S>,
}

impl<S> Granted<S> {
    /// Records `action` on the path's tenant in the audit trail, as this caller's, in this
    /// request.
    pub fn audit(&self, action: AuditAction, connection: Option<Uuid>) {
        let request_id = self
            .request_id
            .as_ref()
            .and_then(|v| v.to_str().ok())
            .filter(|v| !v.is_empty() && v.len() <= 200)
            .map(Arc::from);
        self.broker.audit(
            &self.caller.actor(request_id),
            &self.target.tenant,
            action,
            connection,
        );
    }
}

impl<S: RequiredScope> FromRequestParts<AppState> for Granted<S> {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let Authenticated(caller) = Authenticated::from_request_parts(parts, state).await?;
        let target = Target::from_request_parts(parts, state).await?;
        caller.require(S::SCOPE, &target.tenant)?;
        Ok(Self {
            broker: state.broker.clone(),
            caller,
            target,
            request_id: parts.headers.get(&super::edge::REQUEST_ID).cloned(),
            scope: PhantomData,
        })
    }
}

/// The extractor: a verified caller, or a 401 problem.
pub struct Authenticated(pub Arc<Caller>);

impl FromRequestParts<AppState> for Authenticated {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Problem> {
        let value = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .ok_or_else(|| Problem::token_required("an Authorization: Bearer token is required"))?;
        let token = value
            .strip_prefix("Bearer ")
            .or_else(|| value.strip_prefix("bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| {
                Problem::token_required("the Authorization header must be Bearer <token>")
            })?;
        let now_secs = u64::try_from(state.broker.now() / 1000).unwrap_or(0);
        state.auth.verify(token, now_secs).map(Authenticated)
    }
}
