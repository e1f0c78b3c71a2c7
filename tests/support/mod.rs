//! Shared helpers of the integration tests. Each test binary uses a different part.
#![allow(
    dead_code,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic,
    reason = "test support: each test binary uses some of it; failing loudly is the point"
)]

pub mod app;
pub mod db;
pub mod pgbouncer;
pub mod process;
pub mod proxy;
