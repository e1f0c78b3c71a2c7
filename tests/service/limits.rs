//! The protective limits of the listeners, black-box: stalled and idle sockets are closed,
//! a request past its timeout and a request beyond the concurrency limit get 503 problems
//! with `Retry-After`, and the callback is rate-limited per client IP.

use std::time::{Duration, Instant};

use fake_salesforce::{Endpoint, FakeSalesforce, Fault};
use reqwest::StatusCode;
use serde_json::Value;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use valo_testkit::app::TestApp;
use valo_testkit::db::TestDatabase;

use crate::resilience::{rejecting, token_of};

async fn app_with(extra: &[(&str, &str)]) -> TestApp {
    let db = TestDatabase::sqlite().await;
    let fake = FakeSalesforce::start(Default::default()).await.unwrap();
    let app = TestApp::spawn_with(&db, &fake, extra).await;
    // The database lives as long as the process's temp folder: the app keeps it open.
    std::mem::forget(db);
    app
}

/// An app whose callback takes 60 requests a minute in bursts of `burst`, trusting
/// `X-Forwarded-For` if `trust_forwarded_for` is "true".
async fn callback_limited_app(burst: &str, trust_forwarded_for: &str) -> TestApp {
    app_with(&[
        ("VALO_OAUTH_CALLBACK_RATE_LIMIT_PER_MINUTE", "60"),
        ("VALO_OAUTH_CALLBACK_RATE_LIMIT_BURST", burst),
        ("VALO_OAUTH_TRUST_FORWARDED_FOR", trust_forwarded_for),
    ])
    .await
}

/// Waits until the server closes `socket` (EOF or reset); returns how long that took.
async fn closed_after(mut socket: TcpStream, limit: Duration) -> Option<Duration> {
    let started = Instant::now();
    let mut buf = [0u8; 1024];
    loop {
        match tokio::time::timeout_at(
            tokio::time::Instant::from_std(started + limit),
            socket.read(&mut buf),
        )
        .await
        {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(started.elapsed()),
            // A 408 or similar before the close is fine: keep reading until the close.
            Ok(Ok(_)) => {}
        }
    }
}

async fn assert_problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let retry_after = response.headers().get("retry-after").cloned();
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert!(retry_after.is_some(), "Retry-After on {code}");
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_and_idle_sockets_are_closed() {
    let app = app_with(&[
        ("VALO_OAUTH_HEADER_READ_TIMEOUT_SECS", "1"),
        ("VALO_OAUTH_REQUEST_TIMEOUT_SECS", "2"),
        ("VALO_OAUTH_IDLE_TIMEOUT_SECS", "3"),
    ])
    .await;
    let mut waits = tokio::task::JoinSet::new();
    for i in 0..300 {
        let mut socket = TcpStream::connect(app.addr).await.unwrap();
        match i % 3 {
            // Half a request line, then nothing: the header-read timeout.
            0 => socket.write_all(b"GET /healthz HT").await.unwrap(),
            // A whole request, answered, then an idle keep-alive connection.
            1 => socket
                .write_all(b"GET /healthz HTTP/1.1\r\nhost: x\r\n\r\n")
                .await
                .unwrap(),
            // Connected, never a byte.
            _ => {}
        }
        waits.spawn(async move { (i % 3, closed_after(socket, Duration::from_secs(10)).await) });
    }
    while let Some(joined) = waits.join_next().await {
        let (kind, closed) = joined.unwrap();
        let took =
            closed.unwrap_or_else(|| panic!("a socket of kind {kind} is still open after 10 s"));
        let most = if kind == 0 { 2.5 } else { 4.5 };
        assert!(
            took.as_secs_f64() < most,
            "kind {kind}: closed after {took:?}, expected under {most} s"
        );
    }
    // The service still serves.
    let health = app.get("/healthz").await;
    assert_eq!(health.status(), StatusCode::OK);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_past_its_timeout_gets_a_503_problem() {
    let app = app_with(&[
        ("VALO_OAUTH_REQUEST_TIMEOUT_SECS", "1"),
        ("VALO_OAUTH_IDLE_TIMEOUT_SECS", "5"),
    ])
    .await;
    let id = app.connect("acme").await;
    let current = token_of(app.access_token("acme", id, None).await).await;
    app.fake
        .inject(Endpoint::Token, Fault::Hang(Duration::from_secs(5)));
    let started = Instant::now();
    let slow = app.access_token("acme", id, rejecting(&current)).await;
    let took = started.elapsed();
    let body = assert_problem(slow, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert!(
        body["detail"].as_str().unwrap().contains("request_timeout"),
        "{body}"
    );
    assert!(
        took < Duration::from_millis(1_800),
        "answered at the timeout: {took:?}"
    );
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_beyond_the_concurrency_limit_are_shed_with_503() {
    let app = app_with(&[("VALO_OAUTH_MAX_CONCURRENT_REQUESTS", "2")]).await;
    let id = app.connect("acme").await;
    let current = token_of(app.access_token("acme", id, None).await).await;
    // Two requests in progress: a refresh held at Salesforce, and a caller waiting for it.
    app.fake
        .inject(Endpoint::Token, Fault::Hang(Duration::from_millis(1_500)));
    let (first, second, shed) = tokio::join!(
        app.access_token("acme", id, rejecting(&current)),
        async {
            tokio::time::sleep(Duration::from_millis(200)).await;
            app.access_token("acme", id, rejecting(&current)).await
        },
        async {
            tokio::time::sleep(Duration::from_millis(500)).await;
            let started = Instant::now();
            let answer = app
                .client
                .get(app.url("/v1/tenants/acme/connections"))
                .bearer_auth(app.token("connections:read", None))
                .send()
                .await
                .unwrap();
            (answer, started.elapsed())
        }
    );
    let (shed, took) = shed;
    assert_problem(shed, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert!(
        took < Duration::from_millis(500),
        "shed at once, not queued: {took:?}"
    );
    assert_eq!(token_of(first).await, token_of(second).await, "both served");
    // Below the limit again: served.
    app.connections("acme").await; // (asserts a 200)
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_callback_is_rate_limited_per_client_ip() {
    // 60 a minute, bursts of 3: the fourth quick request of one client is refused.
    let app = callback_limited_app("3", "false").await;
    let callback = app.url("/oauth2/v1/callback/salesforce");
    for _ in 0..3 {
        let page = app.client.get(&callback).send().await.unwrap();
        assert_eq!(
            page.status(),
            StatusCode::BAD_REQUEST,
            "a page about the missing parameters"
        );
    }
    let refused = app.client.get(&callback).send().await.unwrap();
    assert_problem(refused, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
    // The internal API is not limited by the callback's quota.
    app.connections("acme").await; // (asserts a 200)
    // Forwarded headers are ignored unless trusted: a spoofed client is the same peer.
    let spoofed = app
        .client
        .get(&callback)
        .header("x-forwarded-for", "203.0.113.7")
        .send()
        .await
        .unwrap();
    assert_eq!(spoofed.status(), StatusCode::TOO_MANY_REQUESTS);
    app.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn behind_a_trusted_proxy_the_callback_is_limited_per_forwarded_client() {
    let app = callback_limited_app("2", "true").await;
    let callback = app.url("/oauth2/v1/callback/salesforce");
    let from = |client: &'static str| {
        app.client
            .get(&callback)
            .header("x-forwarded-for", client)
            .send()
    };
    for _ in 0..2 {
        assert_eq!(
            from("203.0.113.7").await.unwrap().status(),
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(
        from("203.0.113.7").await.unwrap().status(),
        StatusCode::TOO_MANY_REQUESTS
    );
    assert_eq!(
        from("198.51.100.9").await.unwrap().status(),
        StatusCode::BAD_REQUEST,
        "another client behind the same proxy has its own quota"
    );
    app.stop().await;
}
