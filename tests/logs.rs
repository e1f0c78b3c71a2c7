//! No secret reaches the logs, at any level: a full flow, a refresh and a deletion run with
//! every target at TRACE, and the captured output is searched for each secret.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::io::Write;
use std::sync::{Arc, Mutex, OnceLock};

use serde_json::json;
use valo_oauth::config::LogFormat;
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET, JWT_SECRET, TEST_KEYS, TestApp};
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
        let first: serde_json::Value = app
            .access_token("acme", id, None)
            .await
            .json()
            .await
            .unwrap();
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
