//! valo-oauth's test kit, shared by the integration tests (`tests/`) and the benchmark
//! (`examples/bench/`):
//!
//! - [`app`]: the service in-process on a test database with a fake Salesforce
//!   ([`app::TestApp`]), its settings, and API tokens ([`app::mint`]);
//! - [`db`]: throw-away SQLite and Postgres databases ([`db::TestDatabase`]);
//! - [`process`]: the service's binary as a child process (signals, `kill -9`);
//! - [`pgbouncer`]: a transaction-mode PgBouncer in front of the test Postgres;
//! - [`proxy`]: a TCP proxy that cuts or refuses connections on demand;
//! - [`backend_tests!`]: one test body run as two test cases, `…::sqlite` and
//!   `…::postgres`, so each backend reports on its own.
//!
//! ## Skipped means skipped
//!
//! The Postgres cases need `TEST_DATABASE_URL`. The service's `build.rs` sets the cfg
//! `test_postgres` when it is set at build time (or when `CI=true`); without it the cases
//! are compiled with `#[ignore]` and cargo reports them as ignored, never as passed.
//! Under `CI=true` a missing database is a failure.
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: failing loudly is the point"
)]

pub mod app;
pub mod db;
pub mod pgbouncer;
pub mod process;
pub mod proxy;

/// The repository's root (the service's package), where the binary finds `config/` and
/// `migrations/`.
pub const REPOSITORY_ROOT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../..");

/// Runs the futures concurrently, each as a task, and returns their outputs in order.
pub async fn join_all<F>(futures: impl IntoIterator<Item = F>) -> Vec<F::Output>
where
    F: std::future::Future + Send + 'static,
    F::Output: Send + 'static,
{
    let tasks: Vec<_> = futures.into_iter().map(tokio::spawn).collect();
    let mut out = Vec::with_capacity(tasks.len());
    for task in tasks {
        out.push(task.await.unwrap());
    }
    out
}

/// Runs one async test body on each storage backend, as two test cases in a module named
/// after the test: `name::sqlite` and `name::postgres`. The body sees the database as the
/// named binding (a [`db::TestDatabase`]) and, when a second name is given, the backend's
/// name (`"sqlite"` or `"postgres"`, for messages) as that binding; attributes (such as
/// `#[tokio::test(…)]`, which is required) apply to both cases. One invocation may hold
/// several tests.
///
/// ```ignore
/// backend_tests! {
///     #[tokio::test]
///     async fn a_connection_survives(db) {
///         let app = TestApp::spawn(&db).await;
///         // …
///     }
///
///     #[tokio::test]
///     async fn another_one(db, backend) {
///         eprintln!("on {backend}");
///         // …
///     }
/// }
/// ```
#[macro_export]
macro_rules! backend_tests {
    ($($(#[$attr:meta])* async fn $name:ident($db:ident $(, $b:ident)?) $body:block)+) => {
        $(
            mod $name {
                #[allow(unused_imports)]
                use super::*;

                $(#[$attr])*
                async fn sqlite() {
                    let $db = $crate::db::TestDatabase::sqlite().await;
                    $(let $b = $db.backend;)?
                    $body
                }

                $crate::postgres_tests! {
                    $(#[$attr])*
                    async fn postgres($db) {
                        $(let $b = $db.backend;)?
                        $body
                    }
                }
            }
        )+
    };
}

/// Runs async test bodies that need Postgres: each test sees a fresh database on the
/// server of `TEST_DATABASE_URL` as the named binding (a [`db::TestDatabase`]), and is
/// compiled with `#[ignore]` when that variable was not set at build time (see "Skipped
/// means skipped" above). Attributes (such as `#[tokio::test(…)]`, which is required)
/// apply to the test.
///
/// ```ignore
/// postgres_tests! {
///     #[tokio::test]
///     async fn replicas_share_one_database(db) {
///         // …
///     }
/// }
/// ```
#[macro_export]
macro_rules! postgres_tests {
    ($($(#[$attr:meta])* async fn $name:ident($db:ident) $body:block)+) => {
        $(
            $(#[$attr])*
            #[cfg_attr(
                not(test_postgres),
                ignore = "TEST_DATABASE_URL was not set when the tests were built"
            )]
            async fn $name() {
                let $db = $crate::db::TestDatabase::postgres()
                    .await
                    .expect("TEST_DATABASE_URL is not set (the Postgres case cannot run)");
                $body
            }
        )+
    };
}
