//! Signed webhooks (Standard Webhooks, https://www.standardwebhooks.com/) delivered from the
//! transactional outbox, and the audit trail of token reads — on both backends.
//!
//! A receiver (a small axum server) checks every request it gets: method, content type, the
//! three headers, the signature (verified here with HMAC-SHA256 directly, not with the
//! service's own signing code) and the body's shape; anything wrong is recorded and fails
//! the test.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode as AxumStatus};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use fake_salesforce::{Endpoint, FakeSalesforce, Fault};
use hmac::{Hmac, Mac};
use reqwest::StatusCode;
use serde_json::{Value, json};
use sha2::Sha256;
use uuid::Uuid;
use valo_oauth::store::AuditRecord;
use valo_testkit::app::{CLIENT_SECRET, TEST_KEYS, TestApp, mint, test_env};
use valo_testkit::db::TestDatabase;
use valo_testkit::process::ServiceProcess;

/// The receiver's secret (`whsec_` + base64 of 32 bytes).
const SECRET: &str = "whsec_c2VjcmV0LWZvci10aGUtZXZlbnRzLXRlc3RzLTAxMjM0NTY3ODk=";
const EVENT_TYPES: [&str; 6] = [
    "connection.created",
    "connection.reauthorized",
    "connection.needs_reauthorization",
    "connection.deleted",
    "app.credentials_invalid",
    "app.credentials_valid",
];
const WAIT: Duration = Duration::from_secs(20);

/// One request the receiver accepted (signature and shape checked).
#[derive(Clone, Debug)]
struct Received {
    id: String,
    timestamp: i64,
    body: Value,
    /// What the receiver answered.
    answered: u16,
}

#[derive(Default)]
struct ReceiverState {
    received: Vec<Received>,
    /// Requests that broke the specification (the test fails on any).
    invalid: Vec<String>,
    /// Connections with an event waiting for the receiver's answer.
    in_flight: std::collections::HashSet<String>,
}

/// The Valo backend's endpoint, as a test double.
#[derive(Clone)]
struct Receiver {
    url: String,
    state: Arc<Mutex<ReceiverState>>,
    /// Answer 503 to this many more requests, then 200.
    failures_left: Arc<AtomicUsize>,
    /// While set, requests get no answer (a receiver that hangs).
    hang: Arc<std::sync::atomic::AtomicBool>,
    /// Requests that arrived (answered or not).
    arrivals: Arc<AtomicUsize>,
}

impl Receiver {
    async fn start() -> Receiver {
        let state = Arc::new(Mutex::new(ReceiverState::default()));
        let failures_left = Arc::new(AtomicUsize::new(0));
        let hang = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let arrivals = Arc::new(AtomicUsize::new(0));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}/hooks", listener.local_addr().unwrap());
        let (s, f, h, a) = (
            state.clone(),
            failures_left.clone(),
            hang.clone(),
            arrivals.clone(),
        );
        let app = axum::Router::new().route(
            "/hooks",
            axum::routing::any(
                move |method: axum::http::Method, headers: HeaderMap, body: Bytes| {
                    let (state, failures_left, hang, arrivals) =
                        (s.clone(), f.clone(), h.clone(), a.clone());
                    async move {
                        arrivals.fetch_add(1, Ordering::SeqCst);
                        if hang.load(Ordering::SeqCst) {
                            tokio::time::sleep(Duration::from_secs(120)).await;
                        }
                        let mut received = match check(&method, &headers, &body) {
                            Ok(received) => received,
                            Err(problem) => {
                                state.lock().unwrap().invalid.push(problem);
                                return AxumStatus::BAD_REQUEST;
                            }
                        };
                        // Per-connection order: no event of a connection may arrive while
                        // another of the same connection waits for its answer.
                        let key = received.body["data"]["connection_id"].to_string();
                        if !state.lock().unwrap().in_flight.insert(key.clone()) {
                            state
                                .lock()
                                .unwrap()
                                .invalid
                                .push(format!("two events of {key} at once"));
                        }
                        tokio::time::sleep(Duration::from_millis(20)).await;
                        let fail = failures_left
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok();
                        let status = if fail {
                            AxumStatus::SERVICE_UNAVAILABLE
                        } else {
                            AxumStatus::NO_CONTENT
                        };
                        received.answered = status.as_u16();
                        let mut state = state.lock().unwrap();
                        state.in_flight.remove(&key);
                        state.received.push(received);
                        status
                    }
                },
            ),
        );
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        Receiver {
            url,
            state,
            failures_left,
            hang,
            arrivals,
        }
    }

    fn received(&self) -> Vec<Received> {
        self.state.lock().unwrap().received.clone()
    }

    /// The events answered 2xx, in arrival order.
    fn delivered(&self) -> Vec<Received> {
        self.received()
            .into_iter()
            .filter(|r| r.answered < 300)
            .collect()
    }

    fn assert_all_valid(&self) {
        let invalid = self.state.lock().unwrap().invalid.clone();
        assert!(invalid.is_empty(), "invalid webhook requests: {invalid:?}");
    }

    /// Waits until `count` events of `event_type` were delivered; returns them.
    async fn wait_for(&self, event_type: &str, count: usize) -> Vec<Received> {
        let deadline = Instant::now() + WAIT;
        loop {
            let found: Vec<Received> = self
                .delivered()
                .into_iter()
                .filter(|r| r.body["type"] == event_type)
                .collect();
            if found.len() >= count {
                return found;
            }
            assert!(
                Instant::now() < deadline,
                "no {count} {event_type} within {WAIT:?}; got {:?}",
                self.received()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

/// Checks one request against the specification and our contract.
fn check(
    method: &axum::http::Method,
    headers: &HeaderMap,
    body: &[u8],
) -> Result<Received, String> {
    let header = |name: &str| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned)
            .ok_or_else(|| format!("missing header {name}"))
    };
    if method != axum::http::Method::POST {
        return Err(format!("method {method}"));
    }
    if header("content-type")? != "application/json" {
        return Err("content-type is not application/json".into());
    }
    let id = header("webhook-id")?;
    if !id.starts_with("msg_") || id.len() < 20 {
        return Err(format!("webhook-id {id:?}"));
    }
    let timestamp: i64 = header("webhook-timestamp")?
        .parse()
        .map_err(|_| "webhook-timestamp is not Unix seconds".to_owned())?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    if (now - timestamp).abs() > 300 {
        return Err(format!(
            "webhook-timestamp {timestamp} is off by more than 5 minutes"
        ));
    }
    // The signed content: `{id}.{timestamp}.{body}`, keyed with the secret's decoded bytes;
    // the header may carry several space-separated signatures (key rotation).
    let key = STANDARD
        .decode(SECRET.strip_prefix("whsec_").unwrap())
        .unwrap();
    let mut mac = Hmac::<Sha256>::new_from_slice(&key).unwrap();
    mac.update(format!("{id}.{timestamp}.").as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", STANDARD.encode(mac.finalize().into_bytes()));
    let signatures = header("webhook-signature")?;
    if !signatures.split(' ').any(|s| s == expected) {
        return Err(format!("webhook-signature {signatures:?} does not verify"));
    }
    let body: Value =
        serde_json::from_slice(body).map_err(|_| "the body is not JSON".to_owned())?;
    let kind = body["type"].as_str().unwrap_or_default();
    if !EVENT_TYPES.contains(&kind) {
        return Err(format!("unknown type {kind:?}"));
    }
    let stamp = body["timestamp"].as_str().unwrap_or_default();
    if time::OffsetDateTime::parse(stamp, &time::format_description::well_known::Rfc3339).is_err() {
        return Err(format!("timestamp {stamp:?} is not RFC 3339"));
    }
    let data = body["data"].as_object().ok_or("no data")?;
    for key in ["tenant_id", "connection_id", "org_id", "user_id", "status"] {
        if !data.contains_key(key) {
            return Err(format!("data lacks {key}"));
        }
    }
    let allowed = [
        "tenant_id",
        "connection_id",
        "org_id",
        "user_id",
        "status",
        "reason",
    ];
    if let Some(extra) = data.keys().find(|k| !allowed.contains(&k.as_str())) {
        return Err(format!("data has an undocumented key {extra}"));
    }
    Ok(Received {
        id,
        timestamp,
        body,
        answered: 0,
    })
}

/// Webhooks to `url`, with retries and polling short enough for tests, and a fast audit
/// flush.
fn webhook_env(url: &str) -> Vec<(&'static str, String)> {
    vec![
        ("VALO_OAUTH_WEBHOOK_URL", url.to_owned()),
        ("VALO_OAUTH_WEBHOOK_SECRET", SECRET.to_owned()),
        ("VALO_OAUTH_WEBHOOK_RETRY_BASE_MS", "100".to_owned()),
        ("VALO_OAUTH_WEBHOOK_RETRY_MAX_INTERVAL_SECS", "1".to_owned()),
        ("VALO_OAUTH_WEBHOOK_POLL_MS", "100".to_owned()),
        ("VALO_OAUTH_WEBHOOK_TIMEOUT_MS", "2000".to_owned()),
        ("VALO_OAUTH_AUDIT_FLUSH_MS", "100".to_owned()),
    ]
}

async fn spawn(db: &TestDatabase, fake: &FakeSalesforce, url: &str) -> TestApp {
    let env = webhook_env(url);
    let extra: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    TestApp::spawn_with(db, fake, &extra).await
}

/// No webhooks; the audit flushed every 100 ms.
async fn spawn_audited(db: &TestDatabase, fake: &FakeSalesforce) -> TestApp {
    TestApp::spawn_with(db, fake, &[("VALO_OAUTH_AUDIT_FLUSH_MS", "100")]).await
}

async fn fake() -> FakeSalesforce {
    FakeSalesforce::start(Default::default()).await.unwrap()
}

/// No token, code or secret in any body the receiver got.
fn assert_no_secret_in_bodies(receiver: &Receiver, fake: &FakeSalesforce) {
    let mut secrets = fake.issued_tokens();
    secrets.push(CLIENT_SECRET.to_owned());
    secrets.push(SECRET.to_owned());
    for r in receiver.received() {
        let text = r.body.to_string();
        for secret in &secrets {
            assert!(!text.contains(secret.as_str()), "a secret in {text}");
        }
    }
}

/// A receiver of webhooks, the fake, an app sending webhooks to the receiver, and the id of
/// a connection of tenant `acme` made on it.
async fn connected_with_webhooks(db: &TestDatabase) -> (Receiver, FakeSalesforce, TestApp, Uuid) {
    let receiver = Receiver::start().await;
    let fake = fake().await;
    let app = spawn(db, &fake, &receiver.url).await;
    let id = app.connect("acme").await;
    (receiver, fake, app, id)
}

/// Asks for a fresh token of connection `id` (rejecting the current one) while the token
/// endpoint answers with `fault`.
async fn refresh_with_fault(app: &TestApp, id: Uuid, fault: Fault) -> reqwest::Response {
    let current: Value = app.access_token_body("acme", id).await;
    app.fake.inject(Endpoint::Token, fault);
    let body = json!({"rejected_token": current["access_token"]});
    app.access_token("acme", id, Some(body)).await
}

fn problem_code(body: &Value) -> &str {
    body["code"].as_str().unwrap_or_default()
}

// --- webhooks --------------------------------------------------------------------------------

backend_tests! {
    #[tokio::test]
    async fn a_connections_life_is_reported_in_order(db, b) {
        let (receiver, fake, app, id) = connected_with_webhooks(&db).await;

        let created = receiver.wait_for("connection.created", 1).await;
        let data = &created[0].body["data"];
        assert_eq!(data["tenant_id"], "acme", "{b}");
        assert_eq!(data["connection_id"], id.to_string(), "{b}");
        assert_eq!(data["status"], "active", "{b}");
        assert!(
            data["org_id"].as_str().unwrap().starts_with("00D"),
            "{b}: {data}"
        );
        assert!(
            data["user_id"].as_str().unwrap().starts_with("005"),
            "{b}: {data}"
        );

        // invalid_grant on a refresh: the connection needs a person.
        let refused = refresh_with_fault(&app, id, Fault::oauth_error(400, "invalid_grant", "expired access/refresh token")).await;
        assert_eq!(refused.status(), StatusCode::CONFLICT, "{b}");
        let needs = receiver
            .wait_for("connection.needs_reauthorization", 1)
            .await;
        let data = &needs[0].body["data"];
        assert_eq!(data["connection_id"], id.to_string(), "{b}");
        assert_eq!(data["status"], "needs_reauthorization", "{b}");
        assert!(
            data["reason"].as_str().unwrap().contains("invalid_grant"),
            "{b}: {data}"
        );

        // The same user connects again, then the connection is deleted.
        app.authorize("acme").await;
        receiver.wait_for("connection.reauthorized", 1).await;
        let deleted = app
            .delete(
                &format!("/v1/tenants/acme/connections/{id}"),
                "connections:write",
            )
            .await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT, "{b}");
        let gone = receiver.wait_for("connection.deleted", 1).await;
        assert_eq!(gone[0].body["data"]["status"], "deleted", "{b}");

        // Each event once, in the order of the changes, each with its own id.
        let delivered = receiver.delivered();
        let types: Vec<&str> = delivered
            .iter()
            .map(|r| r.body["type"].as_str().unwrap())
            .collect();
        assert_eq!(
            types,
            [
                "connection.created",
                "connection.needs_reauthorization",
                "connection.reauthorized",
                "connection.deleted"
            ],
            "{b}"
        );
        let mut ids: Vec<&str> = delivered.iter().map(|r| r.id.as_str()).collect();
        ids.dedup();
        assert_eq!(ids.len(), 4, "{b}");
        receiver.assert_all_valid();
        assert_no_secret_in_bodies(&receiver, &fake);
        app.stop().await;
        }

    #[tokio::test]
    async fn refused_app_credentials_and_their_fix_are_reported(db, b) {
        let (receiver, _fake, app, id) = connected_with_webhooks(&db).await;
        receiver.wait_for("connection.created", 1).await;
        let refused = refresh_with_fault(&app, id, Fault::oauth_error(400, "invalid_client", "invalid client credentials")).await;
        assert_eq!(refused.status(), StatusCode::CONFLICT, "{b}");
        let invalid = receiver.wait_for("app.credentials_invalid", 1).await;
        let data = &invalid[0].body["data"];
        assert_eq!(data["tenant_id"], "acme", "{b}");
        assert_eq!(data["status"], "credentials_invalid", "{b}");
        assert_eq!(data["connection_id"], Value::Null, "{b}");

        // A PUT that fixes them; a PUT of an app that was fine sends nothing.
        assert!(app.put_app("acme").await.status().is_success(), "{b}");
        let valid = receiver.wait_for("app.credentials_valid", 1).await;
        assert_eq!(valid[0].body["data"]["status"], "active", "{b}");
        assert!(app.put_app("acme").await.status().is_success(), "{b}");
        tokio::time::sleep(Duration::from_millis(500)).await;
        let types: Vec<String> = receiver
            .delivered()
            .iter()
            .map(|r| r.body["type"].as_str().unwrap().to_owned())
            .collect();
        assert_eq!(
            types,
            [
                "connection.created",
                "app.credentials_invalid",
                "app.credentials_valid"
            ],
            "{b}"
        );
        receiver.assert_all_valid();
        app.stop().await;
        }

    #[tokio::test]
    async fn a_failing_receiver_gets_retries_with_the_same_id(db, b) {
        let receiver = Receiver::start().await;
        receiver.failures_left.store(3, Ordering::SeqCst);
        let fake = fake().await;
        let app = spawn(&db, &fake, &receiver.url).await;
        let id = app.connect("acme").await;
        let delivered = receiver.wait_for("connection.created", 1).await;
        let attempts = receiver.received();
        assert_eq!(attempts.len(), 4, "{b}: three 503s, then the delivery");
        assert!(
            attempts.iter().all(|r| r.id == delivered[0].id),
            "{b}: one webhook-id on every retry: {attempts:?}"
        );
        assert_eq!(
            attempts.iter().map(|r| r.answered).collect::<Vec<_>>(),
            [503, 503, 503, 204],
            "{b}"
        );
        assert_eq!(delivered[0].body["data"]["connection_id"], id.to_string());
        // Delivered once: nothing more comes.
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(receiver.received().len(), 4, "{b}");
        assert!(
            attempts
                .windows(2)
                .all(|w| w[0].timestamp <= w[1].timestamp)
        );
        receiver.assert_all_valid();

        let metrics = app.get_text("/metrics").await;
        for series in [
            "valo_oauth_webhook_attempts_total{outcome=\"rejected\"}",
            "valo_oauth_webhook_attempts_total{outcome=\"delivered\"}",
            "valo_oauth_webhook_outbox_depth",
            "valo_oauth_webhook_oldest_pending_age_seconds",
        ] {
            assert!(metrics.contains(series), "{b}: {series} in {metrics}");
        }
        app.stop().await;
        }

    #[tokio::test]
    async fn an_event_left_by_a_killed_process_is_delivered_after_the_restart(db, b) {
        let receiver = Receiver::start().await;
        let fake = fake().await;
        // A connection made without webhooks: no event is written for it.
        let plain = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = plain.connect("acme").await;
        plain.stop().await;

        // A replica deletes it and is killed (SIGKILL) in the middle of its first attempt,
        // the receiver hanging: the event stays claimed by a dead process.
        receiver.hang.store(true, Ordering::SeqCst);
        let mut env: Vec<(String, String)> = test_env(&db, TEST_KEYS, &[]).into_iter().collect();
        env.extend(
            webhook_env(&receiver.url)
                .into_iter()
                .map(|(k, v)| (k.to_owned(), v)),
        );
        let mut doomed = ServiceProcess::spawn(crate::SERVICE_BINARY, &env).await;
        let token = mint(valo_testkit::app::JWT_SECRET, "connections:write", None, 600);
        let deleted = reqwest::Client::new()
            .delete(format!(
                "{}/v1/tenants/acme/connections/{id}",
                doomed.base()
            ))
            .bearer_auth(token)
            .send()
            .await
            .unwrap();
        assert_eq!(
            deleted.status(),
            StatusCode::NO_CONTENT,
            "{b}: {}",
            doomed.log()
        );
        let deadline = Instant::now() + WAIT;
        while receiver.arrivals.load(Ordering::SeqCst) == 0 {
            assert!(
                Instant::now() < deadline,
                "{b}: no attempt: {}",
                doomed.log()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        doomed.kill9();
        receiver.hang.store(false, Ordering::SeqCst);

        // A new instance on the same database delivers the event once the dead process's
        // claim expires (the webhook timeout, 2 s here, + 5 s).
        let restarted_at = Instant::now();
        let restarted = spawn(&db, &fake, &receiver.url).await;
        let gone = receiver.wait_for("connection.deleted", 1).await;
        assert!(
            restarted_at.elapsed() >= Duration::from_secs(4),
            "{b}: delivered before the claim expired"
        );
        assert_eq!(gone[0].body["data"]["connection_id"], id.to_string(), "{b}");
        assert!(
            receiver.received().iter().all(|r| r.id == gone[0].id),
            "{b}: the retries carry the first attempt's id"
        );
        assert_eq!(receiver.delivered().len(), 1, "{b}: only that event");
        receiver.assert_all_valid();
        restarted.stop().await;
        }
}

const KEYS: usize = 8;
const PER_KEY: usize = 5;

backend_tests! {
    #[tokio::test]
    async fn two_replicas_deliver_each_event_once_and_in_order(db, b) {
        let receiver = Receiver::start().await;
        let fake = fake().await;
        // Migrate first, then fill the outbox as state changes would have.
        let migrate = TestApp::spawn_with(&db, &fake, &[]).await;
        migrate.stop().await;
        let mut expected: HashMap<String, Vec<String>> = HashMap::new();
        for n in 0..PER_KEY {
            for key in 0..KEYS {
                let connection = Uuid::from_u128(key as u128 + 1);
                let id = format!("msg_{}", Uuid::new_v4().simple());
                let body = json!({
                    "type": "connection.deleted",
                    "timestamp": "2026-12-04T10:00:00.000Z",
                    "data": {"tenant_id": "acme", "connection_id": connection.to_string(),
                             "org_id": "00D000000000001AAA", "user_id": "005000000000001AAA",
                             "status": "deleted", "reason": format!("step {n}")}
                });
                let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
                db.execute(&format!(
                    "INSERT INTO webhook_events (id, tenant_id, ordering_key, event_type, payload, \
                     created_at, next_attempt_at) VALUES ('{id}', 'acme', '{connection}', \
                     'connection.deleted', '{body}', {now}, {now})"
                ))
                .await;
                expected.entry(connection.to_string()).or_default().push(id);
            }
        }
        // The first attempts fail: retries must not let a connection's later events pass.
        receiver.failures_left.store(KEYS, Ordering::SeqCst);
        let one = spawn(&db, &fake, &receiver.url).await;
        let two = spawn(&db, &fake, &receiver.url).await;
        let delivered = receiver
            .wait_for("connection.deleted", KEYS * PER_KEY)
            .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert_eq!(
            receiver.delivered().len(),
            KEYS * PER_KEY,
            "{b}: each event delivered exactly once"
        );
        assert_eq!(receiver.received().len(), KEYS * PER_KEY + KEYS, "{b}");
        let mut by_key: BTreeMap<String, Vec<String>> = BTreeMap::new();
        for r in &delivered {
            by_key
                .entry(r.body["data"]["connection_id"].as_str().unwrap().to_owned())
                .or_default()
                .push(r.id.clone());
        }
        for (key, ids) in by_key {
            assert_eq!(ids, expected[&key], "{b}: the order of {key}");
        }
        receiver.assert_all_valid();
        one.stop().await;
        two.stop().await;
        }

    #[tokio::test]
    async fn without_a_webhook_url_no_event_is_written(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        app.delete(
            &format!("/v1/tenants/acme/connections/{id}"),
            "connections:write",
        )
        .await;
        app.stop().await;
        assert_eq!(
            db.execute("DELETE FROM webhook_events").await,
            0,
            "{}",
            db.backend
        );
        }

    #[tokio::test]
    async fn finished_events_and_old_audit_entries_are_pruned(db, b) {
        let store = db.store().await;
        let day = 86_400_000;
        let now = 100 * day;
        for (id, created_at, finished) in [
            ("msg_old_delivered", now - 8 * day, "delivered_at"),
            ("msg_old_given_up", now - 8 * day, "failed_at"),
            ("msg_old_pending", now - 8 * day, ""),
            ("msg_new_delivered", now - day, "delivered_at"),
        ] {
            let (column, value) = if finished.is_empty() {
                (String::new(), String::new())
            } else {
                (format!(", {finished}"), format!(", {now}"))
            };
            db.execute(&format!(
                "INSERT INTO webhook_events (id, tenant_id, ordering_key, event_type, payload, \
                 created_at, next_attempt_at{column}) VALUES ('{id}', 'acme', 'k', \
                 'connection.deleted', '{{}}', {created_at}, {created_at}{value})"
            ))
            .await;
        }
        assert_eq!(store.prune_events(now - 7 * day).await.unwrap(), 2, "{b}");
        assert_eq!(store.outbox_stats().await.unwrap().pending, 1, "{b}");
        assert_eq!(
            db.execute(
                "DELETE FROM webhook_events WHERE id IN ('msg_old_pending', 'msg_new_delivered')"
            )
            .await,
            2,
            "{b}: the pending and the recent event stay"
        );

        let entry = |at| AuditRecord {
            tenant_id: "acme".into(),
            at,
            actor: "svc".into(),
            action: "token_served",
            connection_id: Some(Uuid::from_u128(7)),
            request_id: None,
            count: 2,
        };
        store
            .write_audit(&[entry(now - 91 * day), entry(now - day)])
            .await
            .unwrap();
        // The same key again adds to its entry.
        store.write_audit(&[entry(now - day)]).await.unwrap();
        assert_eq!(store.prune_audit(now - 90 * day).await.unwrap(), 1, "{b}");
        let left = store
            .list_audit(&valo_oauth::store::AuditQuery {
                tenant_id: "acme".into(),
                connection_id: None,
                since: 0,
                until: i64::MAX,
                after: None,
                limit: 10,
            })
            .await
            .unwrap();
        assert_eq!(left.len(), 1, "{b}");
        assert_eq!(left[0].count, 4, "{b}: merged");
        store.close().await;
        }
}

// --- the audit trail ---------------------------------------------------------------------------

async fn audit(app: &TestApp, query: &str, token: &str) -> (StatusCode, Value) {
    let response = app
        .client
        .get(app.url(&format!("/v1/tenants/acme/audit{query}")))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

/// Every entry of the trail matching `query`, page by page (`limit` per page).
async fn all_entries(app: &TestApp, query: &str, limit: usize) -> Vec<Value> {
    let token = app.token("audit:read", Some("acme"));
    let mut entries = Vec::new();
    let mut cursor: Option<String> = None;
    loop {
        let mut q = format!("?limit={limit}{query}");
        if let Some(c) = &cursor {
            q.push_str(&format!("&cursor={c}"));
        }
        let (status, page) = audit(app, &q, &token).await;
        assert_eq!(status, StatusCode::OK, "{page}");
        let got = page["entries"].as_array().unwrap();
        assert!(got.len() <= limit);
        entries.extend(got.iter().cloned());
        match page["next_cursor"].as_str() {
            Some(c) => cursor = Some(c.to_owned()),
            None => return entries,
        }
    }
}

fn sum(entries: &[Value], actor: &str, action: &str, id: Uuid) -> i64 {
    entries
        .iter()
        .filter(|e| {
            e["actor"] == actor && e["action"] == action && e["connection_id"] == id.to_string()
        })
        .map(|e| e["count"].as_i64().unwrap())
        .sum()
}

backend_tests! {
    #[tokio::test]
    async fn token_reads_are_counted_per_actor_and_connection(db, b) {
        let fake = fake().await;
        let app = spawn_audited(&db, &fake).await;
        let id = app.connect("acme").await;
        for _ in 0..20 {
            assert_eq!(
                app.access_token("acme", id, None).await.status(),
                200,
                "{b}"
            );
        }
        // A reader with another `sub`.
        let other = jsonwebtoken::encode(
            &jsonwebtoken::Header::new(jsonwebtoken::Algorithm::HS256),
            &json!({"aud": "valo-oauth", "exp": 4_000_000_000u64, "scope": "tokens:read",
                    "sub": "reporting-job"}),
            &jsonwebtoken::EncodingKey::from_secret(valo_testkit::app::JWT_SECRET.as_bytes()),
        )
        .unwrap();
        for _ in 0..3 {
            let r = app
                .client
                .post(app.url(&format!("/v1/tenants/acme/connections/{id}/access-token")))
                .bearer_auth(&other)
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200, "{b}");
        }
        let deadline = Instant::now() + WAIT;
        let entries = loop {
            let entries = all_entries(&app, "", 2).await;
            if sum(&entries, "test", "token_served", id) >= 20
                && sum(&entries, "reporting-job", "token_served", id) >= 3
            {
                break entries;
            }
            assert!(Instant::now() < deadline, "{b}: {entries:?}");
            tokio::time::sleep(Duration::from_millis(50)).await;
        };
        assert_eq!(
            sum(&entries, "test", "token_served", id),
            20,
            "{b}: {entries:?}"
        );
        assert_eq!(sum(&entries, "reporting-job", "token_served", id), 3, "{b}");
        assert!(
            entries.iter().any(
                |e| e["action"] == "connection_created" && e["connection_id"] == id.to_string()
            ),
            "{b}: {entries:?}"
        );
        assert!(
            entries.iter().any(|e| e["action"] == "app_updated"),
            "{b}: {entries:?}"
        );
        // Filters: this connection only, and a window that ends before everything.
        let only = all_entries(&app, &format!("&connection_id={id}"), 100).await;
        assert!(
            only.iter().all(|e| e["connection_id"] == id.to_string()),
            "{b}"
        );
        let none = all_entries(&app, "&until=2000-01-01T00:00:00Z", 100).await;
        assert!(none.is_empty(), "{b}: {none:?}");
        let since = all_entries(&app, "&since=2000-01-01T00:00:00Z", 100).await;
        assert_eq!(sum(&since, "test", "token_served", id), 20, "{b}");

        // Bad input: a precise 400 naming the parameter.
        let token = app.token("audit:read", Some("acme"));
        for (query, field) in [
            ("?since=yesterday", "since"),
            ("?until=2026-02-30T00:00:00Z", "until"),
            ("?limit=0", "limit"),
            ("?cursor=nonsense", "cursor"),
            ("?connection_id=42", "connection_id"),
        ] {
            let (status, body) = audit(&app, query, &token).await;
            assert_eq!(status, StatusCode::BAD_REQUEST, "{b}: {query}");
            assert_eq!(problem_code(&body), "invalid_request", "{b}");
            assert!(
                body["detail"].as_str().unwrap().contains(field),
                "{b}: {body}"
            );
        }
        app.stop().await;
        }

    #[tokio::test]
    async fn another_tenants_token_cannot_read_the_trail(db, b) {
        let fake = fake().await;
        let app = spawn_audited(&db, &fake).await;
        let id = app.connect("acme").await;
        assert_eq!(app.access_token("acme", id, None).await.status(), 200);
        for token in [
            app.token("audit:read", Some("other")),
            app.token("tokens:read connections:read apps:write", Some("acme")),
        ] {
            let (status, body) = audit(&app, "", &token).await;
            assert_eq!(status, StatusCode::FORBIDDEN, "{b}: {body}");
            assert_eq!(problem_code(&body), "forbidden", "{b}");
        }
        let (status, _) = audit(&app, "", "not-a-token").await;
        assert_eq!(status, StatusCode::UNAUTHORIZED, "{b}");
        // A token for all tenants reading another tenant sees none of acme's entries.
        tokio::time::sleep(Duration::from_millis(300)).await;
        let (status, body) = app.get_json("/v1/tenants/other/audit", "audit:read").await;
        assert_eq!(status, StatusCode::OK, "{b}");
        assert_eq!(body["entries"], json!([]), "{b}");
        app.stop().await;
        }
}

// --- secrets ---------------------------------------------------------------------------------

#[tokio::test]
async fn a_bad_webhook_secret_is_a_configuration_error_naming_the_setting() {
    let db = TestDatabase::sqlite().await;
    for (secret, problem) in [
        ("hunter2-not-a-secret", "must start with whsec_"),
        ("whsec_c2hvcnQ=", "24 to 64 bytes"),
        ("whsec_***", "base64"),
    ] {
        let env = test_env(
            &db,
            TEST_KEYS,
            &[
                ("VALO_OAUTH_WEBHOOK_URL", "https://valo.test/hooks"),
                ("VALO_OAUTH_WEBHOOK_SECRET", secret),
            ],
        );
        let error = valo_oauth::config::load(std::path::Path::new("config/none.toml"), None, &env)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("VALO_OAUTH_WEBHOOK_SECRET: "), "{error}");
        assert!(error.contains(problem), "{error}");
        assert!(!error.contains(secret), "the value is echoed: {error}");
    }
    let env = test_env(
        &db,
        TEST_KEYS,
        &[("VALO_OAUTH_WEBHOOK_URL", "https://valo.test/hooks")],
    );
    let error = valo_oauth::config::load(std::path::Path::new("config/none.toml"), None, &env)
        .unwrap_err()
        .to_string();
    assert!(
        error.starts_with("VALO_OAUTH_WEBHOOK_SECRET: must be set"),
        "{error}"
    );
    // From a file, as container secrets are mounted.
    let file = std::env::temp_dir().join(format!("whsec-{}", Uuid::new_v4()));
    std::fs::write(&file, format!("{SECRET}\n")).unwrap();
    let env = test_env(
        &db,
        TEST_KEYS,
        &[
            ("VALO_OAUTH_WEBHOOK_URL", "https://valo.test/hooks"),
            ("VALO_OAUTH_WEBHOOK_SECRET_FILE", file.to_str().unwrap()),
        ],
    );
    let settings =
        valo_oauth::config::load(std::path::Path::new("config/none.toml"), None, &env).unwrap();
    assert!(settings.broker.webhooks.is_some());
    std::fs::remove_file(file).ok();
}

// --- the contract in the OpenAPI document --------------------------------------------------

#[test]
fn the_openapi_document_lists_every_event_type_audit_action_and_scope() {
    use valo_oauth::broker::audit::AuditAction;
    use valo_oauth::broker::events::EventType;
    use valo_oauth::http::auth::Scope;
    let doc: Value = serde_json::from_str(include_str!("../../docs/openapi.json")).unwrap();
    let strings = |v: &Value| -> Vec<String> {
        v.as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_owned())
            .collect()
    };
    let owned = |names: &mut dyn Iterator<Item = &str>| -> Vec<String> {
        names.map(str::to_owned).collect()
    };
    let enum_of = |schema: &str, property: &str| {
        strings(&doc["components"]["schemas"][schema]["properties"][property]["enum"])
    };
    let types = owned(&mut EventType::ALL.iter().map(|t| t.as_str()));
    assert_eq!(enum_of("WebhookEvent", "type"), types);
    let hooks: Vec<String> = doc["webhooks"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    let mut sorted = types.clone();
    sorted.sort();
    assert_eq!(hooks, sorted, "one webhook per event type");
    assert_eq!(types, EVENT_TYPES, "the receiver knows every type");
    let actions = owned(&mut AuditAction::ALL.iter().map(|a| a.as_str()));
    assert_eq!(enum_of("AuditEntry", "action"), actions);
    let bearer = doc["components"]["securitySchemes"]["bearerAuth"]["description"]
        .as_str()
        .unwrap();
    for scope in Scope::ALL {
        assert!(
            bearer.contains(&format!("`{}`", scope.as_str())),
            "{}",
            scope.as_str()
        );
    }
}
