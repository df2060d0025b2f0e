"""Reads one Delta table of a lake with three independent readers and checks that they agree
with each other, with the table's log, and (optionally) with an expected plain-Parquet table.

usage: read_delta.py <delta table dir> [--expect <parquet table dir>] [--drop col,col]
                     [--unique col] [--one-revision]

- delta-rs (`deltalake.DeltaTable(...).to_pyarrow_table()`), Polars (`polars.read_delta`) and
  DuckDB (`read_parquet` over the files delta-rs lists for the latest version) must return the
  same rows (partition columns dropped for DuckDB, which reads the files alone);
- the log must add no file path twice, and every file of the version must exist;
- `--unique col`: no two rows share `col` (the archive's event_id);
- `--one-revision`: at most one revision per window_start (an `emit = "updates"` table);
- `--expect dir`: the rows equal that directory's (hive-partitioned Parquet, e.g. a replay;
  with `--one-revision`, its latest revision of each window).

Prints `rows=<n> version=<v> files=<f>`; exits 1 with the reason otherwise.
"""
import glob
import json
import os
import sys

import duckdb
import polars as pl
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as ds
from deltalake import DeltaTable


def canonical(table, drop):
    cols = [c for c in table.column_names if c not in drop]
    table = table.select(cols)
    # Times as UTC microseconds, everything else as text: one form whatever the reader.
    arrays = []
    for name in sorted(cols):
        col = table.column(name)
        if pa.types.is_timestamp(col.type):
            col = pc.cast(pc.cast(col, pa.timestamp("us", tz="UTC")), pa.int64())
        elif pa.types.is_floating(col.type):
            # Sums in another order differ in the last bits: 12 significant digits.
            arrays.append([None if v is None else f"{v:.12g}" for v in col.to_pylist()])
            continue
        arrays.append(pc.cast(col, pa.string()).to_pylist())
    rows = list(zip(*arrays)) if arrays else []
    return sorted(rows, key=lambda r: tuple("" if v is None else v for v in r))


def fail(msg):
    print(msg)
    sys.exit(1)


def main():
    args = sys.argv[1:]
    path = args.pop(0)
    expect, drop, unique, one_revision = None, set(), None, False
    while args:
        a = args.pop(0)
        if a == "--expect":
            expect = args.pop(0)
        elif a == "--drop":
            drop = set(args.pop(0).split(","))
        elif a == "--unique":
            unique = args.pop(0)
        elif a == "--one-revision":
            one_revision = True
        else:
            fail(f"unknown argument {a}")

    # The log: no path added twice over all commits.
    added = {}
    for f in sorted(glob.glob(os.path.join(path, "_delta_log", "*.json"))):
        with open(f) as fh:
            for line in fh:
                action = json.loads(line)
                if "add" in action:
                    p = action["add"]["path"]
                    if p in added:
                        fail(f"{p} added twice: in {added[p]} and {os.path.basename(f)}")
                    added[p] = os.path.basename(f)

    dt = DeltaTable(path)
    partitions = set(dt.metadata().partition_columns)
    delta_rows = dt.to_pyarrow_table()
    uris = dt.file_uris()
    for u in uris:
        if not os.path.exists(u.removeprefix("file://")):
            fail(f"the latest version lists a missing file: {u}")
    polars_rows = pl.read_delta(path).to_arrow()

    want = canonical(delta_rows, drop | partitions)
    got_polars = canonical(polars_rows, drop | partitions)
    if got_polars != want:
        fail(f"Polars read {len(got_polars)} rows, delta-rs {len(want)}: they differ")
    if uris:
        files = ", ".join(f"'{u.removeprefix('file://')}'" for u in uris)
        duck = duckdb.connect().sql(f"SELECT * FROM read_parquet([{files}], hive_partitioning = false)").to_arrow_table()
        got_duck = canonical(duck, drop | partitions)
    else:
        got_duck = []
    if got_duck != want:
        fail(f"DuckDB read {len(got_duck)} rows over the version's files, delta-rs {len(want)}: they differ")

    if unique and delta_rows.num_rows:
        n = len(set(delta_rows.column(unique).to_pylist()))
        if n != delta_rows.num_rows:
            fail(f"{delta_rows.num_rows - n} rows share a {unique}")
    if one_revision and delta_rows.num_rows:
        pairs = set(zip(delta_rows.column("window_start").to_pylist(), delta_rows.column("revision").to_pylist()))
        windows = {w for w, _ in pairs}
        if len(pairs) != len(windows):
            fail(f"{len(pairs) - len(windows)} windows show more than one revision")
    if expect is not None:
        exp = ds.dataset(expect, format="parquet", partitioning="hive").to_table() if os.path.isdir(expect) else None
        if exp is not None and one_revision:
            # The plain table keeps every revision; the Delta table each window's latest.
            top = exp.group_by("window_start").aggregate([("revision", "max")])
            latest = set(zip(top.column("window_start").to_pylist(), top.column("revision_max").to_pylist()))
            keep = [(w, r) in latest for w, r in zip(exp.column("window_start").to_pylist(), exp.column("revision").to_pylist())]
            exp = exp.filter(pa.array(keep))
        exp_rows = canonical(exp, drop | partitions) if exp is not None else []
        if exp_rows != want:
            missing = [r for r in exp_rows if r not in set(want)][:3]
            extra = [r for r in want if r not in set(exp_rows)][:3]
            fail(f"{len(want)} rows, expected {len(exp_rows)}; missing e.g. {missing}; unexpected e.g. {extra}")
    print(f"rows={delta_rows.num_rows} version={dt.version()} files={len(uris)}")


if __name__ == "__main__":
    main()
