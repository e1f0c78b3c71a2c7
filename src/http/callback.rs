//! `GET /oauth2/v1/callback/salesforce`: where Salesforce sends the person's browser back
//! (RFC 6749 §4.1.2). Success and Salesforce-side errors redirect (303) to the flow's
//! `return_to`, or render a small page without one. A missing, unknown, expired or replayed
//! state gets an error page and never a redirect: without a valid state there is no
//! trustworthy destination.

use std::collections::HashMap;

use axum::Router;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use secrecy::SecretString;
use url::Url;
use utoipa::IntoParams;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

use super::AppState;
use super::pages;
use crate::broker::flow::{CallbackParams, FlowErrorCode, StateProblem};
use crate::config::CALLBACK_PATH;
use crate::metrics::{CallbackOutcome, Event};

pub fn router() -> Router<AppState> {
    routes().into()
}

/// The callback with its OpenAPI operation.
pub(super) fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(callback))
}

/// The query Salesforce sends the browser back with (RFC 6749 §4.1.2 and §4.1.2.1).
#[derive(IntoParams)]
#[into_params(parameter_in = Query)]
#[allow(dead_code)] // Documentation only: the handler reads the query as a map.
struct CallbackQuery {
    /// The flow's state (43 characters, base64url).
    state: Option<String>,
    /// The authorization code (on success).
    code: Option<String>,
    /// Salesforce's error code (on failure).
    error: Option<String>,
    /// Salesforce's error description.
    error_description: Option<String>,
}

/// Salesforce's OAuth redirect (browsers)
///
/// The redirect URI of every tenant's External Client App (RFC 6749 §4.1.2). Not for API
/// clients. The state is consumed first (single use). With a valid state the flow ends in a
/// 303 redirect to its `return_to` — `status=connected&connection_id=…` on success,
/// `status=error&error=…&error_description=…` on failure (see `CallbackError` for the `error`
/// values) — or, without `return_to`, in an HTML page. A missing, malformed, unknown, expired
/// or already used state gets an HTML error page, never a redirect. Every answer carries the
/// pages' protective headers ([`pages::protective_headers`]).
#[utoipa::path(
    get, path = CALLBACK_PATH, operation_id = "salesforceCallback", tag = "callback",
    params(CallbackQuery),
    responses(
        (status = 200, description = "Connected, and the flow had no `return_to`: a page naming the connection id.", body = String, content_type = "text/html"),
        (status = 303, description = "The flow had a `return_to`: redirect there with the outcome in the query (`CallbackRedirectQuery`)."),
        (status = 400, description = "An HTML error page: the state is missing, malformed, unknown, expired or already used; or the flow failed for the person's or Salesforce's reason (e.g. `access_denied`, `exchange_failed`, `no_refresh_token`) and had no `return_to`.", body = String, content_type = "text/html"),
        (status = 429, response = super::openapi::RateLimited),
        (status = 500, description = "An HTML error page: the redirect could not be built.", body = String, content_type = "text/html"),
        (status = 502, description = "An HTML error page: the flow had no `return_to` and Salesforce was unavailable (`upstream_unavailable`) or its answer failed verification (`invalid_signature`).", body = String, content_type = "text/html"),
        (status = 503, description = "An HTML error page: the flow had no `return_to`, or the state could not be checked, because the service's database failed (`service_unavailable`).", body = String, content_type = "text/html"),
    ),
)]

async fn callback(
    State(state): State<AppState>,
    headers: HeaderMap,
    query: Result<Query<HashMap<String, String>>, axum::extract::rejection::QueryRejection>,
) -> Response {
    // Set by the edge before any handler runs; shown on the pages as the support reference.
    let request_id = headers
        .get(&super::edge::REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_owned();
    // Query decodes percent-encoding exactly once: Salesforce's codes end in "%3D%3D".
    let Ok(Query(mut query)) = query else {
        state
            .broker
            .metrics()
            .callback(CallbackOutcome::InvalidState);
        return pages::invalid_state(StateProblem::Malformed, &request_id);
    };
    let params = CallbackParams {
        state: query.remove("state"),
        code: query.remove("code").map(SecretString::from),
        error: query.remove("error"),
        error_description: query.remove("error_description"),
    };
    let outcome = match state.broker.complete_authorization(params).await {
        Ok(outcome) => outcome,
        Err(problem) => {
            tracing::warn!(problem = ?problem, "callback with an unusable state");
            state
                .broker
                .metrics()
                .callback(CallbackOutcome::InvalidState);
            return pages::invalid_state(problem, &request_id);
        }
    };
    let metrics = state.broker.metrics();
    match &outcome.result {
        Ok(_) => metrics.callback(CallbackOutcome::Connected),
        Err(e) => {
            if e.code == FlowErrorCode::InvalidSignature {
                metrics.count(Event::InvalidSignature);
            }
            metrics.callback(CallbackOutcome::Error);
        }
    }
    match outcome
        .return_to
        .as_deref()
        .and_then(|r| Url::parse(r).ok())
    {
        Some(mut url) => {
            {
                let mut pairs = url.query_pairs_mut();
                match &outcome.result {
                    Ok(id) => {
                        pairs.append_pair("status", "connected");
                        pairs.append_pair("connection_id", &id.to_string());
                    }
                    Err(e) => {
                        pairs.append_pair("status", "error");
                        pairs.append_pair("error", e.code.as_str());
                        pairs.append_pair("error_description", &e.description);
                    }
                }
            }
            redirect(&url, &request_id)
        }
        None => match &outcome.result {
            Ok(id) => pages::connected(*id, &request_id),
            Err(e) => pages::flow_failed(e, &state.broker.callback_url(), &request_id),
        },
    }
}

fn redirect(url: &Url, request_id: &str) -> Response {
    let Ok(location) = HeaderValue::from_str(url.as_str()) else {
        return pages::internal_error(request_id);
    };
    let mut response = StatusCode::SEE_OTHER.into_response();
    let headers = response.headers_mut();
    headers.insert(header::LOCATION, location);
    pages::protective_headers(headers);
    response
}
