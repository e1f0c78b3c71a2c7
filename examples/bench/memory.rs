//! `memory`: resident memory of the release binary with 100,000 stored connections
//! (inserted through the store), 10,000 of them fetched through the API; `VmRSS`/`VmHWM`
//! from `/proc/<pid>/status`.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use crate::Options;
use crate::api::{fetch_each, http_client, put_app};
use crate::report::{TARGETS, met, mib};
use crate::seed;
use crate::server::{self, Server};

const CONNECTIONS: usize = 100_000;
const FETCHED: usize = 10_000;
const FETCH_CONCURRENCY: usize = 32;
const TARGET_BYTES: u64 = 64 * 1024 * 1024;

pub struct Memory {
    rss_start: u64,
    rss_after_insert: u64,
    rss_after_fetch: u64,
    hwm: u64,
    insert_secs: f64,
    fetch_secs: f64,
    fetched_ok: usize,
}

pub async fn run(opts: &Options) -> Memory {
    eprintln!("== memory: {CONNECTIONS} stored connections, {FETCHED} fetched");
    let db = server::database(opts).await;
    let server = Server::start(opts, &db, &[]).await;
    let client = http_client();
    // Let the process settle before taking the baseline.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_start, _) = server.memory();
    // Nothing here calls Salesforce: a login URL where nothing listens.
    put_app(&client, &server.base, "http://127.0.0.1:9", false).await;

    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let mut expected = Vec::with_capacity(FETCHED);
    let mut fetched_tokens = Vec::with_capacity(FETCHED);
    let (ids, insert_secs) = seed::insert(
        &db,
        CONNECTIONS,
        "http://127.0.0.1:9",
        now,
        |_| now,
        |i| {
            let tokens = seed::made_up_tokens(i);
            if i % (CONNECTIONS / FETCHED) == 0 {
                fetched_tokens.push(tokens.0.clone());
            }
            tokens
        },
    )
    .await;
    for (n, id) in ids.iter().step_by(CONNECTIONS / FETCHED).enumerate() {
        expected.push((*id, fetched_tokens[n].clone()));
    }
    let (rss_after_insert, _) = server.memory();

    let fetch_start = Instant::now();
    let fetched_ok = fetch_each(&client, &server.base, &expected, FETCH_CONCURRENCY).await;
    let fetch_secs = fetch_start.elapsed().as_secs_f64();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_after_fetch, hwm) = server.memory();
    eprintln!(
        "  fetched {fetched_ok}/{FETCHED} in {fetch_secs:.1} s; RSS start {:.1} MiB, after insert {:.1} MiB, after fetch {:.1} MiB, peak {:.1} MiB",
        mib(rss_start),
        mib(rss_after_insert),
        mib(rss_after_fetch),
        mib(hwm)
    );
    server.stop().await;
    drop(db);
    Memory {
        rss_start,
        rss_after_insert,
        rss_after_fetch,
        hwm,
        insert_secs,
        fetch_secs,
        fetched_ok,
    }
}

/// The `memory` section of `docs/benchmarks.md`.
pub fn report(mem: &Memory) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "### 3. Resident memory\n");
    let _ = writeln!(
        s,
        "The release binary (pool of 10) on a fresh Postgres database. {CONNECTIONS} connections of one tenant \
         inserted through the store (`Store::insert_connections`, tokens sealed with the service's keyring) in \
         {:.1} s; then {FETCHED} distinct tokens fetched through the API, {FETCH_CONCURRENCY} at a time, in {:.1} s \
         ({}/{FETCHED} answered with the stored token).\n",
        mem.insert_secs, mem.fetch_secs, mem.fetched_ok
    );
    let _ = writeln!(s, "{TARGETS}");
    let _ = writeln!(
        s,
        "| resident memory, {CONNECTIONS} stored / {FETCHED} fetched | {:.1} MiB (RSS after start) | {:.1} MiB peak (`VmHWM`) | {:.2} of 64 MiB ({:.2}× the start) | < 64 MiB | {} |\n",
        mib(mem.rss_start),
        mib(mem.hwm),
        mem.hwm as f64 / TARGET_BYTES as f64,
        mem.hwm as f64 / mem.rss_start as f64,
        met(mem.hwm < TARGET_BYTES && mem.fetched_ok == FETCHED)
    );
    let _ = writeln!(s, "| when | `VmRSS` | vs start |\n|---|---|---|");
    for (label, bytes) in [
        ("after start (baseline)".to_owned(), mem.rss_start),
        (
            format!("after inserting {CONNECTIONS} rows"),
            mem.rss_after_insert,
        ),
        (
            format!("after fetching {FETCHED} tokens"),
            mem.rss_after_fetch,
        ),
        ("peak (`VmHWM`)".to_owned(), mem.hwm),
    ] {
        let _ = writeln!(
            s,
            "| {label} | {:.1} MiB | {:.2} |",
            mib(bytes),
            bytes as f64 / mem.rss_start as f64
        );
    }
    s
}
