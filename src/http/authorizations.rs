//! `POST /v1/tenants/{tenant}/authorizations`: starts an authorization-code flow and answers
//! the URL to send the person's browser to.

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::post;
use serde::{Deserialize, Serialize};

use super::auth::{Authenticated, Scope};
use super::extract::{OptionalJsonBody, Target, rfc3339};
use super::{ApiResult, AppState, no_store_json};
use crate::broker::flow::StartedAuthorization;

pub fn router() -> Router<AppState> {
    Router::new().route("/v1/tenants/{tenant}/authorizations", post(start))
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct StartBody {
    return_to: Option<String>,
    login_hint: Option<String>,
}

#[derive(Serialize)]
struct Started {
    authorization_url: String,
    expires_at: String,
}

async fn start(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    OptionalJsonBody(body): OptionalJsonBody<StartBody>,
) -> ApiResult {
    caller.require(Scope::ConnectionsWrite, &target.tenant)?;
    let started_flow = state
        .broker
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
