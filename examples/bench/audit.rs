//! `audit`: the cached access-token path with the audit trail on
//! (`VALO_OAUTH_AUDIT_ENABLED=true`, flushing every 5 s) and off, in the same run: two
//! server processes on one database and one connection, warmed up, then
//! `BENCH_AUDIT_ROUNDS` (3) rounds, each measuring both in alternating order so that drift
//! on a shared machine hits both sides alike. The target: audit on keeps at least 95 % of
//! the requests/s.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use fake_salesforce::{FakeOptions, FakeSalesforce};
use sqlx::{Connection as _, PgConnection};
use valo_testkit::app::{CLIENT_ID, CLIENT_SECRET};

use crate::Options;
use crate::api::{check_token, connect_org, http_client, jwt, token_path};
use crate::env_or;
use crate::load::{wait_for_quiet, write_token_script};
use crate::server::{self, Server};

/// Runs the comparison; returns the section's Markdown.
pub async fn run(opts: &Options) -> String {
    let rounds: usize = env_or("BENCH_AUDIT_ROUNDS", "3").parse().unwrap();
    eprintln!(
        "== audit on vs off: access-token, wrk -t{} -c{} -d{}s, {rounds} rounds",
        opts.threads, opts.connections, opts.duration_secs
    );
    let db = server::database(opts).await;
    let fake = FakeSalesforce::start(FakeOptions::default()).await.unwrap();
    let on = Server::start(opts, &db, &[("VALO_OAUTH_AUDIT_ENABLED", "true")]).await;
    fake.register_app(CLIENT_ID, CLIENT_SECRET, &Server::callback_url());
    let client = http_client();
    let id = connect_org(&client, &on.base, &fake).await;
    let off = Server::start(opts, &db, &[("VALO_OAUTH_AUDIT_ENABLED", "false")]).await;
    let jwt = jwt("tokens:read", true);
    let path = token_path(id);
    let script = write_token_script(opts, "audit", &jwt, &[]);
    for (server, label) in [(&on, "on"), (&off, "off")] {
        check_token(
            &client,
            &server.url(&path),
            &jwt,
            &format!(" (audit {label})"),
        )
        .await;
        let warmup = format!("warmup-audit-{label}");
        server
            .wrk(opts, &path, Some(&script), opts.warmup_secs, &warmup)
            .await;
    }
    let mut s = String::from(
        "### Audit trail on vs off\n\n\
         `POST …/access-token` (cached token) on two release-binary processes sharing one \
         database and connection, one with the audit trail on and one off, measured back to \
         back in alternating order. Target: on / off ≥ 0.95. `BENCH_ONLY=audit` runs this \
         section alone.\n\n\
         | round | audit on req/s | p99 ms | audit off req/s | p99 ms | on / off |\n|---|---|---|---|---|---|\n",
    );
    let (mut sum_on, mut sum_off, mut served_on) = (0.0, 0.0, 0u64);
    for round in 1..=rounds {
        wait_for_quiet(&format!("audit round {round}")).await;
        let order: [(&Server, &str); 2] = if round % 2 == 1 {
            [(&on, "on"), (&off, "off")]
        } else {
            [(&off, "off"), (&on, "on")]
        };
        let mut results = BTreeMap::new();
        for (server, label) in order {
            let run = format!("audit-{label}-round{round}");
            let r = server
                .wrk(opts, &path, Some(&script), opts.duration_secs, &run)
                .await;
            assert_eq!(r.non_2xx, 0, "non-2xx answers with the audit {label}");
            results.insert(label, r);
        }
        let (r_on, r_off) = (&results["on"], &results["off"]);
        sum_on += r_on.requests_per_sec;
        sum_off += r_off.requests_per_sec;
        served_on += r_on.requests;
        let _ = writeln!(
            s,
            "| {round} | {:.0} | {:.2} | {:.0} | {:.2} | {:.3} |",
            r_on.requests_per_sec,
            r_on.p99_ms,
            r_off.requests_per_sec,
            r_off.p99_ms,
            r_on.requests_per_sec / r_off.requests_per_sec
        );
    }
    let _ = writeln!(
        s,
        "| all | {:.0} | | {:.0} | | **{:.3}** |",
        sum_on / rounds as f64,
        sum_off / rounds as f64,
        sum_on / sum_off
    );
    // The audit really was on: its final flush (at the graceful stop) holds every read.
    on.stop().await;
    off.stop().await;
    let mut conn = PgConnection::connect(&db.url).await.unwrap();
    let recorded: i64 = sqlx::query_scalar(
        "SELECT COALESCE(SUM(count), 0)::BIGINT FROM audit_entries WHERE action = 'token_served'",
    )
    .fetch_one(&mut conn)
    .await
    .unwrap();
    conn.close().await.ok();
    let _ = writeln!(
        s,
        "\nReads recorded in the audit trail by the audit-on server: {recorded} (wrk counted \
         {served_on} in the measured rounds, plus the warm-up and check requests).\n"
    );
    s
}
