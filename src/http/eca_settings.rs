//! `GET /v1/salesforce/eca-settings`: the External Client App settings of the setup guide
//! (callback URL, scopes with Salesforce's labels, security toggles), so the Valo UI shows
//! the values this deployment checks instead of a hard-coded copy. The same for every
//! tenant; the caller needs `apps:write`, the scope of registering an app.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;
use serde::Serialize;

use super::auth::{Authenticated, Scope};
use super::{ApiResult, AppState, no_store_json};
use crate::broker::eca::EcaSettings;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/salesforce/eca-settings", get(read))
}

#[derive(Serialize)]
struct ScopeView {
    name: String,
    label: Option<&'static str>,
}

#[derive(Serialize)]
struct EcaSettingsView {
    callback_url: String,
    oauth_scopes: Vec<ScopeView>,
    require_secret_for_web_server_flow: bool,
    require_secret_for_refresh_token_flow: bool,
    require_pkce: bool,
    enable_refresh_token_rotation: bool,
    distribution_state: &'static str,
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

async fn read(State(state): State<AppState>, Authenticated(caller): Authenticated) -> ApiResult {
    caller.require_scope(Scope::AppsWrite)?;
    Ok(no_store_json(
        StatusCode::OK,
        EcaSettingsView::from(state.broker.eca_settings()),
    ))
}
