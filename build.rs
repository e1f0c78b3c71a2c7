//! Rebuilds the crate when a migration changes (the migrations are embedded with
//! `include_str!`, see `src/store/`), and tells the integration tests which optional
//! environments they may use, so that a test without its environment is reported as
//! ignored instead of passing:
//!
//! - `test_postgres`: `TEST_DATABASE_URL` is set (or `CI=true`, where a missing database
//!   must fail) — the `…::postgres` cases run;
//! - `test_interop`: `VALO_OAUTH_INTEROP_PYTHON` is set (or `CI=true`) — the flow against
//!   the independent Authlib server runs;
//! - `test_browser`: `/usr/bin/chromedriver` exists (or `CI=true`) — the headless Chromium
//!   test runs. (Not watched: after installing Chromium, `touch build.rs` once.)

fn main() {
    println!("cargo::rerun-if-changed=migrations");
    println!("cargo::rerun-if-env-changed=TEST_DATABASE_URL");
    println!("cargo::rerun-if-env-changed=VALO_OAUTH_INTEROP_PYTHON");
    println!("cargo::rerun-if-env-changed=CI");
    println!("cargo::rustc-check-cfg=cfg(test_postgres)");
    println!("cargo::rustc-check-cfg=cfg(test_interop)");
    println!("cargo::rustc-check-cfg=cfg(test_browser)");
    let set = |name: &str| std::env::var(name).is_ok_and(|v| !v.trim().is_empty());
    let ci = std::env::var("CI").is_ok_and(|v| v == "true");
    if ci || set("TEST_DATABASE_URL") {
        println!("cargo::rustc-cfg=test_postgres");
    }
    if ci || set("VALO_OAUTH_INTEROP_PYTHON") {
        println!("cargo::rustc-cfg=test_interop");
    }
    if ci || std::path::Path::new("/usr/bin/chromedriver").exists() {
        println!("cargo::rustc-cfg=test_browser");
    }
}
