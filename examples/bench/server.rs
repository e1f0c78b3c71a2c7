//! The service under measurement: the release binary `valo-oauth serve` as a child process
//! (the test kit's [`ServiceProcess`]), on a throw-away Postgres database, with the service's
//! default settings, and its memory read from `/proc`.

use std::time::Duration;

use valo_oauth::config;
use valo_testkit::app::{PUBLIC_URL, TEST_KEYS, test_env};
use valo_testkit::db::TestDatabase;
use valo_testkit::process::ServiceProcess;

use crate::Options;

/// A fresh Postgres database on the server of `BENCH_DATABASE_URL` (dropped with it).
pub async fn database(opts: &Options) -> TestDatabase {
    TestDatabase::postgres_at(&opts.admin_url).await
}

/// The release binary serving on a free loopback port.
pub struct Server {
    process: ServiceProcess,
    pub base: String,
}

impl Server {
    /// Starts `valo-oauth serve` on `db` with the test kit's environment (its keys, API
    /// secret, public URL, login hosts) minus the tests' shortened Salesforce timeout and
    /// refresh wait, so that the replica runs with the defaults, except the callback's rate
    /// limit, which is off; `extra` overrides. Logs warnings only (and the `listening` line
    /// the start waits for).
    pub async fn start(opts: &Options, db: &TestDatabase, extra: &[(&str, &str)]) -> Self {
        assert!(
            opts.binary.exists(),
            "{} is missing: run `cargo build --release --bin valo-oauth` (bench/run.sh does)",
            opts.binary.display()
        );
        let mut env = test_env(db, TEST_KEYS, &[]);
        env.remove("VALO_OAUTH_SALESFORCE_TIMEOUT_MS");
        env.remove("VALO_OAUTH_REFRESH_WAIT_MS");
        env.insert("VALO_OAUTH_LOG".into(), "warn,valo_oauth::app=info".into());
        // The harness plays every browser from one address (the fan-out alone completes
        // 1,001 flows): the callback's per-address rate limit would rightly refuse it.
        env.insert(
            "VALO_OAUTH_CALLBACK_RATE_LIMIT_PER_MINUTE".into(),
            "0".into(),
        );
        for (k, v) in extra {
            env.insert((*k).to_owned(), (*v).to_owned());
        }
        let env: Vec<(String, String)> = env.into_iter().collect();
        let process = ServiceProcess::spawn(&opts.binary, &env).await;
        let base = process.base();
        Self { process, base }
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }

    /// Runs wrk for `secs` against `path` on this server (see [`crate::load::wrk`]).
    pub async fn wrk(
        &self,
        opts: &Options,
        path: &str,
        script: Option<&std::path::Path>,
        secs: u64,
        label: &str,
    ) -> crate::load::WrkResult {
        crate::load::wrk(opts, self.pid(), &self.url(path), script, secs, label).await
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.base, path)
    }

    /// The callback URL the service believes it has (register it at the fake).
    pub fn callback_url() -> String {
        format!("{PUBLIC_URL}{}", config::CALLBACK_PATH)
    }

    /// `VmRSS` and `VmHWM` of the process, in bytes.
    pub fn memory(&self) -> (u64, u64) {
        memory_of(self.pid())
    }

    /// SIGTERM (graceful), then SIGKILL after 10 s (on drop).
    pub async fn stop(mut self) {
        if self
            .process
            .sigterm_and_wait(Duration::from_secs(10))
            .await
            .is_none()
        {
            self.process.kill9();
        }
    }
}

/// `VmRSS` and `VmHWM` of a process, in bytes.
fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|rest| {
                rest.trim()
                    .trim_end_matches("kB")
                    .trim()
                    .parse::<u64>()
                    .ok()
            })
            .map(|kb| kb * 1024)
            .unwrap_or_else(|| panic!("{name} missing from /proc/{pid}/status"))
    };
    (field("VmRSS:"), field("VmHWM:"))
}
