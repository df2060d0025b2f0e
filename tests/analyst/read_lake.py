"""Opens an eventide archive the way analysts do and prints what each tool sees, as JSON.

Usage: python3 read_lake.py <lake-dir>
Reads <lake>/events/**/*.parquet with DuckDB (glob, hive partitioning on) and with
pyarrow.dataset (hive partitioning), and reports row counts, distinct event ids, counts per
event_type and the partition columns each tool exposes.
"""
import json
import sys

import duckdb
import pyarrow.dataset as ds

lake = sys.argv[1]
glob = f"{lake}/events/**/*.parquet"

con = duckdb.connect()
rel = f"read_parquet('{glob}', hive_partitioning = true)"
duck_rows, duck_ids = con.execute(f"SELECT count(*), count(DISTINCT event_id) FROM {rel}").fetchone()
duck_types = dict(con.execute(f"SELECT event_type, count(*) FROM {rel} GROUP BY 1").fetchall())
duck_dates_ok = con.execute(
    f"SELECT bool_and(CAST(event_date AS VARCHAR) = strftime(event_time AT TIME ZONE 'UTC', '%Y-%m-%d')) FROM {rel}"
).fetchone()[0]

# Bloom filters on event_id and correlation_id: a row group without the id is excluded.
files = [r[0] for r in con.execute(f"SELECT DISTINCT filename FROM read_parquet('{glob}', filename = true)").fetchall()]
some_id, some_corr = con.execute(
    f"SELECT event_id, correlation_id FROM {rel} WHERE correlation_id IS NOT NULL LIMIT 1").fetchone()


def probe(col, value):
    excluded = total = 0
    for f in files:
        rows = con.execute(f"SELECT bloom_filter_excludes FROM parquet_bloom_probe('{f}', '{col}', ?)", [value])
        for (ex,) in rows.fetchall():
            total += 1
            excluded += bool(ex)
    return {"row_groups": total, "excluded": excluded}


bloom = {
    "event_id_present": probe("event_id", some_id), "event_id_absent": probe("event_id", "no-such-event"),
    "correlation_present": probe("correlation_id", some_corr),
    "correlation_absent": probe("correlation_id", "no-such-correlation"),
}

table = ds.dataset(f"{lake}/events", format="parquet", partitioning="hive").to_table()
pa_types = {}
for t in table.column("event_type").to_pylist():
    pa_types[t] = pa_types.get(t, 0) + 1

print(json.dumps({
    "duckdb": {"rows": duck_rows, "distinct_ids": duck_ids, "by_type": duck_types, "dates_match": bool(duck_dates_ok)},
    "bloom": bloom,
    "pyarrow": {"rows": table.num_rows, "distinct_ids": len(set(table.column("event_id").to_pylist())),
                "by_type": pa_types, "columns": table.column_names},
}))
