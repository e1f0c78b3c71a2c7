//! The token service, black-box: cached tokens, refresh with rotation, exactly one refresh
//! per connection (one process and several replicas), failure classes, keep-alive and
//! revocation — on SQLite and (with TEST_DATABASE_URL) Postgres.

use std::time::Duration;

use fake_salesforce::{Endpoint, FakeOptions, FakeSalesforce, Fault};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;
use valo_testkit::app::{KEEPALIVE_BY_HAND, TestApp, access_expires_in};
use valo_testkit::db::TestDatabase;

async fn token_of(response: reqwest::Response) -> String {
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers()["cache-control"], "no-store");
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["token_type"], "Bearer");
    body["access_token"].as_str().unwrap().to_owned()
}

/// A fresh access token of tenant `acme`'s connection `id` (see [`token_of`]), telling the
/// service which token the caller saw refused, if any.
async fn token(app: &TestApp, id: Uuid, rejected: Option<&str>) -> String {
    let body = rejected.map(|token| json!({ "rejected_token": token }));
    token_of(app.access_token("acme", id, body).await).await
}

async fn problem(response: reqwest::Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(response.status(), status);
    let body: Value = response.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    body
}

/// [`problem`] of a plain access-token request for `acme`'s connection `id`.
async fn token_problem(app: &TestApp, id: Uuid, status: StatusCode, code: &str) -> Value {
    problem(app.access_token("acme", id, None).await, status, code).await
}

async fn connection(app: &TestApp, id: Uuid) -> Value {
    let (status, body) = app.get_connection("acme", id).await;
    assert_eq!(status, StatusCode::OK);
    body
}

async fn fake_with(options: FakeOptions) -> FakeSalesforce {
    FakeSalesforce::start(options).await.unwrap()
}

/// `n` concurrent access-token calls, spread over `apps`; the tokens they got.
async fn concurrent_tokens(apps: &[&TestApp], id: Uuid, n: usize, body: Value) -> Vec<String> {
    let calls = (0..n).map(|i| {
        let app = apps[i % apps.len()];
        let request = app
            .client
            .post(app.url(&format!("/v1/tenants/acme/connections/{id}/access-token")))
            .bearer_auth(app.token("tokens:read", Some("acme")))
            .json(&body);
        async move { token_of(request.send().await.unwrap()).await }
    });
    valo_testkit::join_all(calls).await
}

backend_tests! {
    #[tokio::test]
    async fn cached_tokens_are_served_without_the_database(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let issued = app.fake.issued_tokens();
        let first = token(&app, id, None).await;
        assert!(
            issued.contains(&first),
            "the access token from the exchange"
        );
        // With the database gone, the cache still answers.
        app.broker.close().await;
        let second = token_of(
            app.access_token("acme", id, Some(json!({"min_ttl_seconds": 60})))
                .await,
        )
        .await;
        assert_eq!(first, second);
        assert_eq!(app.fake.counters().refreshes, 0);
        // Another tenant's token for the same id: the cache does not leak across tenants.
        let other = app.post_as(&format!("/v1/tenants/other/connections/{id}/access-token"), "tokens:read").await;
        assert_ne!(other.status(), StatusCode::OK);
        app.stop().await;
        }

    #[tokio::test]
    async fn a_cached_answer_is_the_fresh_answer_byte_for_byte(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        // Another process on the same database: its cache is empty, so its first answer is
        // read from the database and the next ones come from its cache.
        let replica = TestApp::spawn_with(&db, &app.fake, &[]).await;
        let mut bodies = Vec::new();
        for _ in 0..3 {
            let response = replica.access_token("acme", id, None).await;
            assert_eq!(response.status(), StatusCode::OK);
            assert_eq!(response.headers()["content-type"], "application/json");
            assert_eq!(response.headers()["cache-control"], "no-store");
            bodies.push(response.bytes().await.unwrap());
        }
        // The first answer came from the database, the next two from the cache.
        let metrics = replica.get_text("/metrics").await;
        let count = |name: &str| {
            metrics
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse::<f64>().ok())
        };
        assert_eq!(count("valo_oauth_token_cache_misses_total"), Some(1.0), "{metrics}");
        assert_eq!(count("valo_oauth_token_cache_hits_total"), Some(2.0), "{metrics}");
        assert_eq!(bodies[0], bodies[1], "fresh and cached answers differ");
        assert_eq!(bodies[1], bodies[2]);
        let body: Value = serde_json::from_slice(&bodies[2]).unwrap();
        assert_eq!(body["token_type"], "Bearer");
        assert_eq!(body["access_token"].as_str(), Some(token(&app, id, None).await.as_str()));
        let fields: Vec<&String> = body.as_object().unwrap().keys().collect();
        assert_eq!(fields, ["access_token", "expires_at", "instance_url", "issued_at", "token_type"]);
        replica.stop().await;
        app.stop().await;
    }

    #[tokio::test]
    async fn expired_tokens_are_refreshed_and_the_rotation_persisted(db) {
        let fake = fake_with(FakeOptions { access_token_lifetime: Duration::from_secs(2), ..Default::default() }).await;
        let app = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = app.connect("acme").await;
        let first = token_of(
            app.access_token("acme", id, Some(json!({"min_ttl_seconds": 0})))
                .await,
        )
        .await;
        let rt_before = fake.active_refresh_tokens();
        app.advance(Duration::from_millis(2100));
        let second = token_of(
            app.access_token("acme", id, Some(json!({"min_ttl_seconds": 0})))
                .await,
        )
        .await;
        assert_ne!(first, second);
        assert_eq!(fake.counters().refreshes, 1);
        let rt_after = fake.active_refresh_tokens();
        assert_eq!(rt_after.len(), 1);
        assert_ne!(rt_before, rt_after, "rotated");
        let c = connection(&app, id).await;
        assert_eq!(c["status"], "active");
        app.stop().await;

        // A fresh process on the same database refreshes with the persisted, rotated token.
        let again = TestApp::spawn_with(&db, &fake, &[]).await;
        again.advance(Duration::from_millis(2100));
        let third = token_of(
            again
                .access_token("acme", id, Some(json!({"min_ttl_seconds": 0})))
                .await,
        )
        .await;
        assert_ne!(third, second);
        assert_eq!(fake.counters().refreshes, 2);
        assert_eq!(fake.counters().refresh_reuse_attempts, 0);
        again.stop().await;
        }

    #[tokio::test]
    async fn concurrent_callers_in_one_process_share_one_refresh(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token(&app, id, None).await;
        app.fake.set_latency(Duration::from_millis(200));
        let tokens = concurrent_tokens(&[&app], id, 200, json!({"rejected_token": current})).await;
        assert_eq!(app.fake.counters().refreshes, 1, "{}", db.backend);
        assert!(tokens.iter().all(|t| *t == tokens[0] && *t != current));
        assert_eq!(app.fake.counters().refresh_reuse_attempts, 0);
        app.stop().await;
        }
}

postgres_tests! {
    #[tokio::test]
    async fn replicas_on_one_postgres_refresh_once(db) {
        let fake = fake_with(FakeOptions::default()).await;
        let replicas = [
            TestApp::spawn_with(&db, &fake, &[]).await,
            TestApp::spawn_with(&db, &fake, &[]).await,
            TestApp::spawn_with(&db, &fake, &[]).await,
        ];
        let id = replicas[0].connect("acme").await;
        let mut current = token_of(replicas[0].access_token("acme", id, None).await).await;
        fake.set_latency(Duration::from_millis(150));
        for round in 1..=3 {
            let apps: Vec<&TestApp> = replicas.iter().collect();
            let tokens = concurrent_tokens(&apps, id, 90, json!({"rejected_token": current})).await;
            assert!(
                tokens.iter().all(|t| *t == tokens[0] && *t != current),
                "round {round}"
            );
            assert_eq!(fake.counters().refreshes, round, "one refresh per round");
            assert_eq!(fake.counters().refresh_reuse_attempts, 0);
            current = tokens[0].clone();
        }
        for app in replicas {
            app.stop().await;
        }
    }

    #[tokio::test]
    async fn keepalive_on_many_replicas_never_reuses_a_token(db) {
        let fake = fake_with(FakeOptions::default()).await;
        let env = KEEPALIVE_BY_HAND;
        let a = TestApp::spawn_with(&db, &fake, &env).await;
        let b = TestApp::spawn_with(&db, &fake, &env).await;
        let c = TestApp::spawn_with(&db, &fake, &env).await;
        let id = a.connect("acme").await;
        fake.set_latency(Duration::from_millis(200));
        a.advance(Duration::from_secs(601));
        // Three replicas sweep at the same moment: the connection is refreshed once.
        let (ra, rb, rc) = tokio::join!(
            a.broker.keepalive_sweep(),
            b.broker.keepalive_sweep(),
            c.broker.keepalive_sweep()
        );
        let refreshed: usize = [ra, rb, rc]
            .iter()
            .map(|r| r.as_ref().unwrap().refreshed)
            .sum();
        assert!(refreshed >= 1);
        let counters = fake.counters();
        assert_eq!(
            counters.refreshes, 1,
            "one refresh for three sweeps: {counters:?}"
        );
        assert_eq!(counters.refresh_reuse_attempts, 0);
        fake.set_latency(Duration::ZERO);
        token(&b, id, None).await;
        for app in [a, b, c] {
            app.stop().await;
        }
    }
}

backend_tests! {
    #[tokio::test]
    async fn rejected_tokens_both_ways(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let old = token(&app, id, None).await;
        let new = token(&app, id, Some(&old)).await;
        assert_ne!(old, new);
        assert_eq!(app.fake.counters().refreshes, 1);
        // A late report of the old token gets the newer one, without another refresh.
        let again = token(&app, id, Some(&old)).await;
        assert_eq!(again, new);
        assert_eq!(app.fake.counters().refreshes, 1);
        // Also on a replica whose cache never saw the new token (the database has it).
        let cold = TestApp::spawn_with(&db, &app.fake, &[]).await;
        let from_db = token(&cold, id, Some(&old)).await;
        assert_eq!(from_db, new);
        assert_eq!(app.fake.counters().refreshes, 1);
        cold.stop().await;
        app.stop().await;
        }

    #[tokio::test]
    async fn refused_refresh_needs_reauthorization(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token(&app, id, None).await;
        app.fake.inject(Endpoint::Token, Fault::oauth_error(400, "invalid_grant", "expired access/refresh token"));
        let body = json!({"rejected_token": current});
        problem(
            app.access_token("acme", id, Some(body.clone())).await,
            StatusCode::CONFLICT,
            "needs_reauthorization",
        )
        .await;
        let c = connection(&app, id).await;
        assert_eq!(c["status"], "needs_reauthorization");
        assert!(
            c["last_error"].as_str().unwrap().contains("invalid_grant"),
            "{c}"
        );
        // At once, and without another upstream call — even for a plain request.
        let calls = app.fake.counters().token_requests;
        problem(
            app.access_token("acme", id, Some(body)).await,
            StatusCode::CONFLICT,
            "needs_reauthorization",
        )
        .await;
        token_problem(&app, id, StatusCode::CONFLICT, "needs_reauthorization").await;
        assert_eq!(app.fake.counters().token_requests, calls);
        // Authorizing again brings it back.
        app.authorize("acme").await;
        assert_eq!(connection(&app, id).await["status"], "active");
        token(&app, id, None).await;
        app.stop().await;
        }

    #[tokio::test]
    async fn transient_failures_keep_the_refresh_token_and_back_off(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token(&app, id, None).await;
        let refresh_before = app.fake.active_refresh_tokens();
        app.fake.inject(Endpoint::Token, Fault::Status(503));
        let body = json!({"rejected_token": current});
        let response = app.access_token("acme", id, Some(body.clone())).await;
        let retry_after: u64 = response.headers()["retry-after"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap();
        assert!(retry_after >= 1);
        problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        )
        .await;
        let c = connection(&app, id).await;
        assert_eq!(c["status"], "active");
        assert!(c["last_error"].is_string());
        assert_eq!(
            app.fake.active_refresh_tokens(),
            refresh_before,
            "refresh token intact"
        );
        // Backing off: no second upstream call straight away.
        let calls = app.fake.counters().token_requests;
        let response = app.access_token("acme", id, Some(body.clone())).await;
        assert!(response.headers().contains_key("retry-after"));
        problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        )
        .await;
        assert_eq!(app.fake.counters().token_requests, calls);
        // After the back-off the stored refresh token still works.
        app.advance(Duration::from_millis(1100));
        let new = token_of(app.access_token("acme", id, Some(body)).await).await;
        assert_ne!(new, current);
        assert_eq!(app.fake.counters().refresh_reuse_attempts, 0);
        assert!(connection(&app, id).await["last_error"].is_null());
        app.stop().await;
        }

    #[tokio::test]
    async fn database_outage_is_the_services_own_503(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let current = token(&app, id, None).await;
        let calls = app.fake.counters().token_requests;
        app.broker.close().await;
        let response = app
            .access_token("acme", id, Some(json!({"rejected_token": current})))
            .await;
        assert!(response.headers().contains_key("retry-after"));
        let body = problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "service_unavailable",
        )
        .await;
        assert!(!body.to_string().contains("salesforce"), "{body}");
        assert_eq!(
            app.fake.counters().token_requests,
            calls,
            "Salesforce not involved"
        );
        app.stop().await;
        }

    #[tokio::test]
    async fn legacy_apps_without_rotation_keep_their_refresh_token(db) {
        let fake = fake_with(FakeOptions {
            rotate_refresh_tokens: false,
            ..Default::default()
        })
        .await;
        let app = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = app.connect("acme").await;
        let refresh = fake.active_refresh_tokens();
        let mut current = token(&app, id, None).await;
        for _ in 0..2 {
            let next = token(&app, id, Some(&current)).await;
            assert_ne!(next, current);
            current = next;
        }
        assert_eq!(fake.counters().refreshes, 2);
        assert_eq!(fake.active_refresh_tokens(), refresh);
        app.stop().await;
        }

    #[tokio::test]
    async fn keepalive_refreshes_idle_connections(db, b) {
        let fake = fake_with(FakeOptions::default()).await;
        let app = TestApp::spawn_with(
            &db,
            &fake,
            &KEEPALIVE_BY_HAND,
        )
        .await;
        let id = app.connect("acme").await;
        let before = connection(&app, id).await["last_refreshed_at"].clone();
        let report = app.broker.keepalive_sweep().await.unwrap();
        assert_eq!((report.due, report.refreshed), (0, 0), "{b}: not idle yet");

        app.advance(Duration::from_secs(601));
        let report = app.broker.keepalive_sweep().await.unwrap();
        assert_eq!(
            (report.due, report.refreshed, report.failed),
            (1, 1, 0),
            "{b}"
        );
        assert_eq!(fake.counters().refreshes, 1, "{b}: keep-alive refreshed");
        assert_ne!(connection(&app, id).await["last_refreshed_at"], before);
        // Refreshed just now: the next sweep leaves it alone.
        let report = app.broker.keepalive_sweep().await.unwrap();
        assert_eq!(report.due, 0, "{b}");
        assert_eq!(fake.counters().refresh_reuse_attempts, 0);
        app.stop().await;
        }
}

backend_tests! {
    #[tokio::test]
    async fn deleting_a_connection_revokes_it_first(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        let path = format!("/v1/tenants/acme/connections/{id}");
        // Salesforce unreachable: the connection is kept.
        app.fake.inject(Endpoint::Revoke, Fault::Status(503));
        let response = app.delete(&path, "connections:write").await;
        problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        )
        .await;
        assert_eq!(connection(&app, id).await["status"], "active");
        // Reachable: revoked, then deleted.
        let refresh = app.fake.active_refresh_tokens();
        assert_eq!(
            app.delete(&path, "connections:write").await.status(),
            StatusCode::NO_CONTENT
        );
        assert!(!app.fake.is_refresh_token_active(&refresh[0]));
        assert_eq!(app.fake.counters().revocations, 1);
        let (status, _) = app.get_json(&path, "connections:read").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        token_problem(&app, id, StatusCode::NOT_FOUND, "not_found").await;

        // ?force=true deletes even when Salesforce is unreachable.
        let id = app.connect("acme").await;
        app.fake.inject(Endpoint::Revoke, Fault::Status(503));
        let forced = app
            .delete(
                &format!("/v1/tenants/acme/connections/{id}?force=true"),
                "connections:write",
            )
            .await;
        assert_eq!(forced.status(), StatusCode::NO_CONTENT);
        let (status, _) = app.get_connection("acme", id).await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        app.stop().await;
        }

    #[tokio::test]
    async fn deleting_the_app_revokes_every_connection(db) {
        let app = TestApp::spawn(&db).await;
        let first = app.connect("acme").await;
        app.fake.set_user(
            "00D5g000004ABCDEA4",
            "0055g000001OTHEAA4",
            "other@example.com",
        );
        let second = app.authorize("acme").await;
        assert_ne!(second.as_str(), first.to_string());
        assert_eq!(app.fake.active_refresh_tokens().len(), 2);
        // Salesforce answers the first revocation (a bare 200) and fails the second: the
        // first connection is gone, the second and the app stay; a retry finishes the job.
        app.fake.inject(Endpoint::Revoke, Fault::Status(200));
        app.fake.inject(Endpoint::Revoke, Fault::Status(503));
        let response = app
            .delete("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        problem(
            response,
            StatusCode::SERVICE_UNAVAILABLE,
            "upstream_unavailable",
        )
        .await;
        let (_, body) = app
            .get_json("/v1/tenants/acme/connections", "connections:read")
            .await;
        assert_eq!(body["connections"].as_array().unwrap().len(), 1);
        let (status, _) = app
            .get_json("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(
            status,
            StatusCode::OK,
            "the app stays while a connection is live"
        );
        let response = app
            .delete("/v1/tenants/acme/salesforce-app", "apps:write")
            .await;
        assert_eq!(response.status(), StatusCode::NO_CONTENT);
        assert_eq!(
            app.fake.counters().revocations,
            1,
            "the one real revocation"
        );
        assert_eq!(
            app.fake.active_refresh_tokens().len(),
            1,
            "the bare 200 revoked nothing"
        );
        let (status, body) = app
            .get_json("/v1/tenants/acme/connections", "connections:read")
            .await;
        assert_eq!(status, StatusCode::OK);
        assert_eq!(body["connections"], json!([]));
        app.stop().await;
        }

    #[tokio::test]
    async fn token_request_validation(db) {
        let (app, id) = TestApp::spawn_connected(&db, "acme").await;
        for (case, body) in [
            ("a minimum lifetime over a day", json!({"min_ttl_seconds": 86_401})),
            ("an empty rejected token", json!({"rejected_token": ""})),
            ("an unknown field (min_ttl)", json!({"min_ttl": 5})),
        ] {
            let response = app.access_token("acme", id, Some(body)).await;
            assert_eq!(response.status(), StatusCode::BAD_REQUEST, "{case}");
            let body: Value = response.json().await.unwrap();
            assert_eq!(body["code"], "invalid_request", "{case}: {body}");
        }
        token_problem(&app, Uuid::new_v4(), StatusCode::NOT_FOUND, "not_found").await;
        let wrong_scope = app.post_as(&format!("/v1/tenants/acme/connections/{id}/access-token"), "connections:read").await;
        problem(wrong_scope, StatusCode::FORBIDDEN, "forbidden").await;
        app.stop().await;
        }

    #[tokio::test]
    async fn refreshed_expiry_is_estimated_then_confirmed_by_introspection(db) {
        let fake = fake_with(FakeOptions { access_token_lifetime: Duration::from_secs(900), ..Default::default() }).await;
        let app = TestApp::spawn_with(&db, &fake, &[]).await;
        // The exchange's introspection fails: the expiry is the configured assumption.
        fake.inject(Endpoint::Introspect, Fault::Status(503));
        let id = app.connect("acme").await;
        let c = connection(&app, id).await;
        assert_eq!(c["access_token_expiry_assumed"], true, "{c}");
        assert!(access_expires_in(&c) > 3_600, "{c}");

        // A refresh answers after one Salesforce call, with an estimate that was assumed:
        // introspection confirms it afterwards.
        let current = token(&app, id, None).await;
        let before = fake.counters();
        let new = token(&app, id, Some(&current)).await;
        assert_eq!(fake.counters().refreshes, before.refreshes + 1);
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        let mut c = connection(&app, id).await;
        while c["access_token_expiry_assumed"] != false && std::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
            c = connection(&app, id).await;
        }
        assert_eq!(c["access_token_expiry_assumed"], false, "confirmed: {c}");
        assert!((880..=900).contains(&access_expires_in(&c)), "{c}");
        assert!(fake.counters().introspections > before.introspections);

        // Once measured, the lifetime carries over to the next token without asking again.
        let before = fake.counters();
        token(&app, id, Some(&new)).await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let c = connection(&app, id).await;
        assert_eq!(c["access_token_expiry_assumed"], false, "{c}");
        assert!(
            (880..=900).contains(&access_expires_in(&c)),
            "estimated from the measured lifetime: {c}"
        );
        assert_eq!(fake.counters().introspections, before.introspections);
        assert_eq!(fake.counters().refreshes, before.refreshes + 1);
        app.stop().await;
        }

    #[tokio::test]
    async fn a_connection_evicted_from_the_bounded_cache_is_served_from_the_database(db, b) {
        let fake = fake_with(FakeOptions::default()).await;
        let app =
            TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_TOKEN_CACHE_CAPACITY", "1")]).await;
        let mut ids = Vec::new();
        for user in ["005000000000001", "005000000000002", "005000000000003"] {
            let user = valo_oauth::salesforce::to_18_char_id(user).unwrap();
            fake.set_user("00D5g000004ABCDEA4", &user, "someone@example.com");
            ids.push(app.connect("acme").await);
        }
        let mut first = Vec::new();
        for id in &ids {
            first.push(token(&app, *id, None).await);
        }
        // Only one fits: the others come from the database, unchanged and without a refresh.
        for (id, first) in ids.iter().zip(&first) {
            assert_eq!(&token(&app, *id, None).await, first, "{b}");
        }
        assert_eq!(fake.counters().refreshes, 0, "{b}");
        let metrics = app.get_text("/metrics").await;
        let entries: f64 = metrics
            .lines()
            .find_map(|l| l.strip_prefix("valo_oauth_token_cache_entries "))
            .unwrap()
            .parse()
            .unwrap();
        assert!(entries <= 1.0, "{b}: {entries} cached with a capacity of 1");
        app.stop().await;
        }
}

/// Follows `app`'s change feed once, as its background task does every
/// `VALO_OAUTH_TOKEN_CACHE_REVALIDATE_SECS` (a new cursor: the first read learns the
/// database's clock, the second reads the recent changes).
async fn follow_change_feed(app: &TestApp) -> usize {
    let mut cursor = valo_oauth::broker::changes::FeedCursor::default();
    app.broker.follow_changes(&mut cursor).await.unwrap();
    app.broker.follow_changes(&mut cursor).await.unwrap()
}

/// Two replicas on one database and one fake Salesforce: `a` follows the change feed only
/// when the test says so ([`follow_change_feed`]), `b` is configured as by default.
async fn two_replicas(db: &TestDatabase) -> (FakeSalesforce, TestApp, TestApp) {
    let fake = fake_with(FakeOptions::default()).await;
    let quiet = [("VALO_OAUTH_TOKEN_CACHE_REVALIDATE_SECS", "3600")];
    let a = TestApp::spawn_with(db, &fake, &quiet).await;
    let b = TestApp::spawn_with(db, &fake, &[]).await;
    (fake, a, b)
}

backend_tests! {
    #[tokio::test]
    async fn changes_on_another_replica_reach_the_cache_through_the_feed(db) {
        let (fake, a, b) = two_replicas(&db).await;
        let id = a.connect("acme").await;
        let old = token_of(a.access_token("acme", id, None).await).await;
        // `b` refreshes (its caller reports the token rejected).
        let new = token_of(
            b.access_token("acme", id, Some(json!({"rejected_token": old})))
                .await,
        )
        .await;
        assert_ne!(old, new);
        assert_eq!(
            token_of(a.access_token("acme", id, None).await).await,
            old,
            "until it follows the feed, `a` serves from its cache"
        );
        assert_eq!(follow_change_feed(&a).await, 1, "the stale entry went");
        assert_eq!(token_of(a.access_token("acme", id, None).await).await, new);
        assert_eq!(fake.counters().refreshes, 1, "read from the database, not refreshed");
        // Following again drops nothing: `a` now holds the current version.
        assert_eq!(follow_change_feed(&a).await, 0);

        // A deletion on `b` ends the connection on `a` too.
        assert_eq!(
            b.delete(
                &format!("/v1/tenants/acme/connections/{id}"),
                "connections:write"
            )
            .await
            .status(),
            StatusCode::NO_CONTENT
        );
        assert_eq!(follow_change_feed(&a).await, 1);
        token_problem(&a, id, StatusCode::NOT_FOUND, "not_found").await;
        b.stop().await;
        a.stop().await;
        }
}

backend_tests! {
    #[tokio::test]
    async fn a_cascade_and_a_status_change_are_in_the_feed(db) {
        let (fake, a, b) = two_replicas(&db).await;
        let refused = a.connect("acme").await;
        token_of(a.access_token("acme", refused, None).await).await;
        // Salesforce refuses the refresh token on `b`: the row needs reauthorization.
        fake.inject(
            Endpoint::Token,
            Fault::OAuthError {
                status: 400,
                error: "invalid_grant".into(),
                description: "expired access/refresh token".into(),
            },
        );
        let old = token_of(a.access_token("acme", refused, None).await).await;
        problem(
            b.access_token("acme", refused, Some(json!({"rejected_token": old})))
                .await,
            StatusCode::CONFLICT,
            "needs_reauthorization",
        )
        .await;
        assert_eq!(follow_change_feed(&a).await, 1);
        token_problem(&a, refused, StatusCode::CONFLICT, "needs_reauthorization").await;

        // Deleting the app deletes its connections by cascade: each is in the feed.
        let other = a.connect("acme").await;
        token_of(a.access_token("acme", other, None).await).await;
        let deleted = b.delete("/v1/tenants/acme/salesforce-app", "apps:write").await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        assert_eq!(follow_change_feed(&a).await, 1);
        assert_eq!(
            a.access_token("acme", other, None).await.status(),
            StatusCode::NOT_FOUND
        );
        b.stop().await;
        a.stop().await;
        }
}

backend_tests! {
    #[tokio::test]
    async fn a_sweep_keeps_its_salesforce_calls_to_the_configured_concurrency(db) {
        let b = db.backend;
        let fake = fake_with(FakeOptions::default()).await;
        let app = TestApp::spawn_with(
            &db,
            &fake,
            &[
                ("VALO_OAUTH_KEEPALIVE_INTERVAL_SECS", "600"),
                ("VALO_OAUTH_KEEPALIVE_SWEEP_SECS", "3600"),
                ("VALO_OAUTH_KEEPALIVE_CONCURRENCY", "2"),
            ],
        )
        .await;
        for user in 0..6 {
            fake.set_user(
                "00D000000000001AAA",
                &format!("005000000000{user:03}AAA"),
                &format!("user{user}@acme.example"),
            );
            app.connect("acme").await;
        }
        app.advance(Duration::from_secs(601));
        let latency = Duration::from_millis(300);
        fake.set_latency(latency);
        let started = std::time::Instant::now();
        let report = app.broker.keepalive_sweep().await.unwrap();
        let took = started.elapsed();
        fake.set_latency(Duration::ZERO);
        assert_eq!((report.due, report.refreshed, report.failed), (6, 6, 0), "{b}");
        // Six calls, two at a time: three rounds of the latency at least (four or six at
        // a time would take two rounds or one).
        assert!(took >= latency * 3, "{b}: {took:?}");
        assert!(took < latency * 6, "{b}: the rounds overlap nothing else: {took:?}");
        assert_eq!(fake.counters().refreshes, 6, "{b}");
        app.stop().await;
        }
}
