//! The fake's HTTP layer (axum): Salesforce's paths `/services/oauth2/authorize`, `token`,
//! `introspect`, `revoke`, the interactive consent page, and a stand-in REST API resource
//! (`/services/data/v62.0/`). Faults and latency are applied here; the protocol itself is
//! in `state.rs`.

use std::collections::HashMap;
use std::sync::Arc;

use axum::Router;
use axum::body::Bytes;
use axum::extract::{RawQuery, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use serde_json::json;

use super::state::{AuthorizeRequest, EXPIRED_TOKEN, Issued, OAuthError, signature};
use super::{Approval, Endpoint, Fault, Shared};

/// Where the interactive consent page posts its decision (Salesforce's own consent page
/// lives at this path too).
pub(crate) const DECISION_PATH: &str = "/setup/secur/RemoteAccessAuthorizationPage.apexp";

pub(crate) fn router(shared: Arc<Shared>) -> Router {
    Router::new()
        .route("/services/oauth2/authorize", get(authorize))
        .route(DECISION_PATH, post(decision))
        .route("/services/oauth2/token", post(token))
        .route("/services/oauth2/introspect", post(introspect))
        .route("/services/oauth2/revoke", post(revoke))
        .route("/services/data/v62.0/", get(data_api))
        .with_state(shared)
}

/// Parses a form-urlencoded string; the first occurrence of a name wins.
fn parse_form(input: &[u8]) -> HashMap<String, String> {
    let mut map = HashMap::new();
    for (k, v) in url::form_urlencoded::parse(input) {
        map.entry(k.into_owned()).or_insert_with(|| v.into_owned());
    }
    map
}

fn html_escape(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

fn json_response(status: StatusCode, body: serde_json::Value) -> Response {
    (
        status,
        [(header::CONTENT_TYPE, "application/json;charset=UTF-8")],
        body.to_string(),
    )
        .into_response()
}

fn oauth_error_response(status: u16, error: &str, description: &str) -> Response {
    json_response(
        StatusCode::from_u16(status).unwrap_or(StatusCode::BAD_REQUEST),
        json!({ "error": error, "error_description": description }),
    )
}

impl IntoResponse for OAuthError {
    fn into_response(self) -> Response {
        oauth_error_response(self.status, self.error, self.description)
    }
}

/// Salesforce answers authorize errors it cannot redirect (unknown client, wrong callback)
/// with an HTML page, never with a redirect.
fn authorize_error_page(error: &str, description: &str) -> Response {
    let body = format!(
        "<!DOCTYPE html><html><head><title>Remote Access Authorization Error</title></head>\
         <body><h1>Remote Access Authorization Error</h1>\
         <p id=\"error\">error={}&amp;error_description={}</p></body></html>",
        html_escape(error),
        html_escape(description)
    );
    (StatusCode::BAD_REQUEST, Html(body)).into_response()
}

/// A 302 to the app's callback with extra query parameters.
fn redirect_to(redirect_uri: &str, params: &[(&str, &str)]) -> Response {
    let Ok(mut url) = url::Url::parse(redirect_uri) else {
        return authorize_error_page("redirect_uri_mismatch", "redirect_uri is not a valid URL");
    };
    {
        let mut query = url.query_pairs_mut();
        for (k, v) in params {
            query.append_pair(k, v);
        }
    }
    (StatusCode::FOUND, [(header::LOCATION, url.to_string())]).into_response()
}

fn redirect_error(request: &AuthorizeRequest, error: &str, description: &str) -> Response {
    let mut params = vec![("error", error), ("error_description", description)];
    if let Some(state) = &request.state {
        params.push(("state", state));
    }
    redirect_to(&request.redirect_uri, &params)
}

/// Approves: issues a code as the current user and redirects with `code` and `state`.
fn redirect_with_code(shared: &Shared, request: AuthorizeRequest) -> Response {
    let redirect_uri = request.redirect_uri.clone();
    let state = request.state.clone();
    let code = shared.lock().issue_code(request);
    let mut params = vec![("code", code.as_str())];
    if let Some(state) = &state {
        params.push(("state", state));
    }
    redirect_to(&redirect_uri, &params)
}

/// `GET /services/oauth2/authorize` (web-server flow, PKCE required).
async fn authorize(State(shared): State<Arc<Shared>>, RawQuery(query): RawQuery) -> Response {
    let params = parse_form(query.unwrap_or_default().as_bytes());
    let client_id = params.get("client_id").map(String::as_str).unwrap_or("");
    let registered = shared.lock().redirect_uri_of(client_id).map(str::to_owned);
    let Some(registered) = registered else {
        return authorize_error_page("invalid_client_id", "client identifier invalid");
    };
    if params.get("redirect_uri") != Some(&registered) {
        return authorize_error_page(
            "redirect_uri_mismatch",
            "redirect_uri must match configuration",
        );
    }
    let request = AuthorizeRequest {
        client_id: client_id.to_owned(),
        redirect_uri: registered,
        code_challenge: params.get("code_challenge").cloned().unwrap_or_default(),
        // Salesforce grants the requested scopes (within the app's selection).
        scope: params
            .get("scope")
            .cloned()
            .unwrap_or_else(|| "api refresh_token".to_owned()),
        state: params.get("state").cloned(),
    };
    if params.get("response_type").map(String::as_str) != Some("code") {
        return redirect_error(
            &request,
            "unsupported_response_type",
            "response type not supported",
        );
    }
    // "Require Proof Key for Code Exchange (PKCE)" is on for ECAs.
    if request.code_challenge.is_empty() {
        return redirect_error(
            &request,
            "invalid_request",
            "missing required code challenge",
        );
    }
    if params.get("code_challenge_method").map(String::as_str) != Some("S256") {
        return redirect_error(&request, "invalid_request", "invalid code challenge method");
    }
    let (approval, interactive) = {
        let state = shared.lock();
        (state.approval.clone(), state.options.interactive)
    };
    match approval {
        Approval::Deny => {
            redirect_error(&request, "access_denied", "end-user denied authorization")
        }
        Approval::Error { error, description } => redirect_error(&request, &error, &description),
        Approval::Approve if interactive => consent_page(&shared, request),
        Approval::Approve => redirect_with_code(&shared, request),
    }
}

fn consent_page(shared: &Shared, request: AuthorizeRequest) -> Response {
    let request_id = uuid::Uuid::new_v4().to_string();
    let body = {
        let mut state = shared.lock();
        let body = format!(
            "<!DOCTYPE html><html><head><title>Allow Access?</title></head><body>\
             <h1>Fake Salesforce: Allow Access?</h1>\
             <p>The app <b>{client}</b> wants to access <b>{user}</b> (org {org}) with scopes \
             <code>{scope}</code>.</p>\
             <form method=\"post\" action=\"{action}\">\
             <input type=\"hidden\" name=\"request_id\" value=\"{request_id}\">\
             <button type=\"submit\" name=\"decision\" value=\"allow\">Allow</button> \
             <button type=\"submit\" name=\"decision\" value=\"deny\">Deny</button>\
             </form></body></html>",
            client = html_escape(&request.client_id),
            user = html_escape(&state.user.username),
            org = html_escape(&state.user.org_id),
            scope = html_escape(&request.scope),
            action = DECISION_PATH,
        );
        state.pending.insert(request_id, request);
        body
    };
    Html(body).into_response()
}

/// Extracts the pending request id from a consent page (used by `approve`).
pub(crate) fn consent_request_id(page: &str) -> Option<String> {
    let marker = "name=\"request_id\" value=\"";
    let start = page.find(marker)? + marker.len();
    let len = page[start..].find('"')?;
    Some(page[start..start + len].to_owned())
}

/// `POST` of the consent page: Allow issues a code, Deny redirects with `access_denied`.
async fn decision(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    let form = parse_form(&body);
    let request_id = form.get("request_id").map(String::as_str).unwrap_or("");
    let Some(request) = shared.lock().pending.remove(request_id) else {
        return authorize_error_page("invalid_request", "unknown or already answered request");
    };
    if form.get("decision").map(String::as_str) == Some("allow") {
        redirect_with_code(&shared, request)
    } else {
        redirect_error(&request, "access_denied", "end-user denied authorization")
    }
}

/// Flags of the faults that alter a normal answer.
#[derive(Default)]
struct Alterations {
    bad_signature: bool,
    no_refresh_token: bool,
}

/// Applies the configured latency and the next injected fault of `endpoint`. `Err` is the
/// faulted response; the request must then not be processed.
async fn apply_faults(shared: &Shared, endpoint: Endpoint) -> Result<Alterations, Response> {
    let (fault, latency) = {
        let mut state = shared.lock();
        (state.next_fault(endpoint), state.latency)
    };
    if !latency.is_zero() {
        tokio::time::sleep(latency).await;
    }
    let mut alterations = Alterations::default();
    match fault {
        None => {}
        Some(Fault::Status(status)) => {
            let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
            let body = format!(
                "<html><head><title>{status}</title></head><body><h1>{status}</h1>\
                 <p>Salesforce is temporarily unavailable.</p></body></html>"
            );
            return Err((status, Html(body)).into_response());
        }
        Some(Fault::Hang(duration)) => tokio::time::sleep(duration).await,
        Some(Fault::Lost(duration)) => {
            tokio::time::sleep(duration).await;
            return Err((
                StatusCode::GATEWAY_TIMEOUT,
                Html("<html><body><h1>504 Gateway Timeout</h1></body></html>"),
            )
                .into_response());
        }
        Some(Fault::NonJson) => {
            return Err(Html(
                "<html><body><p>Maintenance in progress. Please try again later.</p></body></html>",
            )
            .into_response());
        }
        Some(Fault::OAuthError {
            status,
            error,
            description,
        }) => return Err(oauth_error_response(status, &error, &description)),
        Some(Fault::BadSignature) => alterations.bad_signature = true,
        Some(Fault::NoRefreshToken) => alterations.no_refresh_token = true,
    }
    Ok(alterations)
}

/// Runs a handler body in its own task, so that a request whose client gave up (timeout)
/// is still processed to the end, as by a real server.
async fn detached<F>(future: F) -> Response
where
    F: Future<Output = Response> + Send + 'static,
{
    tokio::spawn(future)
        .await
        .unwrap_or_else(|_| StatusCode::INTERNAL_SERVER_ERROR.into_response())
}

fn is_form(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| {
            v.trim()
                .to_ascii_lowercase()
                .starts_with("application/x-www-form-urlencoded")
        })
}

fn has_basic_auth(headers: &HeaderMap) -> bool {
    headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.len() >= 6 && v[..6].eq_ignore_ascii_case("basic "))
}

/// Client authentication as the token and introspect endpoints do it.
fn authenticate(
    shared: &Shared,
    form: &HashMap<String, String>,
    headers: &HeaderMap,
) -> Result<(String, String), OAuthError> {
    let client_id = form.get("client_id").map(String::as_str);
    let secret = shared.lock().authenticate_client(
        client_id,
        form.get("client_secret").map(String::as_str),
        has_basic_auth(headers),
    )?;
    Ok((client_id.unwrap_or_default().to_owned(), secret))
}

/// `POST /services/oauth2/token`.
async fn token(State(shared): State<Arc<Shared>>, headers: HeaderMap, body: Bytes) -> Response {
    shared.lock().counters.token_requests += 1;
    detached(async move {
        let alterations = match apply_faults(&shared, Endpoint::Token).await {
            Ok(a) => a,
            Err(response) => return response,
        };
        match token_grant(&shared, &headers, &body, &alterations) {
            Ok(issued) => token_response(&shared.base_url, issued, alterations.bad_signature),
            Err(error) => error.into_response(),
        }
    })
    .await
}

fn token_grant(
    shared: &Shared,
    headers: &HeaderMap,
    body: &[u8],
    alterations: &Alterations,
) -> Result<Issued, OAuthError> {
    if !is_form(headers) {
        return Err(OAuthError {
            status: 400,
            error: "invalid_request",
            description: "content type must be application/x-www-form-urlencoded",
        });
    }
    let form = parse_form(body);
    let grant_type = form.get("grant_type").map(String::as_str).unwrap_or("");
    if grant_type != "authorization_code" && grant_type != "refresh_token" {
        return Err(OAuthError {
            status: 400,
            error: "unsupported_grant_type",
            description: "grant type not supported",
        });
    }
    let (client_id, secret) = authenticate(shared, &form, headers)?;
    let issue_refresh = !alterations.no_refresh_token;
    let mut state = shared.lock();
    if grant_type == "authorization_code" {
        state.exchange_code(
            &client_id,
            secret,
            form.get("code").map(String::as_str).unwrap_or(""),
            form.get("redirect_uri").map(String::as_str),
            form.get("code_verifier").map(String::as_str),
            issue_refresh,
        )
    } else {
        let Some(refresh_token) = form.get("refresh_token") else {
            return Err(EXPIRED_TOKEN);
        };
        state.refresh(&client_id, secret, refresh_token, issue_refresh)
    }
}

/// The token response: no `expires_in`; `issued_at` in milliseconds as a string;
/// `signature` = base64(HMAC-SHA256(consumer secret, id + issued_at)).
fn token_response(base_url: &str, issued: Issued, bad_signature: bool) -> Response {
    let id = format!("{base_url}/id/{}/{}", issued.org_id, issued.user_id);
    let issued_at = issued.issued_at_ms.to_string();
    let key = if bad_signature {
        format!("not-{}", issued.secret)
    } else {
        issued.secret
    };
    let mut body = json!({
        "access_token": issued.access_token,
        "signature": signature(key.as_bytes(), &id, &issued_at),
        "scope": issued.scope,
        "instance_url": base_url,
        "id": id,
        "token_type": "Bearer",
        "issued_at": issued_at,
    });
    if let (Some(refresh), Some(object)) = (issued.refresh_token, body.as_object_mut()) {
        object.insert("refresh_token".to_owned(), refresh.into());
    }
    json_response(StatusCode::OK, body)
}

/// `POST /services/oauth2/introspect` (client authentication required).
async fn introspect(
    State(shared): State<Arc<Shared>>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    shared.lock().counters.introspections += 1;
    detached(async move {
        if let Err(response) = apply_faults(&shared, Endpoint::Introspect).await {
            return response;
        }
        let form = parse_form(&body);
        let client_id = match authenticate(&shared, &form, &headers) {
            Ok((client_id, _)) => client_id,
            Err(error) => return error.into_response(),
        };
        let token = form.get("token").map(String::as_str).unwrap_or("");
        let answer = shared.lock().introspect(&client_id, token);
        match answer {
            Some(i) => json_response(
                StatusCode::OK,
                json!({
                    "active": true,
                    "scope": i.scope,
                    "client_id": i.client_id,
                    "username": i.username,
                    "sub": i.sub,
                    "token_type": "access_token",
                    "exp": i.exp,
                    "iat": i.iat,
                }),
            ),
            None => json_response(StatusCode::OK, json!({ "active": false })),
        }
    })
    .await
}

/// `POST /services/oauth2/revoke` (no client authentication).
async fn revoke(State(shared): State<Arc<Shared>>, body: Bytes) -> Response {
    detached(async move {
        if let Err(response) = apply_faults(&shared, Endpoint::Revoke).await {
            return response;
        }
        let form = parse_form(&body);
        let token = form.get("token").map(String::as_str).unwrap_or("");
        if shared.lock().revoke(token) {
            StatusCode::OK.into_response()
        } else {
            oauth_error_response(400, "invalid_token", "invalid token")
        }
    })
    .await
}

/// `GET /services/data/v62.0/`: a stand-in REST API resource needing a live session.
async fn data_api(State(shared): State<Arc<Shared>>, headers: HeaderMap) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| {
            v.strip_prefix("Bearer ")
                .or_else(|| v.strip_prefix("OAuth "))
        })
        .unwrap_or("");
    if shared.lock().access_active(token) {
        json_response(
            StatusCode::OK,
            json!({
                "sobjects": "/services/data/v62.0/sobjects",
                "query": "/services/data/v62.0/query",
                "limits": "/services/data/v62.0/limits",
            }),
        )
    } else {
        json_response(
            StatusCode::UNAUTHORIZED,
            json!([{ "message": "Session expired or invalid", "errorCode": "INVALID_SESSION_ID" }]),
        )
    }
}
