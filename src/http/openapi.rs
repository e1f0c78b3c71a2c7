//! The OpenAPI 3.1 document, generated from the code: each handler's `#[utoipa::path]`, the
//! `ToSchema` request and response types beside it, and — from here — what every operation
//! shares: the problem responses (built from [`ProblemCode`], the one list of codes), their
//! headers exactly as [`Problem`](super::problem::Problem) sends them, the path parameters and
//! the bearer security scheme. Served at `/openapi.json`, printed by `valo-oauth openapi`,
//! and committed as `docs/openapi.json` (a test fails when that file is stale).
//!
//! The parts that describe no request this service answers — the webhooks it sends and the
//! query its callback appends to `return_to` — come from `openapi_fragment.json`, merged in
//! with the callback's own error codes ([`FlowErrorCode::OWN`]) filled from the code.

use serde_json::{Map, Value, json};
use utoipa::openapi::schema::{KnownFormat, ObjectBuilder, SchemaFormat, Type};
use utoipa::openapi::{RefOr, Response, Schema};
use utoipa::{OpenApi, PartialSchema, ToResponse, ToSchema};
use utoipa_axum::router::OpenApiRouter;

use super::AppState;
use super::problem::{CHALLENGE_INVALID_TOKEN, CHALLENGE_TOKEN_REQUIRED, ProblemCode};
use crate::broker::audit::AuditAction;
use crate::broker::events::EventType;
use crate::broker::flow::FlowErrorCode;
use crate::config::CALLBACK_PATH;

/// Webhooks and the callback's redirect query: see the module documentation.
const FRAGMENT: &str = include_str!("openapi_fragment.json");

const DESCRIPTION: &str =
    "OAuth 2.0 broker for customers' Salesforce orgs (\"bring your own External Client App\").
A tenant registers its External Client App's consumer key and secret, the Valo backend starts
an authorization-code flow (PKCE S256) for it, Salesforce redirects the person's browser to
`GET /oauth2/v1/callback/salesforce`, and from then on the Valo backend asks this service for
a fresh access token before calling the org's APIs.

**Internal API** (`/v1/…`): JSON, authenticated with a bearer JWT (see the `bearerAuth`
security scheme for claims and scopes). Every response carries `Cache-Control: no-store`.
Request bodies must be `Content-Type: application/json`; unknown fields are refused
(400 `invalid_request`); bodies larger than `body_limit_bytes` (default 65536) get 413.

**Errors** are RFC 9457 problem documents (`application/problem+json`, schema `Problem`);
branch on `code`, not on `title` or `detail`. Checks run in this order: bearer token (401),
path parameters (400 bad tenant id, 404 malformed connection id), request body (400/413/415),
scope and tenant claim (403), then the operation itself. A request to an unknown path gets a
404 `not_found` problem; a known path with another method gets 405 `method_not_allowed`.
5xx problems carry no cause (it is logged with the request id); every response echoes
`X-Request-Id` (generated when the request has none). Any operation may also answer 503
`service_unavailable` with `Retry-After` when the request outlasts `request_timeout_secs` or
`max_concurrent_requests` are in progress.

**Public**: the Salesforce callback (browsers) and the operations endpoints (`/healthz`,
`/readyz`, `/metrics`, `/openapi.json`) need no authentication.
";

#[derive(OpenApi)]
#[openapi(
    info(
        title = "valo-oauth",
        version = env!("CARGO_PKG_VERSION"),
        description = DESCRIPTION,
    ),
    tags(
        (name = "apps", description = "A tenant's External Client App credentials (write-only secrets)."),
        (name = "authorizations", description = "Starting the authorization-code flow."),
        (name = "connections", description = "Authorized Salesforce users and orgs."),
        (name = "tokens", description = "Fresh access tokens for the Valo backend."),
        (name = "audit", description = "Who read which connection's access token, and who changed what."),
        (name = "callback", description = "Where Salesforce redirects people's browsers."),
        (name = "operations", description = "Health, readiness, metrics, this document."),
    ),
    components(schemas(Timestamp, ConnectionStatus))
)]
struct ApiDoc;

/// Every operation, as the routers register them (`utoipa_axum` collects each handler's
/// `#[utoipa::path]` where its route is added, so a route cannot go undocumented).
fn operations() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(super::apps::routes())
        .merge(super::authorizations::routes())
        .merge(super::connections::routes())
        .merge(super::eca_settings::routes())
        .merge(super::audit::routes())
        .merge(super::ops::routes())
        .merge(super::ops::health_routes())
        .merge(super::callback::routes())
}

/// The document as JSON.
pub fn document() -> Value {
    let openapi = operations().into_openapi();
    let mut doc = serde_json::to_value(&openapi).unwrap_or_default();
    let fragment: Value = serde_json::from_str(FRAGMENT).unwrap_or_default();
    if let Some(info) = doc["info"].as_object_mut() {
        info.insert(
            "summary".into(),
            "OAuth 2.0 broker for customers' Salesforce orgs".into(),
        );
        // utoipa copies the crate's license and authors; the service is not published.
        info.remove("license");
        info.remove("contact");
    }
    page_headers(&mut doc["paths"][CALLBACK_PATH]["get"]["responses"]);
    no_store_headers(&mut doc["paths"]);
    optional_bodies(&mut doc["paths"]);
    doc["webhooks"] = fragment["webhooks"].clone();
    let components = &mut doc["components"];
    components["securitySchemes"] = json!({ "bearerAuth": bearer_scheme() });
    components["parameters"] = parameters();
    components["headers"] = headers();
    components["responses"] = problem_responses();
    components["examples"] = problem_examples();
    let schemas = &mut components["schemas"];
    schemas["Problem"] = problem_schema();
    if let Some(extra) = fragment["schemas"].as_object() {
        for (name, schema) in extra {
            schemas[name] = schema.clone();
        }
    }
    // Closed sets the code owns: audit actions and webhook event types.
    schemas["AuditEntry"]["properties"]["action"]["enum"] =
        AuditAction::ALL.iter().map(|a| a.as_str()).collect();
    schemas["WebhookEvent"]["properties"]["type"]["enum"] =
        EventType::ALL.iter().map(|t| t.as_str()).collect();
    // Our own callback error codes come from the code; Salesforce's are open-ended.
    if let Some(own) = schemas["CallbackError"]["anyOf"].get_mut(0) {
        own["enum"] = FlowErrorCode::OWN.iter().map(|c| c.as_str()).collect();
    }
    doc
}

/// The headers [`super::pages::protective_headers`] puts on every answer of the callback
/// that is not a problem (the 429 of the rate limit is), and the 303's `Location`.
fn page_headers(responses: &mut Value) {
    let Some(responses) = responses.as_object_mut() else {
        return;
    };
    for (status, response) in responses {
        if response.get("$ref").is_some() {
            continue;
        }
        let mut headers = json!({
            "Cache-Control": { "$ref": "#/components/headers/CacheControlNoStore" },
            "Referrer-Policy": { "$ref": "#/components/headers/ReferrerPolicy" },
            "Content-Security-Policy": { "$ref": "#/components/headers/ContentSecurityPolicy" },
            "X-Frame-Options": { "$ref": "#/components/headers/XFrameOptions" },
            "X-Content-Type-Options": { "$ref": "#/components/headers/XContentTypeOptions" }
        });
        if status == "303" {
            headers["Location"] = json!({ "$ref": "#/components/headers/Location" });
        }
        response["headers"] = headers;
    }
}

/// `Cache-Control: no-store` on the JSON answers of the internal API
/// ([`super::no_store_json`] writes every one of them).
fn no_store_headers(paths: &mut Value) {
    let Some(paths) = paths.as_object_mut() else {
        return;
    };
    for (path, item) in paths {
        if !path.starts_with("/v1/") {
            continue;
        }
        let operations = item
            .as_object_mut()
            .into_iter()
            .flat_map(|i| i.values_mut());
        for operation in operations {
            let responses = operation["responses"].as_object_mut().into_iter();
            for response in responses.flat_map(|r| r.values_mut()) {
                if response.get("content").is_some() && response.get("$ref").is_none() {
                    response["headers"] = json!({
                        "Cache-Control": { "$ref": "#/components/headers/CacheControlNoStore" }
                    });
                }
            }
        }
    }
}

/// `request_body(content = Option<T>)` is how an annotation says the body may be omitted
/// ([`super::extract::OptionalJsonBody`]); utoipa also admits a JSON `null` for it, which the
/// service refuses (400). The body stays optional, and its schema is `T`'s alone.
fn optional_bodies(paths: &mut Value) {
    let Some(paths) = paths.as_object_mut() else {
        return;
    };
    let operations = paths
        .values_mut()
        .filter_map(Value::as_object_mut)
        .flat_map(|item| item.values_mut());
    for operation in operations {
        // `get_mut`, not indexing: indexing a `Value` mutably inserts what is missing.
        let content = operation
            .get_mut("requestBody")
            .and_then(|body| body.get_mut("content"))
            .and_then(Value::as_object_mut);
        for media in content.into_iter().flat_map(|c| c.values_mut()) {
            let alternatives = media
                .pointer("/schema/oneOf")
                .and_then(Value::as_array)
                .cloned()
                .unwrap_or_default();
            if let [schema, null] = alternatives.as_slice()
                && null == &json!({ "type": "null" })
            {
                media["schema"] = schema.clone();
            }
        }
    }
}

/// The document as `valo-oauth openapi` prints it and `docs/openapi.json` holds it.
pub fn json() -> String {
    let mut text = serde_json::to_string_pretty(&document()).unwrap_or_default();
    text.push('\n');
    text
}

/// A string schema that admits only `values`: the closed sets `&'static str` fields hold,
/// for `#[schema(schema_with = …)]`.
/// (`schema_with` replaces the field's schema, doc comment included: `description` carries it.)
pub fn string_enum(values: &[&str], description: &str) -> utoipa::openapi::Object {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .enum_values(Some(values.iter().copied()))
        .description((!description.is_empty()).then_some(description))
        .build()
}

/// An RFC 3339 timestamp as this API writes them ([`super::extract::rfc3339`]).
pub struct Timestamp;

impl PartialSchema for Timestamp {
    fn schema() -> RefOr<Schema> {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(SchemaFormat::KnownFormat(KnownFormat::DateTime)))
            .description(Some(
                "RFC 3339, UTC, millisecond precision, e.g. `2026-03-01T12:34:56.789Z`.",
            ))
            .examples(["2026-03-01T12:34:56.789Z"])
            .into()
    }
}

impl ToSchema for Timestamp {}

/// - `active`: tokens are served;
/// - `needs_reauthorization`: Salesforce refused the refresh token (revoked, expired, user or org inactive, app credentials changed): access-token requests get 409 until a person connects again;
/// - `revoked`: revoked; access-token requests get 409.
#[derive(ToSchema)]
#[schema(rename_all = "snake_case")]
pub enum ConnectionStatus {
    Active,
    NeedsReauthorization,
    Revoked,
}

fn bearer_scheme() -> Value {
    let scopes: Vec<_> = super::auth::Scope::ALL
        .iter()
        .map(|s| format!("`{}`", s.as_str()))
        .collect();
    json!({
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "JWT",
        "description": format!("A JWT signed by the Valo backend, sent as `Authorization: Bearer <jwt>`. The algorithm is
pinned by configuration: HS256 with the shared secret (`api_jwt_secret`), or EdDSA/RS256
with the configured public key; anything else (including `alg: none`) is refused.

Claims:
- `aud` (required): must equal the configured audience, default `valo-oauth`;
- `exp` (required): expiry, 30 s leeway;
- `iss`: required and checked only when `api_jwt_issuer` is configured;
- `scope`: one space-separated string of granted scopes — {} (each operation names
  the one it needs); a missing scope gets 403 `forbidden`;
- `tenant` (optional): confines the token to one tenant. When present, any request whose
  `{{tenant}}` path segment differs gets 403 `forbidden`; when absent, the token may act on
  every tenant.
- `sub`: who the caller is; recorded as the `actor` of the audit trail (`(no sub)` when
  absent).

A request without a bearer token gets 401 `unauthenticated` with `WWW-Authenticate: {CHALLENGE_TOKEN_REQUIRED}`;
a malformed, expired, wrongly signed or wrong-audience token gets 401 with
`WWW-Authenticate: {CHALLENGE_INVALID_TOKEN}` (RFC 6750 §3.1).
", scopes.join(", ")),
    })
}

fn parameters() -> Value {
    json!({
        "tenant": {
            "name": "tenant", "in": "path", "required": true,
            "description": "The tenant id (1-64 characters of `A-Z a-z 0-9 _ -`; anything else gets 400).",
            "schema": { "type": "string", "pattern": "^[A-Za-z0-9_-]{1,64}$" }
        },
        "connectionId": {
            "name": "id", "in": "path", "required": true,
            "description": "The connection id (a malformed one gets 404).",
            "schema": { "type": "string", "format": "uuid" }
        },
        "force": {
            "name": "force", "in": "query", "required": false,
            "description": "`true` (or `1`): delete even if revocation at Salesforce fails. Any other value means false.",
            "schema": { "type": "boolean", "default": false }
        }
    })
}

fn headers() -> Value {
    json!({
        "CacheControlNoStore": {
            "description": "Always `no-store`.",
            "schema": { "type": "string", "const": "no-store" }
        },
        "RetryAfter": {
            "description": "Seconds to wait before retrying (at least 1). For `upstream_unavailable` on the access-token endpoint it is the refresh back-off (1 s doubling up to `refresh_backoff_max_secs`, default 300); requests inside the back-off window get 503 without a call to Salesforce. 30 after a failed revocation, 1 for `service_unavailable` (5 on `/readyz`).",
            "required": true,
            "schema": { "type": "integer", "minimum": 1 }
        },
        "WWWAuthenticate": {
            "description": format!("`{CHALLENGE_TOKEN_REQUIRED}` when the request carried no bearer token, `{CHALLENGE_INVALID_TOKEN}` when the token was refused (RFC 6750 §3.1)."),
            "required": true,
            "schema": { "type": "string", "enum": [CHALLENGE_TOKEN_REQUIRED, CHALLENGE_INVALID_TOKEN] }
        },
        "Location": {
            "description": "The flow's `return_to` with the query parameters of `CallbackRedirectQuery` (`#/components/schemas/CallbackRedirectQuery`) appended.",
            "required": true,
            "schema": { "type": "string", "format": "uri" }
        },
        "ReferrerPolicy": {
            "description": "`no-referrer`: the callback URL (with its code and state) never leaks.",
            "schema": { "type": "string", "const": "no-referrer" }
        },
        "ContentSecurityPolicy": {
            "description": "A strict policy: no scripts, no external resources, no framing.",
            "schema": { "type": "string" }
        },
        "XFrameOptions": { "schema": { "type": "string", "const": "DENY" } },
        "XContentTypeOptions": { "schema": { "type": "string", "const": "nosniff" } }
    })
}

/// One shared problem response: its name (`#/components/responses/<name>`), description,
/// the codes it may carry, and the header it comes with, if any.
struct ProblemResponse {
    name: &'static str,
    description: &'static str,
    codes: &'static [ProblemCode],
    header: Option<ProblemHeader>,
}

/// The headers a problem response may carry besides `Cache-Control`.
#[derive(Clone, Copy)]
enum ProblemHeader {
    WwwAuthenticate,
    RetryAfter,
}

impl ProblemHeader {
    /// The header's name and its component in `#/components/headers/`.
    fn names(self) -> (&'static str, &'static str) {
        match self {
            Self::WwwAuthenticate => ("WWW-Authenticate", "WWWAuthenticate"),
            Self::RetryAfter => ("Retry-After", "RetryAfter"),
        }
    }
}

/// `None`, or `Some` of the named [`ProblemHeader`].
macro_rules! problem_header {
    () => {
        None
    };
    ($header:ident) => {
        Some(ProblemHeader::$header)
    };
}

/// Declares the shared problem responses once: [`PROBLEM_RESPONSES`] for the components,
/// and for each a marker type for `#[utoipa::path(responses((status = …, response = T)))]`
/// (a `$ref` to `#/components/responses/<name>`).
macro_rules! problem_responses {
    ($($name:ident [$($code:ident),+] $(with $header:ident)?: $description:literal;)+) => {
        const PROBLEM_RESPONSES: &[ProblemResponse] = &[$(ProblemResponse {
            name: stringify!($name),
            description: $description,
            codes: &[$(ProblemCode::$code),+],
            header: problem_header!($($header)?),
        }),+];

        $(
            #[doc = concat!("`#/components/responses/", stringify!($name), "`.")]
            pub struct $name;

            impl<'r> ToResponse<'r> for $name {
                fn response() -> (&'r str, RefOr<Response>) {
                    (stringify!($name), Response::new("").into())
                }
            }
        )+
    };
}

problem_responses! {
    InvalidRequest [InvalidRequest]:
        "`invalid_request`: malformed body or parameters (`detail` says what). Also for a tenant id that is not 1-64 characters of `A-Z a-z 0-9 _ -`.";
    Unauthenticated [Unauthenticated] with WwwAuthenticate:
        "`unauthenticated`: missing, malformed, expired or invalid bearer token.";
    Forbidden [Forbidden]:
        "`forbidden`: the token lacks the required scope, or its `tenant` claim names another tenant.";
    NotFound [NotFound]: "`not_found`.";
    NeedsReauthorization [NeedsReauthorization, AppCredentialsInvalid]:
        "`needs_reauthorization`: the connection's status is `needs_reauthorization` or `revoked` (possibly just now, because Salesforce refused the refresh token). Retrying will not help: a person must connect the org again (`POST /v1/tenants/{tenant}/connections/{id}/reauthorize`). Or `app_credentials_invalid`: Salesforce refused the tenant app's consumer key or secret on a refresh; the connection keeps its tokens and serves again, with no reconnect, once the app's credentials are replaced (`PUT /v1/tenants/{tenant}/salesforce-app`).";
    PayloadTooLarge [PayloadTooLarge]:
        "`payload_too_large`: the body exceeds `body_limit_bytes` (default 65536).";
    UnsupportedMediaType [UnsupportedMediaType]:
        "`unsupported_media_type`: a body without `Content-Type: application/json`.";
    UpstreamError [UpstreamError]:
        "`upstream_error`: Salesforce answered with an error that neither retrying nor reconnecting is expected to fix.";
    ServiceUnavailable [ServiceUnavailable] with RetryAfter:
        "`service_unavailable`: this service's database is unreachable, the refresh lock wait was exceeded, or its protective limits answered. Retry after `Retry-After`.";
    Unavailable [UpstreamUnavailable, ServiceUnavailable] with RetryAfter:
        "`upstream_unavailable` (Salesforce unreachable, 5xx or rate-limiting) or `service_unavailable` (this service's database is unreachable, another replica's refresh of the connection outlasted the wait, or the replica is shutting down). Retry after `Retry-After`.";
    InternalError [InternalError]:
        "`internal_error`: a bug or corrupt data; no detail (see the logs for the request id).";
    InvalidCredentials [InvalidCredentials]:
        "`invalid_credentials`: Salesforce refused the consumer key or secret; `field` names which. Nothing was stored.";
    MethodNotAllowed [MethodNotAllowed]:
        "`method_not_allowed`: the path exists, but not with this method.";
    RateLimited [RateLimited] with RetryAfter:
        "`rate_limited`: too many requests from this client address; retry after `Retry-After`.";
}

/// The responses of the set a set extends, or none.
macro_rules! base_responses {
    () => {
        std::collections::BTreeMap::new()
    };
    ($base:ident) => {
        <$base as utoipa::IntoResponses>::responses()
    };
}

/// Sets of problem responses many operations share, for `responses(…, Set)`: each maps
/// statuses to `$ref`s of [`PROBLEM_RESPONSES`], on top of the set it extends (`Base +`).
macro_rules! problem_response_sets {
    ($($(#[$doc:meta])* $set:ident: $($base:ident +)? [$($status:literal => $name:ident),* $(,)?];)*) => {$(
        $(#[$doc])*
        pub struct $set;

        impl utoipa::IntoResponses for $set {
            fn responses() -> std::collections::BTreeMap<String, RefOr<Response>> {
                let mut responses = base_responses!($($base)?);
                responses.extend([$(($status, <$name as ToResponse>::response().0)),*].map(
                    |(status, name): (&str, &str)| {
                        (status.to_owned(), RefOr::Ref(utoipa::openapi::Ref::from_response_name(name)))
                    },
                ));
                responses
            }
        }
    )*};
}

problem_response_sets! {
    /// What every bearer-authenticated operation may answer.
    BearerErrors: ["401" => Unauthenticated, "403" => Forbidden, "500" => InternalError];
    /// [`BearerErrors`] and the 400 of a malformed `{tenant}`.
    TenantErrors: BearerErrors + ["400" => InvalidRequest];
    /// [`TenantErrors`] and the 503 of a database out of reach.
    StoreErrors: TenantErrors + ["503" => ServiceUnavailable];
    /// [`StoreErrors`] and the 404 of an unknown app, connection or connection id.
    LookupErrors: StoreErrors + ["404" => NotFound];
    /// What a request body may get before the operation runs.
    BodyErrors: ["413" => PayloadTooLarge, "415" => UnsupportedMediaType];
    /// [`TenantErrors`] and what a deletion that revokes at Salesforce first may answer.
    RevocationErrors: TenantErrors + ["404" => NotFound, "502" => UpstreamError, "503" => Unavailable];
}

fn problem_responses() -> Value {
    let mut responses = Map::new();
    for response in PROBLEM_RESPONSES {
        let mut headers = json!({
            "Cache-Control": { "$ref": "#/components/headers/CacheControlNoStore" }
        });
        if let Some((name, component)) = response.header.map(ProblemHeader::names) {
            headers[name] = json!({ "$ref": format!("#/components/headers/{component}") });
        }
        let examples: Map<String, Value> = response
            .codes
            .iter()
            .map(|code| {
                let name = code.as_str();
                (
                    name.to_owned(),
                    json!({ "$ref": format!("#/components/examples/{name}") }),
                )
            })
            .collect();
        responses.insert(
            response.name.to_owned(),
            json!({
                "description": response.description,
                "headers": headers,
                "content": {
                    "application/problem+json": {
                        "schema": { "$ref": "#/components/schemas/Problem" },
                        "examples": examples
                    }
                }
            }),
        );
    }
    Value::Object(responses)
}

/// A realistic `detail` for each code's example (the texts the code writes).
fn example_detail(code: ProblemCode) -> Option<&'static str> {
    Some(match code {
        ProblemCode::InvalidRequest => {
            "unknown field `consumer_secrett`, expected one of `consumer_key`, `consumer_secret`, `login_url`"
        }
        ProblemCode::Unauthenticated => {
            "the bearer token is missing, malformed, expired or not signed for this service"
        }
        ProblemCode::Forbidden => "the token lacks the scope connections:read",
        ProblemCode::NotFound => "no such connection for this tenant",
        ProblemCode::NeedsReauthorization => {
            "a person must connect the Salesforce org again (start a new authorization): invalid_grant (HTTP 400): expired access/refresh token"
        }
        ProblemCode::AppCredentialsInvalid => {
            "Salesforce refused the tenant's consumer key or secret; the connection is intact: PUT the External Client App's correct credentials and it serves again with no reauthorization (invalid_client (HTTP 400): invalid client credentials)"
        }
        ProblemCode::PayloadTooLarge => "the request body is larger than the configured limit",
        ProblemCode::UnsupportedMediaType => {
            "the body must be JSON with Content-Type: application/json"
        }
        ProblemCode::InvalidCredentials => {
            "Salesforce knows the consumer key but refused the consumer secret (invalid_client)."
        }
        ProblemCode::RateLimited => "too many requests from this address; retry later",
        ProblemCode::UpstreamError => "unsupported_response_type (HTTP 400)",
        ProblemCode::UpstreamUnavailable => "salesforce unavailable: HTTP 503",
        ProblemCode::ServiceUnavailable => {
            "the service cannot reach its database right now; retry later"
        }
        ProblemCode::MethodNotAllowed | ProblemCode::InternalError => return None,
    })
}

fn problem_examples() -> Value {
    let mut examples = Map::new();
    for code in ProblemCode::ALL {
        let mut value = json!({
            "type": "about:blank",
            "title": code.title(),
            "status": code.status().as_u16(),
            "code": code.as_str(),
        });
        if let Some(detail) = example_detail(code) {
            value["detail"] = detail.into();
        }
        if code == ProblemCode::InvalidCredentials {
            value["field"] = "consumer_secret".into();
        }
        examples.insert(
            code.as_str().to_owned(),
            json!({
                "summary": format!("{} {}", code.status().as_u16(), code.as_str()),
                "value": value
            }),
        );
    }
    Value::Object(examples)
}

fn problem_schema() -> Value {
    let list: Vec<String> = ProblemCode::ALL
        .iter()
        .map(|c| {
            format!(
                "- `{}` ({}): {}",
                c.as_str(),
                c.status().as_u16(),
                c.title()
            )
        })
        .collect();
    json!({
        "type": "object",
        "description": format!("An RFC 9457 problem document. Branch on `code`.\n\n{}", list.join("\n")),
        "required": ["type", "title", "status", "code"],
        "properties": {
            "type": { "type": "string", "const": "about:blank", "description": "Always `about:blank`: the `code` identifies the problem." },
            "title": { "type": "string", "description": "Short human-readable summary, fixed per `code`." },
            "status": { "type": "integer", "description": "The HTTP status code, repeated." },
            "code": {
                "type": "string",
                "enum": ProblemCode::ALL.iter().map(|c| c.as_str()).collect::<Vec<_>>(),
                "description": "Stable, machine-readable problem code."
            },
            "detail": { "type": "string", "description": "Human-readable explanation of this occurrence (absent on 405 and 500). Never contains a secret." },
            "field": {
                "type": "string",
                "enum": ["consumer_key", "consumer_secret"],
                "description": "With `invalid_credentials` only: the request field Salesforce refused (an RFC 9457 extension member)."
            }
        }
    })
}

/// `{tenant}` of the tenant routes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct TenantPath {
    /// The tenant id (1-64 characters of `A-Z a-z 0-9 _ -`; anything else gets 400).
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub tenant: String,
}

/// `{tenant}` and `{id}` of the connection routes.
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Path)]
pub struct ConnectionPath {
    /// The tenant id (1-64 characters of `A-Z a-z 0-9 _ -`; anything else gets 400).
    #[param(pattern = r"^[A-Za-z0-9_-]{1,64}$")]
    pub tenant: String,
    /// The connection id (a malformed one gets 404).
    #[param(format = Uuid)]
    pub id: String,
}

/// `?force` of the deletions ([`super::extract::Force`]).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub struct ForceQuery {
    /// `true` (or `1`): delete even if revocation at Salesforce fails. Any other value means false.
    #[param(default = false)]
    pub force: Option<bool>,
}
