//! How Salesforce's failure answers become [`SalesforceError`]s: OAuth error bodies from the
//! token endpoint ([`token_error`]) and from introspect/revoke ([`error_from_body`]), bodies
//! that are not OAuth errors at all, and the warning logged for every failed call. Nothing
//! here echoes a response body or a value from one.
//!
//! Not here: the error type and what the caller should do about each error
//! ([`ErrorClass`](crate::salesforce::ErrorClass), `salesforce/error.rs`); transport
//! failures become errors in `transport`, failed token-response checks in `token`.

use oauth2::RequestTokenError;
use oauth2::basic::BasicErrorResponse;
use serde::Deserialize;

use super::transport::Transport;
use crate::salesforce::SalesforceError;
use crate::salesforce::error::sanitize;

/// Classifies an `oauth2` token-request error (`docs/salesforce.md`, "Token-endpoint errors").
pub(super) fn token_error(
    e: RequestTokenError<Transport, BasicErrorResponse>,
    status: u16,
) -> SalesforceError {
    match e {
        RequestTokenError::ServerResponse(r) => SalesforceError::Refused {
            status,
            error: sanitize(r.error().as_ref()),
            description: r.error_description().map(|d| sanitize(d)),
        },
        RequestTokenError::Request(t) => t.into(),
        RequestTokenError::Parse(err, body) => {
            if status == 200 {
                if serde_json::from_slice::<serde_json::Value>(&body).is_ok() {
                    SalesforceError::InvalidResponse(describe_shape_error(
                        &err.inner().to_string(),
                        &err.path().to_string(),
                    ))
                } else {
                    SalesforceError::Unavailable("HTTP 200 with a non-JSON body".into())
                }
            } else {
                non_conforming_body(status, &body, "without an OAuth error body")
            }
        }
        // Empty body or a non-JSON content type.
        RequestTokenError::Other(_) => {
            SalesforceError::Unavailable(format!("HTTP {status} without a JSON body"))
        }
    }
}

/// A non-200 answer from introspect/revoke: an OAuth error body → `Refused`, else classified
/// by whether the body is JSON at all.
pub(super) fn error_from_body(status: u16, body: &[u8]) -> SalesforceError {
    #[derive(Deserialize)]
    struct OAuthError {
        error: String,
        #[serde(default)]
        error_description: Option<String>,
    }
    match serde_json::from_slice::<OAuthError>(body) {
        Ok(e) => SalesforceError::Refused {
            status,
            error: sanitize(&e.error),
            description: e.error_description.as_deref().map(sanitize),
        },
        Err(_) => non_conforming_body(status, body, "without an OAuth error body"),
    }
}

/// JSON of the wrong shape is a protocol violation; non-JSON (HTML error pages, maintenance
/// pages) is treated as an outage (`docs/salesforce.md`: "non-JSON bodies: transient").
pub(super) fn non_conforming_body(status: u16, body: &[u8], what: &str) -> SalesforceError {
    if serde_json::from_slice::<serde_json::Value>(body).is_ok() {
        SalesforceError::InvalidResponse(format!("HTTP {status} {what}"))
    } else {
        SalesforceError::Unavailable(format!("HTTP {status} with a non-JSON body"))
    }
}

/// Describes a token-response shape error without echoing values (serde's "invalid type"
/// messages quote the offending value, which could be a token).
fn describe_shape_error(message: &str, path: &str) -> String {
    if message.starts_with("missing field") {
        let field = message.split('`').nth(1).unwrap_or("?");
        format!("token response lacks `{field}`")
    } else {
        format!("token response has an unexpected value at `{path}`")
    }
}

pub(super) fn log_failure(e: &SalesforceError) {
    tracing::warn!(class = ?e.class(), error = %e.summary(), "salesforce request failed");
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use axum::http::StatusCode;
    use axum::response::IntoResponse;

    use super::super::test_support::*;
    use super::*;
    use crate::salesforce::ErrorClass;

    #[tokio::test]
    async fn oauth_errors_are_classified() {
        // (status, error, error_description, class)
        let cases = [
            (
                400,
                "invalid_grant",
                Some("expired access/refresh token"),
                ErrorClass::Reauthorize,
            ),
            (
                400,
                "invalid_grant",
                Some("IP restricted or invalid login hours"),
                ErrorClass::Transient,
            ),
            (
                400,
                "inactive_user",
                Some("user is inactive"),
                ErrorClass::Reauthorize,
            ),
            (
                401,
                "invalid_client",
                Some("invalid client credentials"),
                ErrorClass::AppCredentials,
            ),
            (400, "OAUTH_EC_APP_NOT_FOUND", None, ErrorClass::Upstream),
        ];
        for (status, error, description, class) in cases {
            let e = exchange_against(answer(status, oauth_error(error, description))).await;
            assert_eq!(e.class(), class, "{error} {description:?}");
            assert_eq!(e.oauth_error(), Some(error));
            assert!(
                matches!(e, SalesforceError::Refused { status: s, .. } if s == status),
                "{e:?}"
            );
        }

        let e = exchange_against(answer(
            400,
            oauth_error("invalid_grant", Some("expired access/refresh token")),
        ))
        .await;
        assert_eq!(
            e.summary(),
            "invalid_grant (HTTP 400): expired access/refresh token"
        );
    }

    #[tokio::test]
    async fn outages_and_bad_bodies() {
        let e = exchange_against(answer(503, oauth_error("maintenance", None))).await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Transient);

        let e = exchange_against(|_| StatusCode::TOO_MANY_REQUESTS.into_response()).await;
        assert_eq!(e.class(), ErrorClass::Transient);

        // 200 with an HTML page: non-JSON → Unavailable (transient, docs/salesforce.md).
        let e = exchange_against(|_| {
            (
                [(axum::http::header::CONTENT_TYPE, "text/html")],
                "<html>maintenance</html>",
            )
                .into_response()
        })
        .await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");

        // 400 with an HTML page.
        let e = exchange_against(|_| (StatusCode::BAD_REQUEST, "<html>bad</html>").into_response())
            .await;
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");

        // 200 JSON lacking fields: protocol violation, without echoing values.
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v.as_object_mut().unwrap().remove("instance_url");
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("instance_url"), "{e}");
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v["refresh_token"] = serde_json::json!({"weird": REFRESH_TOKEN});
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");

        // instance_url outside Salesforce.
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            v["instance_url"] = "https://evil.example.com".into();
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("evil.example.com"));

        // Bad identity URL (signature computed over it, so the id check is what fails).
        let e = exchange_against(|_| {
            let mut v = token_body(true);
            let id = "https://login.salesforce.com/id/001000000000000/005D0000001az5d";
            v["id"] = id.into();
            v["signature"] = sign(CLIENT_SECRET, &format!("{id}{ISSUED_AT}")).into();
            json(StatusCode::OK, v)
        })
        .await;
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
    }
}
