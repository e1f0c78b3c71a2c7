//! 4. **Refresh fan-out.** One replica (the release binary, default settings) on Postgres,
//!    1,000 distinct connections connected through the real flow, then every one of them
//!    asked for a token at once with its current token reported as rejected, so each needs
//!    its own refresh; the fake Salesforce answers after 500 ms. Meanwhile an unrelated API
//!    read (`GET` of another connection) runs in a loop; its latency is compared with the
//!    same read measured on the idle replica just before, in the same run.

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::sync::Mutex;

use fake_salesforce::{FakeOptions, FakeSalesforce};
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET};

use crate::Options;
use crate::api::{TENANT, connect_user, fetch_token, http_client, jwt, put_app, token_path};
use crate::load::Latencies;
use crate::server::{self, Server};

pub const CONNECTIONS: usize = 1_000;
pub const LATENCY: Duration = Duration::from_millis(500);
/// What the refresh issue asks of one replica with default settings.
pub const TARGET_WALL: Duration = Duration::from_millis(2_500);
pub const TARGET_READ_P99_MS: f64 = 50.0;

pub struct FanOut {
    pub wall_ms: f64,
    pub ok: usize,
    pub other_statuses: Vec<(u16, usize)>,
    pub refreshes: u64,
    pub reuse_attempts: u64,
    pub idle_read: Latencies,
    pub busy_read: Latencies,
    pub max_in_flight: usize,
    /// Cores other processes kept busy just before the fan-out.
    pub busy_cores: f64,
}

/// GETs one connection in a loop (one request at a time, 5 ms apart) until `stop`.
async fn read_loop(url: String, jwt: String, stop: tokio::sync::watch::Receiver<bool>) -> Vec<f64> {
    let client = http_client();
    let mut ms = Vec::new();
    while !*stop.borrow() {
        let started = Instant::now();
        let response = client.get(&url).bearer_auth(&jwt).send().await.unwrap();
        assert_eq!(response.status(), 200, "the unrelated read failed");
        let _ = response.bytes().await;
        ms.push(started.elapsed().as_secs_f64() * 1000.0);
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    ms
}

pub async fn fan_out(opts: &Options) -> FanOut {
    eprintln!(
        "== refresh fan-out: {CONNECTIONS} connections, {LATENCY:?} Salesforce latency, one replica"
    );
    let db = server::database(opts).await;
    let fake = FakeSalesforce::start(FakeOptions::default()).await.unwrap();
    let server = Server::start(opts, &db, &[]).await;
    fake.register_app(CLIENT_ID, CLIENT_SECRET, &Server::callback_url());
    let client = http_client();
    put_app(&client, &server.base, &fake.base_url(), true).await;

    // Distinct Salesforce users, each connected through the real flow.
    eprintln!("  connecting {} users through the flow", CONNECTIONS + 1);
    let approvals = Mutex::new(());
    let users: Vec<(String, String)> = (0..=CONNECTIONS)
        .map(|i| {
            let user = valo_oauth::salesforce::to_18_char_id(&format!("005{i:012}")).unwrap();
            (user, format!("fanout{i}@bench.example"))
        })
        .collect();
    let org = FakeOptions::default().org_id;
    let mut ids = Vec::with_capacity(users.len());
    for (user, name) in &users {
        let flow = connect_user(
            &client,
            &server.base,
            &fake,
            Some((&org, user, name)),
            &approvals,
        );
        ids.push(flow.await);
    }
    let (reader, refreshed) = ids.split_first().unwrap();

    // Every connection's current token, as the backend would hold it.
    let jwt = jwt("tokens:read", true);
    let mut current = Vec::with_capacity(refreshed.len());
    for id in refreshed {
        let url = format!("{}{}", server.base, token_path(*id));
        let (status, token) = fetch_token(&client, &url, &jwt, &json!({})).await;
        assert_eq!(status, 200);
        current.push((*id, token.unwrap()));
    }

    let read_url = server.url(&format!("/v1/tenants/{TENANT}/connections/{reader}"));
    let read_jwt = crate::api::jwt("connections:read", true);
    // The unrelated read on the idle replica: the baseline.
    let (stop_idle, stopped_idle) = tokio::sync::watch::channel(false);
    let idle = tokio::spawn(read_loop(read_url.clone(), read_jwt.clone(), stopped_idle));
    tokio::time::sleep(Duration::from_secs(2)).await;
    stop_idle.send(true).unwrap();
    let idle_read = Latencies::of(idle.await.unwrap());

    let busy_cores = crate::load::wait_for_quiet("the fan-out").await;
    fake.set_latency(LATENCY);
    let before = fake.counters();
    let (stop_busy, stopped_busy) = tokio::sync::watch::channel(false);
    let busy = tokio::spawn(read_loop(read_url, read_jwt, stopped_busy));
    let started = Instant::now();
    let mut callers = tokio::task::JoinSet::new();
    for (id, token) in current {
        let client = client.clone();
        let url = format!("{}{}", server.base, token_path(id));
        let jwt = jwt.clone();
        callers.spawn(async move {
            let (status, fresh) =
                fetch_token(&client, &url, &jwt, &json!({"rejected_token": token})).await;
            assert!(status != 200 || fresh.as_deref() != Some(token.as_str()));
            status
        });
    }
    let mut statuses = std::collections::BTreeMap::new();
    while let Some(status) = callers.join_next().await {
        *statuses.entry(status.unwrap()).or_insert(0usize) += 1;
    }
    let wall = started.elapsed();
    stop_busy.send(true).unwrap();
    let busy_read = Latencies::of(busy.await.unwrap());
    let after = fake.counters();
    server.stop().await;
    drop(db);

    let ok = statuses.remove(&200).unwrap_or(0);
    let result = FanOut {
        wall_ms: wall.as_secs_f64() * 1000.0,
        ok,
        other_statuses: statuses.into_iter().collect(),
        refreshes: after.refreshes - before.refreshes,
        reuse_attempts: after.refresh_reuse_attempts - before.refresh_reuse_attempts,
        idle_read,
        busy_read,
        max_in_flight: 256,
        busy_cores,
    };
    eprintln!(
        "  wall {:.0} ms  ok {}/{}  refreshes {}  reuse {}  unrelated read p99 {:.1} ms (idle {:.1} ms)",
        result.wall_ms,
        result.ok,
        CONNECTIONS,
        result.refreshes,
        result.reuse_attempts,
        result.busy_read.p99_ms,
        result.idle_read.p99_ms
    );
    result
}

/// The fan-out section of `docs/benchmarks.md`.
pub fn report(r: &FanOut, command: &str) -> String {
    let mut s = String::new();
    let per_sec = r.ok as f64 / (r.wall_ms / 1000.0);
    let bound = r.max_in_flight as f64 / LATENCY.as_secs_f64();
    let _ = writeln!(s, "### 4. Refresh fan-out\n");
    let _ = writeln!(
        s,
        "{CONNECTIONS} distinct connections each need a refresh at once (every caller reports its \
         current token as rejected); the fake Salesforce answers after {} ms; one replica (the \
         release binary, default settings: a pool of 10, `VALO_OAUTH_SALESFORCE_MAX_IN_FLIGHT` \
         {}) on Postgres. An unrelated API read (`GET` of another connection, one at a time) runs \
         throughout; its idle figures come from the same replica just before. Command: `{command}` \
         (`BENCH_ONLY=fanout` runs this section alone). Other processes kept {:.2} of the \
         machine's cores busy just before it started.\n",
        LATENCY.as_millis(),
        r.max_in_flight,
        r.busy_cores
    );
    let _ = writeln!(s, "| measure | value | target | |\n|---|---|---|---|");
    let _ = writeln!(
        s,
        "| callers answered 200 | {}/{CONNECTIONS} | all | {} |",
        r.ok,
        crate::report::met(r.ok == CONNECTIONS)
    );
    if !r.other_statuses.is_empty() {
        let others: Vec<String> = r
            .other_statuses
            .iter()
            .map(|(s, n)| format!("{n}× {s}"))
            .collect();
        let _ = writeln!(s, "| other answers | {} | none | |", others.join(", "));
    }
    let _ = writeln!(
        s,
        "| wall time, first call to last answer | {:.0} ms | ≤ {} ms | {} |",
        r.wall_ms,
        TARGET_WALL.as_millis(),
        crate::report::met(r.wall_ms <= TARGET_WALL.as_secs_f64() * 1000.0)
    );
    let _ = writeln!(
        s,
        "| refreshes at Salesforce / reuse attempts | {} / {} | {CONNECTIONS} / 0 | {} |",
        r.refreshes,
        r.reuse_attempts,
        crate::report::met(r.refreshes == CONNECTIONS as u64 && r.reuse_attempts == 0)
    );
    let _ = writeln!(
        s,
        "| refreshes/s on this replica | {per_sec:.0} | | {:.2} of the bound {bound:.0}/s (in-flight limit / latency) |",
        per_sec / bound
    );
    let _ = writeln!(
        s,
        "| unrelated read p99 during the fan-out | {:.1} ms ({} samples; p50 {:.1}, max {:.1}) | < {TARGET_READ_P99_MS} ms | {} |",
        r.busy_read.p99_ms,
        r.busy_read.samples,
        r.busy_read.p50_ms,
        r.busy_read.max_ms,
        crate::report::met(r.busy_read.p99_ms < TARGET_READ_P99_MS)
    );
    let _ = writeln!(
        s,
        "| the same read, idle replica, p99 | {:.1} ms ({} samples; p50 {:.1}) | | busy/idle p99 {:.1}× |",
        r.idle_read.p99_ms,
        r.idle_read.samples,
        r.idle_read.p50_ms,
        r.busy_read.p99_ms / r.idle_read.p99_ms
    );
    let _ = writeln!(s);
    s
}
