#!/usr/bin/env bash
# The demo: finds (or starts) Redis, generates e-commerce events with duplicates, out-of-order
# timestamps and malformed entries (half of them Dapr-wrapped), runs the pipeline with the
# example pipelines in pipelines/ until the streams are drained, then shows what landed where
# and queries the aggregate tables.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v redis-server >/dev/null 2>&1; then
  echo "demo: installing redis-server"; apt-get update -qq && apt-get install -y -qq redis-server
fi
# The test suite's build (it builds this binary too, with the features the tests' dependencies
# add; a plain `cargo build` resolves other features and compiles DataFusion a second time):
# after `scripts/test.sh` nothing is compiled again. Progress is shown.
echo "demo: building (a fresh machine's first build takes ~20 minutes; later ones seconds)"
cargo test --locked --no-run
bin="${CARGO_TARGET_DIR:-target}/debug/eventide"

port=6390
url="redis://127.0.0.1:$port"
if ! redis-cli -p "$port" ping >/dev/null 2>&1; then
  echo "demo: starting a private redis-server on 127.0.0.1:$port"
  redis-server --port "$port" --bind 127.0.0.1 --save '' --appendonly no --daemonize yes \
    --logfile /tmp/eventide-demo-redis.log
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
fi
redis-cli -p "$port" del demo:orders demo:orders:dlq demo:payments demo:payments:dlq >/dev/null

lake="$PWD/demo-lake"
rm -rf "$lake"
"$bin" gen --redis-url "$url" --stream demo:orders --events 50000 --duplicates 0.05 --jitter 3s --malformed 0.005 --spacing 10ms --seed 1
"$bin" gen --redis-url "$url" --stream demo:payments --events 50000 --duplicates 0.05 --jitter 3s --malformed 0.005 --spacing 10ms --dapr --seed 2
"$bin" run --config /dev/null --redis-url "$url" --stream demo:orders --stream demo:payments \
  --group demo --consumer demo-1 --lake "$lake" --pipelines pipelines --exit-when-idle 1s \
  --http-addr 127.0.0.1:0   # any free port: a running eventide keeps its own

echo
echo "== archive files (hive partitions) =="
find "$lake/events" -name '*.parquet' | sed "s|$lake/||" | sort | head -n 12
echo "... $(find "$lake/events" -name '*.parquet' | wc -l) files, $(du -sh "$lake/events" | cut -f1)"
echo
echo "== dead-letter streams (reason counts) =="
for s in demo:orders:dlq demo:payments:dlq; do
  echo "$s: $(redis-cli -p "$port" xlen "$s") entries"
  redis-cli -p "$port" --raw xrange "$s" - + | awk 'prev=="dlq_reason"{c[$0]++} {prev=$0} END{for(k in c) printf "  %-22s %d\n", k, c[k]}'
done
echo
echo "== open it (DuckDB, pyarrow: pip install duckdb pyarrow) =="
query="SELECT event_type, count(*) AS events FROM read_parquet('$lake/events/**/*.parquet') GROUP BY 1 ORDER BY 2 DESC"
echo "  python3 -c \"import duckdb; print(duckdb.sql(\\\"$query\\\"))\""
echo "  python3 -c \"import pyarrow.dataset as ds; print(ds.dataset('$lake/events', format='parquet', partitioning='hive').to_table().num_rows)\""
if python3 -c 'import duckdb' >/dev/null 2>&1; then
  python3 -c "import duckdb; print(duckdb.sql(\"$query\"))"
fi
echo
echo "== pipeline tables (eventide query; SQL over the lake with DataFusion) =="
q() { echo "\$ eventide query \"$1\""; "$bin" query --lake "$lake" --pipelines pipelines "$1"; }
q "SELECT window_start, event_type, events, round(revenue, 2) AS revenue, customers FROM revenue_per_minute ORDER BY window_start, event_type LIMIT 8"
q "SELECT window_start, window_end, checkouts, orders, payments, round(conversion, 3) AS conversion FROM checkout_funnel ORDER BY window_start LIMIT 5"
q "SELECT count(*) AS sessions, avg(events) AS events_per_session, max(window_end - window_start) AS longest FROM customer_sessions"
q "SELECT window_start, attempts, failures, round(failure_rate, 4) AS failure_rate FROM payment_failure_rate ORDER BY window_start"
q "SELECT pipeline, count(*) AS late_rows FROM late_events GROUP BY pipeline" 2>/dev/null \
  || echo "(no late_events table: no event missed its window; per-stream watermarks keep the two streams' events on time)"
