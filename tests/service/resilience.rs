//! Refresh that survives every fault we can survive: the fenced lease, black-box. Each test
//! injects one fault — into Salesforce (the fake), into the database (a TCP proxy that cuts
//! every session, `pg_terminate_backend`, a transaction-mode PgBouncer) — and checks that no
//! refresh token is presented twice, no rotated one is dropped, and the caller gets a token
//! or a clear 503, never a 500.

use std::time::{Duration, Instant};

use fake_salesforce::{Endpoint, FakeOptions, FakeSalesforce, Fault};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET, TestApp};
use valo_testkit::db::TestDatabase;
use valo_testkit::pgbouncer::PgBouncer;
use valo_testkit::proxy::FaultProxy;

pub(crate) async fn token_of(response: reqwest::Response) -> String {
    let status = response.status();
    let body: Value = response.json().await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    body["access_token"].as_str().unwrap().to_owned()
}

async fn problem(response: reqwest::Response) -> (StatusCode, Value) {
    let status = response.status();
    (status, response.json().await.unwrap_or(Value::Null))
}

async fn connection(app: &TestApp, id: Uuid) -> Value {
    let (status, body) = app.get_connection("acme", id).await;
    assert_eq!(status, StatusCode::OK, "{body}");
    body
}

async fn fake() -> FakeSalesforce {
    FakeSalesforce::start(FakeOptions::default()).await.unwrap()
}

/// The fake and a fresh app on `db` talking to it.
async fn fake_and_app(db: &TestDatabase) -> (FakeSalesforce, TestApp) {
    let fake = fake().await;
    let app = TestApp::spawn_with(db, &fake, &[]).await;
    (fake, app)
}

/// A fault proxy in front of the Postgres of `db`, the fake, an app whose database
/// connections go through the proxy, and the id of a connection of tenant `acme` made on it.
async fn connected_through_proxy(db: &TestDatabase) -> (FaultProxy, FakeSalesforce, TestApp, Uuid) {
    let proxy = FaultProxy::start(postgres_addr(db)).await;
    let through = proxy.url_for(&db.url);
    let fake = fake().await;
    let app = TestApp::spawn_with(db, &fake, &[("DATABASE_URL", &through)]).await;
    let id = app.connect("acme").await;
    (proxy, fake, app, id)
}

pub(crate) fn rejecting(token: &str) -> Option<Value> {
    Some(json!({ "rejected_token": token }))
}

/// The Postgres server of `TEST_DATABASE_URL`, for a proxy in front of it.
fn postgres_addr(db: &TestDatabase) -> std::net::SocketAddr {
    let url = url::Url::parse(&db.url).unwrap();
    let host = url.host_str().unwrap();
    let port = url.port().unwrap_or(5432);
    format!("{host}:{port}").parse().unwrap()
}

// --- Salesforce faults ------------------------------------------------------------------------

backend_tests! {
    #[tokio::test]
    async fn refused_app_credentials_are_the_apps_state_and_a_put_revives_every_connection(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token_of(app.access_token("acme", id, None).await).await;

        // The tenant re-registers its app with a mistyped secret; the next refresh is
        // refused with invalid_client.
        app.fake.inject(Endpoint::Token, Fault::oauth_error(400, "invalid_client", "invalid client credentials"));
        let (status, body) = problem(app.access_token("acme", id, rejecting(&current)).await).await;
        assert_eq!(status, StatusCode::CONFLICT, "{b}: {body}");
        assert_eq!(body["code"], "app_credentials_invalid", "{b}");
        assert_eq!(
            connection(&app, id).await["status"],
            "active",
            "{b}: status unchanged"
        );
        let (_, shown) = app
            .get_json("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(shown["status"], "credentials_invalid", "{b}: {shown}");
        assert!(
            shown["status_reason"]
                .as_str()
                .unwrap()
                .contains("invalid_client")
        );
        assert!(!shown.to_string().contains(CLIENT_SECRET));

        // Further requests answer at once, without asking Salesforce.
        let before = app.fake.counters().token_requests;
        let (status, body) = problem(app.access_token("acme", id, rejecting(&current)).await).await;
        assert_eq!(
            (status, body["code"].as_str()),
            (StatusCode::CONFLICT, Some("app_credentials_invalid"))
        );
        assert_eq!(
            app.fake.counters().token_requests,
            before,
            "{b}: no Salesforce call"
        );

        // The corrected PUT: the connection serves again, with no new authorization.
        let authorizations = app.fake.counters().authorizations;
        assert!(
            app.put_app_with("acme", CLIENT_ID, CLIENT_SECRET)
                .await
                .status()
                .is_success()
        );
        let new = token_of(app.access_token("acme", id, rejecting(&current)).await).await;
        assert_ne!(new, current, "{b}");
        assert_eq!(app.fake.counters().authorizations, authorizations, "{b}");
        assert_eq!(app.fake.counters().refresh_reuse_attempts, 0, "{b}");
        let (_, shown) = app
            .get_json("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(shown["status"], "active", "{b}");
        app.stop().await;
        }

    #[tokio::test]
    async fn a_hanging_salesforce_call_is_cut_before_the_lease_ends(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token_of(app.access_token("acme", id, None).await).await;
        // The test settings: Salesforce timeout 2 s, so the lease lasts 22 s.
        app.fake
            .inject(Endpoint::Token, Fault::Hang(Duration::from_secs(30)));
        let started = Instant::now();
        let (status, body) = problem(app.access_token("acme", id, rejecting(&current)).await).await;
        let took = started.elapsed();
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{b}: {body}");
        assert_eq!(body["code"], "upstream_unavailable", "{b}");
        assert!(
            took >= Duration::from_millis(1_900) && took < Duration::from_secs(5),
            "{b}: cut at the 2 s deadline, long before the 22 s lease: {took:?}"
        );
        // The failure was recorded and the lease released: nothing waits for it to expire.
        let c = connection(&app, id).await;
        assert_eq!(c["status"], "active", "{b}");
        // The client's own timeout and the hard deadline are both 2 s here: either may
        // fire first, and both end the call before the lease.
        let last_error = c["last_error"].as_str().unwrap();
        assert!(
            last_error.contains("deadline") || last_error.contains("timed out"),
            "{b}: {c}"
        );
        app.stop().await;
        }

    #[tokio::test]
    async fn a_queue_for_salesforce_slots_never_eats_into_a_calls_deadline(db, b) {
        let fake = fake().await;
        // One call in flight at a time; each takes 1.2 s of the 2 s deadline.
        let app =
            TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_SALESFORCE_MAX_IN_FLIGHT", "1")]).await;
        let ids = connect_users(&app, 2).await;
        let mut current = Vec::new();
        for id in &ids {
            current.push(token_of(app.access_token("acme", *id, None).await).await);
        }
        fake.set_latency(Duration::from_millis(1_200));
        let before = fake.counters();
        // The second refresh waits for the slot (1.2 s), then calls (1.2 s): 2.4 s in all.
        // Were its deadline counted from a lease taken before the wait, it would be cut.
        let (first, second) = tokio::join!(
            app.access_token("acme", ids[0], rejecting(&current[0])),
            async {
                tokio::time::sleep(Duration::from_millis(100)).await;
                app.access_token("acme", ids[1], rejecting(&current[1]))
                    .await
            }
        );
        let first = token_of(first).await;
        let second = token_of(second).await;
        assert_ne!(first, current[0], "{b}");
        assert_ne!(second, current[1], "{b}");
        let after = fake.counters();
        assert_eq!(after.refreshes - before.refreshes, 2, "{b}");
        assert_eq!(after.refresh_reuse_attempts, 0, "{b}");
        fake.set_latency(Duration::ZERO);
        app.stop().await;
        }

    #[tokio::test]
    async fn an_answer_that_fails_a_check_keeps_its_new_refresh_token(db, b) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token_of(app.access_token("acme", id, None).await).await;
        app.fake.inject(Endpoint::Token, Fault::BadSignature);
        let (status, body) = problem(app.access_token("acme", id, rejecting(&current)).await).await;
        assert_eq!(status, StatusCode::BAD_GATEWAY, "{b}: {body}");
        assert_eq!(body["code"], "upstream_error", "{b}");
        let c = connection(&app, id).await;
        assert_eq!(c["status"], "active", "{b}");
        assert!(
            c["last_error"].as_str().unwrap().contains("signature"),
            "{b}: {c}"
        );
        // After the back-off, the next refresh presents the token the refused answer
        // carried: never the rotated-out one.
        app.advance(Duration::from_millis(1_100));
        let new = token_of(app.access_token("acme", id, rejecting(&current)).await).await;
        assert_ne!(new, current);
        assert_eq!(app.fake.counters().refreshes, 2, "{b}");
        assert_eq!(app.fake.counters().refresh_reuse_attempts, 0, "{b}");
        app.stop().await;
        }
}

// --- database faults (Postgres) ---------------------------------------------------------------

postgres_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_database_session_killed_mid_refresh_lets_nobody_present_the_token_twice(db) {
        let (fake, a) = fake_and_app(&db).await;
        let b = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = a.connect("acme").await;
        let current = token_of(a.access_token("acme", id, None).await).await;
        fake.set_latency(Duration::from_millis(1_200));
        let first = {
            let request = a
                .client
                .post(a.url(&format!("/v1/tenants/acme/connections/{id}/access-token")))
                .bearer_auth(a.token("tokens:read", Some("acme")))
                .json(&json!({ "rejected_token": current }));
            tokio::spawn(async move { request.send().await.unwrap() })
        };
        tokio::time::sleep(Duration::from_millis(300)).await;
        // A failover, a pooler restart, an idle limit: every session of both replicas dies
        // while the first replica's refresh is at Salesforce.
        let name = url::Url::parse(&db.url)
            .unwrap()
            .path()
            .trim_start_matches('/')
            .to_owned();
        db.execute(&format!(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity \
             WHERE datname = '{name}' AND pid <> pg_backend_pid()"
        ))
        .await;
        let second = b.access_token("acme", id, rejecting(&current)).await;
        for response in [first.await.unwrap(), second] {
            let status = response.status();
            assert!(
                status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
                "a token or a 503, never a 500: {status} {:?}",
                response.text().await
            );
        }
        assert_eq!(
            fake.counters().refreshes,
            1,
            "the refresh token was presented once"
        );
        assert_eq!(fake.counters().refresh_reuse_attempts, 0);
        fake.set_latency(Duration::ZERO);
        // The connection works afterwards, on both replicas, and refreshes again.
        let new = token_of(b.access_token("acme", id, rejecting(&current)).await).await;
        assert_ne!(new, current);
        let newer = token_of(a.access_token("acme", id, rejecting(&new)).await).await;
        assert_ne!(newer, new);
        assert_eq!(fake.counters().refresh_reuse_attempts, 0);
        a.stop().await;
        b.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn postgres_gone_while_the_answer_is_on_its_way_the_rotated_token_is_still_saved(db) {
        let (proxy, fake, app, id) = connected_through_proxy(&db).await;
        let current = token_of(app.access_token("acme", id, None).await).await;
        fake.set_latency(Duration::from_millis(1_000));
        let request = app.access_token("acme", id, rejecting(&current));
        let outage = async {
            tokio::time::sleep(Duration::from_millis(400)).await;
            proxy.cut();
            // Down from before Salesforce answers until seconds after.
            tokio::time::sleep(Duration::from_secs(3)).await;
            proxy.restore();
        };
        let (response, ()) = tokio::join!(request, outage);
        let status = response.status();
        assert!(
            status == StatusCode::OK || status == StatusCode::SERVICE_UNAVAILABLE,
            "{status}: {:?}",
            response.text().await
        );
        assert_eq!(fake.counters().refreshes, 1);
        fake.set_latency(Duration::ZERO);
        // The rotated token was committed once the database came back: the next refresh
        // presents it, and Salesforce sees no reuse.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let stored = connection(&app, id).await;
        assert_eq!(stored["status"], "active", "{stored}");
        let new = token_of(app.access_token("acme", id, rejecting(&current)).await).await;
        let newer = token_of(app.access_token("acme", id, rejecting(&new)).await).await;
        assert_ne!(newer, new);
        assert_eq!(fake.counters().refresh_reuse_attempts, 0);
        assert!(
            fake.is_refresh_token_active(&active_refresh_token(&fake)),
            "the connection's refresh token is live"
        );
        app.stop().await;
    }
}

fn active_refresh_token(fake: &FakeSalesforce) -> String {
    let active: Vec<String> = fake.active_refresh_tokens();
    assert_eq!(active.len(), 1, "exactly one live refresh token");
    active[0].clone()
}

postgres_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn with_postgres_down_readiness_and_reads_fail_fast_and_cached_tokens_are_served(db) {
        // The shipped default acquire timeout, not the tests' relaxed one.
        let (proxy, _fake, app, id) = connected_through_proxy(&db).await;
        let cached = token_of(app.access_token("acme", id, None).await).await;
        proxy.cut();
        for _ in 0..2 {
            let started = Instant::now();
            let ready = app.get("/readyz").await;
            assert_eq!(ready.status(), StatusCode::SERVICE_UNAVAILABLE);
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );

            let started = Instant::now();
            let (status, body) = app
                .get_json("/v1/tenants/acme/connections", "connections:read")
                .await;
            assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
            assert_eq!(body["code"], "service_unavailable");
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "{:?}",
                started.elapsed()
            );

            assert_eq!(
                token_of(app.access_token("acme", id, None).await).await,
                cached
            );
        }
        // Recovery needs no restart.
        proxy.restore();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let ready = app.get("/readyz").await;
            if ready.status() == StatusCode::OK {
                break;
            }
            assert!(Instant::now() < deadline, "ready again after the outage");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        app.connections("acme").await; // (asserts a 200)
        app.stop().await;
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn through_pgbouncer_in_transaction_mode_three_replicas_refresh_once(db) {
        let admin = std::env::var("TEST_DATABASE_URL").unwrap();
        let Some(bouncer) = PgBouncer::start(&admin).await else {
            eprintln!("pgbouncer is not installed: skipping");
            return;
        };
        let through = bouncer.url_for(&db.url);
        // Migrations take a session-level advisory lock: they run on a direct connection
        // (`valo-oauth migrate`), the replicas behind the pooler do not migrate.
        db.store().await.close().await;
        let fake = fake().await;
        let env = [
            ("DATABASE_URL", through.as_str()),
            ("VALO_OAUTH_DB_TRANSACTION_POOLER", "true"),
            ("VALO_OAUTH_MIGRATE_ON_START", "false"),
        ];
        let replicas = [
            TestApp::spawn_with(&db, &fake, &env).await,
            TestApp::spawn_with(&db, &fake, &env).await,
            TestApp::spawn_with(&db, &fake, &env).await,
        ];
        let id = replicas[0].connect("acme").await;
        let mut current = token_of(replicas[0].access_token("acme", id, None).await).await;
        fake.set_latency(Duration::from_millis(300));
        for round in 1..=2u64 {
            let tasks: Vec<_> = (0..300)
                .map(|i| {
                    let app = &replicas[i % replicas.len()];
                    let request = app
                        .client
                        .post(app.url(&format!("/v1/tenants/acme/connections/{id}/access-token")))
                        .bearer_auth(app.token("tokens:read", Some("acme")))
                        .json(&json!({ "rejected_token": current }));
                    tokio::spawn(async move { token_of(request.send().await.unwrap()).await })
                })
                .collect();
            let mut tokens = Vec::new();
            for task in tasks {
                tokens.push(task.await.unwrap());
            }
            assert!(
                tokens.iter().all(|t| *t == tokens[0] && *t != current),
                "round {round}: every caller got the one new token"
            );
            assert_eq!(
                fake.counters().refreshes,
                round,
                "exactly one refresh per storm"
            );
            assert_eq!(fake.counters().refresh_reuse_attempts, 0);
            current = tokens[0].clone();
        }
        for app in replicas {
            app.stop().await;
        }
        drop(bouncer);
    }
}

// --- process faults: SIGKILL and SIGTERM -------------------------------------------------------

/// The environment of a replica running as its own process, on `db`, talking to the same
/// fake Salesforce (registered by [`TestApp::spawn_with`]) with the same keys as the tests'
/// in-process replicas.
fn process_env(db: &TestDatabase, extra: &[(&str, &str)]) -> Vec<(String, String)> {
    valo_testkit::app::test_env(db, valo_testkit::app::TEST_KEYS, extra)
        .into_iter()
        .collect()
}

/// Connects `n` distinct Salesforce users of one org for tenant `acme`.
async fn connect_users(app: &TestApp, n: usize) -> Vec<Uuid> {
    let mut ids = Vec::new();
    for i in 0..n {
        let user15 = format!("005000000000{:03}", i + 1);
        let user = valo_oauth::salesforce::to_18_char_id(&user15).unwrap();
        app.fake
            .set_user("00D5g000004ABCDEA4", &user, &format!("user{i}@example.com"));
        ids.push(app.connect("acme").await);
    }
    ids
}

async fn post_token(base: &str, id: Uuid, body: Value) -> reqwest::Response {
    reqwest::Client::new()
        .post(format!(
            "{base}/v1/tenants/acme/connections/{id}/access-token"
        ))
        .bearer_auth(valo_testkit::app::mint(
            valo_testkit::app::JWT_SECRET,
            "tokens:read",
            Some("acme"),
            3600,
        ))
        .json(&body)
        .send()
        .await
        .unwrap()
}

backend_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn sigterm_during_a_keepalive_sweep_lets_the_refreshes_in_flight_commit(db, b) {
        let (fake, setup) = fake_and_app(&db).await;
        let ids = connect_users(&setup, 6).await;
        setup.stop().await;

        // Keep-alive due after 1 s, 4 at a time; Salesforce answers after 1.5 s (the
        // replica's Salesforce timeout is 2 s).
        fake.set_latency(Duration::from_millis(1_500));
        let before = fake.counters();
        let mut replica = valo_testkit::process::ServiceProcess::spawn(crate::SERVICE_BINARY, &process_env(
            &db,
            &[
                ("VALO_OAUTH_KEEPALIVE_INTERVAL_SECS", "1"),
                ("VALO_OAUTH_KEEPALIVE_SWEEP_SECS", "1"),
                ("VALO_OAUTH_KEEPALIVE_CONCURRENCY", "4"),
                ("VALO_OAUTH_SHUTDOWN_GRACE_SECS", "10"),
            ],
        ))
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        while fake.counters().token_requests < before.token_requests + 4 {
            assert!(
                Instant::now() < deadline,
                "{b}: the sweep did not start\n{}",
                replica.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        // Four refreshes are at Salesforce now.
        let stopped_at = Instant::now();
        let status = replica.sigterm_and_wait(Duration::from_secs(12)).await;
        assert!(
            status.is_some_and(|s| s.success()),
            "{b}: exit 0 within the grace: {status:?}\n{}",
            replica.log()
        );
        assert!(
            stopped_at.elapsed() >= Duration::from_millis(1_000),
            "{b}: it waited for them"
        );
        let after = fake.counters();
        assert_eq!(
            after.refreshes,
            before.refreshes + 4,
            "{b}: the four in flight completed, no new one started after SIGTERM"
        );
        assert!(!replica.log().contains("rotated_refresh_token_lost"), "{b}");

        // Every rotated token was committed: refreshing each connection again presents the
        // stored refresh token, and Salesforce sees no reuse.
        fake.set_latency(Duration::ZERO);
        let check = TestApp::spawn_with(&db, &fake, &[]).await;
        for id in &ids {
            let current = token_of(check.access_token("acme", *id, None).await).await;
            let refreshed = check.access_token("acme", *id, rejecting(&current)).await;
            assert_eq!(
                refreshed.status(),
                StatusCode::OK,
                "{b}: {id}: {:?}",
                refreshed.text().await
            );
        }
        assert_eq!(fake.counters().refresh_reuse_attempts, 0, "{b}");
        assert_eq!(fake.counters().refreshes, before.refreshes + 4 + 6, "{b}");
        check.stop().await;
        }
}

postgres_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn a_replica_killed_while_holding_a_lease_blocks_the_connection_only_until_it_ends(db) {
        let (fake, survivor) = fake_and_app(&db).await;
        let victim_connection = connect_users(&survivor, 1).await[0];
        let current = token_of(survivor.access_token("acme", victim_connection, None).await).await;

        // The doomed replica: a 1 s Salesforce timeout, so a 21 s lease.
        let mut doomed = valo_testkit::process::ServiceProcess::spawn(
            crate::SERVICE_BINARY,
            &process_env(
                &db,
                &[
                    ("VALO_OAUTH_SALESFORCE_TIMEOUT_MS", "1000"),
                    ("VALO_OAUTH_REFRESH_WAIT_MS", "5000"),
                ],
            ),
        )
        .await;
        // Its refresh of the victim takes the lease and sends the call, which is lost on the
        // way: Salesforce never sees it, so the refresh token is still good — the one case in
        // which a replica dying under its lease must cost nothing.
        fake.inject(Endpoint::Token, Fault::Lost(Duration::from_secs(60)));
        let base = doomed.base();
        let leased_at = Instant::now();
        let victim = tokio::spawn({
            let base = base.clone();
            let current = current.clone();
            async move { post_token(&base, victim_connection, json!({"rejected_token": current})).await }
        });
        tokio::time::sleep(Duration::from_millis(500)).await;
        doomed.kill9();
        let _ = victim.await;
        let leased = connection(&survivor, victim_connection).await;
        assert_eq!(leased["status"], "active", "{leased}");

        // The survivor cannot refresh while the dead replica's lease lives: a clear 503.
        let (status, body) = problem(
            survivor
                .access_token("acme", victim_connection, rejecting(&current))
                .await,
        )
        .await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{body}");
        assert_eq!(body["code"], "service_unavailable", "{body}");
        assert!(
            leased_at.elapsed() < Duration::from_secs(21),
            "still within the lease"
        );

        // Once the lease ends, the survivor serves the connection.
        let token = loop {
            let response = survivor
                .access_token("acme", victim_connection, rejecting(&current))
                .await;
            if response.status() == StatusCode::OK {
                break token_of(response).await;
            }
            let (status, body) = problem(response).await;
            assert_eq!(
                status,
                StatusCode::SERVICE_UNAVAILABLE,
                "never a 500: {body}"
            );
            assert!(
                leased_at.elapsed() < Duration::from_secs(40),
                "the lease never ended"
            );
        };
        let waited = leased_at.elapsed();
        assert!(
            waited >= Duration::from_secs(20),
            "not before the lease ended: {waited:?}"
        );
        assert_ne!(token, current);
        assert_eq!(
            fake.counters().refresh_reuse_attempts,
            0,
            "the victim's refresh token was never presented twice"
        );
        survivor.stop().await;
    }
}
