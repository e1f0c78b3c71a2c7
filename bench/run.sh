#!/usr/bin/env bash
# The one command that reruns valo-oauth's benchmarks and rewrites docs/benchmarks.md:
#
#     bash bench/run.sh
#
# Needs: a Rust toolchain, Postgres reachable at BENCH_DATABASE_URL (default
# postgres://postgres@127.0.0.1:5432/postgres; the harness creates and drops its own
# throw-away databases there), and wrk (installed with apt-get when missing).
# Options (environment): BENCH_ONLY (a comma list of sections: hotpath, storm, memory,
# fanout, scale; unset: all), BENCH_DURATION_SECS (10), BENCH_WARMUP_SECS (3),
# BENCH_CONNECTIONS (64), BENCH_THREADS (2), BENCH_OUT (docs/benchmarks.md).
# Each section rewrites only its own part of the report. Takes about 15 minutes (the
# scale section about 10 of them) plus the release build (4-5 minutes cold).
set -euo pipefail

cd "$(dirname "$0")/.."

if ! command -v wrk >/dev/null 2>&1; then
    echo "bench: installing wrk" >&2
    if [ "$(id -u)" -eq 0 ]; then SUDO=""; else SUDO="sudo"; fi
    $SUDO apt-get install -y wrk >/dev/null || { $SUDO apt-get update >/dev/null && $SUDO apt-get install -y wrk >/dev/null; }
fi

echo "bench: building the release binary and the harness" >&2
cargo build --release --bin valo-oauth --example bench

target="${CARGO_TARGET_DIR:-target}"
export BENCH_COMMAND="bash bench/run.sh"
export BENCH_BINARY="$target/release/valo-oauth"
"$target/release/examples/bench"

echo "bench: figures written to ${BENCH_OUT:-docs/benchmarks.md}" >&2
