//! The storage layer, black-box through `valo_oauth::store::Store`, on every backend:
//! SQLite always, Postgres when `TEST_DATABASE_URL` is set (see `support/db.rs`).
#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "tests fail by panicking"
)]

use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use uuid::Uuid;
use valo_oauth::store::{
    AppStatus, AuthorizationSession, AuthorizedConnection, ConnectionRecord, ConnectionStatus,
    ConsumeOutcome, LeaseAttempt, NewConnection, RefreshFailure, RefreshLease, RefreshedTokens,
    SavedConnection, Store, StoreError, StoreOptions, TenantAppRecord,
};
use valo_testkit::db::{TestDatabase, test_options};

const T0: i64 = 1_700_000_000_000;
const LONG: Duration = Duration::from_secs(20);

fn app(tenant: &str, at: i64, secret: &str) -> TenantAppRecord {
    TenantAppRecord {
        tenant_id: tenant.into(),
        login_url: "https://login.salesforce.com".into(),
        consumer_key_enc: format!("key-enc-{secret}"),
        consumer_key_hint: "3MVG…Xy9Q".into(),
        consumer_secret_enc: format!("secret-enc-{secret}"),
        status: AppStatus::Active,
        status_reason: None,
        credentials_version: 1,
        created_at: at,
        updated_at: at,
    }
}

fn state_hash(n: u8) -> Vec<u8> {
    let mut hash = vec![0xab; 32];
    hash[0] = n;
    hash
}

fn session(tenant: &str, state: &[u8], created_at: i64, expires_at: i64) -> AuthorizationSession {
    AuthorizationSession {
        state_hash: state.to_vec(),
        id: Uuid::new_v4(),
        tenant_id: tenant.into(),
        pkce_verifier_enc: "pkce-enc".into(),
        return_to: Some("https://app.valo.ai/done".into()),
        created_at,
        expires_at,
        consumed_at: None,
        connection_id: None,
    }
}

/// Token material "encrypted" for row `id`: the id is in the value, as it is in the real
/// ciphertexts' associated data, so a test can tell which id they were made for.
fn authorized(id: Uuid, tag: &str, now: i64) -> AuthorizedConnection {
    AuthorizedConnection {
        login_url: "https://login.salesforce.com".into(),
        instance_url: format!("https://{tag}.my.salesforce.com"),
        scopes: "api refresh_token offline_access".into(),
        access_token_enc: format!("at:{id}:{tag}"),
        refresh_token_enc: format!("rt:{id}:{tag}"),
        issued_at: now,
        access_expires_at: now + 7_200_000,
        expiry_assumed: true,
        username: None,
    }
}

async fn save(store: &Store, tenant: &str, user: &str, now: i64, tag: &str) -> SavedConnection {
    store
        .save_authorized_connection(
            tenant,
            "00D000000000001AAA",
            user,
            Uuid::new_v4(),
            now,
            |id| Ok::<_, std::convert::Infallible>(authorized(id, tag, now)),
        )
        .await
        .unwrap()
        .unwrap()
}

/// Saves a connection of tenant `acme` whose token material fails to build.
async fn save_failing(
    store: &Store,
    user: &str,
    now: i64,
) -> Result<SavedConnection, &'static str> {
    store
        .save_authorized_connection(
            "acme",
            "00D000000000001AAA",
            user,
            Uuid::new_v4(),
            now,
            |_| Err::<AuthorizedConnection, _>("encryption failed"),
        )
        .await
        .unwrap()
}

/// Takes the connection's refresh lease (it must be free).
async fn lock(store: &Store, tenant: &str, id: Uuid) -> RefreshLease {
    match store.acquire_lease(tenant, id, "test", LONG).await.unwrap() {
        LeaseAttempt::Acquired(lease) => lease,
        LeaseAttempt::Held(_) => panic!("the lease is held"),
        LeaseAttempt::NotFound => panic!("no such connection"),
    }
}

fn refreshed(tag: &str, now: i64, scopes: Option<&str>) -> RefreshedTokens {
    RefreshedTokens {
        instance_url: format!("https://{tag}.my.salesforce.com"),
        scopes: scopes.map(Into::into),
        access_token_enc: format!("at:{tag}"),
        refresh_token_enc: format!("rt:{tag}"),
        issued_at: now,
        access_expires_at: now + 3_600_000,
        expiry_assumed: false,
        now,
    }
}

/// The migrated store of `db` with the app of tenant `acme` in it.
async fn acme_store(db: &TestDatabase) -> Store {
    let store = db.store().await;
    store.put_tenant_app(&app("acme", T0, "k")).await.unwrap();
    store
}

/// Saves an authorized connection (see [`save`]) and returns its row.
async fn connection(
    store: &Store,
    tenant: &str,
    user: &str,
    now: i64,
    tag: &str,
) -> ConnectionRecord {
    save(store, tenant, user, now, tag).await.connection
}

/// Inserts the session of state `state_hash(n)` for `tenant`, created at `T0`.
async fn open_session(store: &Store, tenant: &str, n: u8, expires_at: i64) {
    store
        .insert_authorization_session(&session(tenant, &state_hash(n), T0, expires_at))
        .await
        .unwrap();
}

/// Consumes the session of state `state_hash(n)` at `now`.
async fn consume(store: &Store, n: u8, now: i64) -> ConsumeOutcome {
    store
        .consume_authorization_session(&state_hash(n), now)
        .await
        .unwrap()
}

fn transient(reason: &str, failure_count: i32, next_attempt_at: i64, now: i64) -> RefreshFailure {
    RefreshFailure::Transient {
        reason: reason.into(),
        failure_count,
        next_attempt_at,
        now,
    }
}

fn needs_reauthorization(reason: &str, now: i64) -> RefreshFailure {
    RefreshFailure::NeedsReauthorization {
        reason: reason.into(),
        now,
    }
}

/// Takes the connection's lease and commits `failure` with it.
async fn fail(store: &Store, tenant: &str, id: Uuid, failure: RefreshFailure) -> ConnectionRecord {
    lock(store, tenant, id)
        .await
        .commit_failure(&failure)
        .await
        .unwrap()
}

/// Takes the connection's lease and commits `tokens` with it.
async fn refresh(
    store: &Store,
    tenant: &str,
    id: Uuid,
    tokens: &RefreshedTokens,
) -> ConnectionRecord {
    lock(store, tenant, id)
        .await
        .commit_refreshed(tokens)
        .await
        .unwrap()
}

/// Whether a commit was refused because the lease was lost.
fn lease_lost<T>(result: &Result<T, StoreError>) -> bool {
    matches!(result, Err(StoreError::LeaseLost))
}

/// [`backend_tests!`] for a test of the store alone: the body sees `$b`, the backend's name,
/// and `$store`, migrated and holding tenant `acme`'s app, which is closed after the body.
macro_rules! store_tests {
    ($($(#[$attr:meta])* async fn $name:ident($db:ident, $b:ident, $store:ident) $body:block)+) => {
        backend_tests! {
            $(
                $(#[$attr])*
                async fn $name($db) {
                    let $b = $db.backend;
                    let $store = acme_store(&$db).await;
                    $body
                    $store.close().await;
                }
            )+
        }
    };
}

async fn get(store: &Store, tenant: &str, id: Uuid) -> ConnectionRecord {
    store
        .get_connection(tenant, id)
        .await
        .unwrap()
        .expect("the connection exists")
}

// --- migrations and readiness ----------------------------------------------------------

backend_tests! {
    #[tokio::test]
    async fn migrate_is_idempotent_and_readiness_requires_it(db, b) {
        let store = db.connect().await;
        assert_eq!(store.backend_name(), b);
        let before = store.check_ready().await;
        assert!(
            matches!(before, Err(StoreError::Migration(_))),
            "{b}: ready before migrating: {:?}",
            before.err()
        );
        store.migrate().await.unwrap();
        store.migrate().await.unwrap();
        store.check_ready().await.unwrap();
        // A second store (another replica) migrating the same database is a no-op too.
        let other = db.connect().await;
        other.migrate().await.unwrap();
        other.check_ready().await.unwrap();
        other.close().await;
        store.close().await;
        }

    #[tokio::test]
    async fn readiness_fails_when_a_migration_is_missing_or_failed(db, b) {
        let store = db.store().await;
        store.check_ready().await.unwrap();

        assert_eq!(
            db.execute("UPDATE _sqlx_migrations SET success = false")
                .await,
            5
        );
        let failed = store.check_ready().await;
        assert!(
            matches!(failed, Err(StoreError::Migration(_))),
            "{b}: {:?}",
            failed.err()
        );

        assert_eq!(db.execute("DELETE FROM _sqlx_migrations").await, 5);
        let missing = store.check_ready().await;
        assert!(
            matches!(missing, Err(StoreError::Migration(_))),
            "{b}: {:?}",
            missing.err()
        );
        store.close().await;
        }
}

#[tokio::test]
async fn sqlite_creates_the_missing_folder() {
    let root = std::env::temp_dir().join(format!("valo-oauth-test-{}", Uuid::new_v4().simple()));
    let file = root.join("a").join("b").join("store.db");
    let store = Store::connect(&format!("sqlite://{}", file.display()), &test_options())
        .await
        .unwrap();
    store.migrate().await.unwrap();
    assert!(file.exists());
    store.close().await;
    std::fs::remove_dir_all(root).ok();
}

// --- tenant apps -----------------------------------------------------------------------

backend_tests! {
    #[tokio::test]
    async fn tenant_app_put_replace_get_delete(db, b) {
        let store = db.store().await;

        assert!(store.get_tenant_app("acme").await.unwrap().is_none(), "{b}");
        let (stored, created) = store.put_tenant_app(&app("acme", T0, "one")).await.unwrap();
        assert!(created, "{b}: first put creates");
        assert_eq!(stored.consumer_secret_enc, "secret-enc-one");
        assert_eq!((stored.created_at, stored.updated_at), (T0, T0));

        let (stored, created) = store
            .put_tenant_app(&app("acme", T0 + 5_000, "two"))
            .await
            .unwrap();
        assert!(!created, "{b}: second put replaces");
        assert_eq!(stored.created_at, T0, "{b}: created_at is kept");
        assert_eq!(stored.updated_at, T0 + 5_000);
        assert_eq!(stored.consumer_key_enc, "key-enc-two");
        assert_eq!(stored.consumer_secret_enc, "secret-enc-two");

        let got = store.get_tenant_app("acme").await.unwrap().unwrap();
        assert_eq!(got.tenant_id, "acme");
        assert_eq!(got.login_url, "https://login.salesforce.com");
        assert_eq!(got.consumer_key_hint, "3MVG…Xy9Q");
        assert_eq!(got.consumer_secret_enc, "secret-enc-two");
        assert_eq!((got.created_at, got.updated_at), (T0, T0 + 5_000));
        assert!(
            store.get_tenant_app("other").await.unwrap().is_none(),
            "{b}"
        );

        assert!(store.delete_tenant_app("acme").await.unwrap(), "{b}");
        assert!(!store.delete_tenant_app("acme").await.unwrap(), "{b}");
        assert!(store.get_tenant_app("acme").await.unwrap().is_none(), "{b}");
        store.close().await;
        }
}

store_tests! {
    #[tokio::test]
    async fn deleting_a_tenant_app_cascades_to_sessions_and_connections(db, b, store) {
        store.put_tenant_app(&app("other", T0, "k")).await.unwrap();
        open_session(&store, "acme", 1, T0 + 600_000).await;
        open_session(&store, "other", 2, T0 + 600_000).await;
        let acme = save(&store, "acme", "005000000000001AAA", T0, "a").await;
        let other = save(&store, "other", "005000000000001AAA", T0, "o").await;

        assert!(store.delete_tenant_app("acme").await.unwrap());
        assert!(
            matches!(consume(&store, 1, T0).await, ConsumeOutcome::Unknown),
            "{b}: the tenant's session is gone"
        );
        assert!(
            store
                .get_connection("acme", acme.connection.connection.id)
                .await
                .unwrap()
                .is_none(),
            "{b}"
        );
        assert!(
            store.list_connections("acme").await.unwrap().is_empty(),
            "{b}"
        );
        // The other tenant keeps its rows.
        assert!(matches!(consume(&store, 2, T0).await, ConsumeOutcome::Consumed(_)));
        assert!(
            store
                .get_connection("other", other.connection.connection.id)
                .await
                .unwrap()
                .is_some()
        );

        // Rows of a tenant without an app are refused (foreign keys are on).
        let orphan = store
            .insert_authorization_session(&session("nobody", &state_hash(3), T0, T0 + 1))
            .await;
        assert!(
            matches!(orphan, Err(StoreError::Database(_))),
            "{b}: {:?}",
            orphan.err()
        );
    }

    // --- authorization sessions ------------------------------------------------------------

    #[tokio::test]
    async fn consume_is_single_use_and_tells_unknown_and_expired(db, b, store) {
        let live = session("acme", &state_hash(1), T0, T0 + 600_000);
        store.insert_authorization_session(&live).await.unwrap();

        let now = T0 + 1_000;
        match consume(&store, 1, now).await
        {
            ConsumeOutcome::Consumed(s) => {
                assert_eq!(s.id, live.id, "{b}");
                assert_eq!(s.state_hash, live.state_hash);
                assert_eq!(s.tenant_id, "acme");
                assert_eq!(s.pkce_verifier_enc, "pkce-enc");
                assert_eq!(s.return_to.as_deref(), Some("https://app.valo.ai/done"));
                assert_eq!((s.created_at, s.expires_at), (T0, T0 + 600_000));
                assert_eq!(s.consumed_at, Some(now));
            }
            _ => panic!("{b}: first consume must succeed"),
        }
        assert!(
            matches!(consume(&store, 1, now).await, ConsumeOutcome::AlreadyConsumed),
            "{b}: replay"
        );
        assert!(
            matches!(consume(&store, 9, now).await, ConsumeOutcome::Unknown),
            "{b}: unknown"
        );

        // Expired (the boundary, expires_at == now, counts as expired) and consumed all the
        // same, so a later try is a replay.
        let old = session("acme", &state_hash(2), T0, T0 + 600_000);
        store.insert_authorization_session(&old).await.unwrap();
        assert!(
            matches!(consume(&store, 2, T0 + 600_000).await, ConsumeOutcome::Expired),
            "{b}: expired"
        );
        assert!(matches!(consume(&store, 2, T0).await, ConsumeOutcome::AlreadyConsumed));

        // Housekeeping removes only sessions expired before the cut-off.
        open_session(&store, "acme", 3, T0 + 900_000).await;
        assert_eq!(
            store
                .delete_expired_authorization_sessions(T0 + 600_001)
                .await
                .unwrap(),
            2,
            "{b}"
        );
        assert!(matches!(consume(&store, 3, T0).await, ConsumeOutcome::Consumed(_)));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_consumers_of_one_state_one_wins(db, b, store) {
        open_session(&store, "acme", 7, T0 + 600_000).await;
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let store = store.clone();
                tokio::spawn(async move {
                    store
                        .consume_authorization_session(&state_hash(7), T0 + 1)
                        .await
                })
            })
            .collect();
        let (mut consumed, mut replays) = (0, 0);
        for task in tasks {
            match task.await.unwrap() {
                Ok(ConsumeOutcome::Consumed(_)) => consumed += 1,
                Ok(ConsumeOutcome::AlreadyConsumed) => replays += 1,
                Ok(_) => panic!("{b}: unexpected outcome"),
                Err(e) => panic!("{b}: {e}"),
            }
        }
        assert_eq!((consumed, replays), (1, 19), "{b}");
    }

    // --- saving authorized connections -----------------------------------------------------

    #[tokio::test]
    async fn save_inserts_then_updates_the_same_org_user(db, b, store) {
        let user = "005000000000001AAA";

        let first_id = Uuid::new_v4();
        let mut seen = None;
        let first = store
            .save_authorized_connection("acme", "00D000000000001AAA", user, first_id, T0, |id| {
                seen = Some(id);
                Ok::<_, String>(authorized(id, "one", T0))
            })
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, Some(first_id), "{b}: build gets new_id for a new row");
        assert!(first.replaced.is_none(), "{b}");
        let c = &first.connection;
        assert_eq!(c.connection.id, first_id);
        assert_eq!(
            (c.connection.tenant_id.as_str(), c.connection.org_id.as_str(), c.connection.user_id.as_str()),
            ("acme", "00D000000000001AAA", user)
        );
        assert_eq!(c.access_token_enc, format!("at:{first_id}:one"));
        assert_eq!(c.refresh_token_enc, format!("rt:{first_id}:one"));
        assert_eq!(c.connection.instance_url, "https://one.my.salesforce.com");
        assert_eq!(c.connection.scopes, ["api", "refresh_token", "offline_access"]);
        assert_eq!((c.issued_at, c.connection.access_expires_at), (T0, T0 + 7_200_000));
        assert!(c.connection.expiry_assumed);
        assert_eq!(c.connection.status, ConnectionStatus::Active);
        assert_eq!((c.version, c.failure_count), (1, 0));
        assert_eq!(
            (c.connection.created_at, c.connection.updated_at, c.connection.last_refreshed_at),
            (T0, T0, T0)
        );
        assert!(c.connection.last_error.is_none() && c.next_attempt_at.is_none());

        // The connection then broke for good.
        let l = lock(&store, "acme", first_id).await;
        l.commit_failure(&RefreshFailure::NeedsReauthorization {
            reason: "invalid_grant".into(),
            now: T0 + 1,
        })
        .await
        .unwrap();

        // The same org user authorizes again: same row, new tokens, failure state cleared.
        let t1 = T0 + 60_000;
        let mut seen = None;
        let second = store
            .save_authorized_connection(
                "acme",
                "00D000000000001AAA",
                user,
                Uuid::new_v4(),
                t1,
                |id| {
                    seen = Some(id);
                    Ok::<_, String>(authorized(id, "two", t1))
                },
            )
            .await
            .unwrap()
            .unwrap();
        assert_eq!(
            seen,
            Some(first_id),
            "{b}: build gets the existing row's id"
        );
        let c = &second.connection;
        assert_eq!(c.connection.id, first_id, "{b}");
        assert_eq!(c.refresh_token_enc, format!("rt:{first_id}:two"));
        assert_eq!(c.connection.instance_url, "https://two.my.salesforce.com");
        assert_eq!(c.connection.status, ConnectionStatus::Active, "{b}");
        assert!(c.connection.last_error.is_none(), "{b}");
        assert_eq!(c.version, 2, "{b}");
        assert_eq!(
            (c.connection.created_at, c.connection.updated_at, c.connection.last_refreshed_at),
            (T0, t1, t1)
        );
        let replaced = second.replaced.expect("the previous row");
        assert_eq!(
            replaced.refresh_token_enc,
            format!("rt:{first_id}:one"),
            "{b}"
        );
        assert_eq!(replaced.connection.status, ConnectionStatus::NeedsReauthorization);
        assert_eq!(replaced.version, 1);
        assert_eq!(
            store.list_connections("acme").await.unwrap().len(),
            1,
            "{b}"
        );

        // Another user of the org is another connection.
        let other = save(&store, "acme", "005000000000002AAA", t1, "x").await;
        assert_ne!(other.connection.connection.id, first_id);
        let listed: Vec<Uuid> = store
            .list_connections("acme")
            .await
            .unwrap()
            .iter()
            .map(|c| c.connection.id)
            .collect();
        assert_eq!(listed, vec![first_id, other.connection.connection.id], "{b}");
    }

    #[tokio::test]
    async fn save_rolls_back_when_build_fails(db, b, store) {
        let user = "005000000000001AAA";

        let failed = save_failing(&store, user, T0).await;
        assert!(matches!(failed, Err("encryption failed")), "{b}");
        assert!(
            store.list_connections("acme").await.unwrap().is_empty(),
            "{b}"
        );

        let saved = save(&store, "acme", user, T0, "one").await;
        let failed = save_failing(&store, user, T0 + 1).await;
        assert!(failed.is_err(), "{b}");
        let row = get(&store, "acme", saved.connection.connection.id).await;
        assert_eq!(row.version, 1, "{b}: unchanged");
        assert_eq!(row.refresh_token_enc, saved.connection.refresh_token_enc);
        // Nothing is left locked.
        assert!(
            lock(&store, "acme", saved.connection.connection.id)
                .await
                .release()
                .await
                .unwrap()
        );
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_first_time_saves_make_one_row(db, b, store) {
        let built_for: Arc<Mutex<Vec<Uuid>>> = Arc::default();
        let start = Arc::new(tokio::sync::Barrier::new(10));
        let tasks: Vec<_> = (0..10)
            .map(|n| {
                let store = store.clone();
                let built_for = built_for.clone();
                let start = start.clone();
                tokio::spawn(async move {
                    start.wait().await;
                    store
                        .save_authorized_connection(
                            "acme",
                            "00D000000000001AAA",
                            "005000000000001AAA",
                            Uuid::new_v4(),
                            T0 + n,
                            move |id| {
                                built_for.lock().unwrap().push(id);
                                // Widen the window between reading "no row yet" and
                                // inserting, as encrypting under load would.
                                std::thread::sleep(Duration::from_millis(50));
                                Ok::<_, String>(authorized(id, &format!("t{n}"), T0 + n))
                            },
                        )
                        .await
                })
            })
            .collect();
        let mut fresh = 0;
        let mut ids = HashSet::new();
        for task in tasks {
            let saved = task
                .await
                .unwrap()
                .unwrap_or_else(|e| panic!("{b}: {e}"))
                .unwrap();
            fresh += usize::from(saved.replaced.is_none());
            ids.insert(saved.connection.connection.id);
            // The tokens stored are the ones made for the row's id.
            assert!(
                saved
                    .connection
                    .refresh_token_enc
                    .starts_with(&format!("rt:{}:", saved.connection.connection.id)),
                "{b}"
            );
        }
        assert_eq!(fresh, 1, "{b}: exactly one save created the row");
        let rows = store.list_connections("acme").await.unwrap();
        assert_eq!(rows.len(), 1, "{b}");
        let row = &rows[0];
        assert_eq!(ids, HashSet::from([row.connection.id]), "{b}");
        assert!(
            built_for.lock().unwrap().iter().all(|id| *id == row.connection.id),
            "{b}"
        );
        assert_eq!(row.version, 10, "{b}");
        assert!(row.access_token_enc.starts_with(&format!("at:{}:", row.connection.id)));
    }

    // --- reading and deleting connections --------------------------------------------------

    #[tokio::test]
    async fn connections_are_tenant_scoped(db, b, store) {
        store.put_tenant_app(&app("evil", T0, "k")).await.unwrap();
        let id = connection(&store, "acme", "005000000000001AAA", T0, "a").await.connection.id;

        assert!(
            store.get_connection("evil", id).await.unwrap().is_none(),
            "{b}"
        );
        assert!(
            store.list_connections("evil").await.unwrap().is_empty(),
            "{b}"
        );
        assert!(!store.delete_connection("evil", id).await.unwrap(), "{b}");
        assert!(
            matches!(
                store.acquire_lease("evil", id, "test", LONG).await.unwrap(),
                LeaseAttempt::NotFound
            ),
            "{b}"
        );
        assert!(
            store
                .get_connection("acme", Uuid::new_v4())
                .await
                .unwrap()
                .is_none()
        );

        assert_eq!(get(&store, "acme", id).await.connection.id, id, "{b}: still there");
        assert!(store.delete_connection("acme", id).await.unwrap(), "{b}");
        assert!(
            store.get_connection("acme", id).await.unwrap().is_none(),
            "{b}"
        );
        assert!(!store.delete_connection("acme", id).await.unwrap(), "{b}");
    }

    // --- the refresh lease -----------------------------------------------------------------

    #[tokio::test]
    async fn a_held_lease_is_refused_until_its_commit_releases_it(db, b, store) {
        let id = connection(&store, "acme", "005000000000001AAA", T0, "a").await.connection.id;

        let first = lock(&store, "acme", id).await;
        assert_eq!(first.record().version, 1);
        assert!(first.record().lease_id.is_some(), "{b}");
        // No transaction stays open: other statements run while the lease is held.
        assert_eq!(get(&store, "acme", id).await.version, 1, "{b}");
        match store
            .acquire_lease("acme", id, "other", LONG)
            .await
            .unwrap()
        {
            LeaseAttempt::Held(row) => assert_eq!(row.version, 1, "{b}"),
            _ => panic!("{b}: a second holder must be refused while the lease is live"),
        }

        let committed = first
            .commit_refreshed(&refreshed("new", T0 + 10, None))
            .await
            .unwrap();
        assert_eq!(committed.version, 2);
        assert!(
            committed.lease_id.is_none(),
            "{b}: the commit releases the lease"
        );

        let second = lock(&store, "acme", id).await;
        assert_eq!(second.record().version, 2, "{b}: reads the new version");
        assert_eq!(second.record().refresh_token_enc, "rt:new", "{b}");
        assert!(second.release().await.unwrap());
        // A second commit with the first (spent) lease is refused.
        assert!(
            lease_lost(&first.commit_refreshed(&refreshed("late", T0 + 20, None)).await),
            "{b}"
        );
        assert_eq!(get(&store, "acme", id).await.refresh_token_enc, "rt:new");
    }

    #[tokio::test]
    async fn an_expired_lease_is_taken_over_and_its_old_holder_cannot_commit(db, b, store) {
        let id = connection(&store, "acme", "005000000000001AAA", T0, "a").await.connection.id;
        let short = match store
            .acquire_lease("acme", id, "dying", Duration::from_millis(300))
            .await
            .unwrap()
        {
            LeaseAttempt::Acquired(lease) => lease,
            _ => panic!("{b}: free"),
        };
        assert!(matches!(
            store
                .acquire_lease("acme", id, "other", LONG)
                .await
                .unwrap(),
            LeaseAttempt::Held(_)
        ));
        // The lease ends in the database's clock; then another holder takes it.
        tokio::time::sleep(Duration::from_millis(450)).await;
        let taker = lock(&store, "acme", id).await;
        let failed = short
            .commit_failure(&RefreshFailure::NeedsReauthorization {
                reason: "late".into(),
                now: T0 + 5,
            })
            .await;
        assert!(matches!(failed, Err(StoreError::LeaseLost)), "{b}");
        assert!(
            lease_lost(&short.commit_refreshed(&refreshed("stale", T0 + 5, None)).await),
            "{b}: a holder whose lease was taken over never overwrites newer state"
        );
        assert!(
            !short.release().await.unwrap(),
            "{b}: not its lease any more"
        );
        let row = taker
            .commit_refreshed(&refreshed("taker", T0 + 6, None))
            .await
            .unwrap();
        assert_eq!(row.refresh_token_enc, "rt:taker", "{b}");
        assert_eq!(row.connection.status, ConnectionStatus::Active, "{b}");
    }

    #[tokio::test]
    async fn a_reauthorization_or_a_delete_ends_a_lease_in_flight(db, b, store) {
        let user = "005000000000001AAA";
        let id = connection(&store, "acme", user, T0, "a").await.connection.id;
        let holder = lock(&store, "acme", id).await;
        let again = save(&store, "acme", user, T0 + 1, "b").await;
        assert!(again.connection.lease_id.is_none(), "{b}");
        assert!(
            lease_lost(&holder.commit_refreshed(&refreshed("old-family", T0 + 2, None)).await),
            "{b}: the re-authorized tokens stay"
        );
        assert_eq!(
            get(&store, "acme", id).await.refresh_token_enc,
            format!("rt:{id}:b")
        );
        let holder = lock(&store, "acme", id).await;
        assert!(store.delete_connection("acme", id).await.unwrap());
        assert!(lease_lost(&holder.commit_refreshed(&refreshed("gone", T0 + 3, None)).await));
    }

    #[tokio::test]
    async fn an_unverified_rotation_keeps_the_new_refresh_token_only(db, b, store) {
        let saved = connection(&store, "acme", "005000000000001AAA", T0, "a").await;
        let row = lock(&store, "acme", saved.connection.id)
            .await
            .commit_failure(&RefreshFailure::UnverifiedRotation {
                refresh_token_enc: "rt:rotated".into(),
                reason: "token response signature did not verify".into(),
                failure_count: 1,
                next_attempt_at: T0 + 1_000,
                now: T0 + 10,
            })
            .await
            .unwrap();
        assert_eq!(row.refresh_token_enc, "rt:rotated", "{b}");
        assert_eq!(row.access_token_enc, saved.access_token_enc, "{b}");
        assert_eq!(row.connection.status, ConnectionStatus::Active, "{b}");
        assert_eq!(
            row.connection.last_error.as_deref(),
            Some("token response signature did not verify")
        );
        assert_eq!(
            (row.failure_count, row.next_attempt_at),
            (1, Some(T0 + 1_000))
        );
        assert_eq!(
            row.version,
            saved.version + 1,
            "{b}: token material changed"
        );
        assert!(row.lease_id.is_none(), "{b}");
    }
}

backend_tests! {
    #[tokio::test]
    async fn app_credentials_invalid_is_compare_and_set_and_cleared_by_a_put(db, b) {
        let store = db.store().await;
        let (stored, _) = store.put_tenant_app(&app("acme", T0, "k")).await.unwrap();
        assert_eq!(stored.status, AppStatus::Active, "{b}");
        let version = stored.credentials_version;
        // A PUT of new credentials lands while a refresh with the old ones is at Salesforce.
        let (replaced, _) = store
            .put_tenant_app(&app("acme", T0 + 1, "fixed"))
            .await
            .unwrap();
        assert_eq!(replaced.credentials_version, version + 1, "{b}");
        assert!(
            !store
                .mark_app_credentials_invalid("acme", version, "invalid_client", T0 + 2)
                .await
                .unwrap(),
            "{b}: the old credentials' refusal does not mark the new ones"
        );
        assert_eq!(
            store.get_tenant_app("acme").await.unwrap().unwrap().status,
            AppStatus::Active
        );
        assert!(
            store
                .mark_app_credentials_invalid("acme", version + 1, "invalid_client", T0 + 3)
                .await
                .unwrap()
        );
        let got = store.get_tenant_app("acme").await.unwrap().unwrap();
        assert_eq!(got.status, AppStatus::CredentialsInvalid, "{b}");
        assert_eq!(got.status_reason.as_deref(), Some("invalid_client"));
        let (fixed, _) = store
            .put_tenant_app(&app("acme", T0 + 4, "fixed-again"))
            .await
            .unwrap();
        assert_eq!(fixed.status, AppStatus::Active, "{b}");
        assert!(fixed.status_reason.is_none(), "{b}");
        store.close().await;
        }
}

store_tests! {
    #[tokio::test]
    async fn commit_refreshed_writes_tokens_and_clears_the_failure_state(db, b, store) {
        let id = connection(&store, "acme", "005000000000001AAA", T0, "a").await.connection.id;
        fail(&store, "acme", id, transient("timeout", 2, T0 + 50_000, T0 + 100)).await;

        let t = T0 + 1_000;
        let new = refresh(&store, "acme", id, &refreshed("r1", t, None)).await;
        assert_eq!(new.access_token_enc, "at:r1", "{b}");
        assert_eq!(new.refresh_token_enc, "rt:r1");
        assert_eq!(new.connection.instance_url, "https://r1.my.salesforce.com");
        assert_eq!(
            new.connection.scopes,
            ["api", "refresh_token", "offline_access"],
            "{b}: kept when None"
        );
        assert_eq!((new.issued_at, new.connection.access_expires_at), (t, t + 3_600_000));
        assert!(!new.connection.expiry_assumed);
        assert_eq!(
            (new.connection.last_refreshed_at, new.connection.updated_at, new.connection.created_at),
            (t, t, T0)
        );
        assert!(
            new.connection.last_error.is_none() && new.next_attempt_at.is_none(),
            "{b}"
        );
        assert_eq!(new.failure_count, 0);
        assert_eq!(new.connection.status, ConnectionStatus::Active);
        assert_eq!(new.version, 2, "{b}");
        let stored = get(&store, "acme", id).await;
        assert_eq!(
            (
                stored.version,
                stored.refresh_token_enc.as_str(),
                stored.failure_count
            ),
            (2, "rt:r1", 0),
            "{b}: committed"
        );

        let new = lock(&store, "acme", id)
            .await
            .commit_refreshed(&refreshed("r2", t + 1, Some("api")))
            .await
            .unwrap();
        assert_eq!(new.connection.scopes, ["api"], "{b}");
        assert_eq!(new.version, 3, "{b}");
    }

    #[tokio::test]
    async fn commit_failure_and_release(db, b, store) {
        let saved = connection(&store, "acme", "005000000000001AAA", T0, "a").await;
        let id = saved.connection.id;

        // Release changes nothing.
        let l = lock(&store, "acme", id).await;
        l.release().await.unwrap();
        let row = get(&store, "acme", id).await;
        assert_eq!((row.version, row.connection.updated_at), (1, T0), "{b}");

        let row = fail(&store, "acme", id, transient("salesforce 503", 3, T0 + 80_000, T0 + 10)).await;
        assert_eq!(row.connection.status, ConnectionStatus::Active, "{b}: status stays");
        assert_eq!(row.connection.last_error.as_deref(), Some("salesforce 503"));
        assert_eq!(
            (row.failure_count, row.next_attempt_at),
            (3, Some(T0 + 80_000))
        );
        assert_eq!(
            row.refresh_token_enc, saved.refresh_token_enc,
            "{b}: token kept"
        );
        assert_eq!(row.version, 1, "{b}: token material unchanged");
        assert_eq!((row.connection.updated_at, row.connection.last_refreshed_at), (T0 + 10, T0));
        assert_eq!(
            get(&store, "acme", id).await.failure_count,
            3,
            "{b}: committed"
        );

        let row = fail(&store, "acme", id, needs_reauthorization("invalid_grant", T0 + 20)).await;
        assert_eq!(row.connection.status, ConnectionStatus::NeedsReauthorization, "{b}");
        assert_eq!(row.connection.last_error.as_deref(), Some("invalid_grant"));
        assert_eq!(row.version, 1, "{b}");
        assert_eq!(row.refresh_token_enc, saved.refresh_token_enc);
        assert_eq!(row.connection.updated_at, T0 + 20);
        let stored = get(&store, "acme", id).await;
        assert_eq!(
            stored.connection.status,
            ConnectionStatus::NeedsReauthorization,
            "{b}: committed"
        );
    }

    // --- keep-alive ------------------------------------------------------------------------

    #[tokio::test]
    async fn keepalive_selects_active_stale_not_backing_off_oldest_first(db, b, store) {
        store.put_tenant_app(&app("beta", T0, "k")).await.unwrap();
        let now = T0 + 1_000_000;
        let threshold = T0 + 500;
        // (tenant, user, last refreshed at) — saving sets last_refreshed_at to its `now`.
        let oldest = connection(&store, "acme", "005000000000001AAA", T0 + 100, "a").await;
        let second = connection(&store, "beta", "005000000000002AAA", T0 + 200, "b").await;
        let backing_off = connection(&store, "acme", "005000000000003AAA", T0 + 150, "c").await;
        let retry_due = connection(&store, "acme", "005000000000004AAA", T0 + 250, "d").await;
        let broken = connection(&store, "acme", "005000000000005AAA", T0 + 50, "e").await;
        let at_threshold = connection(&store, "acme", "005000000000006AAA", threshold, "f").await;
        let fresh = connection(&store, "acme", "005000000000007AAA", T0 + 900, "g").await;

        fail(&store, "acme", backing_off.connection.id, transient("timeout", 1, now + 1, now)).await;
        fail(&store, "acme", retry_due.connection.id, transient("timeout", 1, now, now)).await;
        fail(&store, "acme", broken.connection.id, needs_reauthorization("invalid_grant", now)).await;

        // A connection whose refresh is under way (leased) and the connections of an app
        // whose credentials were refused are skipped.
        let leased = connection(&store, "acme", "005000000000008AAA", T0 + 60, "h").await;
        let _held = lock(&store, "acme", leased.connection.id).await;
        store.put_tenant_app(&app("gamma", T0, "k")).await.unwrap();
        let _refused = save(&store, "gamma", "005000000000009AAA", T0 + 70, "i").await;
        assert!(
            store
                .mark_app_credentials_invalid("gamma", 1, "invalid_client", now)
                .await
                .unwrap()
        );

        let due = store
            .connections_due_for_keepalive(threshold, now, 100)
            .await
            .unwrap();
        assert_eq!(
            due,
            vec![
                ("acme".to_string(), oldest.connection.id),
                ("beta".to_string(), second.connection.id),
                ("acme".to_string(), retry_due.connection.id),
            ],
            "{b}"
        );
        let _ = (at_threshold, fresh);

        let limited = store
            .connections_due_for_keepalive(threshold, now, 2)
            .await
            .unwrap();
        assert_eq!(limited, due[..2].to_vec(), "{b}: limit");
    }
}

backend_tests! {
    #[tokio::test]
    async fn insert_connections_in_bulk_all_or_none(db, b) {
        let store = acme_store(&db).await;
        let new = |i: usize| {
            let id = Uuid::new_v4();
            NewConnection {
                id,
                tenant_id: "acme".into(),
                org_id: "00D000000000001AAA".into(),
                user_id: format!("005{i:015}"),
                tokens: AuthorizedConnection {
                    username: Some(format!("bulk{i}@example.com")),
                    ..authorized(id, &format!("bulk{i}"), T0)
                },
                created_at: T0 + i64::try_from(i).unwrap(),
            }
        };
        assert_eq!(store.insert_connections(&[]).await.unwrap(), 0, "{b}");
        // Two full statements and a remainder.
        let rows: Vec<NewConnection> = (0..1_203).map(new).collect();
        assert_eq!(store.insert_connections(&rows).await.unwrap(), 1_203, "{b}");
        let listed = store.list_connections("acme").await.unwrap();
        assert_eq!(listed.len(), 1_203, "{b}");
        let last = get(&store, "acme", rows[1_202].id).await;
        assert_eq!(last.connection.user_id, rows[1_202].user_id, "{b}");
        assert_eq!(last.access_token_enc, rows[1_202].tokens.access_token_enc, "{b}");
        assert_eq!(last.refresh_token_enc, rows[1_202].tokens.refresh_token_enc, "{b}");
        assert_eq!(last.connection.access_expires_at, T0 + 7_200_000, "{b}");
        assert_eq!(last.connection.status, ConnectionStatus::Active, "{b}");
        assert_eq!((last.version, last.failure_count), (1, 0), "{b}");
        assert_eq!(last.connection.created_at, T0 + 1_202, "{b}");
        assert_eq!(last.connection.username.as_deref(), Some("bulk1202@example.com"), "{b}");
        assert_eq!(last.connection.last_refreshed_at, T0 + 1_202, "{b}");
        assert!(last.lease_id.is_none(), "{b}");

        // An identity that exists fails the whole call, including the rows before it.
        let again = vec![new(5_000), new(5_001), new(7)];
        assert!(store.insert_connections(&again).await.is_err(), "{b}");
        assert!(
            store.get_connection("acme", again[0].id).await.unwrap().is_none(),
            "{b}: nothing of a failed call stays"
        );
        assert_eq!(store.list_connections("acme").await.unwrap().len(), 1_203, "{b}");
        store.close().await;
    }
}

// --- failures --------------------------------------------------------------------------

#[tokio::test]
async fn unreachable_postgres_is_unavailable_and_keeps_the_password_out() {
    let options = StoreOptions {
        max_connections: 2,
        acquire_timeout: Duration::from_secs(2),
        transaction_pooler: false,
    };
    let result = Store::connect("postgres://postgres:s3cr3t-pw@127.0.0.1:1/x", &options).await;
    let error = result.err().expect("nothing listens on port 1");
    assert!(matches!(error, StoreError::Unavailable(_)), "{error:?}");
    assert!(
        !error_chain(&error).contains("s3cr3t"),
        "{}",
        error_chain(&error)
    );

    // A malformed URL is refused without echoing it either.
    let error = Store::connect(
        "postgres://postgres:s3cr3t-pw@127.0.0.1:notaport/x",
        &options,
    )
    .await
    .err()
    .expect("bad port");
    assert!(
        !error_chain(&error).contains("s3cr3t"),
        "{}",
        error_chain(&error)
    );
    assert!(!format!("{error:?}").contains("s3cr3t"), "{error:?}");

    // An unsupported scheme is a configuration error.
    let error = Store::connect("mysql://root:s3cr3t-pw@db/x", &options)
        .await
        .err()
        .expect("unsupported");
    assert!(matches!(error, StoreError::Database(_)), "{error:?}");
    assert!(!format!("{error:?}").contains("s3cr3t"), "{error:?}");
}

backend_tests! {
    #[tokio::test]
    async fn a_closed_pool_is_unavailable(db, b) {
        let store = db.store().await;
        store.close().await;
        let result = store.get_tenant_app("acme").await;
        assert!(
            matches!(result, Err(StoreError::Unavailable(_))),
            "{b}: {:?}",
            result.err()
        );
        assert!(store.check_ready().await.is_err(), "{b}");
        }
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(e) = source {
        text.push_str(": ");
        text.push_str(&e.to_string());
        source = e.source();
    }
    text
}
