//! `/v1/tenants/{tenant}/connections…`: listing, reading and deleting connections, and the
//! access-token endpoint the Valo backend calls before its Salesforce API requests.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::{get, post};
use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

use super::auth::{Authenticated, Scope};
use super::extract::{OptionalJsonBody, Target, force_flag, rfc3339};
use super::problem::Problem;
use super::{ApiResult, AppState, no_store_json};
use crate::broker::connections::Connection;
use crate::broker::tokens::Want;

/// The default and the largest `min_ttl_seconds`.
const DEFAULT_MIN_TTL_SECS: u64 = 300;
const MAX_MIN_TTL_SECS: u64 = 86_400;

pub fn router() -> Router<AppState> {
    Router::new()
        .route("/v1/tenants/{tenant}/connections", get(list))
        .route(
            "/v1/tenants/{tenant}/connections/{id}",
            get(read).delete(delete),
        )
        .route(
            "/v1/tenants/{tenant}/connections/{id}/access-token",
            post(access_token),
        )
        .route(
            "/v1/tenants/{tenant}/connections/{id}/reauthorize",
            post(reauthorize),
        )
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct ReauthorizeBody {
    return_to: Option<String>,
}

/// `POST …/connections/{id}/reauthorize`: a flow that renews this connection, with its
/// Salesforce username as `login_hint`; answered like `POST …/authorizations`.
async fn reauthorize(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    OptionalJsonBody(body): OptionalJsonBody<ReauthorizeBody>,
) -> ApiResult {
    caller.require(Scope::ConnectionsWrite, &target.tenant)?;
    let id = target.connection_id()?;
    let started = state
        .broker
        .start_reauthorization(&target.tenant, id, body.return_to.as_deref())
        .await?;
    Ok(super::authorizations::started(started))
}

/// A connection as the API shows it: no token material.
#[derive(Serialize)]
struct ConnectionView {
    id: String,
    tenant_id: String,
    org_id: String,
    user_id: String,
    /// The Salesforce username, when introspection told it (null otherwise).
    username: Option<String>,
    login_url: String,
    instance_url: String,
    status: &'static str,
    scopes: Vec<String>,
    access_token_expires_at: String,
    /// True when the expiry is the configured lifetime, not Salesforce's introspection.
    access_token_expiry_assumed: bool,
    created_at: String,
    updated_at: String,
    last_refreshed_at: String,
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

#[derive(Serialize)]
struct ConnectionList {
    connections: Vec<ConnectionView>,
}

async fn list(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
) -> ApiResult {
    caller.require(Scope::ConnectionsRead, &target.tenant)?;
    let connections = state.broker.list_connections(&target.tenant).await?;
    Ok(no_store_json(
        StatusCode::OK,
        ConnectionList {
            connections: connections.into_iter().map(ConnectionView::from).collect(),
        },
    ))
}

async fn read(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
) -> ApiResult {
    caller.require(Scope::ConnectionsRead, &target.tenant)?;
    let connection = state
        .broker
        .get_connection(&target.tenant, target.connection_id()?)
        .await?;
    Ok(no_store_json(
        StatusCode::OK,
        ConnectionView::from(connection),
    ))
}

async fn delete(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    RawQuery(query): RawQuery,
) -> ApiResult {
    caller.require(Scope::ConnectionsWrite, &target.tenant)?;
    state
        .broker
        .delete_connection(
            &target.tenant,
            target.connection_id()?,
            force_flag(query.as_deref()),
        )
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct TokenRequest {
    min_ttl_seconds: Option<u64>,
    rejected_token: Option<SecretString>,
}

#[derive(Serialize)]
struct TokenResponse<'a> {
    access_token: &'a str,
    token_type: &'static str,
    instance_url: &'a str,
    issued_at: String,
    expires_at: String,
}

async fn access_token(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    OptionalJsonBody(body): OptionalJsonBody<TokenRequest>,
) -> ApiResult {
    caller.require(Scope::TokensRead, &target.tenant)?;
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
    let token = state
        .broker
        .access_token(&target.tenant, target.connection_id()?, want)
        .await?;
    Ok(no_store_json(
        StatusCode::OK,
        TokenResponse {
            access_token: token.access_token.expose_secret(),
            token_type: "Bearer",
            instance_url: &token.instance_url,
            issued_at: rfc3339(token.issued_at),
            expires_at: rfc3339(token.expires_at),
        },
    ))
}
