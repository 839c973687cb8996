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

With ``--scheduler`` the chain runs under ``airflow standalone`` instead: the scheduler's nightly
run of ingest_transactions for yesterday (the default new day) starts it, each DAG is started by
the asset event of the one before, and the times come from Airflow's dag runs, hand-overs included.

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
from datetime import UTC, datetime, timedelta
from datetime import date as Date
from pathlib import Path

from procs import wait_for_peak_rss  # bench/procs.py, beside this script

ROOT = Path(__file__).resolve().parents[1]
TARGET_S = 180.0
NIGHTLY = ("ingest_transactions", "build_features", "score_transactions", "monitor_drift")


def run(cmd: str, env: dict, log: Path) -> tuple[float, float]:
    """Run a shell command (with scripts/env.sh sourced); wall seconds and peak RSS of its process tree."""
    t0 = time.perf_counter()
    with open(log, "a") as out:
        proc = subprocess.Popen(["bash", "-c", f"source scripts/env.sh && {cmd}"], cwd=ROOT, env=env,
                                stdout=out, stderr=subprocess.STDOUT)
        peak = wait_for_peak_rss(proc, every=0.2)
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


def one_dag_after_the_other(state: Path, env: dict, log: Path, new_day: Date, rows: int) -> None:
    """The chain with ``airflow dags test``: each DAG's tasks, timed from Airflow's task instances."""
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


def under_the_scheduler(state: Path, env: dict, log: Path, new_day: Date, rows: int) -> None:
    """The chain as production runs it: the scheduler's nightly run of ingest_transactions, then each
    DAG started by the asset event of the one before. Times come from Airflow's dag_run records."""
    sys.path.insert(0, str(ROOT / "tests" / "e2e"))
    from standalone import airflow_standalone, poll_db, wait_for_api

    db = state / "airflow" / "airflow.db"
    run("airflow dags pause --treat-dag-id-as-regex -y '.*'", env, log)
    with sqlite3.connect(db) as conn:  # asset events of the preparation's runs must not start anything
        conn.execute("delete from asset_dag_run_queue")
    day = new_day.isoformat()

    def runs(conn):
        rows = conn.execute(
            "select dag_id, run_type, state, (julianday(start_date) - 2440587.5) * 86400, "
            "(julianday(end_date) - 2440587.5) * 86400 from dag_run where dag_id in (?, ?, ?, ?) "
            "and start_date is not null order by start_date", NIGHTLY).fetchall()
        return [r for r in rows if r[3] >= since]  # not the preparation's runs

    def finished(dag_id):
        return lambda rs: any(r[0] == dag_id and r[2] in ("success", "failed") for r in rs or [])

    print(f"\nnightly chain for {day} under the scheduler (log: {log}, Airflow's: {log.with_suffix('.airflow.log')})")
    with airflow_standalone(env, log.with_suffix(".airflow.log")) as proc:
        wait_for_api(proc)
        since = time.time()
        # The nightly run for yesterday (partition key = that day) starts as soon as ingestion is
        # unpaused; features, scoring and the drift check follow, each started by the partition
        # its producer published.
        run("airflow dags unpause --treat-dag-id-as-regex -y '^(ingest_transactions|build_features|"
            "score_transactions|monitor_drift)$'", env, log)
        observed = poll_db(db, proc, runs, finished("monitor_drift"), timeout=1800)
    observed = [r for r in observed or [] if r[0] in NIGHTLY]
    firsts = {}
    for dag_id, run_type, state_, start, end in observed:
        firsts.setdefault(dag_id, (run_type, state_, start, end))
    if set(firsts) != set(NIGHTLY) or any(v[1] != "success" for v in firsts.values()):
        raise SystemExit(f"the chain did not complete: {observed}; see {log.with_suffix('.airflow.log')}")
    t0 = firsts[NIGHTLY[0]][2]
    print(f"  {'DAG (how it started)':<48} {'start':>9} {'end':>9} {'wall':>9}")
    for dag_id in NIGHTLY:
        run_type, _, start, end = firsts[dag_id]
        print(f"  {dag_id + ' (' + run_type + ')':<48} {start - t0:7.1f} s {end - t0:7.1f} s {end - start:7.1f} s")
    total = firsts[NIGHTLY[-1]][3] - t0
    busy = sum(v[3] - v[2] for v in firsts.values())
    print(f"  {'chain':<48} {'':>9} {total:7.1f} s  (runs {busy:.1f} s, hand-overs {total - busy:.1f} s)")
    print(f"\n{rows / total:,.0f} rows/s end to end; {total:.0f} s is {total / TARGET_S:.2f}x the 3-minute target "
          f"({'met' if total <= TARGET_S else 'NOT met'})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--rows-per-day", type=int, default=1_000_000)
    parser.add_argument("--history-days", type=int, default=8)
    parser.add_argument("--date", help="The new day the nightly chain processes (default: yesterday, UTC, so "
                        "that under --scheduler the nightly run the scheduler creates is the one measured).")
    parser.add_argument("--scheduler", action="store_true",
                        help="Run the chain under `airflow standalone` (scheduler, executor, asset triggers) "
                             "instead of `airflow dags test` one DAG after the other.")
    parser.add_argument("--state", type=Path, help="Keep the prepared lake here (default: a temporary folder).")
    parser.add_argument("--reuse", action="store_true", help="Reuse the prepared lake in --state.")
    parser.add_argument("--cards", type=int, help="Card population (default: a quarter of --rows-per-day, so a card "
                        "makes about 4 transactions a day; the demo's 3,000 cards would make 333 at 1M rows).")
    parser.add_argument("--prepare-spark-driver-memory", default="4g", help="For the history's 8-day feature build.")
    parser.add_argument("--spark-driver-memory", default="1g", help="For the nightly chain (the project default).")
    parser.add_argument("--negative-sample-rate", default="0.05", help="For the champion's training (timed apart).")
    parser.add_argument("--max-epochs", default="3", help="For the champion's training (timed apart).")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="bench-chain-"))
    prepared = args.state or work / "prepared"
    new_day = Date.fromisoformat(args.date) if args.date else datetime.now(UTC).date() - timedelta(days=1)
    last_history = (new_day - timedelta(days=1)).isoformat()
    first_history = (new_day - timedelta(days=args.history_days)).isoformat()
    rows = args.rows_per_day
    cards = args.cards or max(3000, rows // 4)

    def env_for(state: Path, spark_memory: str) -> dict:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
        env.update(PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PIPELINE_STATE_DIR=str(state),
                   PIPELINE_LAKE_URI="", PIPELINE_MAX_OBJECT_MB="4096", PIPELINE_MAX_DECOMPRESSED_MB="8192",
                   PIPELINE_SPARK_DRIVER_MEMORY=spark_memory,
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
        env, log = env_for(prepared, args.prepare_spark_driver_memory), work / "prepare.log"
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
    env = env_for(state, args.spark_driver_memory)
    (state / "next-delivery").rename(state / "lake" / "raw" / "transactions" / f"date={new_day}")
    if args.scheduler:
        under_the_scheduler(state, env, log, new_day, rows)
    else:
        one_dag_after_the_other(state, env, log, new_day, rows)
    if prep:
        print(f"training, apart: {prep[-1][1]:.1f} s ({prep[-1][0]})")
    job_costs(state, env, log, new_day)


def job_costs(state: Path, env: dict, log: Path, new_day: Date) -> None:
    """What each job of the new day recorded it cost (its own meter: wall, CPU, peak of its process tree,
    rows), as the run summary adds it up, and the cloud estimate at the configured rates."""
    import json

    run(f"python -m jobs summary --date {new_day} > /dev/null", env, log)
    cost = json.loads((state / "run-summary.json").read_text())["cost"]
    print(f"\nwhat the jobs of {new_day} recorded (python -m jobs summary; docs/performance.md, What a run costs)")
    print(f"  {'step':<12} {'jobs':>4} {'wall s':>8} {'CPU s':>8} {'CPU/wall':>8} {'peak GiB':>8} {'rows':>11} "
          f"{'CPU s / M rows':>14} {'saved CPU s':>11}")
    for step, f in sorted(cost["steps"].items()):
        per_m = f"{f['cpu_s_per_million_rows']:.1f}" if f["cpu_s_per_million_rows"] is not None else "-"
        busy = f["cpu_s"] / max(f["wall_s"], 1e-9)
        print(f"  {step:<12} {f['jobs']:>4} {f['wall_s']:8.1f} {f['cpu_s']:8.1f} {busy:8.2f} "
              f"{f['peak_rss_mb'] / 1024:8.2f} {f['rows']:>11,} {per_m:>14} {f['saved_cpu_s']:11.1f}")
    t, r = cost["total"], cost["rates"]
    print(f"  all: {t['cpu_s']:.0f} CPU s, peak {t['peak_rss_mb'] / 1024:.2f} GiB: ${t['estimate_usd']:.4f} at "
          f"${r['usd_per_vcpu_hour']}/vCPU-h and ${r['usd_per_gib_hour']}/GiB-h")


if __name__ == "__main__":
    main()
