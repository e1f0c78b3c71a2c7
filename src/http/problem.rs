//! RFC 9457 problem documents: every error this API answers, in one shape, with a stable
//! `code` that clients branch on. 5xx bodies are opaque; their cause is logged here, inside
//! the request's span (which carries the request id).

use std::time::Duration;

use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use crate::broker::BrokerError;

/// Every problem `code` this API answers: the stable contract clients branch on. Each code
/// has one HTTP status and one title.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProblemCode {
    InvalidRequest,
    Unauthenticated,
    Forbidden,
    NotFound,
    MethodNotAllowed,
    NeedsReauthorization,
    AppCredentialsInvalid,
    PayloadTooLarge,
    UnsupportedMediaType,
    InvalidCredentials,
    RateLimited,
    UpstreamError,
    UpstreamUnavailable,
    ServiceUnavailable,
    InternalError,
}

impl ProblemCode {
    pub const ALL: [Self; 15] = [
        Self::InvalidRequest,
        Self::Unauthenticated,
        Self::Forbidden,
        Self::NotFound,
        Self::MethodNotAllowed,
        Self::NeedsReauthorization,
        Self::AppCredentialsInvalid,
        Self::PayloadTooLarge,
        Self::UnsupportedMediaType,
        Self::InvalidCredentials,
        Self::RateLimited,
        Self::UpstreamError,
        Self::UpstreamUnavailable,
        Self::ServiceUnavailable,
        Self::InternalError,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::InvalidRequest => "invalid_request",
            Self::Unauthenticated => "unauthenticated",
            Self::Forbidden => "forbidden",
            Self::NotFound => "not_found",
            Self::MethodNotAllowed => "method_not_allowed",
            Self::NeedsReauthorization => "needs_reauthorization",
            Self::AppCredentialsInvalid => "app_credentials_invalid",
            Self::PayloadTooLarge => "payload_too_large",
            Self::UnsupportedMediaType => "unsupported_media_type",
            Self::InvalidCredentials => "invalid_credentials",
            Self::RateLimited => "rate_limited",
            Self::UpstreamError => "upstream_error",
            Self::UpstreamUnavailable => "upstream_unavailable",
            Self::ServiceUnavailable => "service_unavailable",
            Self::InternalError => "internal_error",
        }
    }

    pub fn status(self) -> StatusCode {
        match self {
            Self::InvalidRequest => StatusCode::BAD_REQUEST,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden => StatusCode::FORBIDDEN,
            Self::NotFound => StatusCode::NOT_FOUND,
            Self::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            Self::NeedsReauthorization | Self::AppCredentialsInvalid => StatusCode::CONFLICT,
            Self::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            Self::UnsupportedMediaType => StatusCode::UNSUPPORTED_MEDIA_TYPE,
            Self::InvalidCredentials => StatusCode::UNPROCESSABLE_ENTITY,
            Self::RateLimited => StatusCode::TOO_MANY_REQUESTS,
            Self::UpstreamError => StatusCode::BAD_GATEWAY,
            Self::UpstreamUnavailable | Self::ServiceUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            Self::InternalError => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    pub fn title(self) -> &'static str {
        match self {
            Self::InvalidRequest => "Invalid request",
            Self::Unauthenticated => "Authentication required",
            Self::Forbidden => "Forbidden",
            Self::NotFound => "Not found",
            Self::MethodNotAllowed => "Method not allowed",
            Self::NeedsReauthorization => "The connection needs reauthorization",
            Self::AppCredentialsInvalid => "The tenant's app credentials were refused",
            Self::PayloadTooLarge => "Payload too large",
            Self::UnsupportedMediaType => "Unsupported media type",
            Self::InvalidCredentials => "Salesforce refused the consumer key or secret",
            Self::RateLimited => "Too many requests",
            Self::UpstreamError => "Salesforce error",
            Self::UpstreamUnavailable => "Salesforce is unavailable",
            Self::ServiceUnavailable => "Service unavailable",
            Self::InternalError => "Internal error",
        }
    }
}

/// `WWW-Authenticate` of a request that carried no bearer token: RFC 6750 §3.1 names only
/// the scheme.
pub const CHALLENGE_TOKEN_REQUIRED: &str = "Bearer";

/// `WWW-Authenticate` of a bearer token that was refused (RFC 6750 §3.1 `invalid_token`).
pub const CHALLENGE_INVALID_TOKEN: &str = "Bearer error=\"invalid_token\"";

/// An error response. Build with the constructors, which fix status and code together.
#[derive(Debug)]
pub struct Problem {
    status: StatusCode,
    code: &'static str,
    title: &'static str,
    detail: Option<String>,
    /// The request field the problem is about (`invalid_credentials`: `consumer_key` or
    /// `consumer_secret`), an RFC 9457 §3.2 extension member.
    field: Option<&'static str>,
    retry_after: Option<Duration>,
    www_authenticate: Option<&'static str>,
}

#[derive(Serialize)]
struct Body<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    detail: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    field: Option<&'a str>,
}

impl Problem {
    fn new(code: ProblemCode) -> Self {
        Self {
            status: code.status(),
            code: code.as_str(),
            title: code.title(),
            detail: None,
            field: None,
            retry_after: None,
            www_authenticate: None,
        }
    }

    pub fn with_detail(mut self, detail: impl Into<String>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    pub fn invalid_request(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::InvalidRequest).with_detail(detail)
    }

    /// 401 for a request that carried no bearer token: RFC 6750 §3.1 names only the scheme.
    pub fn token_required(detail: &str) -> Self {
        let mut p = Self::new(ProblemCode::Unauthenticated).with_detail(detail);
        p.www_authenticate = Some(CHALLENGE_TOKEN_REQUIRED);
        p
    }

    /// 401 for a bearer token that was refused; `invalid_token` tells why (RFC 6750 §3.1).
    pub fn unauthenticated(detail: &str) -> Self {
        let mut p = Self::token_required(detail);
        p.www_authenticate = Some(CHALLENGE_INVALID_TOKEN);
        p
    }

    pub fn forbidden(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::Forbidden).with_detail(detail)
    }

    pub fn not_found(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::NotFound).with_detail(detail)
    }

    pub fn method_not_allowed() -> Self {
        Self::new(ProblemCode::MethodNotAllowed)
    }

    pub fn payload_too_large(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::PayloadTooLarge).with_detail(detail)
    }

    pub fn unsupported_media_type(detail: impl Into<String>) -> Self {
        Self::new(ProblemCode::UnsupportedMediaType).with_detail(detail)
    }

    pub fn service_unavailable(retry_after: Duration) -> Self {
        let mut p = Self::new(ProblemCode::ServiceUnavailable)
            .with_detail("the service cannot reach its database right now; retry later");
        p.retry_after = Some(retry_after);
        p
    }

    /// Our own limits answered for us (request timeout, load shedding): retry shortly.
    pub fn busy(detail: impl Into<String>) -> Self {
        let mut p = Self::new(ProblemCode::ServiceUnavailable).with_detail(detail);
        p.retry_after = Some(Duration::from_secs(1));
        p
    }

    /// Too many requests from one client (the callback's per-IP limit).
    pub fn rate_limited(retry_after: Duration) -> Self {
        let mut p = Self::new(ProblemCode::RateLimited)
            .with_detail("too many requests from this address; retry later");
        p.retry_after = Some(retry_after.max(Duration::from_secs(1)));
        p
    }

    pub fn internal() -> Self {
        Self::new(ProblemCode::InternalError)
    }

    pub fn status(&self) -> StatusCode {
        self.status
    }
}

impl From<BrokerError> for Problem {
    fn from(e: BrokerError) -> Self {
        match e {
            BrokerError::InvalidRequest(detail) => Self::invalid_request(detail),
            BrokerError::NotFound(detail) => Self::not_found(detail),
            BrokerError::NeedsReauthorization { reason } => Self::new(ProblemCode::NeedsReauthorization)
            .with_detail(format!(
                "a person must connect the Salesforce org again (start a new authorization): {reason}"
            )),
            BrokerError::AppCredentialsInvalid { reason } => Self::new(ProblemCode::AppCredentialsInvalid)
            .with_detail(format!(
                "Salesforce refused the tenant's consumer key or secret; the connection is \
                 intact: PUT the External Client App's correct credentials and it serves \
                 again with no reauthorization ({reason})"
            )),
            BrokerError::InvalidCredentials { field, detail } => {
                let mut p = Self::new(ProblemCode::InvalidCredentials).with_detail(detail);
                p.field = Some(field.as_str());
                p
            }
            BrokerError::Upstream(reason) => {
                tracing::warn!(error = %reason, "salesforce error");
                Self::new(ProblemCode::UpstreamError)
                    .with_detail(reason)
            }
            BrokerError::UpstreamUnavailable { reason, retry_after } => {
                let mut p = Self::new(ProblemCode::UpstreamUnavailable)
                .with_detail(reason);
                p.retry_after = Some(retry_after);
                p
            }
            BrokerError::Unavailable(reason) => {
                tracing::error!(error = %reason, "service unavailable");
                Self::service_unavailable(Duration::from_secs(1))
            }
            BrokerError::Busy {
                reason,
                retry_after,
            } => {
                tracing::warn!(error = %reason, "request not served in time");
                let mut p = Self::new(ProblemCode::ServiceUnavailable)
                .with_detail(reason);
                p.retry_after = Some(retry_after);
                p
            }
            BrokerError::Internal(reason) => {
                tracing::error!(error = %reason, "internal error");
                Self::internal()
            }
            BrokerError::Store(error) if error.is_unavailable() => {
                tracing::error!(error = %error, "database unavailable");
                Self::service_unavailable(Duration::from_secs(1))
            }
            BrokerError::Store(error) => {
                tracing::error!(error = %error, "database error");
                Self::internal()
            }
            BrokerError::Keyring(error) => {
                tracing::error!(error = %error, "keyring error");
                Self::internal()
            }
        }
    }
}

impl IntoResponse for Problem {
    fn into_response(self) -> Response {
        let body = Body {
            kind: "about:blank",
            title: self.title,
            status: self.status.as_u16(),
            code: self.code,
            detail: self.detail.as_deref(),
            field: self.field,
        };
        let mut response = (self.status, Json(body)).into_response();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let Some(retry) = self.retry_after {
            let secs = retry.as_secs() + u64::from(retry.subsec_nanos() > 0);
            headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
        }
        if let Some(challenge) = self.www_authenticate {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static(challenge),
            );
        }
        response
    }
}
