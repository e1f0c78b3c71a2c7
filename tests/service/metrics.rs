//! `/metrics`, black-box: after a real refresh through the fake Salesforce the exposition
//! parses, line by line, as the Prometheus text format 0.0.4; it holds every family the
//! README's metrics table lists; the refresh, the Salesforce token calls and the requests
//! (by route template, never by path) are counted; and two applications in one process
//! count apart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use fake_salesforce::{Endpoint, FakeOptions, FakeSalesforce, Fault};
use reqwest::StatusCode;
use serde_json::json;
use valo_testkit::app::{KEEPALIVE_BY_HAND, TestApp};

/// One sample: the metric name, its labels, its value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A parsed exposition: each family's declared type, and every sample.
#[derive(Debug, Default)]
struct Exposition {
    types: BTreeMap<String, String>,
    samples: Vec<Sample>,
}

impl Exposition {
    /// The value of the one sample named `name` whose labels include `labels`.
    fn value(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let found: Vec<f64> = self
            .samples
            .iter()
            .filter(|s| {
                s.name == name
                    && labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
            })
            .map(|s| s.value)
            .collect();
        assert!(found.len() <= 1, "{name} {labels:?} matches {found:?}");
        found.first().copied()
    }
}

fn is_metric_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == ':')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':')
}

fn is_label_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_')
        && chars.all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `{k="v",…}` (the braces stripped) into its pairs; `\\`, `\"` and `\n` are the only
/// escapes the format has.
fn parse_labels(mut rest: &str, line: &str) -> BTreeMap<String, String> {
    let mut labels = BTreeMap::new();
    while !rest.is_empty() {
        let (key, after) = rest
            .split_once("=\"")
            .unwrap_or_else(|| panic!("label without =\": {line}"));
        assert!(is_label_name(key), "label name {key:?}: {line}");
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            match chars.next() {
                Some((_, '\\')) => match chars.next() {
                    Some((_, '\\')) => value.push('\\'),
                    Some((_, '"')) => value.push('"'),
                    Some((_, 'n')) => value.push('\n'),
                    other => panic!("bad escape {other:?}: {line}"),
                },
                Some((i, '"')) => break i,
                Some((_, c)) => value.push(c),
                None => panic!("unterminated label value: {line}"),
            }
        };
        assert!(
            labels.insert(key.to_owned(), value).is_none(),
            "label {key} twice: {line}"
        );
        rest = &after[end + 1..];
        rest = rest.strip_prefix(',').unwrap_or_else(|| {
            assert!(rest.is_empty(), "junk after a label value: {line}");
            rest
        });
    }
    labels
}

fn parse_value(raw: &str, line: &str) -> f64 {
    match raw {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        "NaN" => f64::NAN,
        _ => raw
            .parse()
            .unwrap_or_else(|_| panic!("value {raw:?}: {line}")),
    }
}

/// The family a sample belongs to under the family's declared type (histograms expose
/// `_bucket`, `_sum` and `_count`).
fn family_of<'a>(name: &'a str, types: &BTreeMap<String, String>) -> Option<&'a str> {
    if types.contains_key(name) {
        return Some(name);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = name.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// A strict reader of the Prometheus text format 0.0.4 ("Exposition formats",
/// https://prometheus.io/docs/instrumenting/exposition_formats/): every line is a `# HELP`,
/// a `# TYPE` (once per family, before its samples) or a sample of a declared family; the
/// text ends with a newline; histogram buckets are cumulative and end at `+Inf` = `_count`.
fn parse(text: &str) -> Exposition {
    assert!(text.ends_with('\n'), "the exposition ends with a newline");
    let mut out = Exposition::default();
    let mut helped = BTreeSet::new();
    for line in text.lines() {
        assert!(!line.is_empty(), "no empty lines");
        if let Some(help) = line.strip_prefix("# HELP ") {
            let (name, _) = help.split_once(' ').unwrap_or((help, ""));
            assert!(is_metric_name(name), "{line}");
            assert!(helped.insert(name.to_owned()), "HELP twice: {line}");
            continue;
        }
        if let Some(declared) = line.strip_prefix("# TYPE ") {
            let (name, kind) = declared.split_once(' ').unwrap();
            assert!(is_metric_name(name), "{line}");
            assert!(
                ["counter", "gauge", "histogram", "summary", "untyped"].contains(&kind),
                "{line}"
            );
            assert!(
                out.types.insert(name.to_owned(), kind.to_owned()).is_none(),
                "TYPE twice: {line}"
            );
            assert!(
                !out.samples
                    .iter()
                    .any(|s| family_of(&s.name, &out.types) == Some(name)),
                "TYPE after its samples: {line}"
            );
            continue;
        }
        assert!(!line.starts_with('#'), "unknown comment: {line}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let (name, labels) = match series.split_once('{') {
            Some((name, labels)) => (
                name,
                parse_labels(
                    labels.strip_suffix('}').unwrap_or_else(|| panic!("{line}")),
                    line,
                ),
            ),
            None => (series, BTreeMap::new()),
        };
        assert!(is_metric_name(name), "{line}");
        assert!(family_of(name, &out.types).is_some(), "undeclared: {line}");
        out.samples.push(Sample {
            name: name.to_owned(),
            labels,
            value: parse_value(value, line),
        });
    }
    check_histograms(&out);
    out
}

/// Each histogram series: buckets non-decreasing in `le` and in count, the last `+Inf`,
/// equal to `_count`.
fn check_histograms(exposition: &Exposition) {
    // (family, labels without `le`) → its buckets as (le, count).
    type Series = (String, Vec<(String, String)>);
    let mut series: BTreeMap<Series, Vec<(f64, f64)>> = BTreeMap::new();
    for sample in &exposition.samples {
        let Some(base) = sample.name.strip_suffix("_bucket") else {
            continue;
        };
        let mut labels = sample.labels.clone();
        let le = parse_value(&labels.remove("le").unwrap(), &sample.name);
        series
            .entry((base.to_owned(), labels.into_iter().collect()))
            .or_default()
            .push((le, sample.value));
    }
    for ((base, labels), buckets) in series {
        assert!(
            buckets
                .windows(2)
                .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
            "{base} {labels:?}: {buckets:?}"
        );
        let (last_le, last) = *buckets.last().unwrap();
        assert_eq!(last_le, f64::INFINITY, "{base}");
        let labels: Vec<(&str, &str)> = labels
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let count = exposition.value(&format!("{base}_count"), &labels);
        assert_eq!(count, Some(last), "{base} {labels:?}");
    }
}

/// The families the README's metrics table lists (its first column), as the exposition
/// names them.
fn documented_families() -> Vec<String> {
    let readme =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/README.md")).unwrap();
    let families: Vec<String> = readme
        .lines()
        .filter_map(|l| l.strip_prefix("| `valo_oauth_"))
        .map(|rest| format!("valo_oauth_{}", rest.split('`').next().unwrap()))
        .collect();
    assert!(families.len() >= 20, "the README table: {families:?}");
    families
}

async fn scrape(app: &TestApp) -> Exposition {
    let response = app.client.get(app.url("/metrics")).send().await.unwrap();
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(
        response.headers()["content-type"],
        "text/plain; version=0.0.4"
    );
    parse(&response.text().await.unwrap())
}

const ACCESS_TOKEN_ROUTE: &str = "/v1/tenants/{tenant}/connections/{id}/access-token";

/// An app whose tokens expire after 2 s, one connection, and its token fetched twice
/// around the expiry: one exchange, one refresh, and a cached read.
async fn refreshed(db: &valo_testkit::db::TestDatabase) -> (TestApp, uuid::Uuid) {
    let fake = FakeSalesforce::start(FakeOptions {
        access_token_lifetime: Duration::from_secs(2),
        ..Default::default()
    })
    .await
    .unwrap();
    let app = TestApp::spawn_with(db, &fake, &[]).await;
    let id = app.connect("acme").await;
    for _ in 0..2 {
        let served = app
            .access_token("acme", id, Some(json!({"min_ttl_seconds": 0})))
            .await;
        assert_eq!(served.status(), StatusCode::OK);
    }
    app.advance(Duration::from_millis(2100));
    let refreshed = app
        .access_token("acme", id, Some(json!({"min_ttl_seconds": 0})))
        .await;
    assert_eq!(refreshed.status(), StatusCode::OK);
    assert_eq!(fake.counters().refreshes, 1);
    (app, id)
}

backend_tests! {
    #[tokio::test]
    async fn after_a_refresh_every_documented_family_is_exposed_and_parses(db) {
        let (app, id) = refreshed(&db).await;
        let unknown = app
            .client
            .get(app.url(&format!("/no/such/{id}")))
            .send()
            .await
            .unwrap();
        assert_eq!(unknown.status(), StatusCode::NOT_FOUND);

        let m = scrape(&app).await;
        let b = &db.backend;
        for family in documented_families() {
            assert!(m.types.contains_key(&family), "{b}: {family} is documented but not exposed");
        }
        assert_eq!(
            m.value("valo_oauth_refreshes_total", &[("outcome", "success")]),
            Some(1.0),
            "{b}"
        );
        assert_eq!(
            m.value("valo_oauth_refreshes_total", &[("outcome", "needs_reauthorization")]),
            Some(0.0),
            "{b}: closed label sets start at zero"
        );
        // The code exchange and the refresh, each one HTTP call to the token endpoint.
        let token_calls = m
            .value(
                "valo_oauth_salesforce_call_duration_seconds_count",
                &[("endpoint", "token"), ("outcome", "success")],
            )
            .unwrap_or(0.0);
        assert!(token_calls >= 2.0, "{b}: {token_calls} token calls");
        assert!(
            m.value(
                "valo_oauth_salesforce_call_duration_seconds_sum",
                &[("endpoint", "token"), ("outcome", "success")],
            )
            .unwrap()
                > 0.0,
            "{b}"
        );
        assert_eq!(m.value("valo_oauth_salesforce_calls_in_flight", &[]), Some(0.0), "{b}");
        assert!(m.value("valo_oauth_token_cache_hits_total", &[]).unwrap() >= 1.0, "{b}");
        assert!(m.value("valo_oauth_token_cache_misses_total", &[]).unwrap() >= 1.0, "{b}");
        // Requests by route template: the connection id is never a label value.
        let served = m
            .value(
                "valo_oauth_http_request_duration_seconds_count",
                &[("route", ACCESS_TOKEN_ROUTE), ("method", "POST"), ("status_class", "2xx")],
            )
            .unwrap();
        assert_eq!(served, 3.0, "{b}");
        assert_eq!(
            m.value(
                "valo_oauth_http_request_duration_seconds_count",
                &[("route", "unmatched"), ("method", "GET"), ("status_class", "4xx")],
            ),
            Some(1.0),
            "{b}"
        );
        let id = id.to_string();
        assert!(
            m.samples.iter().all(|s| s.labels.values().all(|v| !v.contains(&id))),
            "{b}: a connection id became a label value"
        );
        app.stop().await;
    }
}

backend_tests! {
    #[tokio::test]
    async fn two_applications_in_one_process_count_apart(db) {
        let (busy, _) = refreshed(&db).await;
        let idle = TestApp::spawn(&db).await;
        let (busy_m, idle_m) = (scrape(&busy).await, scrape(&idle).await);
        let b = &db.backend;
        let refreshes = |m: &Exposition| m.value("valo_oauth_refreshes_total", &[("outcome", "success")]);
        assert_eq!(refreshes(&busy_m), Some(1.0), "{b}");
        assert_eq!(refreshes(&idle_m), Some(0.0), "{b}");
        assert_eq!(idle_m.value("valo_oauth_token_cache_misses_total", &[]), Some(0.0), "{b}");
        assert_eq!(
            idle_m.value(
                "valo_oauth_salesforce_call_duration_seconds_count",
                &[("endpoint", "token"), ("outcome", "success")],
            ),
            None,
            "{b}: the idle app made no token call"
        );
        assert!(
            idle_m
                .samples
                .iter()
                .all(|s| s.labels.get("route").map(String::as_str) != Some(ACCESS_TOKEN_ROUTE)),
            "{b}: the idle app served no token"
        );
        busy.stop().await;
        idle.stop().await;
    }
}

backend_tests! {
    #[tokio::test]
    async fn keepalive_backlog_and_failed_salesforce_calls_are_counted(db) {
        let b = &db.backend;
        let fake = FakeSalesforce::start(FakeOptions::default()).await.unwrap();
        let app = TestApp::spawn_with(
            &db,
            &fake,
            &KEEPALIVE_BY_HAND,
        )
        .await;
        app.connect("acme").await;
        app.advance(Duration::from_secs(601));
        fake.inject(Endpoint::Token, Fault::Status(503));
        let report = app.broker.keepalive_sweep().await.unwrap();
        assert_eq!((report.due, report.failed), (1, 1), "{b}");
        let m = scrape(&app).await;
        assert_eq!(m.value("valo_oauth_keepalive_backlog", &[]), Some(1.0), "{b}: due, not refreshed");
        assert_eq!(
            m.value(
                "valo_oauth_salesforce_call_duration_seconds_count",
                &[("endpoint", "token"), ("outcome", "server_error")],
            ),
            Some(1.0),
            "{b}"
        );
        assert_eq!(
            m.value("valo_oauth_refreshes_total", &[("outcome", "upstream_unavailable")]),
            Some(1.0),
            "{b}"
        );

        // Past the back-off, the next sweep refreshes it.
        app.advance(Duration::from_secs(5));
        let report = app.broker.keepalive_sweep().await.unwrap();
        assert_eq!((report.due, report.refreshed), (1, 1), "{b}");
        let m = scrape(&app).await;
        assert_eq!(m.value("valo_oauth_keepalive_backlog", &[]), Some(0.0), "{b}");
        assert_eq!(m.value("valo_oauth_keepalive_refreshes_total", &[]), Some(1.0), "{b}");
        app.stop().await;
    }
}

backend_tests! {
    /// Two replicas asked for a new token at once: one refreshes, the other waits for its
    /// lease and counts the wait.
    #[tokio::test]
    async fn a_wait_for_another_replicas_lease_is_counted_and_timed(db) {
        let fake = FakeSalesforce::start(FakeOptions::default()).await.unwrap();
        let a = TestApp::spawn_with(&db, &fake, &[]).await;
        let b = TestApp::spawn_with(&db, &fake, &[]).await;
        let id = a.connect("acme").await;
        let current: serde_json::Value = a.access_token("acme", id, None).await.json().await.unwrap();
        fake.set_latency(Duration::from_millis(300));
        let body = json!({"rejected_token": current["access_token"]});
        let (ra, rb) = tokio::join!(
            a.access_token("acme", id, Some(body.clone())),
            b.access_token("acme", id, Some(body))
        );
        let backend = &db.backend;
        assert_eq!((ra.status(), rb.status()), (StatusCode::OK, StatusCode::OK), "{backend}");
        assert_eq!(fake.counters().refreshes, 1, "{backend}");
        let (ma, mb) = (scrape(&a).await, scrape(&b).await);
        let both = |name: &str| ma.value(name, &[]).unwrap() + mb.value(name, &[]).unwrap();
        assert_eq!(both("valo_oauth_refresh_lease_waits_total"), 1.0, "{backend}");
        assert_eq!(both("valo_oauth_refresh_lease_wait_seconds_count"), 1.0, "{backend}");
        // The waiter waited for the holder's Salesforce call (300 ms of latency).
        assert!(both("valo_oauth_refresh_lease_wait_seconds_sum") >= 0.1, "{backend}");
        a.stop().await;
        b.stop().await;
    }
}
