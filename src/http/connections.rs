//! `/v1/tenants/{tenant}/connections…`: listing, reading and deleting connections, and the
//! access-token endpoint the Valo backend calls before its Salesforce API requests.

use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::http::StatusCode;
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Granted, needs};
use super::extract::{Force, OptionalJsonBody, rfc3339};
use super::openapi::{
    BodyErrors, ConnectionPath, ConnectionStatus, ForceQuery, LookupErrors, NeedsReauthorization,
    NotFound, RevocationErrors, StoreErrors, TenantErrors, TenantPath, Unavailable, UpstreamError,
};
use super::problem::Problem;
use super::{ApiResult, AppState, no_content, no_store_json_bytes, ok};
use crate::broker::Rfc3339;
use crate::broker::audit::AuditAction;
use crate::broker::cache::{CachedToken, TokenView};
use crate::broker::connections::Connection;
use crate::broker::tokens::{Served, Want};

/// The default and the largest `min_ttl_seconds`.
const DEFAULT_MIN_TTL_SECS: u64 = 300;
const MAX_MIN_TTL_SECS: u64 = 86_400;

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list))
        .routes(routes!(read, delete))
        .routes(routes!(access_token))
        .routes(routes!(reauthorize))
}

/// Optional body of a reconnect.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = ReauthorizationRequest)]
struct ReauthorizeBody {
    /// Where the callback redirects when the flow ends; must be on an allowed origin
    /// (`VALO_OAUTH_RETURN_TO_ORIGINS`).
    #[schema(value_type = String, format = Uri, required = false)]
    return_to: Option<String>,
}

/// Reconnect a connection (e.g. one in `needs_reauthorization`)
///
/// Starts an authorization flow for the connection's tenant with `login_hint` set to the
/// connection's Salesforce username (when known), so the person lands on that user's login.
/// Completing it renews the same connection: same id, status `active`, new tokens, the
/// replaced refresh token revoked at Salesforce. Signed in as another Salesforce user, the
/// flow ends with `error=different_user` and changes nothing. 404 for an unknown connection
/// or one of another tenant.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{id}/reauthorize", operation_id = "reauthorizeConnection", tag = "connections",
    params(ConnectionPath),
    request_body(content = Option<ReauthorizeBody>, description = "Optional; an empty body means no `return_to`."),
    responses(
        (status = 201, description = "Flow started.", body = super::authorizations::Started),
        LookupErrors,
        BodyErrors,
    ),
    security(("bearerAuth" = ["connections:write"])),
)]
async fn reauthorize(
    Granted { broker, target, .. }: Granted<needs::ConnectionsWrite>,
    OptionalJsonBody(body): OptionalJsonBody<ReauthorizeBody>,
) -> ApiResult {
    let id = target.connection_id()?;
    let started = broker
        .start_reauthorization(&target.tenant, id, body.return_to.as_deref())
        .await?;
    Ok(super::authorizations::started(started))
}

/// One authorized Salesforce user of one org, for one tenant. Re-authorizing the same org id
/// and user id updates this connection (same `id`) rather than creating another. No token
/// material.
#[derive(Serialize, ToSchema)]
#[schema(as = Connection)]
struct ConnectionView {
    #[schema(format = Uuid)]
    id: String,
    tenant_id: String,
    /// Salesforce org id (from the token response's `id` URL).
    #[schema(examples("00D5g000004XXXXEAA"))]
    org_id: String,
    /// Salesforce user id (from the token response's `id` URL).
    #[schema(examples("0055g00000XXXXXAAA"))]
    user_id: String,
    /// The user's Salesforce username, learned by token introspection when the connection
    /// was authorized; `null` when Salesforce did not tell. A reconnect passes it as
    /// `login_hint`.
    #[schema(required = true, examples("admin@acme.example"))]
    username: Option<String>,
    /// The login origin the connection was authorized through.
    #[schema(format = Uri)]
    login_url: String,
    /// The org's API base URL.
    #[schema(format = Uri)]
    instance_url: String,
    #[schema(value_type = ConnectionStatus)]
    status: &'static str,
    /// Scopes Salesforce granted (may be empty when Salesforce did not say).
    scopes: Vec<String>,
    /// Expiry of the stored access token (introspected, or assumed from
    /// `assumed_token_lifetime_secs`).
    #[schema(value_type = super::openapi::Timestamp)]
    access_token_expires_at: String,
    /// True while the expiry is not confirmed by Salesforce's introspection (RFC 7662): the
    /// configured lifetime, or after a refresh the previous token's lifetime until
    /// introspection confirms it.
    access_token_expiry_assumed: bool,
    #[schema(value_type = super::openapi::Timestamp)]
    created_at: String,
    #[schema(value_type = super::openapi::Timestamp)]
    updated_at: String,
    /// Last successful token issue (authorization or refresh).
    #[schema(value_type = super::openapi::Timestamp)]
    last_refreshed_at: String,
    /// The last refresh failure's summary (Salesforce error code and sanitised description),
    /// or null.
    #[schema(required = true)]
    last_error: Option<String>,
}

impl From<Connection> for ConnectionView {
    fn from(c: Connection) -> Self {
        Self {
            id: c.id.to_string(),
            tenant_id: c.tenant_id,
            org_id: c.org_id,
            user_id: c.user_id,
            username: c.username,
            login_url: c.login_url,
            instance_url: c.instance_url,
            status: c.status.as_str(),
            scopes: c.scopes,
            access_token_expires_at: rfc3339(c.access_expires_at),
            access_token_expiry_assumed: c.expiry_assumed,
            created_at: rfc3339(c.created_at),
            updated_at: rfc3339(c.updated_at),
            last_refreshed_at: rfc3339(c.last_refreshed_at),
            last_error: c.last_error,
        }
    }
}

#[derive(Serialize, ToSchema)]
struct ConnectionList {
    connections: Vec<ConnectionView>,
}

/// List the tenant's connections
///
/// Every connection of the tenant, whatever its status (an empty list when there are none,
/// even without a registered app).
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections", operation_id = "listConnections", tag = "connections",
    params(TenantPath),
    responses(
        (status = 200, description = "The connections.", body = ConnectionList),
        StoreErrors,
    ),
    security(("bearerAuth" = ["connections:read"])),
)]
async fn list(Granted { broker, target, .. }: Granted<needs::ConnectionsRead>) -> ApiResult {
    let connections = broker.list_connections(&target.tenant).await?;
    ok(ConnectionList {
        connections: connections.into_iter().map(ConnectionView::from).collect(),
    })
}

/// Read one connection
///
/// A connection of this tenant. A malformed id gets 404, like an unknown one.
#[utoipa::path(
    get, path = "/v1/tenants/{tenant}/connections/{id}", operation_id = "getConnection", tag = "connections",
    params(ConnectionPath),
    responses(
        (status = 200, description = "The connection.", body = ConnectionView),
        LookupErrors,
    ),
    security(("bearerAuth" = ["connections:read"])),
)]
async fn read(Granted { broker, target, .. }: Granted<needs::ConnectionsRead>) -> ApiResult {
    let connection = broker
        .get_connection(&target.tenant, target.connection_id()?)
        .await?;
    ok(ConnectionView::from(connection))
}

/// Delete a connection
///
/// Revokes the connection's refresh token at Salesforce (which revokes its access tokens
/// too), then deletes it. A token Salesforce already considers invalid counts as revoked. If
/// the revocation fails, the connection is kept and the answer is 502/503; retry, or pass
/// `force=true` to delete anyway.
#[utoipa::path(
    delete, path = "/v1/tenants/{tenant}/connections/{id}", operation_id = "deleteConnection", tag = "connections",
    params(ConnectionPath, ForceQuery),
    responses(
        (status = 204, description = "Deleted."),
        RevocationErrors,
    ),
    security(("bearerAuth" = ["connections:write"])),
)]
async fn delete(granted: Granted<needs::ConnectionsWrite>, Force(force): Force) -> ApiResult {
    let id = granted.target.connection_id()?;
    granted
        .broker
        .delete_connection(&granted.target.tenant, id, force)
        .await?;
    granted.audit(AuditAction::ConnectionDeleted, Some(id));
    no_content()
}

/// Options of an access-token request; the body may be omitted altogether.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AccessTokenRequest)]
struct TokenRequest {
    /// The answered token must stay valid this long; otherwise it is refreshed first.
    /// Default 300, at most 86400 (400 above). If the org's session lifetime is shorter than
    /// this, the service does not refresh more than about once a minute to satisfy it: read
    /// `expires_at`.
    #[schema(value_type = u64, minimum = 0, maximum = 86400, default = 300, required = false)]
    min_ttl_seconds: Option<u64>,
    /// The access token Salesforce just answered 401 to. If it is still the current token,
    /// the service refreshes it — once, however many callers report it at the same time —
    /// and answers the new one; if a newer token already exists, it answers that without
    /// refreshing. Must not be empty.
    #[schema(value_type = String, min_length = 1, write_only, required = false)]
    rejected_token: Option<SecretString>,
}

/// A Salesforce access token valid for at least `min_ttl_seconds` (see there). Do not log or
/// persist it; ask again instead (answers are served from memory when fresh).
#[derive(Serialize, ToSchema)]
#[schema(as = AccessToken)]
struct TokenResponse<'a> {
    /// Send as `Authorization: Bearer …` to `instance_url`.
    access_token: &'a str,
    #[schema(schema_with = bearer)]
    token_type: &'static str,
    /// The org's API base URL (may change after a refresh).
    #[schema(format = Uri)]
    instance_url: &'a str,
    #[schema(value_type = super::openapi::Timestamp)]
    issued_at: Rfc3339,
    /// When the token expires (introspected at Salesforce, or assumed from
    /// `assumed_token_lifetime_secs`, default 7200 s, when introspection gives nothing).
    #[schema(value_type = super::openapi::Timestamp)]
    expires_at: Rfc3339,
}

fn bearer() -> utoipa::openapi::Object {
    super::openapi::string_enum(&["Bearer"], "")
}

/// Get a fresh access token
///
/// Answers an access token valid for at least `min_ttl_seconds` (default 300), refreshing it
/// first when needed. Refreshes use refresh-token rotation and are serialized per connection
/// across all replicas; the new refresh token is stored before the access token is answered.
/// Call this before Salesforce API requests (fresh tokens are served from memory), and with
/// `rejected_token` after Salesforce answered 401. The response carries
/// `Cache-Control: no-store`.
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/connections/{id}/access-token", operation_id = "getAccessToken", tag = "tokens",
    params(ConnectionPath),
    request_body(content = Option<TokenRequest>, description = "Optional; an empty body means `min_ttl_seconds` 300 and no `rejected_token`."),
    responses(
        (status = 200, description = "A valid access token.", body = TokenResponse),
        (status = 404, response = NotFound),
        (status = 409, response = NeedsReauthorization),
        (status = 502, response = UpstreamError),
        (status = 503, response = Unavailable),
        TenantErrors,
        BodyErrors,
    ),
    security(("bearerAuth" = ["tokens:read"])),
)]
async fn access_token(
    Granted {
        broker,
        caller,
        target,
        ..
    }: Granted<needs::TokensRead>,
    OptionalJsonBody(body): OptionalJsonBody<TokenRequest>,
) -> ApiResult {
    let min_ttl = body.min_ttl_seconds.unwrap_or(DEFAULT_MIN_TTL_SECS);
    if min_ttl > MAX_MIN_TTL_SECS {
        return Err(Problem::invalid_request(format!(
            "min_ttl_seconds must be at most {MAX_MIN_TTL_SECS}"
        )));
    }
    let min_ttl_ms = i64::try_from(min_ttl * 1000).unwrap_or(i64::MAX);
    let want = match body.rejected_token {
        Some(rejected) if !rejected.expose_secret().is_empty() => Want::Replacing {
            rejected,
            min_ttl_ms,
        },
        Some(_) => return Err(Problem::invalid_request("rejected_token must not be empty")),
        None => Want::Fresh { min_ttl_ms },
    };
    // Aggregated per minute: no request id.
    let token = broker
        .access_token_for(
            caller.aggregate_actor(),
            &target.tenant,
            target.connection_id()?,
            want,
        )
        .await?;
    let body = match token {
        // The cached entry keeps its rendered answer: served without a copy, and the body
        // holds the entry (whose token is wiped on drop) until it is sent.
        Served::Cached(entry) => {
            Bytes::from_owner(RenderedToken::new(entry).map_err(render_failed)?)
        }
        Served::Fresh(token) => Bytes::from(render_token(token.view()).map_err(render_failed)?),
    };
    Ok(no_store_json_bytes(StatusCode::OK, body))
}

/// The access-token answer's body (one format, whether the token is cached or fresh).
fn render_token(token: TokenView<'_>) -> Result<Vec<u8>, serde_json::Error> {
    serde_json::to_vec(&TokenResponse {
        access_token: token.access_token,
        token_type: "Bearer",
        instance_url: token.instance_url,
        issued_at: Rfc3339(token.issued_at),
        expires_at: Rfc3339(token.expires_at),
    })
}

fn render_failed(e: serde_json::Error) -> Problem {
    tracing::error!(error = %e, "cannot serialise an access-token answer");
    Problem::internal()
}

/// A cached token's rendered answer as a response body (rendered, if it was not yet, when
/// made).
struct RenderedToken(Arc<CachedToken>);

impl RenderedToken {
    fn new(entry: Arc<CachedToken>) -> Result<Self, serde_json::Error> {
        entry.rendered(render_token)?;
        Ok(Self(entry))
    }
}

impl AsRef<[u8]> for RenderedToken {
    fn as_ref(&self) -> &[u8] {
        self.0.rendered_bytes()
    }
}
