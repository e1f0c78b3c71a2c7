//! The test harness itself: PgBouncer, the fault-injecting proxy and the service as a child
//! process each do what the tests built on them rely on.
//!
//! The PgBouncer and proxy tests need Postgres (`TEST_DATABASE_URL`) and skip without it
//! (fail under `CI=true`); the PgBouncer tests also need the `pgbouncer` binary (same rule).

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use sqlx::postgres::PgPoolOptions;
use sqlx::{Connection, PgConnection};
use valo_testkit::db::TestDatabase;
use valo_testkit::pgbouncer::PgBouncer;
use valo_testkit::process::ServiceProcess;
use valo_testkit::proxy::FaultProxy;

fn admin_url() -> String {
    std::env::var("TEST_DATABASE_URL").expect("TEST_DATABASE_URL (TestDatabase::postgres checked)")
}

/// The Postgres server's address, from `TEST_DATABASE_URL`.
fn server_addr() -> SocketAddr {
    let url = url::Url::parse(&admin_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1");
    let host = if host == "localhost" {
        "127.0.0.1"
    } else {
        host
    };
    format!("{host}:{}", url.port().unwrap_or(5432))
        .parse()
        .unwrap()
}

postgres_tests! {
    #[tokio::test]
    async fn pgbouncer_runs_a_transaction_pool_in_front_of_postgres(db) {
        let Some(bouncer) = PgBouncer::start(&admin_url()).await else {
            eprintln!("skipped: no pgbouncer binary");
            return;
        };
        let url = bouncer.url_for(&db.url);
        assert!(url.contains(&bouncer.addr().port().to_string()), "{url}");

        // Through a transaction pooler, statements with parameters run unnamed
        // (`persistent(false)`) inside explicit transactions: see
        // `pgbouncer_moves_transactions_between_server_connections`.
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(5))
            .connect(&url)
            .await
            .unwrap_or_else(|e| panic!("connect through pgbouncer: {e}\n{}", bouncer.log()));

        sqlx::raw_sql("CREATE TABLE items (id BIGINT PRIMARY KEY, name TEXT NOT NULL)")
            .execute(&pool)
            .await
            .unwrap();
        for id in 1..=20_i64 {
            let mut tx = pool.begin().await.unwrap();
            sqlx::query("INSERT INTO items (id, name) VALUES ($1, $2)")
                .bind(id)
                .bind(format!("item {id}"))
                .persistent(false)
                .execute(&mut *tx)
                .await
                .unwrap();
            tx.commit().await.unwrap();
        }
        let mut tx = pool.begin().await.unwrap();
        let (count, name): (i64, String) =
            sqlx::query_as("SELECT count(*), max(name) FROM items WHERE id <= $1")
                .bind(20_i64)
                .persistent(false)
                .fetch_one(&mut *tx)
                .await
                .unwrap();
        tx.commit().await.unwrap();
        assert_eq!((count, name.as_str()), (20, "item 9"));
        let database: String = sqlx::raw_sql("SELECT current_database()")
            .fetch_one(&pool)
            .await
            .map(|row| {
                use sqlx::Row;
                row.get(0)
            })
            .unwrap();
        assert_eq!(db.url.rsplit('/').next(), Some(database.as_str()));
        pool.close().await;
    }
}

#[cfg_attr(
    not(test_postgres),
    ignore = "TEST_DATABASE_URL was not set when the tests were built"
)]
#[tokio::test]
async fn pgbouncer_shares_one_server_connection_between_clients() {
    // Proof of transaction (not session) pooling: with one server connection, two client
    // connections open at once both run queries, on the same backend.
    let db = TestDatabase::postgres()
        .await
        .expect("TEST_DATABASE_URL is not set");
    let Some(bouncer) = PgBouncer::start_with(&admin_url(), 1).await else {
        eprintln!("skipped: no pgbouncer binary");
        return;
    };
    let url = bouncer.url_for(&db.url);
    let mut first = PgConnection::connect(&url).await.unwrap();
    let mut second = PgConnection::connect(&url).await.unwrap();
    let backend = "SELECT pg_backend_pid()";
    let pid_first: i32 = sqlx::raw_sql(backend)
        .fetch_one(&mut first)
        .await
        .map(|row| {
            use sqlx::Row;
            row.get(0)
        })
        .unwrap();
    let pid_second: i32 = tokio::time::timeout(
        Duration::from_secs(5),
        sqlx::raw_sql(backend).fetch_one(&mut second),
    )
    .await
    .expect("the second client is served while the first stays connected")
    .map(|row| {
        use sqlx::Row;
        row.get(0)
    })
    .unwrap();
    assert_eq!(pid_first, pid_second);
    first.close().await.ok();
    second.close().await.ok();
}

postgres_tests! {
    #[tokio::test]
    async fn fault_proxy_cuts_and_restores_the_database(db) {
        let proxy = FaultProxy::start(server_addr()).await;
        let url = proxy.url_for(&db.url);
        assert!(url.contains(&proxy.addr().to_string()), "{url}");
        let pool = PgPoolOptions::new()
            .max_connections(4)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&url)
            .await
            .unwrap();
        let one = || sqlx::query_scalar::<_, i32>("SELECT 1").fetch_one(&pool);
        assert_eq!(one().await.unwrap(), 1);
        assert!(
            proxy.connections() >= 1,
            "the pool's connection goes through the proxy"
        );

        // Cut: the pooled connection dies, and new ones fail fast (not after the pool's
        // 10 s acquire timeout: an accepted-then-reset connection is not retried, a refused
        // one would be).
        proxy.cut();
        assert!(proxy.is_cut());
        let started = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(1), one())
            .await
            .expect("a query fails within 1 s of the cut");
        assert!(result.is_err(), "a query after the cut fails: {result:?}");
        eprintln!(
            "after the cut: {:?} in {:?}",
            result.unwrap_err(),
            started.elapsed()
        );
        let started = Instant::now();
        let connect = tokio::time::timeout(Duration::from_secs(1), PgConnection::connect(&url))
            .await
            .expect("a new connection fails within 1 s while cut");
        assert!(connect.is_err());
        eprintln!(
            "connect while cut: {:?} in {:?}",
            connect.err(),
            started.elapsed()
        );
        wait_for(|| proxy.connections() == 0, "the proxied connections close").await;

        // Restore: the pool reconnects.
        proxy.restore();
        assert_eq!(one().await.unwrap(), 1);
        assert!(proxy.connections() >= 1);
        pool.close().await;
        wait_for(|| proxy.connections() == 0, "the pool's connections close").await;
    }
}

#[tokio::test]
async fn service_process_serves_and_stops_on_sigterm() {
    let db = TestDatabase::sqlite().await;
    // The data folder next to the database file, so it goes with the database's folder.
    let db_file = std::path::PathBuf::from(db.url.strip_prefix("sqlite://").unwrap());
    let data_dir = db_file.parent().unwrap().join("data");
    let env: Vec<(String, String)> = valo_testkit::app::test_env(
        &db,
        valo_testkit::app::TEST_KEYS,
        &[
            ("VALO_OAUTH_LOG_FORMAT", "json"),
            ("VALO_OAUTH_DATA_DIR", data_dir.to_str().unwrap()),
        ],
    )
    .into_iter()
    .collect();
    let mut service = ServiceProcess::spawn(crate::SERVICE_BINARY, &env).await;
    assert_eq!(service.base(), format!("http://{}", service.addr()));

    let health = reqwest::get(format!("{}/healthz", service.base()))
        .await
        .unwrap();
    assert_eq!(health.status(), 200, "{}", service.log());
    let ready = reqwest::get(format!("{}/readyz", service.base()))
        .await
        .unwrap();
    assert_eq!(ready.status(), 200, "{}", service.log());

    let status = service.sigterm_and_wait(Duration::from_secs(10)).await;
    let log = service.log();
    assert!(
        status.is_some_and(|s| s.success()),
        "exit status {status:?}\n{log}"
    );
    assert!(log.contains("shutting down"), "{log}");
}

#[tokio::test]
async fn service_process_dies_on_sigkill() {
    let db = TestDatabase::sqlite().await;
    let env: Vec<(String, String)> =
        valo_testkit::app::test_env(&db, valo_testkit::app::TEST_KEYS, &[])
            .into_iter()
            .collect();
    let mut service = ServiceProcess::spawn(crate::SERVICE_BINARY, &env).await;
    let base = service.base();
    reqwest::get(format!("{base}/healthz")).await.unwrap();
    service.kill9();
    let status = service.try_status().expect("reaped");
    assert!(!status.success());
    assert!(reqwest::get(format!("{base}/healthz")).await.is_err());
}

async fn wait_for(mut condition: impl FnMut() -> bool, what: &str) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

postgres_tests! {
    /// What sqlx needs behind a transaction pooler, checked where it matters: 20 tasks over a
    /// pool of 10 client connections, through a bouncer with 2 server connections, so that
    /// consecutive transactions of a client connection run on different servers.
    ///
    /// sqlx's default named statements (`sqlx_s_1`, … per client connection, cached or not)
    /// outlive the transaction on the server, so another client connection fails with
    /// "prepared statement \"sqlx_s_1\" already exists" and the client whose cache names them
    /// fails elsewhere with "… does not exist" — inside explicit transactions too. Unnamed
    /// statements (`persistent(false)`) *outside* a transaction race: the Parse and the Bind
    /// are separate round trips, the bouncer may hand the server to another client in between,
    /// and the Bind then runs that client's statement (wrong answers, or "unnamed prepared
    /// statement does not exist"). Unnamed statements inside explicit transactions are safe:
    /// the two statement texts below with the same parameter would expose a mix-up.
    #[tokio::test]
    async fn pgbouncer_moves_transactions_between_server_connections(db) {
        let Some(bouncer) = PgBouncer::start_with(&admin_url(), 2).await else {
            eprintln!("skipped: no pgbouncer binary");
            return;
        };
        let pool = PgPoolOptions::new()
            .max_connections(10)
            .acquire_timeout(Duration::from_secs(10))
            .connect(&bouncer.url_for(&db.url))
            .await
            .unwrap();
        let mut tasks = Vec::new();
        for task in 0..20_i64 {
            let pool = pool.clone();
            tasks.push(tokio::spawn(async move {
                let mut failures = Vec::new();
                for i in 0..10_i64 {
                    let n = task * 100 + i;
                    let (sql, expected) = if n % 2 == 1 {
                        ("SELECT -$1::bigint", -n)
                    } else {
                        ("SELECT $1::bigint", n)
                    };
                    let mut tx = pool.begin().await.unwrap();
                    let got = sqlx::query_scalar::<_, i64>(sql)
                        .bind(n)
                        .persistent(false)
                        .fetch_one(&mut *tx)
                        .await;
                    tx.commit().await.unwrap();
                    match got {
                        Ok(got) if got == expected => {}
                        other => failures.push(format!("{sql} with {n}: {other:?}")),
                    }
                }
                failures
            }));
        }
        let mut failures = Vec::new();
        for task in tasks {
            failures.extend(task.await.unwrap());
        }
        assert!(
            failures.is_empty(),
            "{} of 200 failed: {failures:#?}",
            failures.len()
        );
        pool.close().await;
    }
}
