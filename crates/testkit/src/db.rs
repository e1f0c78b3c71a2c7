//! Throw-away databases for tests, one per test and backend.
//!
//! SQLite always runs (a file in a fresh folder under the system temp dir). Postgres runs
//! when `TEST_DATABASE_URL` names a server (an admin URL such as
//! `postgres://postgres@127.0.0.1:5432/postgres`): each [`TestDatabase`] creates its own
//! database `valo_test_<uuid>` there. With `CI=true` and no `TEST_DATABASE_URL`, asking for
//! Postgres panics, so that CI cannot silently skip a backend.
//!
//! Dropping a [`TestDatabase`] removes it (best effort): the SQLite folder, or the Postgres
//! database (`DROP DATABASE … WITH (FORCE)`, which also ends connections still open).
//!
//! ```ignore
//! backend_tests! {
//!     #[tokio::test]
//!     async fn a_store_test(db) {
//!         let store = db.store().await; // connected and migrated
//!         // … assertions, with `db.backend` in messages …
//!     }
//! }
//! ```

use std::path::PathBuf;
use std::time::Duration;

use sqlx::{AssertSqlSafe, Connection, PgConnection, SqliteConnection};
use uuid::Uuid;
use valo_oauth::store::{Store, StoreOptions};

/// One throw-away database.
pub struct TestDatabase {
    /// `"sqlite"` or `"postgres"` (as [`Store::backend_name`]).
    pub backend: &'static str,
    /// The URL to hand to [`Store::connect`] or to the service's configuration.
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    /// The folder holding the database file (and its `-wal`/`-shm` companions).
    Sqlite {
        folder: PathBuf,
    },
    Postgres {
        admin_url: String,
        name: String,
    },
}

/// Pool settings for tests: small, and quick to give up.
pub fn test_options() -> StoreOptions {
    StoreOptions {
        max_connections: 8,
        acquire_timeout: Duration::from_secs(10),
        transaction_pooler: false,
    }
}

impl TestDatabase {
    /// A SQLite database in a folder that does not exist yet (the store creates it).
    pub async fn sqlite() -> Self {
        let folder =
            std::env::temp_dir().join(format!("valo-oauth-test-{}", Uuid::new_v4().simple()));
        let file = folder.join("store.db");
        Self {
            backend: "sqlite",
            url: format!("sqlite://{}", file.display()),
            cleanup: Cleanup::Sqlite { folder },
        }
    }

    /// A fresh Postgres database on the server of `TEST_DATABASE_URL`; `None` when that is
    /// unset (a panic instead when `CI=true`).
    pub async fn postgres() -> Option<Self> {
        let admin_url = match std::env::var("TEST_DATABASE_URL") {
            Ok(url) if !url.trim().is_empty() => url,
            _ => {
                if std::env::var("CI").is_ok_and(|ci| ci == "true") {
                    panic!(
                        "CI=true but TEST_DATABASE_URL is not set: the Postgres tests would be skipped"
                    );
                }
                return None;
            }
        };
        Some(Self::postgres_at(&admin_url).await)
    }

    /// A fresh Postgres database `valo_test_<uuid>` on the server of `admin_url` (the
    /// benchmark passes its own `BENCH_DATABASE_URL`).
    pub async fn postgres_at(admin_url: &str) -> Self {
        let name = format!("valo_test_{}", Uuid::new_v4().simple());
        let mut admin = PgConnection::connect(admin_url)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {admin_url}: {e}"));
        sqlx::query(AssertSqlSafe(format!("CREATE DATABASE \"{name}\"")))
            .execute(&mut admin)
            .await
            .expect("create the test database");
        admin.close().await.ok();
        let mut url = url::Url::parse(admin_url).expect("the admin URL is a URL");
        url.set_path(&format!("/{name}"));
        Self {
            backend: "postgres",
            url: url.to_string(),
            cleanup: Cleanup::Postgres {
                admin_url: admin_url.to_owned(),
                name,
            },
        }
    }

    /// SQLite, and Postgres when configured.
    pub async fn all() -> Vec<Self> {
        let mut all = vec![Self::sqlite().await];
        all.extend(Self::postgres().await);
        all
    }

    /// Runs one SQL statement on the database directly, bypassing the store (to set up or
    /// tamper with rows the store's interface cannot reach). Returns the rows affected.
    pub async fn execute(&self, sql: &str) -> u64 {
        let sql = AssertSqlSafe(sql.to_owned());
        let done = match &self.cleanup {
            Cleanup::Sqlite { .. } => {
                let mut conn = SqliteConnection::connect(&self.url).await.unwrap();
                let done = sqlx::query(sql).execute(&mut conn).await;
                conn.close().await.ok();
                done.map(|done| done.rows_affected())
            }
            Cleanup::Postgres { .. } => {
                let mut conn = PgConnection::connect(&self.url).await.unwrap();
                let done = sqlx::query(sql).execute(&mut conn).await;
                conn.close().await.ok();
                done.map(|done| done.rows_affected())
            }
        };
        done.unwrap_or_else(|e| panic!("{}: {e}", self.backend))
    }

    /// Everything the database holds, as text: the SQLite file with its write-ahead log,
    /// or a `pg_dump` of the Postgres database. Tests grep it for plaintext secrets.
    pub async fn dump(&self) -> String {
        match &self.cleanup {
            Cleanup::Sqlite { folder } => {
                let mut text = String::new();
                for entry in std::fs::read_dir(folder).unwrap() {
                    let bytes = std::fs::read(entry.unwrap().path()).unwrap();
                    text.push_str(&String::from_utf8_lossy(&bytes));
                }
                text
            }
            Cleanup::Postgres { .. } => {
                let output = tokio::process::Command::new("pg_dump")
                    .arg("--data-only")
                    .arg(&self.url)
                    .output()
                    .await
                    .expect("pg_dump runs");
                assert!(
                    output.status.success(),
                    "pg_dump: {}",
                    String::from_utf8_lossy(&output.stderr)
                );
                String::from_utf8(output.stdout).unwrap()
            }
        }
    }

    /// Connected, not migrated.
    pub async fn connect(&self) -> Store {
        Store::connect(&self.url, &test_options())
            .await
            .unwrap_or_else(|e| panic!("{}: connect: {e}", self.backend))
    }

    /// Connected and migrated.
    pub async fn store(&self) -> Store {
        let store = self.connect().await;
        store
            .migrate()
            .await
            .unwrap_or_else(|e| panic!("{}: migrate: {e}", self.backend));
        store
    }
}

impl Drop for TestDatabase {
    fn drop(&mut self) {
        match &self.cleanup {
            Cleanup::Sqlite { folder } => {
                std::fs::remove_dir_all(folder).ok();
            }
            Cleanup::Postgres { admin_url, name } => {
                let admin_url = admin_url.clone();
                let name = name.clone();
                // Drop is synchronous and may run inside the test's runtime: do the async
                // work on a thread of its own, with a runtime of its own.
                let dropper = std::thread::spawn(move || {
                    let Ok(runtime) = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    else {
                        return;
                    };
                    runtime.block_on(async move {
                        if let Ok(mut admin) = PgConnection::connect(&admin_url).await {
                            sqlx::query(AssertSqlSafe(format!(
                                "DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"
                            )))
                            .execute(&mut admin)
                            .await
                            .ok();
                            admin.close().await.ok();
                        }
                    });
                });
                dropper.join().ok();
            }
        }
    }
}
