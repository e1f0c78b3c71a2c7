//! `/docs`: a small page that renders `/openapi.json` in the browser, with no asset from
//! another origin (the page, its script and its style are compiled into the binary). Its
//! Content-Security-Policy allows only this origin, so nothing else can be loaded even by
//! mistake (CSP Level 3, <https://www.w3.org/TR/CSP3/>).
//!
//! A page of our own rather than Swagger UI: Swagger UI's crate unpacks a multi-megabyte
//! bundle at build time and ships an interactive client nobody here needs; reading the
//! operations, parameters, schemas and problem codes is what the page is for.

use axum::extract::Path;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};

use super::problem::Problem;

const PAGE: &str = include_str!("docs/index.html");
const SCRIPT: &str = include_str!("docs/docs.js");
const STYLE: &str = include_str!("docs/docs.css");

/// Same origin only: the script, the style and the document (`connect-src`); no framing.
const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'";

fn answer(content_type: &'static str, body: &'static str) -> Response {
    let headers = [
        (header::CONTENT_TYPE, content_type),
        (header::CONTENT_SECURITY_POLICY, CSP),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (StatusCode::OK, headers, body).into_response()
}

/// `GET /docs`.
pub async fn page() -> Response {
    answer("text/html; charset=utf-8", PAGE)
}

/// `GET /docs/docs.js` and `GET /docs/docs.css`.
pub async fn asset(Path(name): Path<String>) -> Response {
    match name.as_str() {
        "docs.js" => answer("text/javascript; charset=utf-8", SCRIPT),
        "docs.css" => answer("text/css; charset=utf-8", STYLE),
        _ => Problem::not_found("no such asset").into_response(),
    }
}
