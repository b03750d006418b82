#!/usr/bin/env bash
# Reproduces BENCHMARKS.md's side-by-side table: builds Herald and the load
# harness in release, installs the Node peers (socket.io 4.8, BullMQ), and
# runs every scenario against both on this machine. PostgreSQL and Redis
# must be running (see .ci/run). Arguments go to herald-bench, e.g.
#   benches/run.sh --only fanout
#   benches/run.sh --smoke --out /tmp/bench
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release -p herald-server -p herald-bench
npm ci --prefix benches/peers --no-audit --no-fund
# 10,000 idle connections need as many descriptors in the harness.
ulimit -n "$(ulimit -Hn)"
exec "$target/release/herald-bench" "$@"
