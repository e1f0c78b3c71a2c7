//! `POST /v1/tenants/{tenant}/authorizations`: starts an authorization-code flow and answers
//! the URL to send the person's browser to.

use axum::Router;
use axum::http::StatusCode;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Granted, needs};
use super::extract::{OptionalJsonBody, rfc3339};
use super::openapi::{BodyErrors, LookupErrors, TenantPath};
use super::{ApiResult, AppState, no_store_json};
use crate::broker::flow::StartedAuthorization;

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(start))
}

/// Options of a new authorization flow; the body may be omitted altogether.
#[derive(Deserialize, Default, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = AuthorizationRequest)]
struct StartBody {
    /// Where the callback redirects the browser (303) when the flow ends, with
    /// `status=connected&connection_id=…` or `status=error&error=…&error_description=…`
    /// appended to the query. Must be an absolute http(s) URL without credentials or fragment
    /// whose origin is listed in `return_to_origins` (exact match). Without it the callback
    /// renders an HTML page.
    #[schema(value_type = String, format = Uri, required = false)]
    return_to: Option<String>,
    /// Passed to Salesforce to prefill the username; 1-256 printable characters.
    #[schema(value_type = String, min_length = 1, max_length = 256, required = false)]
    login_hint: Option<String>,
}

#[derive(Serialize, ToSchema)]
#[schema(as = Authorization)]
pub(super) struct Started {
    /// Salesforce's authorize URL (on the tenant's login URL) to send the person's browser
    /// to. It carries a single-use state and a PKCE S256 challenge.
    #[schema(format = Uri)]
    authorization_url: String,
    /// When the flow's state expires (`authorization_ttl_secs`, default 600 s); a callback
    /// after that gets an error page.
    #[schema(value_type = super::openapi::Timestamp)]
    expires_at: String,
}

/// Start an authorization (connect a Salesforce org)
///
/// Starts an OAuth 2.0 authorization-code flow with PKCE (S256) and a single-use state, bound
/// to the tenant. Send the person's browser to `authorization_url`; Salesforce brings it back
/// to `GET /oauth2/v1/callback/salesforce`, which creates (or, for the same org and user,
/// updates) a connection and redirects to `return_to`. Requires the tenant's app (404
/// otherwise).
#[utoipa::path(
    post, path = "/v1/tenants/{tenant}/authorizations", operation_id = "startAuthorization", tag = "authorizations",
    params(TenantPath),
    request_body(content = Option<StartBody>, description = "Optional; an empty body means no `return_to` and no `login_hint`."),
    responses(
        (status = 201, description = "Flow started.", body = Started),
        LookupErrors,
        BodyErrors,
    ),
    security(("bearerAuth" = ["connections:write"])),
)]
async fn start(
    Granted { broker, target, .. }: Granted<needs::ConnectionsWrite>,
    OptionalJsonBody(body): OptionalJsonBody<StartBody>,
) -> ApiResult {
    let started_flow = broker
        .start_authorization(
            &target.tenant,
            body.return_to.as_deref(),
            body.login_hint.as_deref(),
        )
        .await?;
    Ok(started(started_flow))
}

/// The 201 answer of a started flow (also a reconnect's).
pub(super) fn started(flow: StartedAuthorization) -> axum::response::Response {
    no_store_json(
        StatusCode::CREATED,
        Started {
            authorization_url: flow.authorization_url.to_string(),
            expires_at: rfc3339(flow.expires_at),
        },
    )
}
