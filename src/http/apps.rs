//! `/v1/tenants/{tenant}/salesforce-app`: a tenant's External Client App credentials.
//! Write-only secrets: responses carry metadata and a masked key hint, never the secret.
//! A PUT checks the credentials at the login host first unless `?verify=false`.

use axum::Router;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

use super::auth::{Authenticated, Scope};
use super::extract::{JsonBody, Target, force_flag, rfc3339};
use super::problem::Problem;
use super::{ApiResult, AppState, no_store_json};
use crate::broker::apps::{AppMetadata, AppRegistration};

const SCOPE: Scope = Scope::AppsWrite;

pub fn router() -> Router<AppState> {
    Router::new().route(
        "/v1/tenants/{tenant}/salesforce-app",
        get(get_app).put(put_app).delete(delete_app),
    )
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct PutApp {
    consumer_key: SecretString,
    consumer_secret: SecretString,
    login_url: String,
}

#[derive(Serialize)]
struct AppView {
    tenant_id: String,
    login_url: String,
    consumer_key_hint: String,
    callback_url: String,
    /// `active`, or `credentials_invalid` after Salesforce refused the credentials on a
    /// refresh (a PUT of new credentials makes it `active` again).
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    status_reason: Option<String>,
    created_at: String,
    updated_at: String,
    /// PUT only: whether Salesforce accepted the credentials before they were stored
    /// (`false` after `?verify=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    credentials_verified: Option<bool>,
}

/// `?verify=false` skips the credential check; absent or `true` keeps it. Anything else is
/// a mistake worth a 400 rather than a silent default.
fn verify_flag(query: Option<&str>) -> Result<bool, Problem> {
    let mut verify = true;
    for (name, value) in url::form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
        if name == "verify" {
            verify = match value.as_ref() {
                "true" | "1" => true,
                "false" | "0" => false,
                _ => return Err(Problem::invalid_request("verify must be true or false")),
            };
        }
    }
    Ok(verify)
}

fn view(state: &AppState, m: AppMetadata) -> AppView {
    AppView {
        credentials_verified: None,
        tenant_id: m.tenant_id,
        login_url: m.login_url,
        consumer_key_hint: m.consumer_key_hint,
        callback_url: state.broker.callback_url(),
        status: m.status.as_str(),
        status_reason: m.status_reason,
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(m.updated_at),
    }
}

async fn put_app(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    RawQuery(query): RawQuery,
    JsonBody(body): JsonBody<PutApp>,
) -> ApiResult {
    caller.require(SCOPE, &target.tenant)?;
    let verify = verify_flag(query.as_deref())?;
    let (metadata, created) = state
        .broker
        .put_app(
            &target.tenant,
            AppRegistration {
                consumer_key: body.consumer_key,
                consumer_secret: body.consumer_secret,
                login_url: body.login_url,
            },
            verify,
        )
        .await?;
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut view = view(&state, metadata);
    view.credentials_verified = Some(verify);
    Ok(no_store_json(status, view))
}

async fn get_app(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
) -> ApiResult {
    caller.require(SCOPE, &target.tenant)?;
    let metadata = state.broker.get_app(&target.tenant).await?;
    Ok(no_store_json(StatusCode::OK, view(&state, metadata)))
}

async fn delete_app(
    State(state): State<AppState>,
    Authenticated(caller): Authenticated,
    target: Target,
    RawQuery(query): RawQuery,
) -> ApiResult {
    caller.require(SCOPE, &target.tenant)?;
    state
        .broker
        .delete_app(&target.tenant, force_flag(query.as_deref()))
        .await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}
