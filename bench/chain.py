"""The nightly chain at N transactions a day, run through Airflow, with its history in the lake.

Prepares a folder lake with ``--history-days`` days of ``--rows-per-day`` transactions in silver,
their gold features and a champion model (training is timed apart), then delivers one new day and
runs the nightly path for it through Airflow, one DAG after the other in the order their Assets
chain them (``airflow dags test``, which runs every task of the real DAG, sensor included, with
the same runner as the scheduler; the scheduler's own hand-over between DAGs is not included):

    ingest_transactions (wait_for_raw -> ingest -> validate) -> build_features -> score_transactions
    -> monitor_drift

It prints the wall time of each DAG and of each of its tasks (from Airflow's task instances),
the peak RSS of the whole process tree, the rows per second of the chain and its ratio to the
3-minute target.

    .venv/bin/python bench/chain.py --rows-per-day 1000000 --history-days 8

``--state DIR`` keeps the prepared lake, and a pristine copy beside it (``DIR.pristine``):
``--reuse`` restores it and re-runs only the nightly chain.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 180.0
NIGHTLY = ("ingest_transactions", "build_features", "score_transactions", "monitor_drift")


def run(cmd: str, env: dict, log: Path) -> tuple[float, float]:
    """Run a shell command (with scripts/env.sh sourced); wall seconds and peak RSS of its process tree."""
    import psutil

    t0 = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(["bash", "-c", f"source scripts/env.sh && {cmd}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        root, peak = psutil.Process(proc.pid), 0
        while proc.poll() is None:
            try:
                tree = [root, *root.children(recursive=True)]
                peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
            except psutil.Error:
                pass
            time.sleep(0.2)
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        tail = log.read_text(errors="replace")[-4000:]
        raise SystemExit(f"`{cmd}` failed (exit {proc.returncode}); log {log}:\n{tail}")
    return wall, peak / 2**30


def task_times(state: Path, dag_id: str) -> list[tuple[str, float]]:
    """(task_id, seconds) of the latest run of ``dag_id``, in start order."""
    with sqlite3.connect(state / "airflow" / "airflow.db") as conn:
        run_id = conn.execute("select run_id from dag_run where dag_id = ? order by id desc limit 1",
                              (dag_id,)).fetchone()[0]
        rows = conn.execute(
            "select task_id, julianday(end_date) - julianday(start_date), state from task_instance "
            "where dag_id = ? and run_id = ? and start_date is not null order by start_date", (dag_id, run_id))
        return [(f"{task} ({state})" if state != "success" else task, (days or 0) * 86400)
                for task, days, state in rows]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=1_000_000)
    parser.add_argument("--history-days", type=int, default=8)
    parser.add_argument("--date", default="2026-09-10", help="The new day the nightly chain processes.")
    parser.add_argument("--state", type=Path, help="Keep the prepared lake here (default: a temporary folder).")
    parser.add_argument("--reuse", action="store_true", help="Reuse the prepared lake in --state.")
    parser.add_argument("--cards", type=int, help="Card population (default: a quarter of --rows-per-day, so a card "
                        "makes about 4 transactions a day; the demo's 3,000 cards would make 333 at 1M rows).")
    parser.add_argument("--spark-driver-memory", default="4g")
    parser.add_argument("--negative-sample-rate", default="0.05", help="For the champion's training (timed apart).")
    parser.add_argument("--max-epochs", default="3", help="For the champion's training (timed apart).")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    prepared = args.state or work / "prepared"
    new_day = Date.fromisoformat(args.date)
    last_history = (new_day - timedelta(days=1)).isoformat()
    first_history = (new_day - timedelta(days=args.history_days)).isoformat()
    rows = args.rows_per_day
    cards = args.cards or max(3000, rows // 4)

    def env_for(state: Path) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
        env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PIPELINE_STATE_DIR=str(state),
                   PIPELINE_LAKE_URI="", PIPELINE_MAX_OBJECT_MB="4096", PIPELINE_MAX_DECOMPRESSED_MB="8192",
                   PIPELINE_SPARK_DRIVER_MEMORY=args.spark_driver_memory,
                   PIPELINE_NEGATIVE_SAMPLE_RATE=args.negative_sample_rate, PIPELINE_MAX_EPOCHS=args.max_epochs,
                   AIRFLOW__LOGGING__LOGGING_LEVEL="INFO")
        return env

    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"{rows:,} rows a day; history {first_history} .. {last_history} ({args.history_days} days); "
          f"new day {new_day}; {cards:,} cards")
    prep: list[tuple[str, float, float]] = []
    if not args.reuse:
        if prepared.exists():
            shutil.rmtree(prepared)
        prepared.mkdir(parents=True)
        env, log = env_for(prepared), work / "prepare.log"
        print(f"preparing the history in {prepared} (log: {log}) ...", flush=True)
        steps = [
            ("airflow db + DAGs", "airflow_init && airflow dags reserialize"),
            (f"generate {args.history_days} days", f"python -m jobs generate --date {last_history} "
             f"--days {args.history_days} --rows-per-day {rows} --cards {cards}"),
            (f"ingest_transactions, {args.history_days} objects",
             f"airflow dags test ingest_transactions {last_history}"),
            (f"build_features, {args.history_days} days", f"airflow dags test build_features {last_history} "
             f"-c '{{\"start_date\": \"{first_history}\"}}'"),
            (f"train_model (rate {args.negative_sample_rate}, {args.max_epochs} epochs)",
             f"airflow dags test train_model {last_history}"),
        ]
        for name, cmd in steps:
            wall, rss = run(cmd, env, log)
            prep.append((name, wall, rss))
            print(f"  {name:<48} {wall:7.1f} s  {rss:5.2f} GiB", flush=True)
        # The new day is generated now and delivered just before the chain starts (not timed).
        run(f"python -m jobs generate --date {new_day} --days 1 --rows-per-day {rows} --cards {cards} && "
            f"mv $PIPELINE_STATE_DIR/lake/raw/transactions/date={new_day} $PIPELINE_STATE_DIR/next-delivery",
            env, log)

    # The Assets' URIs name the state folder, so the chain runs in the prepared folder itself; a
    # pristine copy beside it lets --reuse start again from the same history.
    pristine = prepared.with_name(prepared.name + ".pristine")
    if args.reuse:
        shutil.rmtree(prepared, ignore_errors=True)
        shutil.copytree(pristine, prepared, symlinks=True)
    else:
        shutil.rmtree(pristine, ignore_errors=True)
        shutil.copytree(prepared, pristine, symlinks=True)
    state, log = prepared, work / "nightly.log"
    env = env_for(state)
    (state / "next-delivery").rename(state / "lake" / "raw" / "transactions" / f"date={new_day}")
    print(f"\nnightly chain for {new_day} (log: {log})")
    print(f"  {'DAG / task':<48} {'wall':>9}  {'peak RSS':>9}")
    total, peak = 0.0, 0.0
    for dag_id in NIGHTLY:
        wall, rss = run(f"airflow dags test {dag_id} {new_day}", env, log)
        total, peak = total + wall, max(peak, rss)
        print(f"  {dag_id:<48} {wall:7.1f} s  {rss:5.2f} GiB", flush=True)
        for task, seconds in task_times(state, dag_id):
            print(f"    {task:<46} {seconds:7.1f} s")
    print(f"  {'chain':<48} {total:7.1f} s  {peak:5.2f} GiB")
    print(f"\n{rows / total:,.0f} rows/s end to end; {total:.0f} s is {total / TARGET_S:.2f}x the 3-minute target "
          f"({'met' if total <= TARGET_S else 'NOT met'})")
    if prep:
        print(f"training, apart: {prep[-1][1]:.1f} s ({prep[-1][0]})")


if __name__ == "__main__":
    main()
