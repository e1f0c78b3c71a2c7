//! The small, self-contained HTML pages the callback renders for people: no scripts, no
//! external resources, a strict Content-Security-Policy, never cached, never leaking the
//! callback URL through `Referer`.

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use uuid::Uuid;

use crate::broker::flow::{FlowError, FlowErrorCode, StateProblem};

const CSP: &str = "default-src 'none'; style-src 'unsafe-inline'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

/// Headers every callback answer carries, pages and redirects alike.
pub fn protective_headers(headers: &mut HeaderMap) {
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
}

fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

fn page(status: StatusCode, title: &str, body: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{title}</title><style>body{{font-family:system-ui,sans-serif;max-width:36rem;\
         margin:4rem auto;padding:0 1rem;line-height:1.5;color:#222}}h1{{font-size:1.4rem}}\
         code{{background:#f3f3f3;padding:0 .2rem}}</style></head><body><h1>{title}</h1>{body}</body></html>",
        title = escape(title),
    );
    let mut response = (status, Html(html)).into_response();
    protective_headers(response.headers_mut());
    response
}

pub fn connected(id: Uuid) -> Response {
    page(
        StatusCode::OK,
        "Salesforce connected",
        &format!(
            "<p>Your Salesforce org is connected to Valo. You can close this window.</p>\
             <p>Connection: <code>{id}</code></p>"
        ),
    )
}

pub fn flow_failed(error: &FlowError) -> Response {
    // Our own or Salesforce's trouble is not the person's mistake.
    let status = match error.code {
        FlowErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        FlowErrorCode::UpstreamUnavailable | FlowErrorCode::InvalidSignature => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::BAD_REQUEST,
    };
    page(
        status,
        "Salesforce connection failed",
        &format!(
            "<p>{}</p><p>Error code: <code>{}</code></p>",
            escape(&error.description),
            escape(error.code.as_str())
        ),
    )
}

pub fn invalid_state(problem: StateProblem) -> Response {
    let why = match problem {
        StateProblem::Missing | StateProblem::Malformed => "The link is incomplete or damaged.",
        StateProblem::Unknown => "This sign-in was not started here, or it was cancelled.",
        StateProblem::Replayed => "This sign-in link was already used.",
        StateProblem::Expired => "This sign-in took too long and expired.",
    };
    page(
        StatusCode::BAD_REQUEST,
        "This sign-in link is not valid",
        &format!("<p>{why}</p><p>Start the Salesforce connection again from Valo.</p>"),
    )
}

pub fn internal_error() -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "<p>Start the Salesforce connection again from Valo.</p>",
    )
}

#[cfg(test)]
mod tests {
    use super::escape;

    #[test]
    fn escapes_markup() {
        assert_eq!(
            escape("<a href=\"x\">&'"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&#39;"
        );
    }
}
