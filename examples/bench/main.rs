//! The benchmark harness of valo-oauth. Run it with the one documented command:
//!
//! ```text
//! bash bench/run.sh                       # every section
//! BENCH_ONLY=scale bash bench/run.sh      # one section (a comma list selects several)
//! ```
//!
//! which builds the release binary and this example in release mode and runs it. Each
//! section writes its figures to `docs/benchmarks.md` between its own markers
//! (`<!-- bench:<name>:begin -->` / `<!-- bench:<name>:end -->`), so a partial run rewrites
//! only the sections it ran and the hand-written text around them stays.
//!
//! The sections, one module each, every one on its own throw-away Postgres database
//! (`valo_test_<uuid>` on the server of `BENCH_DATABASE_URL`, dropped at the end):
//!
//! - `hotpath` ([`hotpath`]): the access-token endpoint vs a bare axum handler ([`bare`])
//!   and `/healthz` with wrk;
//! - `storm` ([`storm`]): 300 callers reporting one rejected token on 3 replicas;
//! - `memory` ([`memory`]): resident memory with 100,000 stored connections;
//! - `fanout` ([`fanout`]): 1,000 connections refreshing at once on one replica;
//! - `scale` ([`scale`]): a million stored connections, 200,000 fetched, a full token
//!   cache under wrk, and a keep-alive sweep alongside;
//! - `audit` ([`audit`]): the access-token path with the audit trail on and off.
//!
//! Shared parts: [`server`] (the release binary as a child process), [`api`] (the API as
//! the Valo backend calls it), [`load`] (wrk, CPU accounting, latencies) and [`report`]
//! (the run's context and the sections' markers). API tokens, databases and the service
//! process come from the test kit (`valo_testkit`).
//!
//! Options (environment): `BENCH_ONLY` (comma list of section names, `main` standing for
//! `hotpath,storm,memory`; unset: all),
//! `BENCH_DURATION_SECS` (10), `BENCH_WARMUP_SECS` (3), `BENCH_CONNECTIONS` (64),
//! `BENCH_THREADS` (2), `BENCH_QUIET_WAIT_SECS` (60), `BENCH_OUT` (`docs/benchmarks.md`),
//! `BENCH_COMMAND` (the command line shown in the report), `BENCH_BINARY` (the release
//! binary, `target/release/valo-oauth`), `BENCH_DATABASE_URL`.
//!
//! Every loop is bounded; every process started here is stopped here.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod api;
mod audit;
mod bare;
mod fanout;
mod hotpath;
mod load;
mod memory;
mod report;
mod scale;
mod seed;
mod server;
mod storm;

use std::path::PathBuf;

/// The service's allocator here too, so that the bare handler (this harness re-run, see
/// [`bare`]) is measured with the same allocator as the service it is compared with.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The sections, in the order they run.
const SECTIONS: [&str; 6] = ["hotpath", "storm", "memory", "fanout", "scale", "audit"];

/// What every section needs to know about the run.
pub struct Options {
    pub duration_secs: u64,
    pub warmup_secs: u64,
    pub connections: u32,
    pub threads: u32,
    pub out: PathBuf,
    pub command: String,
    pub admin_url: String,
    pub binary: PathBuf,
    /// Raw wrk outputs and scripts of the last run (`target/bench/`).
    pub work_dir: PathBuf,
}

pub fn env_or(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

impl Options {
    fn from_env() -> Self {
        let work_dir = PathBuf::from("target/bench");
        std::fs::create_dir_all(&work_dir).expect("create target/bench");
        let number = |name: &str, default: &str| -> u64 {
            env_or(name, default)
                .parse()
                .unwrap_or_else(|_| panic!("{name} is a whole number"))
        };
        Self {
            duration_secs: number("BENCH_DURATION_SECS", "10"),
            warmup_secs: number("BENCH_WARMUP_SECS", "3"),
            connections: u32::try_from(number("BENCH_CONNECTIONS", "64")).unwrap(),
            threads: u32::try_from(number("BENCH_THREADS", "2")).unwrap(),
            out: PathBuf::from(env_or("BENCH_OUT", "docs/benchmarks.md")),
            command: env_or("BENCH_COMMAND", "bash bench/run.sh"),
            admin_url: env_or(
                "BENCH_DATABASE_URL",
                "postgres://postgres@127.0.0.1:5432/postgres",
            ),
            binary: PathBuf::from(env_or("BENCH_BINARY", "target/release/valo-oauth")),
            work_dir,
        }
    }
}

#[tokio::main]
async fn main() {
    bare::serve_if_asked().await;
    let opts = Options::from_env();
    let only = std::env::var("BENCH_ONLY").unwrap_or_default();
    let selected: Vec<&str> = if only.trim().is_empty() {
        SECTIONS.to_vec()
    } else {
        // `main` is the earlier name of the first three sections together.
        let names: Vec<&str> = only
            .split(',')
            .map(str::trim)
            .flat_map(|name| match name {
                "main" => vec!["hotpath", "storm", "memory"],
                name => vec![name],
            })
            .collect();
        for name in &names {
            assert!(
                SECTIONS.contains(name),
                "BENCH_ONLY: unknown section {name:?}; the sections are {SECTIONS:?}"
            );
        }
        SECTIONS.into_iter().filter(|s| names.contains(s)).collect()
    };
    let context = report::Context::of_this_run(&opts).await;
    for section in selected {
        let generated = match section {
            "hotpath" => hotpath::report(&opts, &hotpath::run(&opts).await),
            "storm" => storm::report(&storm::run(&opts).await),
            "memory" => memory::report(&memory::run(&opts).await),
            "fanout" => fanout::report(&fanout::fan_out(&opts).await, &opts.command),
            "scale" => scale::report(&opts, &scale::run(&opts).await),
            "audit" => audit::run(&opts).await,
            _ => unreachable!("checked above"),
        };
        report::write_section(&opts.out, section, &context.stamp(section), &generated);
        eprintln!("{section}: figures written to {}", opts.out.display());
    }
}
