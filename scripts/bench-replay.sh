#!/usr/bin/env bash
# The replay benchmark: 2,000,000 generated events (5% duplicates, up to 5 s out of order) as
# JSON lines through a 1-minute tumbling pipeline (benches/replay/). Prints events/s and peak RSS.
set -euo pipefail
cd "$(dirname "$0")/.."
events="${1:-2000000}"
cargo build --release --quiet --bin eventide
bin="${CARGO_TARGET_DIR:-target}/release/eventide"
work="${BENCH_DIR:-/tmp/eventide-bench-replay}"
mkdir -p "$work"
input="$work/events-$events.jsonl"
[ -f "$input" ] || "$bin" gen --out "$input" --events "$events" --duplicates 0.05 --jitter 5s --spacing 1ms
rm -rf "$work/lake"
/usr/bin/time -f "wall %e s, max RSS %M KiB" "$bin" replay "$input" --pipelines benches/replay --lake "$work/lake"
"$bin" query --lake "$work/lake" --pipelines benches/replay \
  "SELECT count(*) AS rows, sum(events) AS events, min(window_start) AS first, max(window_end) AS last FROM tumbling_1m"
