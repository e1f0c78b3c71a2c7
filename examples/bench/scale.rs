//! `scale`: one replica in front of a million stored connections (issue 11).
//!
//! 1. **Memory.** 1,000,000 connections inserted through the store; the release binary with
//!    the default token-cache capacity (100,000) fetches 200,000 distinct tokens through the
//!    API (every fifth row); `VmRSS` and the cache's entry count are sampled every 10,000
//!    fetches: the curve must stay under 256 MiB and flat once the cache is full.
//! 2. **The cached path with a full cache.** wrk on one connection's token (the baseline),
//!    then a wrk script spreading the requests round-robin over 50,000 cached connections,
//!    same process, same settings, back to back (both through the same Lua `request`
//!    function, so wrk pays the same per request); once with the defaults (the change feed
//!    read every `VALO_OAUTH_TOKEN_CACHE_REVALIDATE_SECS`, 5 s), once on a second process
//!    reading it once an hour, which shows what following the feed costs.
//! 3. **Keep-alive over the million.** A third process of the same binary on the same
//!    database, default settings but for the interval, shortened to an hour (every stored
//!    row was last refreshed 30 days ago, so the million are due: a backlog) and the first
//!    sweep after 1 s; the default 4 Salesforce calls at a time, the fake Salesforce
//!    answering after 300 ms. The sweep's rate is read from the service's metrics on the
//!    idle replica, then during the same spread wrk run as in 2, whose requests/s is
//!    compared with 2's (defaults).
//!
//! The sweep takes the oldest rows first; the oldest 20,000 hold tokens the fake Salesforce
//! issued ([`FakeSalesforce::grant`]), the rest made-up ones it would refuse. The run checks
//! that no refresh failed, i.e. that the sweep never got past the first 20,000.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use fake_salesforce::{FakeOptions, FakeSalesforce};
use uuid::Uuid;
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET};

use crate::Options;
use crate::api::{fetch_each, http_client, jwt, metrics, put_app, token_path};
use crate::hotpath::row_of;
use crate::load::{WrkResult, wait_for_quiet, write_token_script, wrk};
use crate::report::{TARGETS, met, mib};
use crate::seed;
use crate::server::{self, Server};

const STORED: usize = 1_000_000;
const FETCHED: usize = 200_000;
const FETCH_CONCURRENCY: usize = 32;
const SAMPLE_EVERY: usize = 10_000;
/// The service's default `VALO_OAUTH_TOKEN_CACHE_CAPACITY`.
const CACHE_CAPACITY: u64 = 100_000;
const RSS_BUDGET: u64 = 256 * 1024 * 1024;
/// How many cached connections the spread wrk script walks over.
const SPREAD: usize = 50_000;
/// The oldest rows, whose tokens the fake Salesforce knows (keep-alive can refresh them).
const KEEPALIVE_SEEDED: usize = 20_000;
const KEEPALIVE_SWEEP_SECS: u64 = 1;
/// The service's default `VALO_OAUTH_KEEPALIVE_CONCURRENCY`.
const KEEPALIVE_CONCURRENCY: u64 = 4;
/// Connections one sweep looks at (`SWEEP_LIMIT` in `src/broker/keepalive.rs`).
const SWEEP_LIMIT: u64 = 500;
/// The Salesforce latency `docs/scaling.md` plans with.
const SALESFORCE_LATENCY: Duration = Duration::from_millis(300);

pub struct Sample {
    fetched: usize,
    rss: u64,
    entries: f64,
}

pub struct Scale {
    insert_secs: f64,
    fetch_secs: f64,
    fetched_ok: usize,
    rss_start: u64,
    rss_after_insert: u64,
    curve: Vec<Sample>,
    hwm: u64,
    /// Default settings (entries re-read from the database after 30 s).
    default: CachedPath,
    /// Revalidation after an hour: every request of the runs is served from memory.
    cached: CachedPath,
    keepalive_idle_per_sec: f64,
    keepalive_busy_per_sec: f64,
    keepalive_total: f64,
    refresh_failures: f64,
    busy: Vec<WrkResult>,
    busy_hit_ratio: f64,
}

const REVALIDATE: &str = "VALO_OAUTH_TOKEN_CACHE_REVALIDATE_SECS";

struct Scripts {
    one: std::path::PathBuf,
    spread: std::path::PathBuf,
    /// The one connection's path (also the URL path wrk is given for the spread script).
    path: String,
}

/// Rounds of (one connection, spread) run back to back, and the spread runs' cache hits.
pub struct CachedPath {
    rounds: Vec<(WrkResult, WrkResult)>,
    hit_ratio: f64,
}

/// Mean requests/s of a list of runs.
fn mean_rps<'a>(runs: impl Iterator<Item = &'a WrkResult>) -> f64 {
    let rps: Vec<f64> = runs.map(|r| r.requests_per_sec).collect();
    rps.iter().sum::<f64>() / rps.len().max(1) as f64
}

impl CachedPath {
    fn one(&self) -> f64 {
        mean_rps(self.rounds.iter().map(|(one, _)| one))
    }

    fn spread(&self) -> f64 {
        mean_rps(self.rounds.iter().map(|(_, spread)| spread))
    }
}

/// Rounds of each comparison: the machine is shared, so one round can be unlucky.
const ROUNDS: usize = 3;

/// wrk on one connection's token, then spread over `set`, on `server` (whose cache gets
/// `set` fetched twice first, so that the cache's admission keeps it).
async fn cached_path(
    opts: &Options,
    server: &Server,
    client: &reqwest::Client,
    set: &[(Uuid, String)],
    scripts: &Scripts,
    label: &str,
) -> CachedPath {
    warm(client, server, set).await;
    let (pid, url) = (server.pid(), server.url(&scripts.path));
    wait_for_quiet("the cached-path runs").await;
    let run = |script, secs, name: &str| {
        let name = format!("scale-{label}-{name}");
        let url = url.clone();
        async move { wrk(opts, pid, &url, Some(script), secs, &name).await }
    };
    run(&scripts.one, opts.warmup_secs, "warmup-one").await;
    run(&scripts.spread, opts.warmup_secs, "warmup-spread").await;
    let mut rounds = Vec::new();
    let (mut hits, mut runs) = (0.0, 0.0);
    for round in 1..=ROUNDS {
        let one = run(&scripts.one, opts.duration_secs, &format!("one-{round}")).await;
        let before = metrics(client, &server.base).await;
        let spread = run(
            &scripts.spread,
            opts.duration_secs,
            &format!("spread-{round}"),
        )
        .await;
        hits += hit_ratio(&before, &metrics(client, &server.base).await);
        runs += 1.0;
        rounds.push((one, spread));
    }
    CachedPath {
        rounds,
        hit_ratio: hits / runs,
    }
}

/// A row of the summary table: the cached path on one connection vs spread over
/// [`SPREAD`], their ratio against a 0.9 target (`target` as the table shows it).
fn spread_row(what: &str, path: &CachedPath, ratio: f64, target: &str) -> String {
    format!(
        "| {what} | {:.0} req/s (one connection) | {:.0} req/s ({:.1} % cache hits) | {ratio:.2} | {target} | {} |\n",
        path.one(),
        path.spread(),
        path.hit_ratio * 100.0,
        met(ratio >= 0.9)
    )
}

/// Most passes over the set before the cached-path runs.
const WARM_PASSES: usize = 8;

/// Fetches `set` through the API, pass after pass, until one pass is served from the cache
/// (at least 99 % hits) or after [`WARM_PASSES`]: a full cache admits a new connection only
/// once it has been asked for more often than the entry it would evict (TinyLFU), so a
/// working set that replaces another takes a few passes to become resident.
async fn warm(client: &reqwest::Client, server: &Server, set: &[(Uuid, String)]) {
    for pass in 1..=WARM_PASSES {
        let before = metrics(client, &server.base).await;
        fetch_each(client, &server.base, set, FETCH_CONCURRENCY).await;
        let hits = hit_ratio(&before, &metrics(client, &server.base).await);
        eprintln!("  warm-up pass {pass}: {:.1} % cache hits", hits * 100.0);
        if hits >= 0.99 {
            return;
        }
    }
}

fn metric(m: &BTreeMap<String, f64>, name: &str) -> f64 {
    m.get(name).copied().unwrap_or(0.0)
}

/// Cache hits / (hits + misses) between two metric snapshots.
fn hit_ratio(before: &BTreeMap<String, f64>, after: &BTreeMap<String, f64>) -> f64 {
    let d = |n: &str| metric(after, n) - metric(before, n);
    let hits = d("valo_oauth_token_cache_hits_total");
    hits / (hits + d("valo_oauth_token_cache_misses_total")).max(1.0)
}

fn refresh_failures(m: &BTreeMap<String, f64>) -> f64 {
    m.iter()
        .filter(|(k, _)| k.starts_with("valo_oauth_refreshes_total{") && !k.contains("\"success\""))
        .map(|(_, v)| v)
        .sum()
}

pub async fn run(opts: &Options) -> Scale {
    eprintln!(
        "== scale: {STORED} stored connections, {FETCHED} fetched, cache capacity {CACHE_CAPACITY}"
    );
    let db = server::database(opts).await;
    let fake = FakeSalesforce::start(FakeOptions::default()).await.unwrap();
    fake.register_app(CLIENT_ID, CLIENT_SECRET, &Server::callback_url());
    let server = Server::start(opts, &db, &[]).await;
    let client = http_client();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let (rss_start, _) = server.memory();
    put_app(&client, &server.base, &fake.base_url(), true).await;

    // The million, oldest first (row i last refreshed 30 days ago + i ms).
    let now = time::OffsetDateTime::now_utc().unix_timestamp() * 1000;
    let month_ago = now - 30 * 24 * 3600 * 1000;
    let stride = STORED / FETCHED;
    let mut fetched_tokens = Vec::with_capacity(FETCHED);
    let (ids, insert_secs) = seed::insert(
        &db,
        STORED,
        &fake.base_url(),
        now,
        |i| month_ago + i64::try_from(i).unwrap(),
        |i| {
            let tokens = if i < KEEPALIVE_SEEDED {
                let user = seed::user_id(i);
                fake.grant(
                    CLIENT_ID,
                    seed::ORG_ID,
                    &user,
                    &format!("{user}@bench.example"),
                )
            } else {
                seed::made_up_tokens(i)
            };
            if i % stride == 0 {
                fetched_tokens.push(tokens.0.clone());
            }
            tokens
        },
    )
    .await;
    eprintln!("  inserted {STORED} rows through the store in {insert_secs:.1} s");
    // Vacuum and analyse now: autovacuum would otherwise work through the million new rows
    // during the measurements, on the same two cores.
    let vacuum = Instant::now();
    db.execute("VACUUM (ANALYZE) connections").await;
    eprintln!(
        "  VACUUM (ANALYZE) in {:.1} s",
        vacuum.elapsed().as_secs_f64()
    );
    let expected: Vec<(Uuid, String)> = ids
        .iter()
        .step_by(stride)
        .copied()
        .zip(fetched_tokens)
        .collect();
    drop(ids);
    let (rss_after_insert, _) = server.memory();

    // 1. Fetch the 200,000, sampling memory as the cache fills.
    let fetch_start = Instant::now();
    let mut fetched_ok = 0;
    let mut curve = Vec::new();
    for (n, chunk) in expected.chunks(SAMPLE_EVERY).enumerate() {
        fetched_ok += fetch_each(&client, &server.base, chunk, FETCH_CONCURRENCY).await;
        let entries = metric(
            &metrics(&client, &server.base).await,
            "valo_oauth_token_cache_entries",
        );
        let (rss, _) = server.memory();
        curve.push(Sample {
            fetched: (n + 1) * SAMPLE_EVERY,
            rss,
            entries,
        });
        eprintln!(
            "  fetched {:>6}: RSS {:.1} MiB, {entries} cached",
            (n + 1) * SAMPLE_EVERY,
            mib(rss)
        );
    }
    let fetch_secs = fetch_start.elapsed().as_secs_f64();

    // 2. The cached path: one connection, then spread over SPREAD cached connections (the
    // last ones fetched), with the default revalidation...
    let spread_set = &expected[expected.len() - SPREAD..];
    let token_jwt = jwt("tokens:read", true);
    let one_path = token_path(spread_set[0].0);
    let scripts = Scripts {
        one: write_token_script(
            opts,
            "scale_one",
            &token_jwt,
            &[token_path(spread_set[0].0)],
        ),
        spread: write_token_script(
            opts,
            "scale_spread",
            &token_jwt,
            &spread_set
                .iter()
                .map(|(id, _)| token_path(*id))
                .collect::<Vec<_>>(),
        ),
        path: one_path,
    };
    let default = cached_path(opts, &server, &client, spread_set, &scripts, "default").await;
    let (_, hwm) = server.memory();
    server.stop().await;
    // ... and on a process that reads the change feed once an hour: what following it costs.
    let steady = Server::start(opts, &db, &[(REVALIDATE, "3600")]).await;
    let cached = cached_path(opts, &steady, &client, spread_set, &scripts, "feed-hourly").await;
    steady.stop().await;

    // 3. Keep-alive over the million, on a second process of the same binary.
    fake.set_latency(SALESFORCE_LATENCY);
    let sweeping = Server::start(
        opts,
        &db,
        &[
            ("VALO_OAUTH_KEEPALIVE_INTERVAL_SECS", "3600"),
            (
                "VALO_OAUTH_KEEPALIVE_SWEEP_SECS",
                &KEEPALIVE_SWEEP_SECS.to_string(),
            ),
            (
                "VALO_OAUTH_KEEPALIVE_CONCURRENCY",
                &KEEPALIVE_CONCURRENCY.to_string(),
            ),
        ],
    )
    .await;
    let keepalive = |m: &BTreeMap<String, f64>| metric(m, "valo_oauth_keepalive_refreshes_total");
    warm(&client, &sweeping, spread_set).await;
    let window = Duration::from_secs(2 * opts.duration_secs.max(10));
    let idle_start = metrics(&client, &sweeping.base).await;
    let started = Instant::now();
    tokio::time::sleep(window).await;
    let idle_end = metrics(&client, &sweeping.base).await;
    let keepalive_idle_per_sec =
        (keepalive(&idle_end) - keepalive(&idle_start)) / started.elapsed().as_secs_f64();
    let sweeping_url = sweeping.url(&scripts.path);
    let pid = sweeping.pid();
    wrk(
        opts,
        pid,
        &sweeping_url,
        Some(&scripts.spread),
        opts.warmup_secs,
        "scale-warmup-busy",
    )
    .await;
    let before = metrics(&client, &sweeping.base).await;
    let started = Instant::now();
    let mut busy = Vec::new();
    for round in 1..=ROUNDS {
        let name = format!("scale-busy-{round}");
        let spread = Some(scripts.spread.as_path());
        busy.push(wrk(opts, pid, &sweeping_url, spread, opts.duration_secs, &name).await);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let after = metrics(&client, &sweeping.base).await;
    let keepalive_busy_per_sec = (keepalive(&after) - keepalive(&before)) / elapsed;
    let busy_hit_ratio = hit_ratio(&before, &after);
    sweeping.stop().await;
    drop(db);
    eprintln!(
        "  keep-alive {keepalive_idle_per_sec:.1}/s idle, {keepalive_busy_per_sec:.1}/s under wrk; token path {:.0} req/s vs {:.0} without the sweep",
        mean_rps(busy.iter()),
        default.spread()
    );
    Scale {
        insert_secs,
        fetch_secs,
        fetched_ok,
        rss_start,
        rss_after_insert,
        curve,
        hwm,
        default,
        cached,
        keepalive_idle_per_sec,
        keepalive_busy_per_sec,
        keepalive_total: keepalive(&after),
        refresh_failures: refresh_failures(&after),
        busy,
        busy_hit_ratio,
    }
}

/// The rate the keep-alive settings promise while a backlog lasts: `concurrency`
/// Salesforce calls at a time, each taking `latency`; full sweeps follow one another
/// without the pause (`run_keepalive`).
pub fn promised_rate(concurrency: f64, latency_secs: f64) -> f64 {
    concurrency / latency_secs
}

/// The `scale` section of `docs/benchmarks.md`.
pub fn report(opts: &Options, r: &Scale) -> String {
    let mut s = String::new();
    let full = r
        .curve
        .iter()
        .find(|c| c.entries >= CACHE_CAPACITY as f64 * 0.95)
        .or(r.curve.last())
        .unwrap();
    let last = r.curve.last().unwrap();
    let growth_after_full = last.rss as f64 / full.rss as f64;
    // Memory per cached entry: the slope while the cache fills (first sample to full).
    let first = &r.curve[0];
    let per_entry = (full.rss as f64 - first.rss as f64) / (full.entries - first.entries).max(1.0);
    let spread_ratio = r.cached.spread() / r.cached.one();
    let default_ratio = r.default.spread() / r.default.one();
    let busy_rps = mean_rps(r.busy.iter());
    let busy_ratio = busy_rps / r.default.spread();
    let promise = promised_rate(
        KEEPALIVE_CONCURRENCY as f64,
        SALESFORCE_LATENCY.as_secs_f64(),
    );
    let keepalive_ratio = r.keepalive_busy_per_sec / promise;
    let _ = writeln!(s, "### 5. A million connections on one replica\n");
    let _ = writeln!(
        s,
        "{STORED} connections of one tenant inserted through the store (`Store::insert_connections`, \
         10,000 rows a transaction, tokens sealed with the service's keyring) in {:.1} s, then `VACUUM (ANALYZE)` \
         (so that autovacuum does not run during the measurements); the release \
         binary with default settings (token cache {CACHE_CAPACITY} entries, pool of 10) fetches {FETCHED} \
         distinct tokens through the API (every fifth row, {FETCH_CONCURRENCY} at a time, {:.1} s, \
         {}/{FETCHED} answered with the stored token). Then wrk (`-t{} -c{} -d{}s`, {} s warm-up) on one \
         connection's token, and on a script spreading the requests round-robin over {SPREAD} cached \
         connections (the one-connection baseline through the same Lua `request` function, a list of one \
         path; the spread set first fetched through the API pass after pass until a pass is served from \
         the cache, at most {WARM_PASSES}), back to back on the same process: with the defaults (the change feed read every 5 s), then on \
         a second process with `VALO_OAUTH_TOKEN_CACHE_REVALIDATE_SECS=3600` (the feed read once an hour). \
         Then a third process of the same binary on the same database, defaults but for keep-alive's \
         interval (`VALO_OAUTH_KEEPALIVE_INTERVAL_SECS=3600`: every stored row is due, a backlog) and \
         the first sweep's delay (`VALO_OAUTH_KEEPALIVE_SWEEP_SECS={KEEPALIVE_SWEEP_SECS}`), with the \
         default `VALO_OAUTH_KEEPALIVE_CONCURRENCY={KEEPALIVE_CONCURRENCY}`; the fake Salesforce answers after {} ms: \
         the sweep's rate on the idle replica, then during the same spread wrk run. Each comparison runs {ROUNDS} rounds \
         back to back; ratios are of the means. The \"vs baseline\" column compares each spread run with the run \
         before it (the sweeping rounds: with the same round of the defaults process, without the sweep).\n",
        r.insert_secs,
        r.fetch_secs,
        r.fetched_ok,
        opts.threads,
        opts.connections,
        opts.duration_secs,
        opts.warmup_secs,
        SALESFORCE_LATENCY.as_millis()
    );
    let _ = writeln!(s, "{TARGETS}");
    let _ = writeln!(
        s,
        "| resident memory, {STORED} stored / {FETCHED} fetched | {:.1} MiB (RSS after start) | {:.1} MiB peak (`VmHWM`), {:.1} MiB `VmRSS` after the fetches | {:.2} of 256 MiB | < 256 MiB | {} |",
        mib(r.rss_start),
        mib(r.hwm),
        mib(last.rss),
        r.hwm as f64 / RSS_BUDGET as f64,
        met(r.hwm < RSS_BUDGET && r.fetched_ok == FETCHED)
    );
    let _ = writeln!(
        s,
        "| flat once the cache is full | {:.1} MiB at {} fetched ({:.0} cached) | {:.1} MiB at {} fetched ({:.0} cached) | {growth_after_full:.2} | ≤ 1.10 | {} |",
        mib(full.rss),
        full.fetched,
        full.entries,
        mib(last.rss),
        last.fetched,
        last.entries,
        met(growth_after_full <= 1.10)
    );
    let default = format!(
        "cached path, full cache: req/s spread over {SPREAD} connections vs one (default settings: the change feed read every 5 s)"
    );
    s.push_str(&spread_row(&default, &r.default, default_ratio, "≥ 0.90"));
    let hourly = "the same with the feed read once an hour (what following it costs)";
    s.push_str(&spread_row(hourly, &r.cached, spread_ratio, "(≥ 0.90)"));
    let _ = writeln!(
        s,
        "| keep-alive sweep rate under load vs the settings' promise | {promise:.1}/s promised (a backlog: {KEEPALIVE_CONCURRENCY} Salesforce calls at a time, {} ms each, sweeps of {SWEEP_LIMIT} back to back); {:.1}/s on the idle replica | {:.1}/s during wrk ({} refreshed in all, {} failed) | {keepalive_ratio:.2} | ≥ 0.90 | {} |",
        SALESFORCE_LATENCY.as_millis(),
        r.keepalive_idle_per_sec,
        r.keepalive_busy_per_sec,
        r.keepalive_total,
        r.refresh_failures,
        met(keepalive_ratio >= 0.9 && r.refresh_failures == 0.0)
    );
    let _ = writeln!(
        s,
        "| token path during the sweep vs without (default settings, spread) | {:.0} req/s (no sweep) | {:.0} req/s ({:.1} % cache hits) | {busy_ratio:.2} | ≥ 0.90 | {} |\n",
        r.default.spread(),
        busy_rps,
        r.busy_hit_ratio * 100.0,
        met(busy_ratio >= 0.9)
    );
    let _ = writeln!(
        s,
        "Memory per cached entry, from the slope while the cache fills ({:.0} → {:.0} entries): **{:.0} bytes**. \
         Rows stored cost the process nothing ({:.1} MiB after start, {:.1} MiB after inserting the million).\n",
        first.entries,
        full.entries,
        per_entry,
        mib(r.rss_start),
        mib(r.rss_after_insert)
    );
    s.push_str("| tokens fetched | cached entries | `VmRSS` | vs start |\n|---|---|---|---|\n");
    for c in &r.curve {
        let _ = writeln!(
            s,
            "| {} | {:.0} | {:.1} MiB | {:.2} |",
            c.fetched,
            c.entries,
            mib(c.rss),
            c.rss as f64 / r.rss_start as f64
        );
    }
    let _ = writeln!(s);
    let _ = writeln!(
        s,
        "| run | endpoint | requests/s | p50 | p99 | non-2xx | vs baseline | CPU cores: server / wrk / other processes | server CPU per request |\n|---|---|---|---|---|---|---|---|---|"
    );
    for (label, path) in [("defaults", &r.default), ("feed read hourly", &r.cached)] {
        for (i, (one, spread)) in path.rounds.iter().enumerate() {
            let label = format!("{label}, round {}", i + 1);
            let spread_label = format!("{SPREAD} connections");
            let _ = writeln!(s, "{}", row_of(&label, "one connection", one, None));
            let _ = writeln!(s, "{}", row_of(&label, &spread_label, spread, Some(one)));
        }
    }
    for (i, busy) in r.busy.iter().enumerate() {
        let (_, no_sweep) = &r.default.rounds[i.min(r.default.rounds.len() - 1)];
        let label = format!("defaults, keep-alive sweeping, round {}", i + 1);
        let spread_label = format!("{SPREAD} connections");
        let _ = writeln!(s, "{}", row_of(&label, &spread_label, busy, Some(no_sweep)));
    }
    s
}
