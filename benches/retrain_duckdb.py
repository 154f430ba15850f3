"""The retrain's queries on DuckDB, for benches/retrain.rs: same Parquet files, same
queries (DuckDB dialect: approx_quantile, epoch_ms), same thread count.

usage: retrain_duckdb.py QUERIES.json ARCHIVE_DIR THREADS RUNS
prints {"version": ..., "queries": {name: [seconds, ...]}, "rows": {name: n}} as JSON.
"""
import json
import sys
import time

import duckdb


def main() -> None:
    queries = json.load(open(sys.argv[1]))
    root, threads, runs = sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    con = duckdb.connect()
    con.execute("SET TimeZone = 'UTC'")
    con.execute(f"SET threads = {threads}")
    con.execute(
        "CREATE VIEW obs AS SELECT * FROM read_parquet("
        f"'{root}/**/*.parquet', hive_partitioning = true, "
        "hive_types = {'date': VARCHAR, 'hour': VARCHAR})"
    )
    out = {"version": duckdb.__version__, "queries": {}, "rows": {}}
    for name, sql in queries:
        times = []
        for _ in range(runs):
            t = time.perf_counter()
            rows = con.execute(sql).fetchall()
            times.append(time.perf_counter() - t)
        out["queries"][name] = times
        out["rows"][name] = len(rows)
    print(json.dumps(out))


if __name__ == "__main__":
    main()
