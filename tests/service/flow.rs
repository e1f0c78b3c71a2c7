//! The authorization flow, black-box against the fake Salesforce: start, callback, code
//! exchange, verification, connections — on SQLite and (with TEST_DATABASE_URL) Postgres.

use std::collections::BTreeMap;
use std::time::Duration;

use fake_salesforce::{Approval, Endpoint, FakeSalesforce, Fault};
use reqwest::StatusCode;
use serde_json::{Value, json};
use valo_testkit::app::{ALL_SCOPES, RETURN_ORIGIN, TestApp, access_expires_in};

fn query(url: &reqwest::Url) -> BTreeMap<String, String> {
    url.query_pairs().into_owned().collect()
}

fn return_to() -> Value {
    json!({"return_to": format!("{RETURN_ORIGIN}/settings/salesforce?tab=1")})
}

/// Starts a flow with a return_to and follows it through the fake; returns the callback
/// response.
async fn run_flow(app: &TestApp, tenant: &str) -> reqwest::Response {
    app.callback(&approved_callback(app, tenant).await).await
}

/// Starts a flow with a `return_to` and has the fake approve it: the callback URL.
async fn approved_callback(app: &TestApp, tenant: &str) -> String {
    let url = app.authorization_url(tenant, return_to()).await;
    app.fake.approve(&url).await.unwrap()
}

/// The redirect target of a callback response that must be a 303.
fn redirect_target(response: &reqwest::Response) -> reqwest::Url {
    assert_eq!(response.status(), StatusCode::SEE_OTHER);
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert_eq!(response.headers()["referrer-policy"], "no-referrer");
    reqwest::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap()
}

async fn assert_error_redirect(
    response: reqwest::Response,
    code: &str,
) -> BTreeMap<String, String> {
    let target = redirect_target(&response);
    assert!(
        target
            .as_str()
            .starts_with(&format!("{RETURN_ORIGIN}/settings/salesforce?tab=1&")),
        "{target}"
    );
    let q = query(&target);
    assert_eq!(q["status"], "error", "{target}");
    assert_eq!(q["error"], code, "{target}");
    assert!(!q.contains_key("connection_id"));
    q
}

async fn assert_error_page(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::BAD_REQUEST);
    assert!(
        response.headers().get("location").is_none(),
        "never a redirect"
    );
    assert_eq!(response.headers()["cache-control"], "no-store");
    assert!(
        response.headers()["content-security-policy"]
            .to_str()
            .unwrap()
            .contains("default-src 'none'")
    );
    assert!(
        response.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    response.text().await.unwrap()
}

backend_tests! {
    #[tokio::test]
    async fn full_flow_creates_a_verified_connection(db) {
        let app = TestApp::spawn(&db).await;
        assert_eq!(app.put_app("acme").await.status(), StatusCode::CREATED);
        let started = app.start_authorization("acme", return_to()).await;
        assert_eq!(started.status(), StatusCode::CREATED);
        let started: Value = started.json().await.unwrap();
        let url = reqwest::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
        assert!(url.as_str().starts_with(&format!(
            "{}/services/oauth2/authorize?",
            app.fake.base_url()
        )));
        let q = query(&url);
        assert_eq!(q["response_type"], "code");
        assert_eq!(q["code_challenge_method"], "S256");
        assert_eq!(q["code_challenge"].len(), 43);
        assert_eq!(q["state"].len(), 43);
        assert_eq!(q["scope"], "api refresh_token offline_access");
        assert_eq!(
            q["redirect_uri"],
            "http://valo-oauth.test/oauth2/v1/callback/salesforce"
        );
        assert!(started["expires_at"].as_str().unwrap().ends_with('Z'));

        let callback = app.fake.approve(url.as_str()).await.unwrap();
        // Salesforce's codes end in "==", percent-encoded once in the redirect.
        assert!(callback.contains("%3D%3D"), "{callback}");
        let response = app.callback(&callback).await;
        let target = redirect_target(&response);
        let q = query(&target);
        assert_eq!(q["status"], "connected");
        assert_eq!(q["tab"], "1", "return_to's own query is kept");
        let id = q["connection_id"].clone();

        let list = app.connections("acme").await;
        assert_eq!(list.len(), 1);
        let c = &list[0];
        assert_eq!(c["id"], id);
        assert_eq!(c["org_id"], "00D5g000004ABCDEA4");
        assert_eq!(c["user_id"], "0055g000001XYZWAA4");
        assert_eq!(c["status"], "active");
        assert_eq!(c["instance_url"], app.fake.base_url());
        assert_eq!(c["login_url"], app.fake.base_url());
        assert_eq!(
            c["scopes"],
            json!(["api", "refresh_token", "offline_access"])
        );
        let text = c.to_string();
        for token in app.fake.issued_tokens() {
            assert!(!text.contains(&token), "no token material in the API");
        }
        let (status, one) = app.get_connection("acme", &id).await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(one["id"], id);
        // Tenant-scoped: another tenant's path does not show it.
        let (status, _) = app.get_connection("other", id).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(app.fake.counters().code_exchanges, 1);
        app.stop().await;
        }

    #[tokio::test]
    async fn success_page_without_return_to(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        let url = app.authorization_url("acme", json!({})).await;
        let response = app.callback(&app.fake.approve(&url).await.unwrap()).await;
        assert_eq!(response.status(), StatusCode::OK);
        assert_eq!(response.headers()["referrer-policy"], "no-referrer");
        assert_eq!(response.headers()["cache-control"], "no-store");
        let html = response.text().await.unwrap();
        assert!(html.contains("Salesforce connected"));
        assert_eq!(app.connections("acme").await.len(), 1);
        app.stop().await;
        }

    #[tokio::test]
    async fn reauthorization_updates_the_connection_and_revokes_the_old_refresh_token(db) {
        let app = TestApp::spawn(&db).await;
        let first = app.connect("acme").await;
        let old_refresh: Vec<String> = app.fake.active_refresh_tokens();
        assert_eq!(old_refresh.len(), 1);
        let location = app.authorize("acme").await;
        assert_eq!(
            query(&location)["connection_id"],
            first.to_string(),
            "same connection"
        );
        assert_eq!(app.connections("acme").await.len(), 1);
        assert!(
            !app.fake.is_refresh_token_active(&old_refresh[0]),
            "old refresh token revoked"
        );
        assert_eq!(app.fake.counters().revocations, 1);
        // A different user of the same org gets a connection of its own.
        app.fake.set_user(
            "00D5g000004ABCDEA4",
            "0055g000001OTHEAA4",
            "other@example.com",
        );
        let location = app.authorize("acme").await;
        assert_ne!(query(&location)["connection_id"], first.to_string());
        assert_eq!(app.connections("acme").await.len(), 2);
        app.stop().await;
        }

    #[tokio::test]
    async fn states_that_tie_to_no_flow_get_an_error_page(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        let callback = approved_callback(&app, "acme").await;
        let state = query(&reqwest::Url::parse(&callback).unwrap())["state"].clone();

        // Tampered: one character changed.
        let mut tampered = state.clone().into_bytes();
        tampered[0] = if tampered[0] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(tampered).unwrap();
        let page =
            assert_error_page(app.callback(&callback.replace(&state, &tampered)).await).await;
        assert!(page.contains("not started here"), "{page}");
        // Foreign: well-formed but never issued.
        let foreign = "x".repeat(43);
        assert_error_page(app.callback(&callback.replace(&state, &foreign)).await).await;
        // Malformed and missing.
        assert_error_page(app.callback(&callback.replace(&state, "short")).await).await;
        let without_state = callback.replace(&format!("state={state}"), "");
        assert_error_page(app.callback(&without_state).await).await;

        // The genuine one still works once (the failures above consumed nothing) …
        let ok = app.callback(&callback).await;
        assert_eq!(query(&redirect_target(&ok))["status"], "connected");
        // … and only once: a replay gets a page, never a redirect.
        let page = assert_error_page(app.callback(&callback).await).await;
        assert!(page.contains("already used"), "{page}");
        assert_eq!(app.fake.counters().code_exchanges, 1);
        app.stop().await;
        }

    #[tokio::test]
    async fn expired_states_are_refused(db) {
        let fake = FakeSalesforce::start(Default::default()).await.unwrap();
        let app =
            TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_AUTHORIZATION_TTL_SECS", "1")]).await;
        app.put_app("acme").await;
        let callback = approved_callback(&app, "acme").await;
        app.advance(Duration::from_millis(1100));
        let page = assert_error_page(app.callback(&callback).await).await;
        assert!(page.contains("expired"), "{page}");
        assert_eq!(
            app.fake.counters().code_exchanges,
            0,
            "no exchange for an expired flow"
        );
        app.stop().await;
        }

    #[tokio::test]
    async fn concurrent_callbacks_with_one_state_proceed_once(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        let callback = approved_callback(&app, "acme").await;
        let target = callback.replacen("http://valo-oauth.test", &app.base, 1);
        let attempts = (0..8).map(|_| {
            let (client, target) = (app.client.clone(), target.clone());
            async move { client.get(target).send().await.unwrap() }
        });
        let responses = valo_testkit::join_all(attempts).await;
        let redirects = responses
            .iter()
            .filter(|r| r.status() == StatusCode::SEE_OTHER)
            .count();
        let pages = responses
            .iter()
            .filter(|r| r.status() == StatusCode::BAD_REQUEST)
            .count();
        assert_eq!((redirects, pages), (1, 7), "{}", db.backend);
        assert_eq!(app.fake.counters().code_exchanges, 1);
        assert_eq!(app.connections("acme").await.len(), 1);
        app.stop().await;
        }
}

backend_tests! {
    #[tokio::test]
    async fn salesforce_errors_pass_through(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        app.fake.set_approval(Approval::Deny);
        let q = assert_error_redirect(run_flow(&app, "acme").await, "access_denied").await;
        assert!(q["error_description"].contains("denied"), "{q:?}");

        app.fake.set_approval(Approval::Error {
            error: "OAUTH_EC_APP_NOT_FOUND".into(),
            description: "External client app is not installed in this org".into(),
        });
        let q = assert_error_redirect(run_flow(&app, "acme").await, "OAUTH_EC_APP_NOT_FOUND").await;
        assert!(q["error_description"].contains("My Domain"), "{q:?}");
        // Without return_to, the page explains the fix.
        let url = app.authorization_url("acme", json!({})).await;
        let page =
            assert_error_page(app.callback(&app.fake.approve(&url).await.unwrap()).await).await;
        assert!(
            page.contains("My Domain") && page.contains("OAUTH_EC_APP_NOT_FOUND"),
            "{page}"
        );
        assert_eq!(app.fake.counters().code_exchanges, 0);
        assert!(app.connections("acme").await.is_empty());
        app.stop().await;
        }

    #[tokio::test]
    async fn bad_signature_and_missing_refresh_token_are_refused(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        app.fake.inject(Endpoint::Token, Fault::BadSignature);
        assert_error_redirect(run_flow(&app, "acme").await, "invalid_signature").await;
        assert!(app.connections("acme").await.is_empty());

        app.fake.inject(Endpoint::Token, Fault::NoRefreshToken);
        let q = assert_error_redirect(run_flow(&app, "acme").await, "no_refresh_token").await;
        assert!(
            q["error_description"].contains("refresh_token, offline_access"),
            "{q:?}"
        );
        assert!(app.connections("acme").await.is_empty());
        // The access token of the refused grant does not stay alive.
        assert_eq!(app.fake.active_access_tokens().len(), 1, "only the bad-signature grant's token is left (never stored)");
        app.stop().await;
        }

    #[tokio::test]
    async fn transient_failures_during_the_exchange(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        for fault in [
            Fault::Status(503),
            Fault::NonJson,
            Fault::Hang(Duration::from_secs(4)),
        ] {
            app.fake.inject(Endpoint::Token, fault.clone());
            let q =
                assert_error_redirect(run_flow(&app, "acme").await, "upstream_unavailable").await;
            assert!(
                q["error_description"].contains("try again"),
                "{fault:?}: {q:?}"
            );
            assert!(
                app.connections("acme").await.is_empty(),
                "{fault:?}: nothing half-written"
            );
        }
        app.fake.inject(Endpoint::Token, Fault::oauth_error(400, "invalid_grant", "expired authorization code"));
        assert_error_redirect(run_flow(&app, "acme").await, "exchange_failed").await;
        // After the faults, a clean flow works.
        assert_eq!(
            query(&redirect_target(&run_flow(&app, "acme").await))["status"],
            "connected"
        );
        app.stop().await;
        }

    #[tokio::test]
    async fn expiry_is_introspected_or_assumed(db) {
        let fake = FakeSalesforce::start(fake_salesforce::FakeOptions {
            access_token_lifetime: Duration::from_secs(900),
            ..Default::default()
        })
        .await
        .unwrap();
        let app = TestApp::spawn_with(
            &db,
            &fake,
            &[("VALO_OAUTH_ASSUMED_TOKEN_LIFETIME_SECS", "3600")],
        )
        .await;
        app.connect("acme").await;
        let c = &app.connections("acme").await[0];
        assert_eq!(c["access_token_expiry_assumed"], false);
        assert!((880..=900).contains(&access_expires_in(c)), "introspected: {c}");
        // Introspection failing: the configured lifetime, recorded as assumed.
        app.fake.inject(Endpoint::Introspect, Fault::Status(503));
        app.authorize("acme").await;
        let c = &app.connections("acme").await[0];
        assert_eq!(c["access_token_expiry_assumed"], true);
        assert!((3580..=3600).contains(&access_expires_in(c)), "assumed: {c}");
        app.stop().await;
        }

    #[tokio::test]
    async fn start_validation(db) {
        let app = TestApp::spawn(&db).await;
        let no_app = app.start_authorization("acme", json!({})).await;
        assert_eq!(no_app.status(), StatusCode::NOT_FOUND);
        let body: Value = no_app.json().await.unwrap();
        assert!(
            body["detail"]
                .as_str()
                .unwrap()
                .contains("no Salesforce app")
        );

        app.put_app("acme").await;
        for bad in [
            "https://evil.example.com/",
            "http://app.valo.test/",
            "https://app.valo.test.evil.com/",
            "https://app.valo.test:8443/",
            "https://user@app.valo.test/",
            "/relative",
            "javascript:alert(1)",
        ] {
            let response = app
                .start_authorization("acme", json!({"return_to": bad}))
                .await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{bad}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "invalid_request");
        }
        let hint = app
            .start_authorization("acme", json!({"login_hint": "user+tag@acme.example"}))
            .await;
        assert_eq!(hint.status(), StatusCode::CREATED);
        let url: Value = hint.json().await.unwrap();
        let url = reqwest::Url::parse(url["authorization_url"].as_str().unwrap()).unwrap();
        assert_eq!(
            query(&url)["login_hint"],
            "user+tag@acme.example",
            "passed verbatim"
        );
        let forbidden = app.post_as("/v1/tenants/acme/authorizations", "connections:read").await;
        assert_eq!(forbidden.status(), StatusCode::FORBIDDEN);
        app.stop().await;
        }

    #[tokio::test]
    async fn no_token_state_or_verifier_in_plaintext_in_the_database(db) {
        let app = TestApp::spawn_registered(&db, "acme").await;
        // One flow completed, one left pending (its verifier stays stored).
        let url = app.authorization_url("acme", return_to()).await;
        let state = query(&reqwest::Url::parse(&url).unwrap())["state"].clone();
        let callback = app.fake.approve(&url).await.unwrap();
        let code = query(&reqwest::Url::parse(&callback).unwrap())["code"].clone();
        assert_eq!(
            query(&redirect_target(&app.callback(&callback).await))["status"],
            "connected"
        );
        let pending = app.authorization_url("acme", json!({})).await;
        let pending_state = query(&reqwest::Url::parse(&pending).unwrap())["state"].clone();

        let dump = db.dump().await;
        assert!(
            dump.contains("00D5g000004ABCDEA4"),
            "the dump holds the connection"
        );
        let tokens = app.fake.issued_tokens();
        assert_eq!(tokens.len(), 2);
        for secret in tokens.iter().chain([&state, &pending_state, &code]) {
            assert!(
                !dump.contains(secret.as_str()),
                "{}: plaintext {secret:?}",
                db.backend
            );
            assert!(
                !dump.contains(&secret[secret.len() - 12..]),
                "{}: a part of {secret:?}",
                db.backend
            );
        }
        // Every verifier is sealed (the v1 ciphertext format), none left in the clear.
        assert_eq!(
            db.execute("UPDATE authorization_sessions SET return_to = return_to WHERE pkce_verifier_enc NOT LIKE 'v1.%'").await,
            0
        );
        assert!(db.execute("UPDATE authorization_sessions SET return_to = return_to WHERE pkce_verifier_enc LIKE 'v1.%'").await >= 1);
        let _ = ALL_SCOPES;
        app.stop().await;
        }
}
