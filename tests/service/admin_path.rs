//! The Salesforce admin's path (issue 10), black-box on SQLite and (with TEST_DATABASE_URL)
//! Postgres: credentials checked at registration, the ECA settings to copy, result pages
//! that name the fix, reconnecting a connection, and identity URLs whose ids do not verify.

use std::collections::BTreeMap;

use fake_salesforce::{Approval, Endpoint, Fault};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET, PUBLIC_URL, RETURN_ORIGIN, TestApp};
use valo_testkit::db::TestDatabase;

// --- helpers -------------------------------------------------------------------------------

/// PUTs the app of `tenant` with these credentials and login URL (`query` e.g.
/// `?verify=false`).
async fn put(
    app: &TestApp,
    tenant: &str,
    query: &str,
    key: &str,
    secret: &str,
    login: &str,
) -> reqwest::Response {
    let body = json!({"consumer_key": key, "consumer_secret": secret, "login_url": login});
    app.put_app_json(tenant, query, &body).await
}

/// [`put`] for tenant `acme`, read with [`json_of`].
async fn register(
    app: &TestApp,
    query: &str,
    key: &str,
    secret: &str,
    login: &str,
) -> (StatusCode, Value, String) {
    json_of(put(app, "acme", query, key, secret, login).await).await
}

/// Asserts that the app of tenant `acme` is not stored.
async fn assert_no_app(app: &TestApp, why: &str) {
    assert_eq!(
        app_status(app, "acme").await.0,
        StatusCode::NOT_FOUND,
        "{why}"
    );
}

async fn json_of(response: reqwest::Response) -> (StatusCode, Value, String) {
    let status = response.status();
    let text = response.text().await.unwrap();
    (
        status,
        serde_json::from_str(&text).unwrap_or(Value::Null),
        text,
    )
}

async fn app_status(app: &TestApp, tenant: &str) -> (StatusCode, Value) {
    app.get_json(
        &format!("/v1/tenants/{tenant}/salesforce-app"),
        "apps:write",
    )
    .await
}

fn query(url: &reqwest::Url) -> BTreeMap<String, String> {
    url.query_pairs().into_owned().collect()
}

async fn reauthorize(app: &TestApp, tenant: &str, id: &str, body: Value) -> reqwest::Response {
    app.client
        .post(app.url(&format!(
            "/v1/tenants/{tenant}/connections/{id}/reauthorize"
        )))
        .bearer_auth(app.token("connections:write", None))
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// Follows an authorization URL through the fake and returns the callback's answer.
async fn finish(app: &TestApp, authorization_url: &str) -> reqwest::Response {
    let callback = app.fake.approve(authorization_url).await.unwrap();
    app.callback(&callback).await
}

/// Reports the current access token as rejected, so the next answer needs a refresh.
async fn force_refresh(app: &TestApp, id: Uuid) -> reqwest::Response {
    let current: Value = app.access_token_body("acme", id).await;
    let current = current["access_token"].as_str().unwrap().to_owned();
    app.access_token("acme", id, Some(json!({"rejected_token": current})))
        .await
}

// --- 1. credentials checked at registration -------------------------------------------------

backend_tests! {
    #[tokio::test]
    async fn registration_refuses_a_wrong_key_or_secret_and_stores_nothing(db, b) {
        let app = TestApp::spawn(&db).await;
        let login = app.fake.base_url();

        let wrong_key = "3MVG9NotAKeyThisOrgKnows00000000000";
        let wrong_secret = "WrongSecretWrongSecretWrongSecret0001";
        for (key, secret, field, detail) in [
            (wrong_key, CLIENT_SECRET, "consumer_key", Some("Consumer Key")),
            (CLIENT_ID, wrong_secret, "consumer_secret", None),
        ] {
            let (status, body, _) = register(&app, "", key, secret, &login).await;
            assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{b}, {field}: {body}");
            assert_eq!(body["code"], "invalid_credentials", "{b}, {field}");
            assert_eq!(body["field"], field, "{b}");
            if let Some(detail) = detail {
                assert!(body["detail"].as_str().unwrap().contains(detail), "{b}: {body}");
            }
            assert_no_app(&app, &format!("{b}, {field}: not stored")).await;
        }

        // Both right: Salesforce refuses only the made-up code (invalid_grant), so it is stored.
        let (status, body, _) = register(&app, "", CLIENT_ID, CLIENT_SECRET, &login).await;
        assert_eq!(status, StatusCode::CREATED, "{b}: {body}");
        assert_eq!(body["credentials_verified"], true, "{b}");
        assert_eq!(app_status(&app, "acme").await.0, StatusCode::OK, "{b}");
        assert_eq!(
            app.fake.counters().code_exchanges,
            0,
            "{b}: nothing exchanged"
        );

        // A refused replacement keeps the app as it was.
        let (status, _, _) = register(&app, "", CLIENT_ID, wrong_secret, &login).await;
        assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{b}");
        assert!(
            app.connect("acme").await.to_string().len() == 36,
            "{b}: old credentials still work"
        );

        // verify=false stores without asking, and says so.
        let before = app.fake.counters().token_requests;
        let (status, body, _) = register(&app, "?verify=false", CLIENT_ID, wrong_secret, &login).await;
        assert_eq!(status, StatusCode::OK, "{b}: {body}");
        assert_eq!(body["credentials_verified"], false, "{b}");
        assert_eq!(app.fake.counters().token_requests, before, "{b}: no call");

        let (status, body, _) = register(&app, "?verify=maybe", CLIENT_ID, CLIENT_SECRET, &login).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_REQUEST, Some("invalid_request")), "{b}");
        app.stop().await;
        }

    #[tokio::test]
    async fn registration_with_the_login_host_away_or_odd_stores_nothing(db, b) {
        let app = TestApp::spawn(&db).await;
        let login = app.fake.base_url();

        app.fake.inject(Endpoint::Token, Fault::Status(503));
        let response = put(&app, "acme", "", CLIENT_ID, CLIENT_SECRET, &login).await;
        assert!(response.headers().get("retry-after").is_some(), "{b}");
        let (status, body, _) = json_of(response).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_unavailable")), "{b}: {body}");
        assert_no_app(&app, b).await;

        // Nothing listens there (the port of a listener just closed).
        let closed = {
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            format!("http://{}", listener.local_addr().unwrap())
        };
        let (status, body, _) = register(&app, "", CLIENT_ID, CLIENT_SECRET, &closed).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::SERVICE_UNAVAILABLE, Some("upstream_unavailable")), "{b}: {body}");
        assert_no_app(&app, b).await;

        // JSON that is neither a token response nor an OAuth error: not Salesforce talking.
        app.fake.inject(Endpoint::Token, Fault::oauth_error(200, "hello", "world"));
        let (status, body, _) = register(&app, "", CLIENT_ID, CLIENT_SECRET, &login).await;
        assert_eq!((status, body["code"].as_str()), (StatusCode::BAD_GATEWAY, Some("upstream_error")), "{b}: {body}");
        assert_no_app(&app, b).await;

        // verify=false stores even then.
        let (status, _, _) = register(&app, "?verify=false", CLIENT_ID, CLIENT_SECRET, &closed).await;
        assert_eq!(status, StatusCode::CREATED, "{b}");
        app.stop().await;
        }

    #[tokio::test]
    async fn a_corrected_put_still_clears_credentials_invalid(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        app.fake.inject(Endpoint::Token, Fault::oauth_error(400, "invalid_client", "invalid client credentials"));
        let refused = force_refresh(&app, id).await;
        assert_eq!(refused.status(), StatusCode::CONFLICT, "{b}");
        assert_eq!(
            app_status(&app, "acme").await.1["status"],
            "credentials_invalid",
            "{b}"
        );
        assert_eq!(app.put_app("acme").await.status(), StatusCode::OK, "{b}");
        assert_eq!(app_status(&app, "acme").await.1["status"], "active", "{b}");
        app.stop().await;
        }
}

// --- 2. the ECA settings ---------------------------------------------------------------------

#[tokio::test]
async fn the_eca_settings_of_the_setup_guide() {
    let db = TestDatabase::sqlite().await;
    let app = TestApp::spawn(&db).await;
    let (status, body) = app
        .get_json("/v1/salesforce/eca-settings", "apps:write")
        .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body,
        json!({
            "callback_url": format!("{PUBLIC_URL}/oauth2/v1/callback/salesforce"),
            "oauth_scopes": [
                {"name": "api", "label": "Manage user data via APIs (api)"},
                {"name": "refresh_token", "label": "Perform requests at any time (refresh_token, offline_access)"},
                {"name": "offline_access", "label": "Perform requests at any time (refresh_token, offline_access)"},
            ],
            "require_secret_for_web_server_flow": true,
            "require_secret_for_refresh_token_flow": true,
            "require_pkce": true,
            "enable_refresh_token_rotation": true,
            "distribution_state": "Local",
        })
    );
    let (status, body) = app
        .get_json("/v1/salesforce/eca-settings", "connections:read")
        .await;
    assert_eq!(
        (status, body["code"].as_str()),
        (StatusCode::FORBIDDEN, Some("forbidden"))
    );
    let confined = app
        .client
        .get(app.url("/v1/salesforce/eca-settings"))
        .bearer_auth(app.token("apps:write", Some("acme")))
        .send()
        .await
        .unwrap();
    assert_eq!(
        confined.status(),
        StatusCode::OK,
        "a tenant's token may read them"
    );
    let anonymous = app.get("/v1/salesforce/eca-settings").await;
    assert_eq!(anonymous.status(), StatusCode::UNAUTHORIZED);
    app.stop().await;
}

// --- 3. result pages that name the fix ---------------------------------------------------------

/// How a failure is brought about.
enum Cause {
    /// The fake redirects back with this error.
    Authorize(&'static str, &'static str),
    /// The person clicks Deny.
    Deny,
    /// The next token request gets this fault.
    Token(Fault),
    /// The app is registered (verify=false) with a wrong secret.
    WrongSecret,
    /// Our database is closed before the callback arrives.
    DatabaseGone,
}

/// One failure and what its page must say.
struct Case {
    cause: Cause,
    code: &'static str,
    status: StatusCode,
    /// Phrases of the fix the page must name.
    says: &'static [&'static str],
}

fn cases() -> Vec<Case> {
    let sf = |error, description| Cause::Authorize(error, description);
    vec![
        Case {
            cause: Cause::Deny,
            code: "access_denied",
            status: StatusCode::BAD_REQUEST,
            says: &["choose Allow"],
        },
        Case {
            cause: sf(
                "OAUTH_EC_APP_NOT_FOUND",
                "External client app is not installed in this org",
            ),
            code: "OAUTH_EC_APP_NOT_FOUND",
            status: StatusCode::BAD_REQUEST,
            says: &["My Domain", "local"],
        },
        Case {
            cause: sf("OAUTH_APP_BLOCKED", "this app is blocked by admin"),
            code: "OAUTH_APP_BLOCKED",
            status: StatusCode::BAD_REQUEST,
            says: &["Unblock"],
        },
        Case {
            cause: sf(
                "OAUTH_APP_ACCESS_DENIED",
                "user is not admin approved to access this app",
            ),
            code: "OAUTH_APP_ACCESS_DENIED",
            status: StatusCode::BAD_REQUEST,
            says: &["Permitted Users", "Edit Policies"],
        },
        Case {
            cause: sf(
                "OAUTH_APPROVAL_ERROR_GENERIC",
                "An unexpected error has occured during authentication.",
            ),
            code: "OAUTH_APPROVAL_ERROR_GENERIC",
            status: StatusCode::BAD_REQUEST,
            says: &["Permitted Users", "IP Relaxation"],
        },
        Case {
            cause: sf("invalid_scope", "the requested scope is not allowed"),
            code: "invalid_scope",
            status: StatusCode::BAD_REQUEST,
            says: &["Selected OAuth Scopes", "Manage user data via APIs (api)"],
        },
        Case {
            cause: sf("invalid_request", "missing required code challenge"),
            code: "invalid_request",
            status: StatusCode::BAD_REQUEST,
            says: &[
                "Require Proof Key for Code Exchange",
                "missing required code challenge",
            ],
        },
        Case {
            cause: sf(
                "redirect_uri_mismatch",
                "redirect_uri must match configuration",
            ),
            code: "redirect_uri_mismatch",
            status: StatusCode::BAD_REQUEST,
            says: &["Callback URL", "/oauth2/v1/callback/salesforce"],
        },
        Case {
            cause: sf("invalid_client_id", "client identifier invalid"),
            code: "invalid_client_id",
            status: StatusCode::BAD_REQUEST,
            says: &["copy the Consumer Key"],
        },
        Case {
            cause: sf("access_denied", "IP restricted or invalid login hours"),
            code: "access_denied",
            status: StatusCode::BAD_REQUEST,
            says: &["IP Relaxation", "Login Hours"],
        },
        Case {
            cause: Cause::Token(Fault::oauth_error(
                400,
                "invalid_grant",
                "IP restricted or invalid login hours",
            )),
            code: "login_restricted",
            status: StatusCode::BAD_REQUEST,
            says: &["IP Relaxation", "Login Hours"],
        },
        Case {
            cause: Cause::Token(Fault::NoRefreshToken),
            code: "no_refresh_token",
            status: StatusCode::BAD_REQUEST,
            says: &["Perform requests at any time (refresh_token, offline_access)"],
        },
        Case {
            cause: Cause::WrongSecret,
            code: "exchange_failed",
            status: StatusCode::BAD_REQUEST,
            says: &[
                "copy the Consumer Secret",
                "Consumer Secret registered with Valo",
            ],
        },
        Case {
            cause: Cause::Token(Fault::BadSignature),
            code: "invalid_signature",
            status: StatusCode::BAD_GATEWAY,
            says: &["signature", "copy both again"],
        },
        Case {
            cause: Cause::Token(Fault::Status(503)),
            code: "upstream_unavailable",
            status: StatusCode::BAD_GATEWAY,
            says: &[
                "Nothing is wrong with your settings",
                "start the Salesforce connection again",
            ],
        },
        Case {
            cause: Cause::DatabaseGone,
            code: "service_unavailable",
            status: StatusCode::SERVICE_UNAVAILABLE,
            says: &["temporary problem", "support reference"],
        },
    ]
}

/// Brings `cause` about, runs a flow (with `body` as the start request), and returns the
/// callback's answer.
async fn fail_with(app: &TestApp, cause: &Cause, body: Value) -> reqwest::Response {
    match cause {
        Cause::Authorize(error, description) => app.fake.set_approval(Approval::Error {
            error: (*error).into(),
            description: (*description).into(),
        }),
        Cause::Deny => app.fake.set_approval(Approval::Deny),
        Cause::Token(fault) => app.fake.inject(Endpoint::Token, fault.clone()),
        Cause::WrongSecret => {
            let response = put(
                app,
                "acme",
                "?verify=false",
                CLIENT_ID,
                "NotTheSecret0000000000000000",
                &app.fake.base_url(),
            )
            .await;
            assert!(response.status().is_success());
        }
        Cause::DatabaseGone => {}
    }
    let url = app.authorization_url("acme", body).await;
    let callback = app.fake.approve(&url).await.unwrap();
    if let Cause::DatabaseGone = cause {
        app.broker.close().await;
    }
    app.callback(&callback).await
}

backend_tests! {
    #[tokio::test]
    async fn every_callback_error_gets_a_page_that_names_the_fix(db, b) {
        for case in cases() {
            // A fresh app per case: the database case closes its pool, and state must not leak.
            let app = TestApp::spawn(&db).await;
            assert!(app.put_app("acme").await.status().is_success());
            let response = fail_with(&app, &case.cause, json!({})).await;
            let code = case.code;
            assert_eq!(response.status(), case.status, "{b} {code}");
            assert!(
                response.headers().get("location").is_none(),
                "{b} {code}: a page, no redirect"
            );
            let request_id = response.headers()["x-request-id"]
                .to_str()
                .unwrap()
                .to_owned();
            let csp = response.headers()["content-security-policy"]
                .to_str()
                .unwrap()
                .to_owned();
            assert!(csp.starts_with("default-src 'none'"), "{b} {code}: {csp}");
            assert_eq!(response.headers()["cache-control"], "no-store");
            let page = response.text().await.unwrap();
            assert!(
                page.starts_with("<!doctype html><html lang=\"en\">"),
                "{b} {code}"
            );
            assert!(
                page.contains("<h1>")
                    && page.contains("<h2>What happened</h2>")
                    && page.contains("<h2>How to fix it</h2>"),
                "{b} {code}: {page}"
            );
            assert!(
                page.contains(&format!("Error code: <code>{code}</code>")),
                "{b} {code}: {page}"
            );
            assert!(
                page.contains(&format!("Support reference: <code>{request_id}</code>")),
                "{b} {code}: {page}"
            );
            for phrase in case.says {
                assert!(
                    page.contains(phrase),
                    "{b} {code}: the page lacks {phrase:?}: {page}"
                );
            }
            assert!(page.contains("prefers-color-scheme:dark"), "{b} {code}");
            for external in ["<script", "src=", "href=", "url(", "@import"] {
                assert!(!page.contains(external), "{b} {code}: {external} in {page}");
            }
            app.stop().await;
        }
        }

    #[tokio::test]
    async fn the_return_to_redirect_keeps_its_contract(db, b) {
        for case in cases() {
            if let Cause::DatabaseGone = case.cause {
                continue; // without the database there is no return_to to trust
            }
            let app = TestApp::spawn(&db).await;
            assert!(app.put_app("acme").await.status().is_success());
            let response = fail_with(
                &app,
                &case.cause,
                json!({"return_to": format!("{RETURN_ORIGIN}/done?x=1")}),
            )
            .await;
            let code = case.code;
            assert_eq!(response.status(), StatusCode::SEE_OTHER, "{b} {code}");
            let target =
                reqwest::Url::parse(response.headers()["location"].to_str().unwrap()).unwrap();
            let q = query(&target);
            let keys: Vec<&str> = q.keys().map(String::as_str).collect();
            assert_eq!(
                keys,
                ["error", "error_description", "status", "x"],
                "{b} {code}: {target}"
            );
            assert_eq!(
                (q["status"].as_str(), q["error"].as_str()),
                ("error", code),
                "{b}: {target}"
            );
            for secret in [CLIENT_SECRET, CLIENT_ID] {
                assert!(!target.as_str().contains(secret), "{b} {code}");
            }
            app.stop().await;
        }
        }

    // --- 4. reconnect ------------------------------------------------------------------------------

    #[tokio::test]
    async fn reconnect_renews_the_same_connection(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let before = app.connections("acme").await;
        assert_eq!(
            before[0]["username"], "admin@example.com",
            "{b}: learned by introspection"
        );
        let old_refresh: Vec<String> = app.fake.active_refresh_tokens();
        assert_eq!(old_refresh.len(), 1, "{b}");

        // Salesforce refuses the refresh token: the connection needs reauthorization.
        app.fake.inject(Endpoint::Token, Fault::oauth_error(400, "invalid_grant", "expired access/refresh token"));
        let refused = force_refresh(&app, id).await;
        assert_eq!(refused.status(), StatusCode::CONFLICT, "{b}");
        assert_eq!(
            app.connections("acme").await[0]["status"],
            "needs_reauthorization",
            "{b}"
        );

        let started = reauthorize(
            &app,
            "acme",
            &id.to_string(),
            json!({"return_to": format!("{RETURN_ORIGIN}/done")}),
        )
        .await;
        assert_eq!(started.status(), StatusCode::CREATED, "{b}");
        assert_eq!(started.headers()["cache-control"], "no-store");
        let started: Value = started.json().await.unwrap();
        assert!(
            started["expires_at"].as_str().unwrap().ends_with('Z'),
            "{b}"
        );
        let url = reqwest::Url::parse(started["authorization_url"].as_str().unwrap()).unwrap();
        assert_eq!(
            query(&url).get("login_hint").map(String::as_str),
            Some("admin@example.com"),
            "{b}: {url}"
        );

        // Introspection fails this time: the username known before is kept.
        app.fake.inject(Endpoint::Introspect, Fault::Status(503));
        let done = finish(&app, url.as_str()).await;
        assert_eq!(done.status(), StatusCode::SEE_OTHER, "{b}");
        let target = reqwest::Url::parse(done.headers()["location"].to_str().unwrap()).unwrap();
        assert_eq!(query(&target)["status"], "connected", "{b}: {target}");
        assert_eq!(
            query(&target)["connection_id"],
            id.to_string(),
            "{b}: the same connection"
        );

        let after = app.connections("acme").await;
        assert_eq!(after.len(), 1, "{b}");
        assert_eq!(after[0]["id"], id.to_string(), "{b}");
        assert_eq!(after[0]["status"], "active", "{b}");
        assert_eq!(after[0]["created_at"], before[0]["created_at"], "{b}");
        assert_eq!(after[0]["username"], "admin@example.com", "{b}: kept");
        assert!(
            !app.fake.is_refresh_token_active(&old_refresh[0]),
            "{b}: the replaced refresh token is revoked"
        );
        let token = app.access_token("acme", id, None).await;
        assert_eq!(token.status(), StatusCode::OK, "{b}: it serves again");
        app.stop().await;
        }

    #[tokio::test]
    async fn reconnect_as_another_user_is_refused_and_leaves_no_second_connection(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        app.fake.set_user(
            "00D5g000004ABCDEA4",
            "0055g00000OTHER",
            "someone.else@example.com",
        );
        let started: Value = reauthorize(&app, "acme", &id.to_string(), json!({}))
            .await
            .json()
            .await
            .unwrap();
        let page = finish(&app, started["authorization_url"].as_str().unwrap()).await;
        assert_eq!(page.status(), StatusCode::BAD_REQUEST, "{b}");
        let page = page.text().await.unwrap();
        assert!(
            page.contains("<code>different_user</code>") && page.contains("admin@example.com"),
            "{b}: {page}"
        );
        let all = app.connections("acme").await;
        assert_eq!(all.len(), 1, "{b}: no second connection");
        assert_eq!(all[0]["user_id"], "0055g000001XYZWAA4", "{b}");
        assert_eq!(app.fake.active_refresh_tokens().len(), 1, "{b}: the other user's new grant was revoked");
        app.stop().await;
        }

    #[tokio::test]
    async fn reconnect_of_an_unknown_or_foreign_connection_is_404(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        assert!(app.put_app("beta").await.status().is_success());
        for (tenant, target) in [
            ("acme", Uuid::new_v4().to_string()),
            ("beta", id.to_string()),
            ("acme", "not-a-uuid".to_owned()),
        ] {
            let response = reauthorize(&app, tenant, &target, json!({})).await;
            let (status, body, _) = json_of(response).await;
            assert_eq!((status, body["code"].as_str()), (StatusCode::NOT_FOUND, Some("not_found")), "{b} {tenant}/{target}");
        }
        let bad_return = reauthorize(
            &app,
            "acme",
            &id.to_string(),
            json!({"return_to": "https://evil.example.com/"}),
        )
        .await;
        assert_eq!(bad_return.status(), StatusCode::BAD_REQUEST, "{b}");
        let unknown_field =
            reauthorize(&app, "acme", &id.to_string(), json!({"login_hint": "x"})).await;
        assert_eq!(
            unknown_field.status(),
            StatusCode::BAD_REQUEST,
            "{b}: the hint is the connection's"
        );
        let read_only = app.post_as(&format!("/v1/tenants/acme/connections/{id}/reauthorize"), "connections:read").await;
        assert_eq!(read_only.status(), StatusCode::FORBIDDEN, "{b}");
        app.stop().await;
        }
}
