//! Tests of the fake Salesforce itself, over real loopback HTTP with reqwest: the web-server
//! flow with PKCE, the `%3D`-encoded code, the token signature, Refresh Token Rotation and
//! reuse detection, introspection, revocation, client authentication, and every fault.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::time::{Duration, Instant};

use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use fake_salesforce::{Approval, Counters, Endpoint, FakeOptions, FakeSalesforce, Fault};
use hmac::{Hmac, Mac};
use serde_json::Value;
use sha2::{Digest, Sha256};

const CLIENT_ID: &str = "3MVG9fake.consumer.key";
const SECRET: &str = "F4KE5ECRET0123456789";
const REDIRECT: &str = "http://127.0.0.1:8080/oauth2/v1/callback/salesforce";
const VERIFIER: &str = "dBjftJeZ4CVP-mB92K27uhbUJU1p1r_wW1gFWFOEjXk";
const STATE: &str = "st=a+b/c d";

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_proxy()
        .redirect(reqwest::redirect::Policy::none())
        .build()
        .unwrap()
}

async fn start(options: FakeOptions) -> FakeSalesforce {
    let fake = FakeSalesforce::start(options).await.unwrap();
    fake.register_app(CLIENT_ID, SECRET, REDIRECT);
    fake
}

/// [`start`] with the default options changed by `change`.
async fn start_with(change: impl FnOnce(&mut FakeOptions)) -> FakeSalesforce {
    let mut options = FakeOptions::default();
    change(&mut options);
    start(options).await
}

fn challenge(verifier: &str) -> String {
    URL_SAFE_NO_PAD.encode(Sha256::digest(verifier.as_bytes()))
}

fn authorize_url(fake: &FakeSalesforce, extra: &[(&str, &str)], skip: &[&str]) -> String {
    let mut url =
        url::Url::parse(&format!("{}/services/oauth2/authorize", fake.base_url())).unwrap();
    let chal = challenge(VERIFIER);
    let defaults = [
        ("response_type", "code"),
        ("client_id", CLIENT_ID),
        ("redirect_uri", REDIRECT),
        ("code_challenge", chal.as_str()),
        ("code_challenge_method", "S256"),
        ("state", STATE),
        ("scope", "api refresh_token"),
    ];
    {
        let mut q = url.query_pairs_mut();
        for (k, v) in defaults {
            if skip.contains(&k) || extra.iter().any(|(ek, _)| *ek == k) {
                continue;
            }
            q.append_pair(k, v);
        }
        for (k, v) in extra {
            q.append_pair(k, v);
        }
    }
    url.to_string()
}

fn query_param(callback: &str, name: &str) -> Option<String> {
    url::Url::parse(callback)
        .unwrap()
        .query_pairs()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.into_owned())
}

async fn post(fake: &FakeSalesforce, path: &str, form: &[(&str, &str)]) -> (u16, String) {
    let url = format!("{}{path}", fake.base_url());
    status_and_text(client().post(url).form(form).send().await.unwrap()).await
}

async fn status_and_text(response: reqwest::Response) -> (u16, String) {
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

fn json(body: &str) -> Value {
    serde_json::from_str(body).unwrap_or_else(|e| panic!("not JSON ({e}): {body}"))
}

fn assert_oauth_error(status: u16, body: &str, error: &str, description: &str) {
    assert_eq!(status, 400, "{body}");
    let v = json(body);
    assert_eq!(v["error"], error, "{body}");
    assert_eq!(v["error_description"], description, "{body}");
}

async fn get_code(fake: &FakeSalesforce) -> String {
    let callback = fake.approve(&authorize_url(fake, &[], &[])).await.unwrap();
    query_param(&callback, "code").unwrap()
}

async fn exchange(fake: &FakeSalesforce, code: &str, verifier: &str) -> (u16, String) {
    post(
        fake,
        "/services/oauth2/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", code),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("redirect_uri", REDIRECT),
            ("code_verifier", verifier),
        ],
    )
    .await
}

async fn login(fake: &FakeSalesforce) -> Value {
    let code = get_code(fake).await;
    let (status, body) = exchange(fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    json(&body)
}

async fn refresh(fake: &FakeSalesforce, refresh_token: &str) -> (u16, String) {
    post(
        fake,
        "/services/oauth2/token",
        &[
            ("grant_type", "refresh_token"),
            ("refresh_token", refresh_token),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ],
    )
    .await
}

/// Asserts that a refresh with `refresh_token` is refused as Salesforce refuses a revoked
/// or expired one.
async fn assert_refresh_refused(fake: &FakeSalesforce, refresh_token: &str) {
    let (status, body) = refresh(fake, refresh_token).await;
    assert_oauth_error(
        status,
        &body,
        "invalid_grant",
        "expired access/refresh token",
    );
}

async fn introspect(fake: &FakeSalesforce, token: &str) -> Value {
    let (status, body) = post(
        fake,
        "/services/oauth2/introspect",
        &[
            ("token", token),
            ("token_type_hint", "access_token"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(status, 200, "{body}");
    json(&body)
}

async fn data_api(fake: &FakeSalesforce, access_token: &str) -> (u16, String) {
    let url = format!("{}/services/data/v62.0/", fake.base_url());
    let request = client().get(url).bearer_auth(access_token);
    status_and_text(request.send().await.unwrap()).await
}

fn verify_signature(v: &Value, secret: &str) -> bool {
    let mut mac = Hmac::<Sha256>::new_from_slice(secret.as_bytes()).unwrap();
    mac.update(v["id"].as_str().unwrap().as_bytes());
    mac.update(v["issued_at"].as_str().unwrap().as_bytes());
    STANDARD.encode(mac.finalize().into_bytes()) == v["signature"].as_str().unwrap()
}

fn s(v: &Value, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("{key} missing in {v}"))
        .to_owned()
}

#[tokio::test]
async fn full_flow_with_rotation_and_reuse_detection() {
    let fake = start(FakeOptions::default()).await;
    let base = fake.base_url();
    assert!(base.starts_with("http://127.0.0.1:"));

    // Authorize: the code is padded base64, percent-encoded in the Location.
    let callback = fake.approve(&authorize_url(&fake, &[], &[])).await.unwrap();
    assert!(callback.starts_with(REDIRECT), "{callback}");
    assert!(callback.contains("code=aPrx"), "{callback}");
    assert!(callback.contains("%3D%3D"), "{callback}");
    let code = query_param(&callback, "code").unwrap();
    assert!(code.ends_with("=="), "{code}");
    assert_eq!(query_param(&callback, "state").unwrap(), STATE);

    // Exchange with PKCE.
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let first = json(&body);
    let at1 = s(&first, "access_token");
    let rt1 = s(&first, "refresh_token");
    assert!(at1.starts_with("00D5g000004ABCD!AQ"), "{at1}");
    assert_eq!(first["token_type"], "Bearer");
    assert_eq!(first["instance_url"], base);
    assert_eq!(first["scope"], "api refresh_token");
    assert_eq!(
        first["id"],
        format!("{base}/id/00D5g000004ABCDEA4/0055g000001XYZWAA4")
    );
    assert!(first.get("expires_in").is_none());
    let issued_at = s(&first, "issued_at");
    let ms: u128 = issued_at.parse().unwrap();
    assert!(ms > 1_700_000_000_000, "{issued_at}");
    assert!(verify_signature(&first, SECRET));
    assert!(!verify_signature(&first, "other secret"));
    assert!(fake.is_access_token_active(&at1));
    assert!(fake.is_refresh_token_active(&rt1));

    // The REST API and introspection accept the access token.
    let (status, body) = data_api(&fake, &at1).await;
    assert_eq!(status, 200, "{body}");
    let info = introspect(&fake, &at1).await;
    assert_eq!(info["active"], true);
    assert_eq!(info["username"], "admin@example.com");
    assert_eq!(info["sub"], "0055g000001XYZWAA4");
    assert_eq!(info["client_id"], CLIENT_ID);
    assert_eq!(info["scope"], "api refresh_token");
    assert_eq!(info["token_type"], "access_token");
    assert_eq!(
        info["exp"].as_u64().unwrap() - info["iat"].as_u64().unwrap(),
        7200
    );

    // Refresh rotates the refresh token.
    let (status, body) = refresh(&fake, &rt1).await;
    assert_eq!(status, 200, "{body}");
    let second = json(&body);
    let at2 = s(&second, "access_token");
    let rt2 = s(&second, "refresh_token");
    assert_ne!(rt1, rt2);
    assert_ne!(at1, at2);
    assert!(verify_signature(&second, SECRET));
    assert!(!fake.is_refresh_token_active(&rt1));
    assert!(fake.is_refresh_token_active(&rt2));
    assert!(fake.is_access_token_active(&at2));

    // Reusing the rotated-out token kills the whole family.
    assert_refresh_refused(&fake, &rt1).await;
    assert!(!fake.is_refresh_token_active(&rt2));
    assert!(!fake.is_access_token_active(&at1));
    assert!(!fake.is_access_token_active(&at2));
    assert_eq!(
        introspect(&fake, &at2).await,
        serde_json::json!({"active": false})
    );
    let (status, body) = data_api(&fake, &at2).await;
    assert_eq!(status, 401);
    assert_eq!(json(&body)[0]["errorCode"], "INVALID_SESSION_ID");
    assert_refresh_refused(&fake, &rt2).await;

    assert_eq!(fake.issued_tokens(), vec![at1, rt1, at2, rt2]);
    assert_eq!(
        fake.counters(),
        Counters {
            authorizations: 1,
            code_exchanges: 1,
            refreshes: 1,
            refresh_reuse_attempts: 1,
            revocations: 0,
            introspections: 2,
            token_requests: 4,
        }
    );
}

#[tokio::test]
async fn revoke_access_then_refresh_token() {
    let fake = start(FakeOptions::default()).await;
    let tokens = login(&fake).await;
    let at1 = s(&tokens, "access_token");
    let rt = s(&tokens, "refresh_token");
    let (_, body) = refresh(&fake, &rt).await;
    let second = json(&body);
    let at2 = s(&second, "access_token");
    let rt2 = s(&second, "refresh_token");

    // Revoking an access token revokes only that token.
    let (status, body) = post(&fake, "/services/oauth2/revoke", &[("token", &at1)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!fake.is_access_token_active(&at1));
    assert!(fake.is_access_token_active(&at2));
    assert!(fake.is_refresh_token_active(&rt2));

    // Revoking the refresh token revokes its access tokens too.
    let (status, body) = post(&fake, "/services/oauth2/revoke", &[("token", &rt2)]).await;
    assert_eq!(status, 200, "{body}");
    assert!(!fake.is_refresh_token_active(&rt2));
    assert!(!fake.is_access_token_active(&at2));
    assert_refresh_refused(&fake, &rt2).await;

    let (status, body) = post(&fake, "/services/oauth2/revoke", &[("token", "nope")]).await;
    assert_oauth_error(status, &body, "invalid_token", "invalid token");
    assert_eq!(fake.counters().revocations, 2);
    // A revoked (not rotated-out) token is no reuse attempt.
    assert_eq!(fake.counters().refresh_reuse_attempts, 0);
}

#[tokio::test]
async fn a_granted_family_refreshes_and_rotates_like_an_exchanged_one() {
    let fake = start(FakeOptions::default()).await;
    let (access, refresh_token) = fake.grant(
        CLIENT_ID,
        "00D5g000004ABCDEA4",
        "005000000000042AAA",
        "bulk@example.com",
    );
    assert!(fake.is_access_token_active(&access));
    assert!(fake.is_refresh_token_active(&refresh_token));
    assert_eq!(fake.counters().code_exchanges, 0, "a grant is no exchange");
    let (status, body) = refresh(&fake, &refresh_token).await;
    assert_eq!(status, 200, "{body}");
    let answer = json(&body);
    assert!(s(&answer, "id").ends_with("/00D5g000004ABCDEA4/005000000000042AAA"));
    assert!(verify_signature(&answer, SECRET));
    assert!(!fake.is_refresh_token_active(&refresh_token), "rotated out");
    assert!(fake.is_refresh_token_active(&s(&answer, "refresh_token")));
}

#[tokio::test]
async fn wrong_verifier_is_refused() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;
    let (status, body) =
        exchange(&fake, &code, "wrong-verifier-wrong-verifier-wrong-verifier").await;
    assert_oauth_error(status, &body, "invalid_grant", "invalid code verifier");
    assert!(fake.issued_tokens().is_empty());
    assert_eq!(fake.counters().code_exchanges, 0);
}

#[tokio::test]
async fn wrong_redirect_uri_at_token_is_refused() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;
    let (status, body) = post(
        &fake,
        "/services/oauth2/token",
        &[
            ("grant_type", "authorization_code"),
            ("code", &code),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
            ("redirect_uri", "http://127.0.0.1:8080/other"),
            ("code_verifier", VERIFIER),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json(&body)["error"], "redirect_uri_mismatch");
    assert!(fake.issued_tokens().is_empty());
}

#[tokio::test]
async fn client_authentication() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;
    let base = [
        ("grant_type", "authorization_code"),
        ("code", code.as_str()),
        ("redirect_uri", REDIRECT),
        ("code_verifier", VERIFIER),
    ];

    let mut wrong_secret = base.to_vec();
    wrong_secret.extend([("client_id", CLIENT_ID), ("client_secret", "wrong")]);
    let (status, body) = post(&fake, "/services/oauth2/token", &wrong_secret).await;
    assert_oauth_error(
        status,
        &body,
        "invalid_client",
        "invalid client credentials",
    );

    let mut wrong_id = base.to_vec();
    wrong_id.extend([("client_id", "unknown"), ("client_secret", SECRET)]);
    let (status, body) = post(&fake, "/services/oauth2/token", &wrong_id).await;
    assert_oauth_error(
        status,
        &body,
        "invalid_client_id",
        "client identifier invalid",
    );

    // client_secret_basic is refused.
    let response = client()
        .post(format!("{}/services/oauth2/token", fake.base_url()))
        .basic_auth(CLIENT_ID, Some(SECRET))
        .form(&base)
        .send()
        .await
        .unwrap();
    let status = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_oauth_error(
        status,
        &body,
        "invalid_client",
        "invalid client credentials",
    );

    // Unsupported grant type.
    let (status, body) = post(
        &fake,
        "/services/oauth2/token",
        &[
            ("grant_type", "client_credentials"),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ],
    )
    .await;
    assert_eq!(status, 400);
    assert_eq!(json(&body)["error"], "unsupported_grant_type");

    // JSON bodies are not accepted.
    let response = client()
        .post(format!("{}/services/oauth2/token", fake.base_url()))
        .header("content-type", "application/json")
        .body(r#"{"grant_type":"authorization_code"}"#)
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 400);

    // None of the refused attempts consumed the code (client auth comes first).
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");

    // Introspection needs client credentials too.
    let at = s(&json(&body), "access_token");
    let (status, body) = post(
        &fake,
        "/services/oauth2/introspect",
        &[
            ("token", &at),
            ("client_id", CLIENT_ID),
            ("client_secret", "wrong"),
        ],
    )
    .await;
    assert_oauth_error(
        status,
        &body,
        "invalid_client",
        "invalid client credentials",
    );
}

#[tokio::test]
async fn code_reuse_revokes_first_tokens() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let tokens = json(&body);
    let at = s(&tokens, "access_token");
    let rt = s(&tokens, "refresh_token");
    assert!(fake.is_access_token_active(&at));

    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_oauth_error(status, &body, "invalid_grant", "expired authorization code");
    assert!(!fake.is_access_token_active(&at));
    assert!(!fake.is_refresh_token_active(&rt));
    assert_eq!(fake.counters().code_exchanges, 1);
}

#[tokio::test]
async fn expired_code_is_refused() {
    let fake = start_with(|o| o.code_lifetime = Duration::ZERO).await;
    let code = get_code(&fake).await;
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_oauth_error(status, &body, "invalid_grant", "expired authorization code");
}

#[tokio::test]
async fn authorize_errors() {
    let fake = start(FakeOptions::default()).await;

    // Unknown client id and wrong callback: an HTML page, no redirect.
    let evil = [("redirect_uri", "http://127.0.0.1:8080/evil")];
    for (overrides, error) in [
        (&[("client_id", "unknown")][..], "invalid_client_id"),
        (&evil[..], "redirect_uri_mismatch"),
    ] {
        let url = authorize_url(&fake, overrides, &[]);
        let err = fake.approve(&url).await.unwrap_err();
        assert!(err.contains("400") && err.contains(error), "{error}: {err}");
    }

    // Missing PKCE challenge: redirect with invalid_request.
    let callback = fake
        .approve(&authorize_url(
            &fake,
            &[],
            &["code_challenge", "code_challenge_method"],
        ))
        .await
        .unwrap();
    assert_eq!(query_param(&callback, "error").unwrap(), "invalid_request");
    assert_eq!(
        query_param(&callback, "error_description").unwrap(),
        "missing required code challenge"
    );
    assert_eq!(query_param(&callback, "state").unwrap(), STATE);
    assert!(query_param(&callback, "code").is_none());

    // Deny.
    fake.set_approval(Approval::Deny);
    let callback = fake.approve(&authorize_url(&fake, &[], &[])).await.unwrap();
    assert!(callback.starts_with(REDIRECT));
    assert_eq!(query_param(&callback, "error").unwrap(), "access_denied");
    assert_eq!(
        query_param(&callback, "error_description").unwrap(),
        "end-user denied authorization"
    );
    assert_eq!(query_param(&callback, "state").unwrap(), STATE);

    // A configured error.
    fake.set_approval(Approval::Error {
        error: "OAUTH_EC_APP_NOT_FOUND".into(),
        description: "External client app is not installed in this org".into(),
    });
    let callback = fake.approve(&authorize_url(&fake, &[], &[])).await.unwrap();
    assert_eq!(
        query_param(&callback, "error").unwrap(),
        "OAUTH_EC_APP_NOT_FOUND"
    );
    assert_eq!(
        query_param(&callback, "error_description").unwrap(),
        "External client app is not installed in this org"
    );
    assert_eq!(query_param(&callback, "state").unwrap(), STATE);
    assert_eq!(fake.counters().authorizations, 0);

    fake.set_approval(Approval::Approve);
    let callback = fake.approve(&authorize_url(&fake, &[], &[])).await.unwrap();
    assert!(query_param(&callback, "code").is_some());
    assert_eq!(fake.counters().authorizations, 1);
}

#[tokio::test]
async fn scope_without_refresh_token_issues_none() {
    let fake = start(FakeOptions::default()).await;
    let url = authorize_url(&fake, &[("scope", "api")], &[]);
    let code = query_param(&fake.approve(&url).await.unwrap(), "code").unwrap();
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert!(v.get("refresh_token").is_none(), "{body}");
    assert_eq!(v["scope"], "api");

    let url = authorize_url(&fake, &[("scope", "api offline_access")], &[]);
    let code = query_param(&fake.approve(&url).await.unwrap(), "code").unwrap();
    let (_, body) = exchange(&fake, &code, VERIFIER).await;
    assert!(json(&body).get("refresh_token").is_some(), "{body}");
}

#[tokio::test]
async fn rotation_off_keeps_the_refresh_token() {
    let fake = start_with(|o| o.rotate_refresh_tokens = false).await;
    let rt = s(&login(&fake).await, "refresh_token");
    for _ in 0..2 {
        let (status, body) = refresh(&fake, &rt).await;
        assert_eq!(status, 200, "{body}");
        let v = json(&body);
        assert!(v.get("refresh_token").is_none(), "{body}");
        assert!(fake.is_access_token_active(&s(&v, "access_token")));
        assert!(verify_signature(&v, SECRET));
        assert!(fake.is_refresh_token_active(&rt));
    }
    let c = fake.counters();
    assert_eq!(c.refreshes, 2);
    assert_eq!(c.refresh_reuse_attempts, 0);
}

#[tokio::test]
async fn expired_access_tokens() {
    let fake = start(FakeOptions::default()).await;
    let tokens = login(&fake).await;
    let at = s(&tokens, "access_token");
    fake.expire_access_tokens();
    assert!(!fake.is_access_token_active(&at));
    assert_eq!(introspect(&fake, &at).await["active"], false);
    let (status, body) = data_api(&fake, &at).await;
    assert_eq!(status, 401);
    assert_eq!(json(&body)[0]["message"], "Session expired or invalid");
    // Refresh still works and gives a live token.
    let (status, body) = refresh(&fake, &s(&tokens, "refresh_token")).await;
    assert_eq!(status, 200, "{body}");
    let at2 = s(&json(&body), "access_token");
    assert_eq!(data_api(&fake, &at2).await.0, 200);
    // Introspecting a refresh token is not an active access token.
    assert_eq!(
        introspect(&fake, &s(&tokens, "refresh_token")).await["active"],
        false
    );
}

#[tokio::test]
async fn short_access_token_lifetime() {
    let fake = start_with(|o| o.access_token_lifetime = Duration::from_secs(900)).await;
    let at = s(&login(&fake).await, "access_token");
    let info = introspect(&fake, &at).await;
    assert_eq!(
        info["exp"].as_u64().unwrap() - info["iat"].as_u64().unwrap(),
        900
    );
}

#[tokio::test]
async fn set_user_changes_identity() {
    let fake = start(FakeOptions::default()).await;
    fake.set_user(
        "00D000000000002EAA",
        "005000000000002AAA",
        "other@example.org",
    );
    let v = login(&fake).await;
    assert_eq!(
        v["id"],
        format!(
            "{}/id/00D000000000002EAA/005000000000002AAA",
            fake.base_url()
        )
    );
    assert!(s(&v, "access_token").starts_with("00D000000000002!AQ"));
    let info = introspect(&fake, &s(&v, "access_token")).await;
    assert_eq!(info["username"], "other@example.org");
}

#[tokio::test]
async fn fault_status_and_non_json_are_not_processed() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;

    fake.inject(Endpoint::Token, Fault::Status(503));
    fake.inject(Endpoint::Token, Fault::NonJson);
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 503);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200);
    assert!(serde_json::from_str::<Value>(&body).is_err(), "{body}");
    // The code was not consumed by the faulted requests.
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    assert!(json(&body).get("access_token").is_some());
    assert_eq!(fake.counters().token_requests, 3);
    assert_eq!(fake.counters().code_exchanges, 1);
}

#[tokio::test]
async fn fault_oauth_error() {
    let fake = start(FakeOptions::default()).await;
    let rt = s(&login(&fake).await, "refresh_token");
    fake.inject(
        Endpoint::Token,
        Fault::oauth_error(400, "rate_limit_exceeded", "rate limit exceeded"),
    );
    let (status, body) = refresh(&fake, &rt).await;
    assert_oauth_error(status, &body, "rate_limit_exceeded", "rate limit exceeded");
    // Not processed: the refresh token was not rotated.
    assert!(fake.is_refresh_token_active(&rt));
    assert_eq!(fake.counters().refreshes, 0);
    assert_eq!(refresh(&fake, &rt).await.0, 200);
}

#[tokio::test]
async fn fault_bad_signature_and_no_refresh_token() {
    let fake = start(FakeOptions::default()).await;
    let code = get_code(&fake).await;
    fake.inject(Endpoint::Token, Fault::BadSignature);
    let (status, body) = exchange(&fake, &code, VERIFIER).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert!(!verify_signature(&v, SECRET));
    let rt = s(&v, "refresh_token");

    fake.inject(Endpoint::Token, Fault::NoRefreshToken);
    let (status, body) = refresh(&fake, &rt).await;
    assert_eq!(status, 200, "{body}");
    let v = json(&body);
    assert!(v.get("refresh_token").is_none(), "{body}");
    assert!(verify_signature(&v, SECRET));
    // No new refresh token was issued, so the presented one was not rotated out.
    assert!(fake.is_refresh_token_active(&rt));

    let code = get_code(&fake).await;
    fake.inject(Endpoint::Token, Fault::NoRefreshToken);
    let (_, body) = exchange(&fake, &code, VERIFIER).await;
    assert!(json(&body).get("refresh_token").is_none(), "{body}");
}

#[tokio::test]
async fn fault_hang_times_out_client_but_is_processed() {
    let fake = start(FakeOptions::default()).await;
    let rt = s(&login(&fake).await, "refresh_token");
    fake.inject(Endpoint::Token, Fault::Hang(Duration::from_millis(600)));
    let impatient = reqwest::Client::builder()
        .no_proxy()
        .timeout(Duration::from_millis(150))
        .build()
        .unwrap();
    let err = impatient
        .post(format!("{}/services/oauth2/token", fake.base_url()))
        .form(&[
            ("grant_type", "refresh_token"),
            ("refresh_token", rt.as_str()),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ])
        .send()
        .await
        .unwrap_err();
    assert!(err.is_timeout(), "{err}");
    assert!(fake.is_refresh_token_active(&rt));
    // Salesforce still processed the timed-out refresh: the token got rotated out.
    tokio::time::sleep(Duration::from_millis(900)).await;
    assert!(!fake.is_refresh_token_active(&rt));
    assert_eq!(fake.counters().refreshes, 1);

    // A patient client gets the normal answer after the hang.
    fake.inject(
        Endpoint::Introspect,
        Fault::Hang(Duration::from_millis(300)),
    );
    let started = Instant::now();
    assert_eq!(introspect(&fake, "whatever").await["active"], false);
    assert!(started.elapsed() >= Duration::from_millis(300));
}

#[tokio::test]
async fn faults_are_fifo_per_endpoint_and_latency_applies() {
    let fake = start(FakeOptions::default()).await;
    let at = s(&login(&fake).await, "access_token");
    fake.inject(Endpoint::Revoke, Fault::Status(500));
    fake.inject(Endpoint::Revoke, Fault::Status(502));
    fake.inject(Endpoint::Introspect, Fault::Status(503));
    // Faults of another endpoint do not affect this one.
    assert_eq!(introspect_status(&fake, &at).await, 503);
    assert_eq!(
        post(&fake, "/services/oauth2/revoke", &[("token", &at)])
            .await
            .0,
        500
    );
    assert_eq!(
        post(&fake, "/services/oauth2/revoke", &[("token", &at)])
            .await
            .0,
        502
    );
    assert!(fake.is_access_token_active(&at));

    fake.set_latency(Duration::from_millis(250));
    let started = Instant::now();
    assert_eq!(
        post(&fake, "/services/oauth2/revoke", &[("token", &at)])
            .await
            .0,
        200
    );
    assert!(started.elapsed() >= Duration::from_millis(250));
    assert!(!fake.is_access_token_active(&at));
    assert_eq!(fake.counters().revocations, 1);
    assert_eq!(fake.counters().introspections, 1);
}

async fn introspect_status(fake: &FakeSalesforce, token: &str) -> u16 {
    post(
        fake,
        "/services/oauth2/introspect",
        &[
            ("token", token),
            ("client_id", CLIENT_ID),
            ("client_secret", SECRET),
        ],
    )
    .await
    .0
}

#[tokio::test]
async fn interactive_consent_page() {
    let fake = start_with(|o| o.interactive = true).await;
    let url = authorize_url(&fake, &[], &[]);
    let response = client().get(&url).send().await.unwrap();
    assert_eq!(response.status().as_u16(), 200);
    let page = response.text().await.unwrap();
    assert!(page.contains("Allow") && page.contains("Deny"), "{page}");
    assert_eq!(fake.counters().authorizations, 0);

    // Deny through the page.
    let marker = "name=\"request_id\" value=\"";
    let start = page.find(marker).unwrap() + marker.len();
    let id = &page[start..start + page[start..].find('"').unwrap()];
    let action = "/setup/secur/RemoteAccessAuthorizationPage.apexp";
    let response = client()
        .post(format!("{}{action}", fake.base_url()))
        .form(&[("request_id", id), ("decision", "deny")])
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 302);
    let location = response.headers()["location"].to_str().unwrap().to_owned();
    assert_eq!(query_param(&location, "error").unwrap(), "access_denied");
    assert_eq!(query_param(&location, "state").unwrap(), STATE);

    // approve() clicks Allow.
    let callback = fake.approve(&url).await.unwrap();
    assert!(callback.contains("%3D%3D"), "{callback}");
    let code = query_param(&callback, "code").unwrap();
    assert_eq!(exchange(&fake, &code, VERIFIER).await.0, 200);
    assert_eq!(fake.counters().authorizations, 1);
}
