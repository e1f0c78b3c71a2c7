//! Stored connections in bulk, inserted through the service's store
//! ([`Store::insert_connections`]), their tokens sealed with the test kit's key under each
//! row's id exactly as the service seals them.

use std::time::Instant;

use secrecy::SecretString;
use uuid::Uuid;
use valo_oauth::crypto::{Binding, Keyring};
use valo_oauth::store::{AuthorizedConnection, Millis, NewConnection, Store};
use valo_testkit::app::TEST_KEYS;
use valo_testkit::db::TestDatabase;

use crate::api::TENANT;

/// Rows per [`Store::insert_connections`] call (one transaction each).
const ROWS_PER_CALL: usize = 10_000;

/// The org every seeded connection belongs to.
pub const ORG_ID: &str = "00D5g000004ABCDEA4";

/// The 18-character user id of seeded row `i`.
pub fn user_id(i: usize) -> String {
    valo_oauth::salesforce::to_18_char_id(&format!("005{i:012}")).unwrap()
}

/// A made-up token pair for row `i`, Salesforce-shaped (org id, `!`, opaque characters;
/// about 112 and 87 characters), unknown to any Salesforce.
pub fn made_up_tokens(i: usize) -> (String, String) {
    (
        format!(
            "00D5g000004ABCD!AR{i:010}{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ),
        format!(
            "5Aep861{i:010}{}{}",
            Uuid::new_v4().simple(),
            Uuid::new_v4().simple()
        ),
    )
}

/// Inserts `n` active connections of [`crate::api::TENANT`] (whose app must exist) with
/// `login_url`. Row `i` gets the tokens `tokens(i)` (access, refresh), issued 10 minutes ago
/// and valid for 2 hours (the expiry known, not assumed), and was last refreshed at
/// `refreshed_at(i)`. Returns the ids in row order and the seconds it took.
pub async fn insert(
    db: &TestDatabase,
    n: usize,
    login_url: &str,
    now: Millis,
    refreshed_at: impl Fn(usize) -> Millis,
    mut tokens: impl FnMut(usize) -> (String, String),
) -> (Vec<Uuid>, f64) {
    let started = Instant::now();
    let store: Store = db.connect().await;
    let keyring = Keyring::parse(&SecretString::from(TEST_KEYS.to_owned())).unwrap();
    let mut ids = Vec::with_capacity(n);
    let mut rows = Vec::with_capacity(ROWS_PER_CALL);
    for i in 0..n {
        let id = Uuid::new_v4();
        let row = id.to_string();
        let (access, refresh) = tokens(i);
        let seal = |plain: &str, column: &str| {
            keyring
                .seal(plain, Binding::new("connections", &row, column))
                .unwrap()
        };
        rows.push(NewConnection {
            id,
            tenant_id: TENANT.to_owned(),
            org_id: ORG_ID.to_owned(),
            user_id: user_id(i),
            tokens: AuthorizedConnection {
                login_url: login_url.to_owned(),
                instance_url: "https://bench.my.salesforce.com".to_owned(),
                scopes: "api refresh_token offline_access".to_owned(),
                access_token_enc: seal(&access, "access_token"),
                refresh_token_enc: seal(&refresh, "refresh_token"),
                issued_at: now - 600_000,
                access_expires_at: now - 600_000 + 7_200_000,
                expiry_assumed: false,
                username: None,
            },
            created_at: refreshed_at(i),
        });
        ids.push(id);
        if rows.len() == ROWS_PER_CALL || i + 1 == n {
            let inserted = store.insert_connections(&rows).await.unwrap();
            assert_eq!(inserted, rows.len() as u64);
            rows.clear();
        }
    }
    store.close().await;
    (ids, started.elapsed().as_secs_f64())
}
