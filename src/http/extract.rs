//! Request parsing that answers problems, not axum's plain-text rejections: JSON bodies,
//! path parameters, and the RFC 3339 rendering of timestamps.

use std::pin::Pin;

use axum::body::{Bytes, HttpBody as _};
use axum::extract::{FromRequest, FromRequestParts, RawPathParams, Request};
use axum::http::request::Parts;
use axum::http::{HeaderMap, header};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use super::AppState;
use super::problem::Problem;
use crate::broker::TenantId;

/// A JSON body (`Content-Type: application/json`), parsed into `T`.
pub struct JsonBody<T>(pub T);

/// Like [`JsonBody`], but an empty body means `T::default()`.
pub struct OptionalJsonBody<T>(pub T);

/// The body, at most `limit` bytes (413 above), and whether it was declared JSON.
///
/// Request bodies are read here and nowhere else (no handler uses axum's body extractors,
/// so axum's `DefaultBodyLimit` is not needed). The frames are read directly: the usual
/// body is one frame, answered without a copy or a collecting buffer.
async fn body_bytes(request: Request, limit: usize) -> Result<(bool, Bytes), Problem> {
    let too_large =
        || Problem::payload_too_large("the request body is larger than the configured limit");
    let headers = request.headers();
    let is_json = is_json(headers);
    // A declared length over the limit is refused before a byte is read.
    let declared = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok());
    if declared.is_some_and(|length| length > limit as u64) {
        return Err(too_large());
    }
    let mut body = request.into_body();
    let mut whole = Bytes::new();
    let mut joined: Option<Vec<u8>> = None;
    while let Some(frame) = std::future::poll_fn(|cx| Pin::new(&mut body).poll_frame(cx)).await {
        let frame =
            frame.map_err(|_| Problem::invalid_request("the request body could not be read"))?;
        // Trailers carry no body bytes.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        let read = whole.len() + joined.as_ref().map_or(0, Vec::len) + data.len();
        if read > limit {
            return Err(too_large());
        }
        match joined.as_mut() {
            Some(joined) => joined.extend_from_slice(&data),
            None if whole.is_empty() => whole = data,
            None => {
                let mut buffer = Vec::with_capacity(read);
                buffer.extend_from_slice(&std::mem::take(&mut whole));
                buffer.extend_from_slice(&data);
                joined = Some(buffer);
            }
        }
    }
    Ok((is_json, joined.map_or(whole, Bytes::from)))
}

fn is_json(headers: &HeaderMap) -> bool {
    headers
        .get(header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case("application/json"))
}

fn parse<T: DeserializeOwned>(is_json: bool, bytes: &[u8]) -> Result<T, Problem> {
    if !is_json {
        return Err(Problem::unsupported_media_type(
            "the body must be JSON with Content-Type: application/json",
        ));
    }
    serde_json::from_slice(bytes).map_err(|e| {
        // serde's messages can quote the offending value, which may be a secret: keep only
        // those that name fields.
        let message = e.to_string();
        let detail = if message.contains("missing field") || message.contains("unknown field") {
            message
                .split(" at line")
                .next()
                .unwrap_or_default()
                .to_owned()
        } else if e.is_syntax() || e.is_eof() {
            "the body is not valid JSON".to_owned()
        } else {
            "a field of the JSON body has the wrong type or value".to_owned()
        };
        Problem::invalid_request(detail)
    })
}

impl<T: DeserializeOwned> FromRequest<AppState> for JsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let (is_json, bytes) = body_bytes(request, state.body_limit_bytes).await?;
        parse(is_json, &bytes).map(Self)
    }
}

impl<T: DeserializeOwned + Default> FromRequest<AppState> for OptionalJsonBody<T> {
    type Rejection = Problem;

    async fn from_request(request: Request, state: &AppState) -> Result<Self, Problem> {
        let (is_json, bytes) = body_bytes(request, state.body_limit_bytes).await?;
        if bytes.iter().all(u8::is_ascii_whitespace) {
            return Ok(Self(T::default()));
        }
        parse(is_json, &bytes).map(Self)
    }
}

/// `{tenant}` and, on connection routes, `{id}` from the path.
pub struct Target {
    pub tenant: TenantId,
    pub connection: Option<Uuid>,
}

impl Target {
    /// The connection id (routes that have one always set it).
    pub fn connection_id(&self) -> Result<Uuid, Problem> {
        self.connection
            .ok_or_else(|| Problem::not_found("no such connection for this tenant"))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Target {
    type Rejection = Problem;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Problem> {
        // The raw parameters borrow the router's percent-decoded values: no map, no copies.
        let params = RawPathParams::from_request_parts(parts, state)
            .await
            .map_err(|_| Problem::invalid_request("the path parameters could not be read"))?;
        let (mut tenant, mut id) = (None, None);
        for (name, value) in &params {
            match name {
                "tenant" => tenant = Some(value),
                "id" => id = Some(value),
                _ => {}
            }
        }
        let tenant = TenantId::parse(tenant.unwrap_or_default()).map_err(Problem::from)?;
        let connection = match id {
            None => None,
            // A malformed id names no connection: the same answer as an unknown one.
            Some(raw) => Some(
                Uuid::parse_str(raw)
                    .map_err(|_| Problem::not_found("no such connection for this tenant"))?,
            ),
        };
        Ok(Self { tenant, connection })
    }
}

pub use crate::broker::rfc3339;

/// `?force=true` (or `1`) of the deletions: delete even when revocation at Salesforce
/// fails. Anything else, or nothing, is false.
pub struct Force(pub bool);

impl<S: Send + Sync> FromRequestParts<S> for Force {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _state: &S) -> Result<Self, Self::Rejection> {
        Ok(Self(
            parts
                .uri
                .query()
                .unwrap_or_default()
                .split('&')
                .any(|pair| pair == "force=true" || pair == "force=1"),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use std::collections::VecDeque;
    use std::convert::Infallible;
    use std::pin::Pin;
    use std::task::{Context, Poll};

    use axum::body::{Body, Bytes};
    use axum::http::{Request, StatusCode};
    use hyper::body::Frame;

    use super::body_bytes;

    /// A body delivered in the given frames, as a chunked upload arrives.
    struct Frames(VecDeque<&'static str>);

    impl hyper::body::Body for Frames {
        type Data = Bytes;
        type Error = Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
            Poll::Ready(self.0.pop_front().map(|f| Ok(Frame::data(Bytes::from(f)))))
        }
    }

    fn request(frames: &[&'static str], declared: Option<usize>) -> Request<Body> {
        let mut builder = Request::post("/").header("content-type", "application/json");
        if let Some(length) = declared {
            builder = builder.header("content-length", length);
        }
        builder
            .body(Body::new(Frames(frames.iter().copied().collect())))
            .unwrap()
    }

    #[tokio::test]
    async fn frames_are_joined_under_the_limit_and_refused_past_it() {
        let (is_json, one) = body_bytes(request(&[r#"{"a":1}"#], None), 16)
            .await
            .unwrap();
        assert!(is_json);
        assert_eq!(one, r#"{"a":1}"#);
        let (_, joined) = body_bytes(request(&[r#"{"a""#, ":", "1}"], None), 16)
            .await
            .unwrap();
        assert_eq!(joined, r#"{"a":1}"#);
        // Past the limit in the third frame, with no length declared.
        let over = body_bytes(request(&["12345", "67890", "123456789"], None), 16).await;
        assert_eq!(over.err().unwrap().status(), StatusCode::PAYLOAD_TOO_LARGE);
        // A declared length over the limit is refused before any frame is read.
        let declared = body_bytes(request(&["{}"], Some(17)), 16).await;
        assert_eq!(
            declared.err().unwrap().status(),
            StatusCode::PAYLOAD_TOO_LARGE
        );
    }
}
