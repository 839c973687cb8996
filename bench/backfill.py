"""A backfill in bounded memory: one range build of gold features over 10, 20, 30 days at 1M rows a day.

Prepares a folder lake with the range's days and their 7-day look-back in silver, through the
project's own jobs (``generate``, then ``ingest`` and ``validate`` per day), then runs the features
job (``python -m jobs features --start S --date E --force``, the command the build_features DAG
runs) for each ``--ranges`` length ending at the last day, with the project's default Spark
driver (``PIPELINE_SPARK_DRIVER_MEMORY``, 1g). For each it prints the wall time, CPU seconds and
peak RSS of the whole process tree (Spark's JVM included, sampled from outside and by the job's
own meter), seconds per day and per million rows (linear in the days when these stay flat),
beside the 4 GiB target.

    .venv/bin/python bench/backfill.py --days 30 --rows-per-day 1000000 --ranges 10,20,30

``--state DIR`` keeps the prepared lake for a later run (``--reuse``).
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

from procs import wait_for_peak_rss  # bench/procs.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
TARGET_GIB = 4.0
LOOKBACK_DAYS = 7
END = date(2026, 10, 31)


def job(env: dict, log: Path, *args: str) -> tuple[dict, float, float]:
    """One ``python -m jobs`` command: its result, wall seconds, peak RSS of its tree (GiB)."""
    sys.path.insert(0, str(ROOT))
    from jobs.shared.result import parse_result_line

    started = time.perf_counter()
    with open(log, "a") as err:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                                stderr=err, text=True)
        peak = wait_for_peak_rss(proc, every=0.2)
        out = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"`jobs {' '.join(args)}` failed (exit {proc.returncode}); log {log}:\n"
                         f"{log.read_text(errors='replace')[-3000:]}")
    results = [r for r in map(parse_result_line, out.splitlines()) if r is not None]
    return (results[-1] if results else {}), time.perf_counter() - started, peak / 2**30


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30, help="the longest range")
    parser.add_argument("--rows-per-day", type=int, default=1_000_000)
    parser.add_argument("--ranges", default="10,20,30", help="range lengths to build, in days")
    parser.add_argument("--cards", type=int, help="card population (default: a quarter of --rows-per-day)")
    parser.add_argument("--state", type=Path, help="keep the prepared lake here")
    parser.add_argument("--reuse", action="store_true", help="reuse the prepared lake in --state")
    args = parser.parse_args()
    state = args.state or Path(tempfile.mkdtemp(prefix="bench-backfill-"))
    state.mkdir(parents=True, exist_ok=True)
    log = state / "bench.log"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
    env.update(PIPELINE_STATE_DIR=str(state), PIPELINE_MAX_OBJECT_MB="4096", PIPELINE_MAX_DECOMPRESSED_MB="8192",
               PYTHONPATH=str(ROOT))
    rows, cards = args.rows_per_day, args.cards or max(3000, args.rows_per_day // 4)
    total_days = args.days + LOOKBACK_DAYS
    first = END - timedelta(days=total_days - 1)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"silver: {total_days} days ({first} .. {END}) of {rows:,} rows, {cards:,} cards; lake {state}")
    if not args.reuse:
        _, wall, _ = job(env, log, "generate", "--date", END.isoformat(), "--days", str(total_days),
                         "--rows-per-day", str(rows), "--cards", str(cards))
        print(f"  generated in {wall:.0f} s", flush=True)
        started = time.perf_counter()
        for i in range(total_days):
            day = (first + timedelta(days=i)).isoformat()
            job(env, log, "ingest", "--date", day, "--run-id", f"bench-{day}")
            job(env, log, "validate", "--date", day, "--run-id", f"bench-{day}")
            print(f"  ingested and validated {day} ({time.perf_counter() - started:.0f} s)", flush=True)
    print(f"\n{'range':>6} {'rows':>11} {'wall s':>8} {'CPU s':>8} {'s/day':>7} {'s/M rows':>9} "
          f"{'peak GiB':>9}  vs {TARGET_GIB:g} GiB")
    for days in (int(d) for d in args.ranges.split(",")):
        start = (END - timedelta(days=days - 1)).isoformat()
        result, wall, peak = job(env, log, "features", "--start", start, "--date", END.isoformat(), "--force")
        cost = result.get("cost", {})
        peak = max(peak, cost.get("peak_rss_mb", 0) / 1024)
        built = result["rows"]
        print(f"{days:>6} {built:>11,} {wall:>8.1f} {cost.get('cpu_s', 0):>8.1f} {wall / days:>7.2f} "
              f"{wall / built * 1e6:>9.2f} {peak:>9.2f}  {'met' if peak <= TARGET_GIB else 'NOT met'} "
              f"({peak / TARGET_GIB:.2f}x)", flush=True)


if __name__ == "__main__":
    main()
