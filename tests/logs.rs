//! What reaches the logs, at TRACE, captured by the one subscriber of this binary: no secret
//! from a full flow, a refresh and a deletion, nor a consumer secret from a registration
//! and its credential check, nor the webhook secret from deliveries that fail and succeed;
//! and the warning for an identity id kept as sent.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use fake_salesforce::{FakeOptions, FakeSalesforce};
use serde_json::json;
use valo_oauth::config::LogFormat;
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET, JWT_SECRET, PUBLIC_URL, TEST_KEYS, TestApp};
use valo_testkit::backend_tests;

/// A log sink shared with the test.
#[derive(Clone, Default)]
struct Capture(Arc<Mutex<Vec<u8>>>);

impl Write for Capture {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Capture {
    type Writer = Capture;
    fn make_writer(&'a self) -> Capture {
        self.clone()
    }
}

/// The one process-wide subscriber (both backends' cases log into it), at TRACE.
fn capture() -> Capture {
    static CAPTURE: OnceLock<Capture> = OnceLock::new();
    CAPTURE
        .get_or_init(|| {
            let capture = Capture::default();
            valo_oauth::telemetry::init("trace", LogFormat::Json, capture.clone()).unwrap();
            capture
        })
        .clone()
}

backend_tests! {
    #[tokio::test]
    async fn no_secret_in_logs_at_trace_level(db) {
        let capture = capture();
        let mut secrets: Vec<String> = vec![
            CLIENT_SECRET.into(),
            CLIENT_ID.into(),
            JWT_SECRET.into(),
            TEST_KEYS.split_once(':').unwrap().1.into(),
        ];
        let app = TestApp::spawn(&db).await;
        app.put_app("acme").await;
        let url = app
            .authorization_url("acme", json!({"return_to": "https://app.valo.test/done"}))
            .await;
        let callback = app.fake.approve(&url).await.unwrap();
        let callback_url = reqwest::Url::parse(&callback).unwrap();
        for (key, value) in callback_url.query_pairs() {
            if key == "code" || key == "state" {
                secrets.push(value.into_owned());
            }
        }
        let location = app.callback(&callback).await;
        let location =
            reqwest::Url::parse(location.headers()["location"].to_str().unwrap()).unwrap();
        let id: uuid::Uuid = location
            .query_pairs()
            .find(|(k, _)| k == "connection_id")
            .unwrap()
            .1
            .parse()
            .unwrap();
        let first: serde_json::Value = app.access_token_body("acme", id).await;
        let first = first["access_token"].as_str().unwrap().to_owned();
        let refreshed = app
            .access_token("acme", id, Some(json!({"rejected_token": first})))
            .await;
        assert_eq!(refreshed.status(), 200);
        secrets.push(app.token("tokens:read", Some("acme")));
        let deleted = app
            .delete(
                &format!("/v1/tenants/acme/connections/{id}"),
                "connections:write",
            )
            .await;
        assert_eq!(deleted.status(), 204);
        secrets.extend(app.fake.issued_tokens());
        app.stop().await;
        let logs = String::from_utf8(capture.0.lock().unwrap().clone()).unwrap();
        // The capture really holds the flow (so an empty capture cannot pass).
        assert!(logs.contains("connection authorized"), "flow logged");
        assert!(logs.contains("access token refreshed"), "refresh logged");
        assert!(
            logs.contains("/oauth2/v1/callback/salesforce"),
            "callback route logged"
        );
        assert!(logs.lines().count() > 100, "trace level is on");
        for secret in &secrets {
            assert!(secret.len() >= 16, "a real secret: {secret}");
            // Whole, and its middle and end (access tokens begin with the org id, not secret).
            let middle = secret.len() / 2;
            for needle in [
                secret.as_str(),
                &secret[middle - 6..middle + 6],
                &secret[secret.len() - 12..],
            ] {
                assert!(
                    !logs.contains(needle),
                    "log contains {needle:?} (of a secret)"
                );
            }
        }
        // The raw query string of the callback never appears either.
        assert!(!logs.contains("code="), "no raw callback query in the logs");
    }
}

/// Every line logged so far by this binary.
fn logged() -> String {
    String::from_utf8_lossy(&capture().0.lock().unwrap()).into_owned()
}

/// PUTs the app of `tenant` with these credentials and login URL (`query` e.g.
/// `?verify=false`).
async fn put_app(
    app: &TestApp,
    tenant: &str,
    query: &str,
    key: &str,
    secret: &str,
) -> reqwest::Response {
    let body =
        json!({"consumer_key": key, "consumer_secret": secret, "login_url": app.fake.base_url()});
    app.put_app_json(tenant, query, &body).await
}

backend_tests! {
    #[tokio::test]
    async fn the_consumer_secret_is_never_in_the_put_answer_or_the_log(db) {
        capture();
        let secret = "Zq7Wx3Vb9Nm1Lk5Jh2Gf8Dd4Ss6Aa0PpOoIiUuYy";
        let wrong = "Qa1Ws2Ed3Rf4Tg5Yh6Uj7Ik8Ol9Pp0MmNnBbVvCc";
        let key = "3MVG9SecretTestKey000000000000000";
        let app = TestApp::spawn(&db).await;
        let b = db.backend;
        app.fake.register_app(key, secret, &format!("{PUBLIC_URL}/oauth2/v1/callback/salesforce"));
        let answers = [
            put_app(&app, "sec", "", key, wrong).await,
            put_app(&app, "sec", "", key, secret).await,
            put_app(&app, "sec", "?verify=false", key, wrong).await,
        ];
        let mut statuses = Vec::new();
        for answer in answers {
            statuses.push(answer.status().as_u16());
            let headers = format!("{:?}", answer.headers());
            let text = answer.text().await.unwrap();
            for needle in [secret, wrong, &secret[10..22], &wrong[10..22]] {
                assert!(
                    !text.contains(needle) && !headers.contains(needle),
                    "{b}: answer shows {needle}: {text}"
                );
            }
        }
        assert_eq!(statuses, [422, 201, 200], "{b}");
        app.stop().await;
        let log = logged();
        assert!(
            log.contains("tenant app stored") && log.contains("credentials checked at the login host"),
            "the PUTs and their checks ran under the capture"
        );
        for needle in [secret, wrong, &secret[10..22], &wrong[10..22], &secret[secret.len() - 12..]] {
            assert!(!log.contains(needle), "the log holds {needle:?} (of a consumer secret)");
        }
    }

    #[tokio::test]
    async fn ids_with_a_wrong_checksum_are_kept_as_sent_with_a_warning(db, b) {
        capture();
        // The org id's suffix does not match its case; the user id comes in 15 characters.
        let fake = FakeSalesforce::start(FakeOptions {
            org_id: "00D5g000004ABCDZZZ".into(),
            user_id: "0055g000001XYZW".into(),
            ..FakeOptions::default()
        })
        .await
        .unwrap();
        let app = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = app.connect("acme").await;
        let (status, connection) = app.get_connection("acme", id).await;
        assert_eq!(status, 200, "{b}");
        assert_eq!(connection["org_id"], "00D5g000004ABCDZZZ", "{b}: as sent");
        assert_eq!(connection["user_id"], "0055g000001XYZWAA4", "{b}: normalised to 18");
        // Re-authorizing finds the same connection.
        assert_eq!(app.connect("acme").await, id, "{b}");
        app.stop().await;
        let log = logged();
        assert!(
            log.lines().any(|line| line.contains("case-checksum suffix that does not verify")
                && line.contains("00D5g000004ABCDZZZ")
                && line.contains("\"level\":\"WARN\"")),
            "the kept id is logged as a warning"
        );
    }
}

/// A webhook receiver that refuses the first delivery (503) and accepts the rest.
async fn flaky_receiver() -> String {
    let refused = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let app = axum::Router::new().route(
        "/hooks",
        axum::routing::post(move || {
            let refused = refused.clone();
            async move {
                if refused.swap(true, std::sync::atomic::Ordering::SeqCst) {
                    axum::http::StatusCode::NO_CONTENT
                } else {
                    axum::http::StatusCode::SERVICE_UNAVAILABLE
                }
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await });
    format!("http://{addr}/hooks")
}

backend_tests! {
    #[tokio::test]
    async fn the_webhook_secret_never_reaches_the_logs(db) {
        capture();
        const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtbG9ncy10ZXN0LTAxMjM0NTY3ODlhYg==";
        let encoded = SECRET.strip_prefix("whsec_").unwrap();
        let url = flaky_receiver().await;
        let app = TestApp::spawn_with(
            &db,
            &FakeSalesforce::start(FakeOptions::default()).await.unwrap(),
            &[
                ("VALO_OAUTH_WEBHOOK_URL", url.as_str()),
                ("VALO_OAUTH_WEBHOOK_SECRET", SECRET),
                ("VALO_OAUTH_WEBHOOK_RETRY_BASE_MS", "100"),
                ("VALO_OAUTH_WEBHOOK_POLL_MS", "100"),
            ],
        )
        .await;
        app.connect("acme").await;
        // The first attempt fails, the retry is delivered.
        let started = std::time::Instant::now();
        while !logged().contains("webhook delivered") {
            assert!(started.elapsed() < std::time::Duration::from_secs(20), "never delivered");
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
        }
        app.stop().await;
        let logs = logged();
        assert!(logs.contains("webhook attempt failed"), "failures are logged");
        for needle in [SECRET, encoded, &encoded[10..30]] {
            assert!(!logs.contains(needle), "the log holds {needle:?}");
        }
    }
}
