"""Feature build cost: Spark (the features job's engine) vs DuckDB (an independent single-machine
implementation of the same features), side by side, and how both grow with data size.

For each size it writes N silver rows spread over ``--days`` days as Parquet, then runs each
engine in its own process over the same files (read, compute every point-in-time feature, write
Parquet) and reports wall time, the time inside the engine (Spark: without its JVM start-up),
peak RSS of the whole process tree (Spark's JVM included), and the Spark/DuckDB ratio (their
outputs are equal: tests/jobs/steps/test_features.py).

    .venv/bin/python bench/features.py --rows 1000000,8000000 --days 10
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from procs import wait_for_peak_rss  # bench/procs.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

RUN = """
import json, sys, time, glob
t0 = time.perf_counter()
engine, src, dst = sys.argv[1:4]
files = sorted(glob.glob(src + "/*.parquet"))
if engine == "spark":
    from jobs.ml.features_spark import build_features
    from jobs.steps.features import spark_session
    spark = spark_session("local[*]", sys.argv[4])
    t1 = time.perf_counter()
    build_features(spark.read.parquet(*files)).write.mode("overwrite").parquet(dst)
    t2 = time.perf_counter()
    spark.stop()
else:
    import pyarrow.dataset as ds, pyarrow.parquet as pq, pyarrow as pa
    from jobs.ml.features_duckdb import build_features_duckdb
    t1 = time.perf_counter()
    out = build_features_duckdb(ds.dataset(files))
    pq.write_table(pa.Table.from_pandas(out, preserve_index=False), dst + ".parquet")
    t2 = time.perf_counter()
print(json.dumps({"engine_s": t2 - t1, "startup_s": t1 - t0}))
"""


def run(engine: str, src: Path, dst: Path, driver_memory: str) -> dict:
    """One engine in its own process; peak RSS summed over its whole process tree (Spark's JVM too)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, "-c", RUN, engine, str(src), str(dst), driver_memory],
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, cwd=ROOT)
    peak = wait_for_peak_rss(proc, every=0.05)
    wall = time.perf_counter() - t0
    out = proc.stdout.read().decode()
    if proc.returncode != 0:
        raise SystemExit(f"{engine} failed (exit {proc.returncode})")
    return {"wall_s": wall, "gib": peak / 2**30, **json.loads(out.strip().splitlines()[-1])}


def silver(rows: int, days: int, folder: Path) -> None:
    from datetime import date, timedelta

    from jobs.devkit.generate import generate_day
    from jobs.quality.contract import to_typed

    folder.mkdir(parents=True)
    end = date(2026, 9, 30)
    for i in range(days):
        day = (end - timedelta(days=days - 1 - i)).isoformat()
        frame = to_typed(generate_day(day, rows // days, n_cards=max(2000, rows // 40), delivery=str(rows)))
        frame["is_fraud"] = frame["is_fraud"].astype("int64")
        frame["timestamp"] = frame["timestamp"].astype("datetime64[us]")
        frame.to_parquet(folder / f"day-{i:03d}.parquet", index=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows", default="100000,1000000")
    parser.add_argument("--days", type=int, default=10)
    parser.add_argument("--driver-memory", default="4g", help="Spark driver memory (local mode: the whole JVM)")
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{'rows':>9} | {'spark wall s':>12} {'in engine':>9} {'GiB':>5} | {'duckdb wall s':>13} {'in engine':>9} "
          f"{'GiB':>5} | {'spark/duckdb':>12}")
    with tempfile.TemporaryDirectory(prefix="bench-features-") as tmp:
        for rows in (int(r) for r in args.rows.split(",")):
            src = Path(tmp) / f"silver-{rows}"
            silver(rows, args.days, src)
            spark = run("spark", src, Path(tmp) / f"spark-{rows}", args.driver_memory)
            duck = run("duckdb", src, Path(tmp) / f"duckdb-{rows}", args.driver_memory)
            print(f"{rows:>9} | {spark['wall_s']:>12.1f} {spark['engine_s']:>9.1f} {spark['gib']:>5.2f} | "
                  f"{duck['wall_s']:>13.1f} {duck['engine_s']:>9.1f} {duck['gib']:>5.2f} | "
                  f"{spark['wall_s'] / duck['wall_s']:>11.1f}x", flush=True)


if __name__ == "__main__":
    main()
