//! Load and its accounting: wrk runs (parsed: requests/s, p50/p99, non-2xx) with the CPU the
//! server, wrk and every other process used meanwhile, the wait for a quiet machine, wrk
//! scripts for the access-token request, and latency percentiles of the harness's own
//! request loops.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tokio::process::Command;

use crate::{Options, env_or};

#[derive(Clone, Debug, Default)]
pub struct WrkResult {
    pub requests_per_sec: f64,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub socket_errors: String,
    /// CPU used during the run, in cores: the server, wrk, everything else on the machine.
    pub cpu_server: f64,
    pub cpu_wrk: f64,
    pub cpu_other: f64,
    /// Of `cpu_other`, this harness (the fake Salesforce lives here).
    pub cpu_harness: f64,
}

/// Clock ticks per second of /proc (USER_HZ, 100 on Linux).
const TICKS: f64 = 100.0;

/// (busy, total) ticks of all CPUs, from the first line of /proc/stat.
fn cpu_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .take(8)
        .filter_map(|f| f.parse().ok())
        .collect();
    let total: u64 = fields.iter().sum();
    let idle = fields.get(3).copied().unwrap_or(0) + fields.get(4).copied().unwrap_or(0);
    (total - idle, total)
}

/// utime + stime of a process, in ticks.
fn process_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .unwrap_or_default();
    let fields: Vec<&str> = after.split_whitespace().collect();
    let get = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    get(11) + get(12)
}

/// How many cores the whole machine keeps busy over `window`.
pub async fn machine_busy_cores(window: Duration) -> f64 {
    let (b0, t0) = cpu_ticks();
    tokio::time::sleep(window).await;
    let (b1, t1) = cpu_ticks();
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    if t1 > t0 {
        (b1 - b0) as f64 / (t1 - t0) as f64 * cores
    } else {
        0.0
    }
}

/// Waits (bounded by `BENCH_QUIET_WAIT_SECS`, default 60) until other processes leave
/// the CPUs mostly idle (under 0.15 cores busy over 2 s): other work on the machine
/// distorts both throughput and tail latency. Returns the busy level finally seen.
pub async fn wait_for_quiet(what: &str) -> f64 {
    let limit: u64 = env_or("BENCH_QUIET_WAIT_SECS", "60").parse().unwrap_or(60);
    let start = Instant::now();
    let mut busy = machine_busy_cores(Duration::from_secs(2)).await;
    let mut said = false;
    while busy > 0.15 && start.elapsed() < Duration::from_secs(limit) {
        if !said {
            eprintln!(
                "  waiting up to {limit} s for a quiet machine before {what} (other processes keep {busy:.2} cores busy)"
            );
            said = true;
        }
        busy = machine_busy_cores(Duration::from_secs(2)).await;
    }
    if busy > 0.15 {
        eprintln!(
            "  machine still busy ({busy:.2} cores) after {limit} s; measuring anyway (the report shows the CPU other processes used during each wrk run)"
        );
    }
    busy
}

/// "512.00us" / "1.20ms" / "2.00s" → milliseconds.
fn parse_duration_ms(s: &str) -> Option<f64> {
    let s = s.trim();
    if let Some(v) = s.strip_suffix("us") {
        v.parse::<f64>().ok().map(|v| v / 1000.0)
    } else if let Some(v) = s.strip_suffix("ms") {
        v.parse::<f64>().ok()
    } else if let Some(v) = s.strip_suffix('m') {
        v.parse::<f64>().ok().map(|v| v * 60_000.0)
    } else if let Some(v) = s.strip_suffix('s') {
        v.parse::<f64>().ok().map(|v| v * 1000.0)
    } else {
        None
    }
}

fn parse_wrk(output: &str) -> WrkResult {
    let mut result = WrkResult::default();
    let mut in_distribution = false;
    for line in output.lines() {
        let t = line.trim();
        if t.starts_with("Latency Distribution") {
            in_distribution = true;
            continue;
        }
        if in_distribution {
            if let Some(rest) = t.strip_prefix("50%") {
                result.p50_ms = parse_duration_ms(rest).unwrap_or(f64::NAN);
            } else if let Some(rest) = t.strip_prefix("99%") {
                result.p99_ms = parse_duration_ms(rest).unwrap_or(f64::NAN);
                in_distribution = false;
            }
        }
        if let Some(rest) = t.strip_prefix("Requests/sec:") {
            result.requests_per_sec = rest.trim().parse().unwrap_or(f64::NAN);
        } else if let Some(rest) = t.strip_prefix("Non-2xx or 3xx responses:") {
            result.non_2xx = rest.trim().parse().unwrap_or(u64::MAX);
        } else if t.starts_with("Socket errors:") {
            result.socket_errors = t.to_owned();
        } else if t.contains(" requests in ") {
            result.requests = t
                .split_whitespace()
                .next()
                .and_then(|n| n.parse().ok())
                .unwrap_or(0);
        }
    }
    result
}

pub async fn wrk(
    opts: &Options,
    server_pid: u32,
    url: &str,
    script: Option<&Path>,
    secs: u64,
    label: &str,
) -> WrkResult {
    // Through bash, whose `times` reports the CPU time wrk (its child) used.
    let mut command = Command::new("bash");
    command
        .arg("-c")
        .arg("wrk \"$@\" && times")
        .arg("wrk")
        .arg(format!("-t{}", opts.threads))
        .arg(format!("-c{}", opts.connections))
        .arg(format!("-d{secs}s"))
        .arg("--latency");
    if let Some(script) = script {
        command.arg("-s").arg(script);
    }
    command.arg(url);
    let (busy0, total0) = cpu_ticks();
    let server0 = process_ticks(server_pid);
    let harness0 = process_ticks(std::process::id());
    let output = command
        .stdin(Stdio::null())
        .output()
        .await
        .expect("run wrk (bench/run.sh installs it)");
    let stdout = valo_testkit::process::stdout_of(&output, "wrk");
    let (busy1, total1) = cpu_ticks();
    let server1 = process_ticks(server_pid);
    let harness1 = process_ticks(std::process::id());
    std::fs::write(opts.work_dir.join(format!("wrk-{label}.txt")), &stdout).ok();
    let mut result = parse_wrk(&stdout);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let elapsed = (total1 - total0) as f64 / TICKS / cores;
    if elapsed > 0.0 {
        // `times` prints the shell's line, then its children's: "0m1.23s 0m0.45s".
        let wrk_secs: f64 = stdout
            .lines()
            .last()
            .unwrap_or_default()
            .split_whitespace()
            .filter_map(|t| {
                let (m, s) = t.trim_end_matches('s').split_once('m')?;
                Some(m.parse::<f64>().ok()? * 60.0 + s.parse::<f64>().ok()?)
            })
            .sum();
        result.cpu_server = (server1 - server0) as f64 / TICKS / elapsed;
        result.cpu_wrk = wrk_secs / elapsed;
        let busy = (busy1 - busy0) as f64 / TICKS / elapsed;
        result.cpu_other = (busy - result.cpu_server - result.cpu_wrk).max(0.0);
        result.cpu_harness = (harness1 - harness0) as f64 / TICKS / elapsed;
    }
    assert!(
        result.requests_per_sec.is_finite() && result.requests > 0,
        "cannot parse wrk output:\n{stdout}"
    );
    eprintln!(
        "  {label:<28} {:>10.0} req/s  p50 {:>6.3} ms  p99 {:>6.3} ms  non-2xx {}  cpu server {:.2} wrk {:.2} other {:.2} (harness {:.2})",
        result.requests_per_sec,
        result.p50_ms,
        result.p99_ms,
        result.non_2xx,
        result.cpu_server,
        result.cpu_wrk,
        result.cpu_other,
        result.cpu_harness
    );
    result
}

/// A wrk script that POSTs the access-token endpoint with a bearer JWT. With one path it is
/// sent to the URL wrk is given; with many, each request takes the next path in turn (each
/// wrk thread starting at its own offset), spreading the load over many connections.
pub fn write_token_script(opts: &Options, name: &str, jwt: &str, paths: &[String]) -> PathBuf {
    let path = opts.work_dir.join(format!("{name}.lua"));
    let mut script = format!(
        "-- written by examples/bench/load.rs: POST the access-token endpoint with a bearer JWT\n\
         wrk.method = \"POST\"\n\
         wrk.body = '{{\"min_ttl_seconds\":60}}'\n\
         wrk.headers[\"Content-Type\"] = \"application/json\"\n\
         wrk.headers[\"Authorization\"] = \"Bearer {jwt}\"\n"
    );
    if !paths.is_empty() {
        // A Lua table of the paths; `request` walks it round-robin (also for one path, so
        // that a one-path baseline costs wrk the same Lua call per request as a spread).
        script.push_str("local paths = {\n");
        for p in paths {
            script.push_str(&format!("  \"{p}\",\n"));
        }
        script.push_str(
            "}\n\
             local threads, i = 0, 0\n\
             setup = function(thread)\n\
               threads = threads + 1\n\
               thread:set(\"offset\", (threads * 7919) % #paths)\n\
             end\n\
             init = function(args) i = tonumber(wrk.thread:get(\"offset\")) or 0 end\n\
             request = function()\n\
               i = i % #paths + 1\n\
               return wrk.format(nil, paths[i])\n\
             end\n",
        );
    }
    std::fs::write(&path, script).unwrap();
    path
}

/// Percentiles of a list of durations, in milliseconds.
#[derive(Default)]
pub struct Latencies {
    pub samples: usize,
    pub p50_ms: f64,
    pub p99_ms: f64,
    pub max_ms: f64,
}

impl Latencies {
    pub fn of(mut ms: Vec<f64>) -> Self {
        if ms.is_empty() {
            return Self::default();
        }
        ms.sort_by(f64::total_cmp);
        let at = |q: f64| ms[((ms.len() as f64 - 1.0) * q).round() as usize];
        Self {
            samples: ms.len(),
            p50_ms: at(0.50),
            p99_ms: at(0.99),
            max_ms: *ms.last().unwrap(),
        }
    }
}
