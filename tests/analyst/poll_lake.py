"""A concurrent reader for the fault drills: polls a lake with DuckDB (archive) and pyarrow
(pipeline tables) until the stop file appears, and fails on any partial file or duplicate row.

usage: poll_lake.py <lake dir> <stop file> <table>...
Prints the number of consistent polls; exit 1 with the reason otherwise.
"""
import os
import sys
import time

import duckdb
import pyarrow.dataset as ds


def check(lake, tables):
    events = os.path.join(lake, "events")
    if os.path.isdir(events):
        con = duckdb.connect()
        total, distinct = con.execute(
            f"SELECT count(*), count(DISTINCT event_id) FROM read_parquet('{events}/**/*.parquet')"
        ).fetchone()
        if total != distinct:
            raise AssertionError(f"archive: {total - distinct} duplicate rows")
    for t in tables:
        path = os.path.join(lake, t)
        if not os.path.isdir(path):
            continue
        table = ds.dataset(path, format="parquet", partitioning="hive").to_table()
        if table.num_rows == 0:
            continue
        # One row per window and group: window bounds + the first SELECT column (the key).
        key = table.select(["window_start", "window_end", table.schema.names[2]])
        distinct = key.group_by(key.schema.names).aggregate([]).num_rows
        if distinct != table.num_rows:
            raise AssertionError(f"{t}: {table.num_rows - distinct} duplicate window rows")


def main():
    lake, stop, tables = sys.argv[1], sys.argv[2], sys.argv[3:]
    polls = 0
    while not os.path.exists(stop):
        try:
            check(lake, tables)
        except (duckdb.IOException, FileNotFoundError) as e:
            # A directory listing raced a new partition directory: not a file we read partially.
            if "No files found" in str(e) or isinstance(e, FileNotFoundError):
                continue
            print(f"inconsistent read: {e}")
            sys.exit(1)
        except Exception as e:  # noqa: BLE001 — any other failure is a finding
            print(f"inconsistent read: {type(e).__name__}: {e}")
            sys.exit(1)
        polls += 1
        time.sleep(0.05)
    print(polls)


if __name__ == "__main__":
    main()
