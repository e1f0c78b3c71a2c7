//! Key rotation to completion: values sealed under an old key are re-sealed by
//! `valo-oauth rekey` (the binary, as an operator runs it), `valo-oauth keys` says when the
//! old key may go, and the service then serves, refreshes and deletes with the new key
//! alone; a connection whose key is gone can still be deleted with `force=true`.

use std::process::Command;

use fake_salesforce::FakeSalesforce;
use reqwest::StatusCode;
use secrecy::ExposeSecret;
use serde_json::json;
use valo_oauth::crypto::Keyring;
use valo_testkit::app::{TestApp, test_env};
use valo_testkit::db::TestDatabase;

use crate::resilience::{rejecting, token_of};

fn key(id: &str) -> String {
    Keyring::generate_key_spec(id).expose_secret().to_owned()
}

/// Runs the service's binary with `args` against `db` and `keys`; returns its standard
/// output, failing the test (with its standard error) when it exits non-zero.
fn cli(db: &TestDatabase, keys: &str, args: &[&str]) -> String {
    let output = Command::new(crate::SERVICE_BINARY)
        .args(args)
        .env_clear()
        .envs(test_env(db, keys, &[]))
        .env("VALO_OAUTH_LOG", "warn")
        .current_dir(valo_testkit::REPOSITORY_ROOT)
        .output()
        .expect("run valo-oauth");
    valo_testkit::process::stdout_of(&output, &format!("valo-oauth {args:?}"))
}

backend_tests! {
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn rekey_moves_every_secret_to_the_first_key_and_the_old_one_can_go(db) {
        let (k1, k2) = (key("k1"), key("k2"));
        let fake = FakeSalesforce::start(Default::default()).await.unwrap();
        let old = TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_ENCRYPTION_KEYS", &k1)]).await;
        let id = old.connect("acme").await;
        let first = token_of(old.access_token("acme", id, None).await).await;
        // A pending authorization: its PKCE verifier is sealed too.
        let pending = old
            .authorization_url("acme", json!({"return_to": "https://app.valo.test/done"}))
            .await;
        old.stop().await;

        let both = format!("{k2},{k1}");
        let before = cli(&db, &both, &["keys"]);
        assert!(before.contains("key k2: 0 value(s)"), "{before}");
        assert!(!before.contains("key k1: 0 value(s)"), "{before}");
        // Batches of two: the walk pages through every table.
        let rekeyed = cli(&db, &both, &["rekey", "--batch-size", "2"]);
        assert!(rekeyed.contains("0 unreadable"), "{rekeyed}");
        assert!(!rekeyed.contains(": 0 re-sealed"), "{rekeyed}");
        let after = cli(&db, &both, &["keys"]);
        assert!(after.contains("key k1: 0 value(s), may be removed"), "{after}");
        let again = cli(&db, &both, &["rekey"]);
        assert!(again.starts_with("rekey: 0 value(s)"), "resumable, nothing left: {again}");

        // The new key alone: serve, refresh, finish the pending flow, delete.
        let new = TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_ENCRYPTION_KEYS", &k2)]).await;
        let served = token_of(new.access_token("acme", id, None).await).await;
        assert_eq!(served, first, "read and decrypted with the new key");
        let refreshed = token_of(new.access_token("acme", id, rejecting(&first)).await).await;
        assert_ne!(refreshed, first, "the refresh token opened with the new key");
        let callback = fake.approve(&pending).await.unwrap();
        let location = new.callback(&callback).await;
        assert_eq!(location.status(), StatusCode::SEE_OTHER);
        let location = location.headers()["location"].to_str().unwrap().to_owned();
        assert!(location.contains("status=connected"), "the PKCE verifier opened: {location}");
        let revocations = fake.counters().revocations;
        let deleted = new
            .delete(&format!("/v1/tenants/acme/connections/{id}"), "connections:write")
            .await;
        assert_eq!(deleted.status(), StatusCode::NO_CONTENT);
        assert_eq!(fake.counters().revocations, revocations + 1, "revoked first");
        new.stop().await;
    }

    #[tokio::test]
    async fn a_connection_whose_key_is_gone_is_deleted_with_force(db) {
        let fake = FakeSalesforce::start(Default::default()).await.unwrap();
        let old = TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_ENCRYPTION_KEYS", &key("k1"))])
            .await;
        let id = old.connect("acme").await;
        old.stop().await;

        let new = TestApp::spawn_with(&db, &fake, &[("VALO_OAUTH_ENCRYPTION_KEYS", &key("k3"))])
            .await;
        let path = format!("/v1/tenants/acme/connections/{id}");
        let refused = new.delete(&path, "connections:write").await;
        assert_ne!(refused.status(), StatusCode::NO_CONTENT, "not without force");
        let (status, _) = new.get_json(&path, "connections:read").await;
        assert_eq!(status, StatusCode::OK, "still there");
        let forced = new
            .delete(&format!("{path}?force=true"), "connections:write")
            .await;
        assert_eq!(forced.status(), StatusCode::NO_CONTENT);
        let (status, _) = new.get_json(&path, "connections:read").await;
        assert_eq!(status, StatusCode::NOT_FOUND);
        assert_eq!(fake.counters().revocations, 0, "nothing to revoke with");
        // The app too: its delete revokes nothing it cannot open.
        let app = new
            .delete("/v1/tenants/acme/salesforce-app?force=true", "apps:write")
            .await;
        assert_eq!(app.status(), StatusCode::NO_CONTENT);
        new.stop().await;
    }
}
