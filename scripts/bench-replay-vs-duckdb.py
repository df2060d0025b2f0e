#!/usr/bin/env python3
"""The replay benchmark against DuckDB's batch query on the same file (issue #14, item 3).

Paired rounds, back to back: `eventide replay` of the JSON-lines file through
benches/replay/tumbling_1m.toml, then DuckDB computing the same table with one SQL statement
(`read_json_auto`, `row_number()` dedup keeping each event_id's first line, 1-minute buckets by
event_type, written to Parquet). Checks that both tables agree (windows, events, customers per
window and type), then prints each round's wall times and the ratio DuckDB / eventide.

    scripts/bench-replay-vs-duckdb.py --eventide target/release/eventide \
        --input /tmp/eventide-bench-replay/events-2000000.jsonl --rounds 5

Needs `pip install duckdb` (tests/requirements.txt has it).
"""

import argparse
import os
import shutil
import statistics
import subprocess
import tempfile
import time

import duckdb

HERE = os.path.dirname(os.path.abspath(__file__))
PIPELINES = os.path.join(HERE, "..", "benches", "replay")

DUCKDB_SQL = """
COPY (
  WITH raw AS (
    SELECT *, row_number() OVER () AS line FROM read_json_auto('{input}', format = 'newline_delimited')
  ),
  firsts AS (
    SELECT * FROM raw QUALIFY row_number() OVER (PARTITION BY event_id ORDER BY line) = 1
  )
  SELECT time_bucket(INTERVAL 1 minute, CAST("timestamp" AS TIMESTAMP)) AS window_start, event_type,
         count(*) AS events, sum(data.amount) AS revenue, min(data.amount) AS min_amount,
         max(data.amount) AS max_amount, count(DISTINCT data.customer_id) AS customers
  FROM firsts GROUP BY ALL
) TO '{out}' (FORMAT parquet)
"""


def run_eventide(binary, input_path, lake):
    shutil.rmtree(lake, ignore_errors=True)
    start = time.perf_counter()
    subprocess.run(
        [binary, "replay", input_path, "--pipelines", PIPELINES, "--lake", lake],
        check=True,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return time.perf_counter() - start


def run_duckdb(input_path, out):
    if os.path.exists(out):
        os.remove(out)
    start = time.perf_counter()
    con = duckdb.connect()
    con.execute(DUCKDB_SQL.format(input=input_path, out=out))
    con.close()
    return time.perf_counter() - start


def compare(lake, out):
    """Both tables: the same (window, type) rows with the same counts."""
    con = duckdb.connect()
    ours = con.execute(
        f"SELECT CAST(window_start AS TIMESTAMP) AS w, event_type, events, customers "
        f"FROM read_parquet('{lake}/tumbling_1m/**/*.parquet', hive_partitioning = false) ORDER BY 1, 2"
    ).fetchall()
    theirs = con.execute(
        f"SELECT window_start AS w, event_type, events, customers FROM read_parquet('{out}') ORDER BY 1, 2"
    ).fetchall()
    if ours != theirs:
        diff = [r for r in ours if r not in set(theirs)][:5]
        raise SystemExit(f"tables differ: eventide {len(ours)} rows, DuckDB {len(theirs)}; first of ours not in "
                         f"DuckDB's: {diff}")
    return len(ours), sum(r[2] for r in ours)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--eventide", required=True)
    ap.add_argument("--input", required=True)
    ap.add_argument("--rounds", type=int, default=5)
    args = ap.parse_args()
    work = tempfile.mkdtemp(prefix="replay-vs-duckdb-")
    lake, out = os.path.join(work, "lake"), os.path.join(work, "duckdb.parquet")
    ratios, ours, theirs = [], [], []
    try:
        for r in range(args.rounds):
            e = run_eventide(args.eventide, args.input, lake)
            d = run_duckdb(args.input, out)
            rows, events = compare(lake, out)
            ours.append(e)
            theirs.append(d)
            ratios.append(d / e)
            print(f"round {r + 1}: eventide {e:.2f} s, DuckDB {d:.2f} s, ratio {d / e:.2f} "
                  f"({rows} windows x types, {events} events, tables equal)", flush=True)
        print(f"median: eventide {statistics.median(ours):.2f} s, DuckDB {statistics.median(theirs):.2f} s, "
              f"paired ratio {statistics.median(ratios):.2f} ({min(ratios):.2f}-{max(ratios):.2f})")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
