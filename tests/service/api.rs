//! The foundation, black-box: API authentication, the tenant-app API, operations endpoints
//! and problem responses — each on SQLite and (with TEST_DATABASE_URL) on Postgres.

use reqwest::StatusCode;
use serde_json::{Value, json};
use valo_testkit::app::{ALL_SCOPES, CLIENT_ID, CLIENT_SECRET, JWT_SECRET, TestApp, mint};

/// An Ed25519 key pair for the public-key configuration (test-only material).
const ED_PUBLIC_PEM: &str = "-----BEGIN PUBLIC KEY-----\nMCowBQYDK2VwAyEA6JAchX6vQHmpxbMfLFZTkt/B0gpl2JYEroFA9shPhYg=\n-----END PUBLIC KEY-----\n";
const ED_PRIVATE_PEM: &str = "-----BEGIN PRIVATE KEY-----\nMC4CAQAwBQYDK2VwBCIEID/QYr9xZptiQvixI16yEEAi0BOug7TAa691091DHnT3\n-----END PRIVATE KEY-----\n";

async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    assert_eq!(
        response.headers()["content-type"].to_str().unwrap(),
        "application/problem+json"
    );
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16());
    body
}

fn encode(claims: &Value, alg: jsonwebtoken::Algorithm, key: &jsonwebtoken::EncodingKey) -> String {
    jsonwebtoken::encode(&jsonwebtoken::Header::new(alg), claims, key).unwrap()
}

fn now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// With `VALO_OAUTH_INTERNAL_LISTEN` set, the public listener serves only the callback and
/// `/healthz`; the API, metrics, the OpenAPI document and readiness are internal.
#[tokio::test]
async fn split_listeners_keep_the_api_off_the_public_port() {
    let db = valo_testkit::db::TestDatabase::sqlite().await;
    let fake = fake_salesforce::FakeSalesforce::start(Default::default())
        .await
        .unwrap();
    let app =
        TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_INTERNAL_LISTEN", "127.0.0.1:0")]).await;
    let internal = app.internal_base.clone().expect("an internal listener");
    assert_ne!(internal, app.base);
    let token = app.token(ALL_SCOPES, None);
    let get = |base: &str, path: &str| {
        app.client
            .get(format!("{base}{path}"))
            .bearer_auth(&token)
            .send()
    };
    let internal_only = [
        "/readyz",
        "/metrics",
        "/openapi.json",
        "/docs",
        "/v1/tenants/acme/connections",
    ];
    for path in internal_only {
        let public = get(&app.base, path).await.unwrap();
        assert_problem(public, StatusCode::NOT_FOUND, "not_found").await;
        let answer = get(&internal, path).await.unwrap();
        assert_eq!(
            answer.status(),
            StatusCode::OK,
            "{path} on the internal listener"
        );
    }
    for base in [&app.base, &internal] {
        let health = get(base, "/healthz").await.unwrap();
        assert_eq!(health.status(), StatusCode::OK, "{base}/healthz");
    }
    // The callback answers on the public listener (a page about the missing parameters) and
    // is absent from the internal one.
    let callback = get(&app.base, "/oauth2/v1/callback/salesforce")
        .await
        .unwrap();
    assert_eq!(callback.status(), StatusCode::BAD_REQUEST);
    assert!(
        callback.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/html")
    );
    let callback = get(&internal, "/oauth2/v1/callback/salesforce")
        .await
        .unwrap();
    assert_problem(callback, StatusCode::NOT_FOUND, "not_found").await;
    app.stop().await;
}

backend_tests! {
    #[tokio::test]
    async fn health_readiness_request_ids_and_route_problems(db) {
        let app = TestApp::spawn(&db).await;
        let health = app.get("/healthz").await;
        assert_eq!(health.status(), StatusCode::OK);
        assert!(
            health.headers().contains_key("x-request-id"),
            "generated request id"
        );
        let ready = app
            .client
            .get(app.url("/readyz"))
            .header("x-request-id", "req-123")
            .send()
            .await
            .unwrap();
        assert_eq!(ready.status(), StatusCode::OK);
        assert_eq!(
            ready.headers()["x-request-id"],
            "req-123",
            "echoed request id"
        );

        let missing = app.get("/nope").await;
        assert_problem(missing, StatusCode::NOT_FOUND, "not_found").await;
        let wrong_method = app.client.post(app.url("/healthz")).send().await.unwrap();
        assert_problem(
            wrong_method,
            StatusCode::METHOD_NOT_ALLOWED,
            "method_not_allowed",
        )
        .await;

        let metrics = app.get("/metrics").await;
        assert_eq!(metrics.status(), StatusCode::OK);
        assert!(
            metrics
                .text()
                .await
                .unwrap()
                .contains("valo_oauth_refreshes_total")
        );
        let openapi: Value = app.get("/openapi.json").await
            .json()
            .await
            .unwrap();
        assert!(openapi["paths"]["/v1/tenants/{tenant}/connections/{id}/access-token"].is_object());
        app.stop().await;
        }

    #[tokio::test]
    async fn readiness_fails_when_the_database_is_gone(db) {
        let app = TestApp::spawn(&db).await;
        app.broker.close().await;
        let ready = app.get("/readyz").await;
        assert_problem(
            ready,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        )
        .await;
        app.stop().await;
        }

    #[tokio::test]
    async fn bearer_tokens_that_must_be_refused_get_401(db) {
        let app = TestApp::spawn(&db).await;
        let path = app.url("/v1/tenants/acme/salesforce-app");
        let hs = jsonwebtoken::EncodingKey::from_secret(JWT_SECRET.as_bytes());
        let good = json!({"aud": "valo-oauth", "exp": now() + 600, "scope": ALL_SCOPES});
        let cases: Vec<(&str, Option<String>)> = vec![
            ("missing", None),
            ("not bearer", Some("Basic dXNlcjpwYXNz".into())),
            ("malformed", Some("Bearer not.a.jwt".into())),
            (
                "bad signature",
                Some(format!(
                    "Bearer {}",
                    encode(
                        &good,
                        jsonwebtoken::Algorithm::HS256,
                        &jsonwebtoken::EncodingKey::from_secret(
                            b"another-secret-0123456789abcdef-xyz"
                        )
                    )
                )),
            ),
            (
                "expired",
                Some(format!(
                    "Bearer {}",
                    mint(JWT_SECRET, ALL_SCOPES, None, -3600)
                )),
            ),
            (
                "wrong audience",
                Some(format!(
                    "Bearer {}",
                    encode(
                        &json!({"aud": "someone-else", "exp": now() + 600, "scope": ALL_SCOPES}),
                        jsonwebtoken::Algorithm::HS256,
                        &hs
                    )
                )),
            ),
            (
                "no audience",
                Some(format!(
                    "Bearer {}",
                    encode(
                        &json!({"exp": now() + 600, "scope": ALL_SCOPES}),
                        jsonwebtoken::Algorithm::HS256,
                        &hs
                    )
                )),
            ),
            (
                "no exp",
                Some(format!(
                    "Bearer {}",
                    encode(
                        &json!({"aud": "valo-oauth", "scope": ALL_SCOPES}),
                        jsonwebtoken::Algorithm::HS256,
                        &hs
                    )
                )),
            ),
            ("alg none", Some(format!("Bearer {}", alg_none(&good)))),
            (
                "HS384 with the right secret",
                Some(format!(
                    "Bearer {}",
                    encode(&good, jsonwebtoken::Algorithm::HS384, &hs)
                )),
            ),
        ];
        for (name, header) in cases {
            let mut request = app.client.get(&path);
            if let Some(h) = header {
                request = request.header("authorization", h);
            }
            let response = request.send().await.unwrap();
            assert_eq!(
                response.status(),
                StatusCode::UNAUTHORIZED,
                "{name} on {}",
                db.backend
            );
            let challenge = response.headers()["www-authenticate"]
                .to_str()
                .unwrap()
                .to_owned();
            // RFC 6750 §3.1: no error code when no token was sent at all.
            let expected = if matches!(name, "missing" | "not bearer") {
                "Bearer"
            } else {
                "Bearer error=\"invalid_token\""
            };
            assert_eq!(challenge, expected, "{name}");
            assert_problem(response, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        }
        // The right token passes the same door (404: no app yet), so the cases above fail for
        // their own reason.
        let ok = app
            .client
            .get(&path)
            .bearer_auth(encode(&good, jsonwebtoken::Algorithm::HS256, &hs))
            .send()
            .await
            .unwrap();
        assert_problem(ok, StatusCode::NOT_FOUND, "not_found").await;
        app.stop().await;
        }
}

fn alg_none(claims: &Value) -> String {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    format!(
        "{}.{}.",
        b64.encode(br#"{"alg":"none","typ":"JWT"}"#),
        b64.encode(claims.to_string())
    )
}

backend_tests! {
    #[tokio::test]
    async fn public_key_configuration_pins_eddsa(db) {
        let dir = std::env::temp_dir().join(format!("valo-pem-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let pem = dir.join("api.pem");
        std::fs::write(&pem, ED_PUBLIC_PEM).unwrap();
        let fake = fake_salesforce::FakeSalesforce::start(Default::default())
            .await
            .unwrap();
        let mut env = vec![("VALO_OAUTH_API_JWT_PUBLIC_KEY_FILE", pem.to_str().unwrap())];
        // The test default sets a secret; a public key replaces it.
        env.push(("VALO_OAUTH_API_JWT_SECRET", ""));
        let app = TestApp::spawn_with(&db, &fake, &env).await;
        let claims = json!({"aud": "valo-oauth", "exp": now() + 600, "scope": ALL_SCOPES});
        let path = app.url("/v1/tenants/acme/salesforce-app");
        let ed = encode(
            &claims,
            jsonwebtoken::Algorithm::EdDSA,
            &jsonwebtoken::EncodingKey::from_ed_pem(ED_PRIVATE_PEM.as_bytes()).unwrap(),
        );
        let ok = app.client.get(&path).bearer_auth(ed).send().await.unwrap();
        assert_eq!(
            ok.status(),
            StatusCode::NOT_FOUND,
            "a valid EdDSA token passes"
        );
        // An HS256 token signed with the public key's bytes: the classic confusion attack.
        let confused = encode(
            &claims,
            jsonwebtoken::Algorithm::HS256,
            &jsonwebtoken::EncodingKey::from_secret(ED_PUBLIC_PEM.as_bytes()),
        );
        let shared_secret = mint(JWT_SECRET, ALL_SCOPES, None, 600);
        for (case, token) in [
            ("HS256 keyed with the public key", confused),
            ("HS256 with the shared secret while EdDSA is configured", shared_secret),
        ] {
            let refused = app.client.get(&path).bearer_auth(token).send().await.unwrap();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{case}");
            assert_problem(refused, StatusCode::UNAUTHORIZED, "unauthenticated").await;
        }
        app.stop().await;
        }

    #[tokio::test]
    async fn scopes_and_tenant_confinement_get_403(db) {
        let app = TestApp::spawn(&db).await;
        let path = app.url("/v1/tenants/acme/salesforce-app");
        let cases = [
            ("connections:read tokens:read", None, "lacks scope"),
            ("apps:writer", None, "scope prefix is not the scope"),
            ("apps:write", Some("other"), "other tenant"),
        ];
        for (scope, tenant, name) in cases {
            let token = mint(JWT_SECRET, scope, tenant, 600);
            let response = app.client.get(&path).bearer_auth(token).send().await.unwrap();
            assert_eq!(response.status(), StatusCode::FORBIDDEN, "{name}");
            assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        }
        let own = app
            .client
            .get(&path)
            .bearer_auth(mint(JWT_SECRET, "apps:write", Some("acme"), 600))
            .send()
            .await
            .unwrap();
        assert_eq!(own.status(), StatusCode::NOT_FOUND, "own tenant passes");
        // The scope is checked before the body is read: a caller who may not call the
        // operation gets 403, not the body's 400/415.
        let wrong_scope = mint(JWT_SECRET, "connections:read", None, 600);
        for (content_type, body) in [("application/json", "{not json"), ("text/plain", "x")] {
            let response = app
                .client
                .put(&path)
                .bearer_auth(&wrong_scope)
                .header("content-type", content_type)
                .body(body)
                .send()
                .await
                .unwrap();
            assert_problem(response, StatusCode::FORBIDDEN, "forbidden").await;
        }
        app.stop().await;
        }

    #[tokio::test]
    async fn tenant_app_lifecycle_never_returns_the_secret(db) {
        let app = TestApp::spawn(&db).await;
        let created = app.put_app("acme").await;
        assert_eq!(created.status(), StatusCode::CREATED);
        assert_eq!(created.headers()["cache-control"], "no-store");
        let text = created.text().await.unwrap();
        assert!(
            !text.contains(CLIENT_SECRET) && !text.contains(CLIENT_ID),
            "{text}"
        );
        let body: Value = serde_json::from_str(&text).unwrap();
        assert_eq!(body["consumer_key_hint"], "3MVG…cdef");
        assert_eq!(body["login_url"], app.fake.base_url());
        assert_eq!(
            body["callback_url"],
            "http://valo-oauth.test/oauth2/v1/callback/salesforce"
        );

        tokio::time::sleep(std::time::Duration::from_millis(5)).await;
        let replaced = app.put_app("acme").await;
        assert_eq!(replaced.status(), StatusCode::OK);
        let replaced: Value = replaced.json().await.unwrap();
        assert_eq!(replaced["created_at"], body["created_at"]);
        assert_ne!(replaced["updated_at"], body["created_at"]);

        let (status, read) = app
            .get_json("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert!(!read.to_string().contains(CLIENT_SECRET));
        assert_eq!(read["consumer_key_hint"], "3MVG…cdef");

        let deleted = app
            .delete("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        let (status, _) = app
            .get_json("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        let again = app
            .delete("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_problem(again, StatusCode::NOT_FOUND, "not_found").await;
        app.stop().await;
        }

    #[tokio::test]
    async fn tenant_app_validation_gives_clear_400s(db) {
        let app = TestApp::spawn(&db).await;
        let token = app.token(ALL_SCOPES, None);
        let put = |tenant: &str, body: Value| {
            app.client
                // The login URLs here are not reachable: only the validation is under test.
                .put(app.url(&format!("/v1/tenants/{tenant}/salesforce-app?verify=false")))
                .bearer_auth(&token)
                .json(&body)
                .send()
        };
        let good_url = app.fake.base_url();
        let long_tenant = "t".repeat(65);
        let body = |key: &str, secret: &str, url: &str| json!({"consumer_key": key, "consumer_secret": secret, "login_url": url});
        let cases: Vec<(&str, &str, Value, &str)> = vec![
            ("bad tenant", "acme corp", body("k", "s", &good_url), "tenant id"),
            ("long tenant", &long_tenant, body("k", "s", &good_url), "tenant id"),
            ("empty key", "acme", body("", "s", &good_url), "consumer_key"),
            ("empty secret", "acme", body("k", "  ", &good_url), "consumer_secret"),
            ("long secret", "acme", body("k", &"s".repeat(257), &good_url), "consumer_secret"),
            ("http", "acme", body("k", "s", "http://login.salesforce.com"), "https"),
            ("host", "acme", body("k", "s", "https://evil.example.com"), "evil.example.com"),
            (
                "lightning",
                "acme",
                body("k", "s", "https://acme.lightning.force.com"),
                "my.salesforce.com",
            ),
            ("userinfo", "acme", body("k", "s", "https://user:pw@acme.my.salesforce.com"), "user"),
            ("ip literal", "acme", body("k", "s", "https://10.0.0.1"), ""),
            ("path", "acme", body("k", "s", "https://login.salesforce.com/services"), "path"),
            (
                "unknown field",
                "acme",
                json!({"consumer_key": "k", "consumer_secret": "s", "login_url": good_url, "extra": 1}),
                "unknown field",
            ),
            (
                "missing field",
                "acme",
                json!({"consumer_key": "k", "login_url": good_url}),
                "consumer_secret",
            ),
        ];
        for (name, tenant, body, mention) in cases {
            let response = put(tenant, body).await.unwrap();
            let problem =
                assert_problem(response, StatusCode::BAD_REQUEST, "invalid_request").await;
            let detail = problem["detail"].as_str().unwrap_or_default();
            assert!(detail.contains(mention), "{name}: {detail}");
            assert!(!detail.contains("s\""), "{name}: no value echoed: {detail}");
        }
        // Accepted: My Domain and a trailing slash normalised away.
        let ok = put(
            "acme",
            body("key", "secret", "https://acme.my.salesforce.com/"),
        )
        .await
        .unwrap();
        assert_eq!(ok.status(), StatusCode::CREATED);
        let ok: Value = ok.json().await.unwrap();
        assert_eq!(ok["login_url"], "https://acme.my.salesforce.com");

        let huge = format!("{{\"consumer_key\": \"{}\"}}", "k".repeat(100_000));
        let json = Some("application/json");
        for (case, content_type, body, status, code) in [
            ("not JSON", json, "{not json".to_owned(), StatusCode::BAD_REQUEST, "invalid_request"),
            (
                "no JSON content type",
                None,
                "consumer_key=x".to_owned(),
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type",
            ),
            ("over the size limit", json, huge, StatusCode::PAYLOAD_TOO_LARGE, "payload_too_large"),
        ] {
            let mut request = app.client.put(app.url("/v1/tenants/acme/salesforce-app"));
            request = request.bearer_auth(&token).body(body);
            if let Some(content_type) = content_type {
                request = request.header("content-type", content_type);
            }
            let response = request.send().await.unwrap();
            assert_eq!(response.status(), status, "{case}");
            assert_problem(response, status, code).await;
        }
        app.stop().await;
        }

    #[tokio::test]
    async fn consumer_secrets_are_not_stored_in_plaintext(db) {
        let app = TestApp::spawn(&db).await;
        let secret = "ZxQ9v8W7u6T5s4R3q2P1o0NnMmLlKkJj";
        let key = "3MVG9UniqueConsumerKeyForThisTest0000";
        app.fake
            .register_app(key, secret, &app.broker.callback_url());
        let response = app.put_app_with("acme", key, secret).await;
        assert_eq!(response.status(), StatusCode::CREATED);
        let dump = db.dump().await;
        assert!(!dump.is_empty());
        assert!(dump.contains("acme"), "the dump holds the tenant row");
        for needle in [secret, &secret[4..13], &secret[20..], key, &key[10..30]] {
            assert!(
                !dump.contains(needle),
                "{} dump contains {needle:?}",
                db.backend
            );
        }
        app.stop().await;
        }
}
