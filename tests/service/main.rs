//! The service's integration tests, one binary (one link step) with a module per concern.
//! Every test that touches storage runs once per backend, as `…::sqlite` and `…::postgres`
//! (see `valo_testkit::backend_tests!`); the Postgres cases need `TEST_DATABASE_URL` and are
//! reported as ignored without it (a failure under `CI=true`).
//!
//! - [`admin_path`]: the Salesforce admin's path: credential check, ECA settings, result
//!   pages, reconnect;
//! - [`api`]: the HTTP API's contract: authentication, scopes, tenants, problems;
//! - [`events`]: signed webhooks from the transactional outbox, and the audit trail;
//! - [`flow`]: the authorization-code flow with PKCE, from start to callback;
//! - [`tokens`]: access tokens, refreshing, rotation, the cache, keep-alive;
//! - [`resilience`]: faults in Salesforce and the database during refreshes;
//! - [`store`]: the storage layer on both backends;
//! - [`openapi`]: the OpenAPI document against the code;
//! - [`interop`]: the flow against an independent OAuth server (Authlib);
//! - [`keys`]: key rotation to completion (`rekey`, `keys`, forced deletes);
//! - [`limits`]: the listeners' protective limits (timeouts, concurrency, the callback's rate);
//! - [`metrics`]: `/metrics` parsed as Prometheus text after a refresh, per application;
//! - [`harness`]: the test kit's own parts (PgBouncer, the fault proxy, the process).
//!
//! `tests/logs.rs` is a binary of its own: it installs the process-wide log subscriber.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

#[macro_use]
extern crate valo_testkit;

mod admin_path;
mod api;
mod events;
mod flow;
mod harness;
mod interop;
mod keys;
mod limits;
mod metrics;
mod openapi;
mod resilience;
mod store;
mod tokens;

/// The service's binary, for the tests that run it as a process.
pub const SERVICE_BINARY: &str = env!("CARGO_BIN_EXE_valo-oauth");
