//! `/v1/tenants/{tenant}/salesforce-app`: a tenant's External Client App credentials.
//! Write-only secrets: responses carry metadata and a masked key hint, never the secret.
//! A PUT checks the credentials at the login host first unless `?verify=false`.

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::StatusCode;
use axum::http::request::Parts;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::auth::{Granted, needs};
use super::extract::{Force, JsonBody, rfc3339};
use super::openapi::{
    BodyErrors, ForceQuery, InvalidCredentials, LookupErrors, RevocationErrors, TenantErrors,
    TenantPath, Unavailable, UpstreamError,
};
use super::problem::Problem;
use super::{ApiResult, AppState, no_content, no_store_json, ok};
use crate::broker::Broker;
use crate::broker::apps::{AppMetadata, AppRegistration};
use crate::broker::audit::AuditAction;

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The routes with their OpenAPI operations.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(get_app, put_app, delete_app))
}

const PATH: &str = "/v1/tenants/{tenant}/salesforce-app";

/// The tenant's External Client App credentials. Both credentials are stored encrypted and
/// never returned. Surrounding whitespace is trimmed; what remains must be 1-256 characters
/// without spaces or control characters.
#[derive(Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
#[schema(as = SalesforceAppRequest)]
struct PutApp {
    /// The ECA's Consumer Key (OAuth client id).
    #[schema(value_type = String, min_length = 1, max_length = 256, write_only)]
    consumer_key: SecretString,
    /// The ECA's Consumer Secret.
    #[schema(value_type = String, min_length = 1, max_length = 256, write_only)]
    consumer_secret: SecretString,
    /// Where the org's users log in: `https://login.salesforce.com`,
    /// `https://test.salesforce.com` or the org's My Domain `https://NAME.my.salesforce.com`
    /// (the allowed hosts are configured by `login_hosts`). Must be https on an allowed host;
    /// `*.lightning.force.com` is refused. Stored normalised to its origin `https://host[:port]`.
    #[schema(format = Uri, examples("https://acme.my.salesforce.com"))]
    login_url: String,
}

/// A tenant's External Client App, as metadata only (never the secret).
#[derive(Serialize, ToSchema)]
#[schema(as = SalesforceApp)]
struct AppView {
    tenant_id: String,
    /// The normalised login origin.
    #[schema(format = Uri)]
    login_url: String,
    /// The key's first and last four characters (`3MVG…Xy9Q`), or `…` for keys shorter than
    /// 16 characters: enough to tell two apps apart.
    #[schema(examples("3MVG…Xy9Q"))]
    consumer_key_hint: String,
    /// The callback URL to configure in the ECA.
    #[schema(format = Uri, examples("https://api.valo.ai/oauth2/v1/callback/salesforce"))]
    callback_url: String,
    /// `active` or `credentials_invalid` ([`app_status`] documents them).
    #[schema(schema_with = app_status)]
    status: &'static str,
    /// Why the credentials were refused (Salesforce's error, sanitised); only with
    /// `credentials_invalid`.
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = String)]
    status_reason: Option<String>,
    #[schema(value_type = super::openapi::Timestamp)]
    created_at: String,
    #[schema(value_type = super::openapi::Timestamp)]
    updated_at: String,
    /// In the answer of a PUT only: whether Salesforce accepted the credentials before they
    /// were stored (`false` after `?verify=false`).
    #[serde(skip_serializing_if = "Option::is_none")]
    #[schema(required = false, value_type = bool)]
    credentials_verified: Option<bool>,
}

fn app_status() -> utoipa::openapi::Object {
    super::openapi::string_enum(
        &["active", "credentials_invalid"],
        "`credentials_invalid` once Salesforce refused the consumer key or secret on a refresh \
         (`invalid_client`, `invalid_client_id`): token requests that need a refresh answer 409 \
         `app_credentials_invalid` until a PUT replaces the credentials, which makes it \
         `active` again.",
    )
}

/// `?verify` of the PUT ([`Verify`]).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the handler parses the raw query strictly.
struct VerifyQuery {
    /// `false` stores the credentials without checking them at the login host (default `true`).
    #[param(default = true)]
    verify: Option<bool>,
}

/// `?verify=false` skips the credential check; absent or `true` keeps it. Anything else is
/// a mistake worth a 400 rather than a silent default.
struct Verify(bool);

impl<S: Send + Sync> FromRequestParts<S> for Verify {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Problem> {
        let query = parts.uri.query().unwrap_or_default();
        let mut verify = true;
        for (name, value) in url::form_urlencoded::parse(query.as_bytes()) {
            if name == "verify" {
                verify = match value.as_ref() {
                    "true" | "1" => true,
                    "false" | "0" => false,
                    _ => return Err(Problem::invalid_request("verify must be true or false")),
                };
            }
        }
        Ok(Self(verify))
    }
}

fn view(broker: &Broker, m: AppMetadata) -> AppView {
    AppView {
        credentials_verified: None,
        tenant_id: m.tenant_id,
        login_url: m.login_url,
        consumer_key_hint: m.consumer_key_hint,
        callback_url: broker.callback_url(),
        status: m.status.as_str(),
        status_reason: m.status_reason,
        created_at: rfc3339(m.created_at),
        updated_at: rfc3339(m.updated_at),
    }
}

/// Register or replace the tenant's External Client App
///
/// Checks the consumer key and secret at the login host, then stores them (encrypted) with
/// the login URL. The check is a token request with a deliberately invalid authorization
/// code: Salesforce answers `invalid_client_id` for an unknown key (422
/// `invalid_credentials`, `field`: `consumer_key`), `invalid_client` for a wrong secret
/// (422, `field`: `consumer_secret`), and `invalid_grant` when both are right. When the login
/// host is unreachable or failing the answer is 503 `upstream_unavailable` (with
/// `Retry-After`), when it answers something that is not Salesforce's 502 `upstream_error`;
/// in both cases nothing is stored. `?verify=false` stores without the check
/// (`credentials_verified: false` in the answer). Answers 201 when the tenant had no app,
/// 200 when it replaced one (and the app's `credentials_invalid` status, if any, is
/// cleared). Existing connections are kept. The answer is metadata only: nothing about the
/// secret.
#[utoipa::path(
    put, path = PATH, operation_id = "putSalesforceApp", tag = "apps",
    params(TenantPath, VerifyQuery),
    request_body(content = PutApp, description = "The ECA's credentials and login URL."),
    responses(
        (status = 200, description = "Replaced.", body = AppView),
        (status = 201, description = "Created.", body = AppView),
        (status = 422, response = InvalidCredentials),
        (status = 502, response = UpstreamError),
        (status = 503, response = Unavailable),
        TenantErrors,
        BodyErrors,
    ),
    security(("bearerAuth" = ["apps:write"])),
)]
async fn put_app(
    granted: Granted<needs::AppsWrite>,
    Verify(verify): Verify,
    JsonBody(body): JsonBody<PutApp>,
) -> ApiResult {
    let (metadata, created) = granted
        .broker
        .put_app(
            &granted.target.tenant,
            AppRegistration {
                consumer_key: body.consumer_key,
                consumer_secret: body.consumer_secret,
                login_url: body.login_url,
            },
            verify,
        )
        .await?;
    granted.audit(AuditAction::AppUpdated, None);
    let status = if created {
        StatusCode::CREATED
    } else {
        StatusCode::OK
    };
    let mut view = view(&granted.broker, metadata);
    view.credentials_verified = Some(verify);
    Ok(no_store_json(status, view))
}

/// Read the tenant's External Client App metadata
///
/// Metadata only: login URL, masked key hint, callback URL, timestamps. Needs `apps:write`
/// (there is no read scope for apps).
#[utoipa::path(
    get, path = PATH, operation_id = "getSalesforceApp", tag = "apps",
    params(TenantPath),
    responses(
        (status = 200, description = "The app's metadata.", body = AppView),
        LookupErrors,
    ),
    security(("bearerAuth" = ["apps:write"])),
)]
async fn get_app(Granted { broker, target, .. }: Granted<needs::AppsWrite>) -> ApiResult {
    let metadata = broker.get_app(&target.tenant).await?;
    ok(view(&broker, metadata))
}

/// Remove the tenant's External Client App and its connections
///
/// Revokes every connection's refresh token at Salesforce, then deletes the connections and
/// the app. If a revocation fails the request stops with 502/503 and nothing is deleted
/// (connections revoked before the failure stay listed); retry, or pass `force=true` to
/// ignore revocation failures and delete anyway.
#[utoipa::path(
    delete, path = PATH, operation_id = "deleteSalesforceApp", tag = "apps",
    params(TenantPath, ForceQuery),
    responses(
        (status = 204, description = "Deleted."),
        RevocationErrors,
    ),
    security(("bearerAuth" = ["apps:write"])),
)]
async fn delete_app(granted: Granted<needs::AppsWrite>, Force(force): Force) -> ApiResult {
    granted
        .broker
        .delete_app(&granted.target.tenant, force)
        .await?;
    granted.audit(AuditAction::AppDeleted, None);
    no_content()
}
