//! One HTTP exchange with Salesforce over the shared `reqwest::Client`: redirects refused,
//! 5xx and 429 turned into errors, the body read in chunks and capped at
//! [`ClientSettings::max_response_bytes`](super::ClientSettings::max_response_bytes). Also
//! the `oauth2` crate's HTTP hook ([`HttpCall`]), the transport-level failures
//! ([`Transport`]) and the form encoding of request bodies.
//!
//! Not here: what an answer means. OAuth error bodies are read in `errors`, token responses
//! in `token`.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU16, Ordering};

use oauth2::http::{self, HeaderValue, header};
use oauth2::{AsyncHttpClient, HttpRequest, HttpResponse};

use super::SalesforceClient;
use super::errors::log_failure;
use crate::metrics::{CallOutcome, SalesforceEndpoint};
use crate::salesforce::SalesforceError;

const CONTENT_TYPE_FORM: &str = "application/x-www-form-urlencoded";
const CONTENT_TYPE_JSON: &str = "application/json";

/// The future of one HTTP exchange.
type SendFuture<'a> = Pin<Box<dyn Future<Output = Result<HttpResponse, Transport>> + Send + 'a>>;

/// The `oauth2` crate's HTTP hook: one exchange over the shared client (see
/// [`SalesforceClient::send`]), remembering the response status. A named type rather than a
/// closure: a closure returning a borrowing future makes the request future fail the
/// compiler's higher-ranked `Send` check, and handlers need `Send` futures.
pub(super) struct HttpCall<'a> {
    pub(super) client: &'a SalesforceClient,
    pub(super) status: &'a AtomicU16,
    /// The endpoint the crate calls, for the metrics.
    pub(super) endpoint: SalesforceEndpoint,
}

impl<'c> AsyncHttpClient<'c> for HttpCall<'_> {
    type Error = Transport;
    type Future = SendFuture<'c>;

    fn call(&'c self, request: HttpRequest) -> Self::Future {
        Box::pin(self.client.send(request, self.status, self.endpoint))
    }
}

/// Transport-level failures of one HTTP exchange (before any OAuth interpretation).
#[derive(Debug, thiserror::Error)]
pub(super) enum Transport {
    #[error("request timed out")]
    Timeout,
    #[error("connection failed")]
    Connect,
    #[error("network error")]
    Network,
    #[error("unexpected redirect (HTTP {0}); redirects are not followed")]
    Redirect(u16),
    #[error("HTTP {0}")]
    Status(u16),
    #[error("response larger than {0} bytes")]
    TooLarge(usize),
    #[error("the HTTP request could not be built")]
    Build,
}

impl Transport {
    /// reqwest errors are reduced to a kind: their Display includes the URL.
    fn from_reqwest(e: &reqwest::Error) -> Transport {
        if e.is_timeout() {
            Transport::Timeout
        } else if e.is_connect() {
            Transport::Connect
        } else if e.is_builder() {
            Transport::Build
        } else {
            Transport::Network
        }
    }
}

impl Transport {
    /// The failure as a call outcome of the metrics.
    fn outcome(&self) -> CallOutcome {
        match self {
            Transport::Timeout => CallOutcome::Timeout,
            Transport::Connect | Transport::Network | Transport::Build => CallOutcome::Network,
            Transport::Status(429) => CallOutcome::RateLimited,
            Transport::Status(_) => CallOutcome::ServerError,
            Transport::Redirect(_) | Transport::TooLarge(_) => CallOutcome::InvalidResponse,
        }
    }
}

impl From<Transport> for SalesforceError {
    fn from(t: Transport) -> Self {
        match t {
            Transport::Timeout | Transport::Connect | Transport::Network | Transport::Status(_) => {
                SalesforceError::Unavailable(t.to_string())
            }
            Transport::Redirect(_) | Transport::TooLarge(_) => {
                SalesforceError::InvalidResponse(t.to_string())
            }
            Transport::Build => SalesforceError::Request(t.to_string()),
        }
    }
}

impl SalesforceClient {
    /// POSTs `form` as `application/x-www-form-urlencoded` (see [`form_body`]) to
    /// `endpoint` on `login_url`'s origin (checked against the host policy and recorded in
    /// the span as `login_host`), accepting JSON. The answer is returned whatever its status;
    /// transport failures, 3xx, 5xx and 429 are errors ([`Self::send`]), and logged.
    pub(super) async fn post_form(
        &self,
        login_url: &str,
        endpoint: SalesforceEndpoint,
        form: &[(&str, &str)],
    ) -> Result<HttpResponse, SalesforceError> {
        let url = format!(
            "{}{}",
            self.login_origin(login_url)?,
            endpoint_path(endpoint)
        );
        let request = http::Request::builder()
            .method(http::Method::POST)
            .uri(url)
            .header(header::ACCEPT, HeaderValue::from_static(CONTENT_TYPE_JSON))
            .header(
                header::CONTENT_TYPE,
                HeaderValue::from_static(CONTENT_TYPE_FORM),
            )
            .body(form_body(form).into_bytes())
            .map_err(|_| SalesforceError::Request("cannot build the HTTP request".into()))?;
        let status = AtomicU16::new(0);
        self.send(request, &status, endpoint)
            .await
            .map_err(SalesforceError::from)
            .inspect_err(log_failure)
    }

    /// One HTTP exchange over the shared client; the `oauth2` crate's `AsyncHttpClient`
    /// ([`HttpCall`]) and [`Self::post_form`] call this. 3xx, 5xx and 429 become errors
    /// here; the body is read in chunks and refused past `max_response_bytes`. The final
    /// status is stored in `status` so that OAuth error bodies can be reported with it.
    /// Each exchange is timed and counted by `endpoint` and outcome (a cancelled one as a
    /// timeout: only a deadline cancels it).
    async fn send(
        &self,
        request: HttpRequest,
        status: &AtomicU16,
        endpoint: SalesforceEndpoint,
    ) -> Result<HttpResponse, Transport> {
        let request = reqwest::Request::try_from(request).map_err(|_| Transport::Build)?;
        let call = self.metrics.salesforce_call(endpoint);
        let result = self.exchange(request, status).await;
        call.finish(match &result {
            Ok(response) if response.status().is_success() => CallOutcome::Success,
            Ok(_) => CallOutcome::ClientError,
            Err(e) => e.outcome(),
        });
        result
    }

    /// The exchange itself: [`Self::send`] without the metrics.
    async fn exchange(
        &self,
        request: reqwest::Request,
        status: &AtomicU16,
    ) -> Result<HttpResponse, Transport> {
        let mut response = self
            .http
            .execute(request)
            .await
            .map_err(|e| Transport::from_reqwest(&e))?;
        let code = response.status();
        status.store(code.as_u16(), Ordering::Relaxed);
        if code.is_redirection() {
            return Err(Transport::Redirect(code.as_u16()));
        }
        if code.is_server_error() || code == reqwest::StatusCode::TOO_MANY_REQUESTS {
            return Err(Transport::Status(code.as_u16()));
        }
        let max = self.settings.max_response_bytes;
        if response
            .content_length()
            .is_some_and(|len| len > max as u64)
        {
            return Err(Transport::TooLarge(max));
        }
        let mut builder = http::Response::builder()
            .status(code)
            .version(response.version());
        for (name, value) in response.headers() {
            builder = builder.header(name, value);
        }
        let mut body = Vec::new();
        while let Some(chunk) = response
            .chunk()
            .await
            .map_err(|e| Transport::from_reqwest(&e))?
        {
            if body.len() + chunk.len() > max {
                return Err(Transport::TooLarge(max));
            }
            body.extend_from_slice(&chunk);
        }
        builder.body(body).map_err(|_| Transport::Build)
    }
}

/// `application/x-www-form-urlencoded` body (each value encoded exactly once).
/// Where each OAuth endpoint lives on a login host (Salesforce Help, "OAuth Endpoints").
pub(super) fn endpoint_path(endpoint: SalesforceEndpoint) -> &'static str {
    match endpoint {
        SalesforceEndpoint::Token => "/services/oauth2/token",
        SalesforceEndpoint::Introspect => "/services/oauth2/introspect",
        SalesforceEndpoint::Revoke => "/services/oauth2/revoke",
    }
}

pub(super) fn form_body(pairs: &[(&str, &str)]) -> String {
    url::form_urlencoded::Serializer::new(String::new())
        .extend_pairs(pairs)
        .finish()
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
    use std::sync::Arc;
    use std::sync::atomic::AtomicUsize;
    use std::time::Duration;

    use axum::Router;
    use axum::http::StatusCode;
    use axum::routing::post;

    use super::super::ClientSettings;
    use super::super::test_support::*;
    use super::*;
    use crate::salesforce::ErrorClass;

    #[tokio::test]
    async fn hang_times_out_as_transient() {
        let router = Router::new().route(
            "/services/oauth2/token",
            post(|| async {
                tokio::time::sleep(Duration::from_secs(30)).await;
                "late"
            }),
        );
        let base = serve(router).await;
        let c = client_with(ClientSettings {
            request_timeout: Duration::from_millis(300),
            ..ClientSettings::default()
        });
        let started = std::time::Instant::now();
        let e = c
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(started.elapsed() < Duration::from_secs(5));
        assert!(matches!(e, SalesforceError::Unavailable(_)), "{e:?}");
        assert_eq!(e.class(), ErrorClass::Transient);
        assert!(e.to_string().contains("timed out"), "{e}");
        assert_no_secrets(&e);
    }

    #[tokio::test]
    async fn connection_refused_is_transient() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        drop(listener);
        let e = exchange(&base).await.unwrap_err();
        assert_eq!(e.class(), ErrorClass::Transient, "{e:?}");
    }

    #[tokio::test]
    async fn oversized_bodies_are_refused() {
        let small = ClientSettings {
            max_response_bytes: 1024,
            ..ClientSettings::default()
        };
        // With Content-Length.
        let (base, _) = server("/services/oauth2/token", |_| {
            let mut v = token_body(true);
            v["padding"] = "x".repeat(4096).into();
            json(StatusCode::OK, v)
        })
        .await;
        let e = client_with(small.clone())
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("larger than 1024"), "{e}");

        // Chunked, without Content-Length: stopped while reading.
        let base = raw_chunked_server(64);
        let e = client_with(small)
            .exchange_code(&app(&base), REDIRECT, CODE, &secret(VERIFIER))
            .await
            .unwrap_err();
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("larger than 1024"), "{e}");
    }

    /// A one-shot raw HTTP server answering with `chunks` chunks of 1000 bytes.
    fn raw_chunked_server(chunks: usize) -> String {
        use std::io::{Read, Write};
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        std::thread::spawn(move || {
            if let Ok((mut stream, _)) = listener.accept() {
                let mut buf = [0u8; 8192];
                let _ = stream.read(&mut buf);
                let _ = stream.write_all(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n",
                );
                let chunk = format!("3E8\r\n{}\r\n", " ".repeat(1000));
                for _ in 0..chunks {
                    if stream.write_all(chunk.as_bytes()).is_err() {
                        return;
                    }
                }
                let _ = stream.write_all(b"0\r\n\r\n");
            }
        });
        base
    }

    #[tokio::test]
    async fn redirects_are_not_followed() {
        let hits = Arc::new(AtomicUsize::new(0));
        let hits2 = hits.clone();
        let router = Router::new()
            .route(
                "/services/oauth2/token",
                post(|| async {
                    (
                        StatusCode::FOUND,
                        [(axum::http::header::LOCATION, "/elsewhere")],
                    )
                }),
            )
            .route(
                "/elsewhere",
                post(move || {
                    hits2.fetch_add(1, Ordering::SeqCst);
                    async { json(StatusCode::OK, token_body(true)) }
                })
                .get(|| async { "x" }),
            );
        let base = serve(router).await;
        let e = exchange(&base).await.unwrap_err();
        assert_eq!(hits.load(Ordering::SeqCst), 0);
        assert!(matches!(e, SalesforceError::InvalidResponse(_)), "{e:?}");
        assert!(e.to_string().contains("302"), "{e}");
        assert_no_secrets(&e);
    }
}
