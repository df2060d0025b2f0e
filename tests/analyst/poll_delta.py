"""A reader looping over a Delta table while it is written and compacted: every version it
reads must hold each `key` once, and every key a read saw must still be there in later reads
(the table only grows: a compaction that lost or doubled a row would show here).

usage: poll_delta.py <delta table dir> <key column> <stop file>
Prints `polls=<n> versions=<distinct versions read> rows=<last count>`; exit 1 otherwise.
"""
import os
import sys
import time

from deltalake import DeltaTable
from deltalake.exceptions import TableNotFoundError


def main():
    path, key, stop = sys.argv[1], sys.argv[2], sys.argv[3]
    seen = set()
    polls, versions, rows = 0, set(), 0
    while not os.path.exists(stop):
        try:
            dt = DeltaTable(path)
        except TableNotFoundError:
            time.sleep(0.05)
            continue
        keys = dt.to_pyarrow_table(columns=[key]).column(key).to_pylist()
        now = set(keys)
        if len(now) != len(keys):
            print(f"version {dt.version()}: {len(keys) - len(now)} rows share a {key}")
            sys.exit(1)
        lost = seen - now
        if lost:
            print(f"version {dt.version()}: {len(lost)} rows seen before are gone, e.g. {sorted(lost)[:3]}")
            sys.exit(1)
        seen = now
        polls += 1
        versions.add(dt.version())
        rows = len(keys)
        time.sleep(0.02)
    print(f"polls={polls} versions={len(versions)} rows={rows}")


if __name__ == "__main__":
    main()
