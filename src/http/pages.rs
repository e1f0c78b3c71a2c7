//! The small, self-contained HTML pages the callback renders for people: no scripts, no
//! external resources, a strict Content-Security-Policy, never cached, never leaking the
//! callback URL through `Referer`. Accessible: a language, one `h1` and `h2` sections,
//! contrast of at least 7:1 in light and dark colour schemes, readable at 320 px. Every
//! page shows a support reference (the request id). The words of the error pages come
//! from [`super::guidance`].

use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{Html, IntoResponse, Response};
use uuid::Uuid;

use super::guidance;
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

/// Light and dark colours both keep text at a contrast of at least 7:1 (WCAG AAA); long
/// codes and URLs wrap instead of widening the page past a 320 px screen.
const STYLE: &str = "body{font-family:system-ui,-apple-system,\"Segoe UI\",sans-serif;\
max-width:40rem;margin:2rem auto;padding:0 1rem;line-height:1.5;color:#1a1a1a;\
background:#fff;overflow-wrap:anywhere}h1{font-size:1.5rem;line-height:1.25}\
h2{font-size:1.1rem;margin-top:1.5rem}li{margin:.4rem 0}\
code{font-family:ui-monospace,monospace;background:#eee;padding:0 .25rem;border-radius:3px}\
.ref{margin-top:2rem;padding-top:1rem;border-top:1px solid #767676;font-size:.95rem}\
@media (prefers-color-scheme:dark){body{color:#ededed;background:#121212}\
code{background:#2e2e2e}.ref{border-top-color:#8f8f8f}}";

/// Who to quote when asking Valo support: the request id of this answer.
fn support_reference(request_id: &str) -> String {
    // The id may come from the client (`x-request-id` is kept when sent): bound it and
    // escape it like any other text.
    let id: String = request_id.chars().take(64).collect();
    if id.is_empty() {
        String::new()
    } else {
        format!(
            "<p class=\"ref\">Support reference: <code>{}</code></p>",
            escape(&id)
        )
    }
}

fn page(status: StatusCode, title: &str, body: &str, request_id: &str) -> Response {
    let html = format!(
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <meta name=\"color-scheme\" content=\"light dark\">\
         <title>{title}</title><style>{STYLE}</style></head>\
         <body><main><h1>{title}</h1>{body}{reference}</main></body></html>",
        title = escape(title),
        reference = support_reference(request_id),
    );
    let mut response = (status, Html(html)).into_response();
    protective_headers(response.headers_mut());
    response
}

pub fn connected(id: Uuid, request_id: &str) -> Response {
    page(
        StatusCode::OK,
        "Salesforce connected",
        &format!(
            "<p>Your Salesforce org is connected to Valo. You can close this window.</p>\
             <p>Connection: <code>{id}</code></p>"
        ),
        request_id,
    )
}

/// The page of a failed flow: what happened and what to change where
/// ([`guidance::for_failure`]), the error code, and the support reference.
pub fn flow_failed(error: &FlowError, callback_url: &str, request_id: &str) -> Response {
    // Our own or Salesforce's trouble is not the person's mistake.
    let status = match error.code {
        FlowErrorCode::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
        FlowErrorCode::UpstreamUnavailable | FlowErrorCode::InvalidSignature => {
            StatusCode::BAD_GATEWAY
        }
        _ => StatusCode::BAD_REQUEST,
    };
    let guidance = guidance::for_failure(
        error.reason,
        &guidance::Context {
            callback_url,
            description: &error.description,
        },
    );
    let steps: String = guidance
        .steps
        .iter()
        .map(|step| format!("<li>{}</li>", escape(step)))
        .collect();
    page(
        status,
        guidance.title,
        &format!(
            "<h2>What happened</h2><p>{happened}</p>\
             <h2>How to fix it</h2><ol>{steps}</ol>\
             <p>Error code: <code>{code}</code></p>",
            happened = escape(&guidance.what_happened),
            code = escape(error.code.as_str()),
        ),
        request_id,
    )
}

pub fn invalid_state(problem: StateProblem, request_id: &str) -> Response {
    let why = match problem {
        StateProblem::Missing | StateProblem::Malformed => "The link is incomplete or damaged.",
        StateProblem::Unknown => "This sign-in was not started here, or it was cancelled.",
        StateProblem::Replayed => "This sign-in link was already used.",
        StateProblem::Expired => "This sign-in took too long and expired.",
    };
    page(
        StatusCode::BAD_REQUEST,
        "This sign-in link is not valid",
        &format!(
            "<h2>What happened</h2><p>{why}</p>\
             <h2>How to fix it</h2><ol><li>Go back to Valo and start the Salesforce connection \
             again; use the newest link only once.</li></ol>"
        ),
        request_id,
    )
}

pub fn internal_error(request_id: &str) -> Response {
    page(
        StatusCode::INTERNAL_SERVER_ERROR,
        "Something went wrong",
        "<h2>How to fix it</h2><ol><li>Go back to Valo and start the Salesforce connection \
         again.</li><li>If it keeps failing, contact Valo support with the support reference \
         below.</li></ol>",
        request_id,
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
