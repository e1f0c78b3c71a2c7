//! Shared fixtures of the client's unit tests (compiled only under `cfg(test)`): the fake
//! tenant's credentials and tokens, a signed token response, a local axum server that
//! records request bodies, and helpers to read forms and check that errors leak no secret.
//!
//! Not here: the tests themselves, which sit beside the code they exercise.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use base64::Engine as _;
use hmac::{Hmac, Mac};
use secrecy::SecretString;
use sha2::Sha256;

use super::{AppCredentials, ClientSettings, SalesforceClient, TokenGrant};
use crate::salesforce::{HostPolicy, SalesforceError};

pub(super) const CLIENT_ID: &str = "3MVG9-client-id";
pub(super) const CLIENT_SECRET: &str = "consumer-secret-XYZ";
pub(super) const ACCESS_TOKEN: &str = "00Dxx!access-token-value";
pub(super) const REFRESH_TOKEN: &str = "5Aep-refresh-token-value";
pub(super) const VERIFIER: &str = "verifier-abcdefghijklmnopqrstuvwxyz0123456789-._~";
pub(super) const CODE: &str = "aPrx-code-value==";
pub(super) const REDIRECT: &str = "https://valo.example.com/oauth/callback";
pub(super) const ISSUED_AT: &str = "1738348388166";
pub(super) const INSTANCE: &str = "https://acme.my.salesforce.com";

const SECRETS: &[&str] = &[CLIENT_SECRET, ACCESS_TOKEN, REFRESH_TOKEN, VERIFIER, CODE];

pub(super) fn id_url() -> String {
    format!(
        "https://login.salesforce.com/id/{}/{}",
        "00D000000000000", "005D0000001az5d"
    )
}

pub(super) fn sign(secret: &str, msg: &str) -> String {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(msg.as_bytes());
    base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes())
}

pub(super) fn token_body(with_refresh: bool) -> serde_json::Value {
    let id = id_url();
    let mut v = serde_json::json!({
        "access_token": ACCESS_TOKEN,
        "signature": sign(CLIENT_SECRET, &format!("{id}{ISSUED_AT}")),
        "scope": "refresh_token api",
        "instance_url": INSTANCE,
        "id": id,
        "token_type": "Bearer",
        "issued_at": ISSUED_AT,
    });
    if with_refresh {
        v["refresh_token"] = REFRESH_TOKEN.into();
    }
    v
}

pub(super) fn json(status: StatusCode, v: serde_json::Value) -> axum::response::Response {
    (
        status,
        [(
            axum::http::header::CONTENT_TYPE,
            "application/json;charset=UTF-8",
        )],
        v.to_string(),
    )
        .into_response()
}

/// Salesforce's OAuth error body: `error`, and `error_description` when given.
pub(super) fn oauth_error(error: &str, description: Option<&str>) -> serde_json::Value {
    let mut v = serde_json::json!({ "error": error });
    if let Some(description) = description {
        v["error_description"] = description.into();
    }
    v
}

/// A responder for [`server`] that answers every request with `body` and `status`.
pub(super) fn answer(
    status: u16,
    body: serde_json::Value,
) -> impl Fn(String) -> axum::response::Response + Clone + Send + Sync + 'static {
    let status = StatusCode::from_u16(status).unwrap();
    move |_| json(status, body.clone())
}

pub(super) async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        axum::serve(listener, router).await.unwrap();
    });
    format!("http://{addr}")
}

/// A server answering `path` with `respond(body)` and recording each request body.
pub(super) async fn server<F>(path: &str, respond: F) -> (String, Arc<Mutex<Vec<String>>>)
where
    F: Fn(String) -> axum::response::Response + Clone + Send + Sync + 'static,
{
    let seen = Arc::new(Mutex::new(Vec::new()));
    let seen2 = seen.clone();
    let router = Router::new().route(
        path,
        post(move |body: String| {
            let respond = respond.clone();
            let seen = seen2.clone();
            async move {
                seen.lock().unwrap().push(body.clone());
                respond(body)
            }
        }),
    );
    (serve(router).await, seen)
}

pub(super) fn client_with(settings: ClientSettings) -> SalesforceClient {
    let hosts =
        HostPolicy::parse("login.salesforce.com,*.my.salesforce.com,http://127.0.0.1").unwrap();
    SalesforceClient::new(settings, hosts, crate::metrics::Metrics::new()).unwrap()
}

pub(super) fn client() -> SalesforceClient {
    client_with(ClientSettings::default())
}

pub(super) fn app(login_url: &str) -> AppCredentials {
    AppCredentials {
        login_url: login_url.to_owned(),
        client_id: SecretString::from(CLIENT_ID.to_owned()),
        client_secret: SecretString::from(CLIENT_SECRET.to_owned()),
    }
}

pub(super) fn secret(s: &str) -> SecretString {
    SecretString::from(s.to_owned())
}

pub(super) fn assert_no_secrets(e: &SalesforceError) {
    let texts = [e.to_string(), format!("{e:?}"), e.summary()];
    for text in texts {
        for s in SECRETS {
            assert!(!text.contains(s), "secret leaked in {text:?}");
        }
    }
}

pub(super) fn form(body: &str) -> Vec<(String, String)> {
    url::form_urlencoded::parse(body.as_bytes())
        .into_owned()
        .collect()
}

pub(super) fn get<'a>(pairs: &'a [(String, String)], key: &str) -> Option<&'a str> {
    pairs
        .iter()
        .find(|(k, _)| k == key)
        .map(|(_, v)| v.as_str())
}

pub(super) async fn exchange(base: &str) -> Result<TokenGrant, SalesforceError> {
    client()
        .exchange_code(&app(base), REDIRECT, CODE, &secret(VERIFIER))
        .await
}

pub(super) async fn exchange_against(
    respond: impl Fn(String) -> axum::response::Response + Clone + Send + Sync + 'static,
) -> SalesforceError {
    let (base, _) = server("/services/oauth2/token", respond).await;
    let e = exchange(&base).await.unwrap_err();
    assert_no_secrets(&e);
    e
}
