//! `GET /v1/salesforce/eca-settings`: the External Client App settings of the setup guide
//! (callback URL, scopes with Salesforce's labels, security toggles), so the Valo UI shows
//! the values this deployment checks instead of a hard-coded copy. The same for every
//! tenant; the caller needs `apps:write`, the scope of registering an app.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use serde::Serialize;
use utoipa::ToSchema;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Authenticated, Scope};
use super::openapi::BearerErrors;
use super::{ApiResult, AppState, no_store_json};
use crate::broker::eca::EcaSettings;

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(read))
}

#[derive(Serialize, ToSchema)]
struct ScopeView {
    #[schema(examples("api"))]
    name: String,
    /// Salesforce's label; `null` for a scope this service has no label for.
    #[schema(value_type = Option<String>, examples("Manage user data via APIs (api)"))]
    label: Option<&'static str>,
}

/// The External Client App settings of Valo's setup guide, as this deployment needs them.
#[derive(Serialize, ToSchema)]
#[schema(as = EcaSettings)]
struct EcaSettingsView {
    /// OAuth Settings → Callback URL: this deployment's public URL +
    /// `/oauth2/v1/callback/salesforce`.
    #[schema(format = Uri, examples("https://api.valo.ai/oauth2/v1/callback/salesforce"))]
    callback_url: String,
    /// OAuth Settings → Selected OAuth Scopes: the scopes this service requests, each with
    /// the label Salesforce shows for it (`refresh_token` and `offline_access` share one
    /// checkbox).
    #[schema(inline)]
    oauth_scopes: Vec<ScopeView>,
    /// Security → Require secret for Web Server Flow.
    require_secret_for_web_server_flow: bool,
    /// Security → Require secret for Refresh Token Flow.
    require_secret_for_refresh_token_flow: bool,
    /// Security → Require Proof Key for Code Exchange (PKCE) extension for Supported
    /// Authorization Flows.
    require_pkce: bool,
    /// Security → Enable Refresh Token Rotation.
    enable_refresh_token_rotation: bool,
    /// Basic Information → Distribution State.
    #[schema(schema_with = distribution_state)]
    distribution_state: &'static str,
}

fn distribution_state() -> utoipa::openapi::Object {
    super::openapi::string_enum(&["Local"], "")
}

impl From<EcaSettings> for EcaSettingsView {
    fn from(s: EcaSettings) -> Self {
        Self {
            callback_url: s.callback_url,
            oauth_scopes: s
                .oauth_scopes
                .into_iter()
                .map(|scope| ScopeView {
                    name: scope.name,
                    label: scope.label,
                })
                .collect(),
            require_secret_for_web_server_flow: s.require_secret_for_web_server_flow,
            require_secret_for_refresh_token_flow: s.require_secret_for_refresh_token_flow,
            require_pkce: s.require_pkce,
            enable_refresh_token_rotation: s.enable_refresh_token_rotation,
            distribution_state: s.distribution_state,
        }
    }
}

/// The External Client App settings to configure
///
/// The values of Valo's setup guide for the customer's External Client App — callback URL,
/// OAuth scopes with Salesforce's labels, the Security toggles (all `true`) and the
/// distribution state — so the Valo UI renders them from the service that checks them. The
/// same for every tenant: a token confined to a tenant may read them.
#[utoipa::path(
    get, path = "/v1/salesforce/eca-settings", operation_id = "getEcaSettings", tag = "apps",
    responses(
        (status = 200, description = "The settings.", body = EcaSettingsView),
        BearerErrors,
    ),
    security(("bearerAuth" = ["apps:write"])),
)]
async fn read(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult {
    caller.require_scope(Scope::AppsWrite)?;
    Ok(no_store_json(
        StatusCode::OK,
        EcaSettingsView::from(state.broker.eca_settings()),
    ))
}
