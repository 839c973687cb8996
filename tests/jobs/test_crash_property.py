"""SIGKILL at random moments: validate, features and score are killed with their whole process group
(the Spark JVM, the contract child), retried with the same run id as Airflow would, then run again
with a new one. Whatever the moment, every delivered row is in silver or quarantine exactly once,
every object once in the ledger with delivered = silver + quarantined, and gold and predictions
hold each transaction once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from jobs.devkit.generate import generate_day, inject_bad_rows
from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.lake import get_lake
from jobs.storage.ledger import read_ledger

ROOT = Path(__file__).resolve().parents[2]
DAYS = ["2026-04-01", "2026-04-02", "2026-04-03"]
TRIALS = 2  # per step; the moments are drawn from a seeded generator, so a failure replays
pytestmark = pytest.mark.e2e


def run(env, *args, kill_after: float | None = None) -> int:
    """One job as a process group; with ``kill_after``, SIGKILL the whole group after that many seconds."""
    proc = subprocess.Popen([sys.executable, "-m", "jobs", *args], cwd=ROOT, env=env, start_new_session=True,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if kill_after is None:
        _, err = proc.communicate(timeout=600)
        assert proc.returncode == 0, err[-3000:]
        return 0
    try:
        proc.wait(timeout=kill_after)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=60)
    proc.stderr.close()
    return proc.returncode


def timed(env, *args) -> float:
    started = time.perf_counter()
    run(env, *args)
    return time.perf_counter() - started


def test_sigkill_at_random_moments_then_retry_and_rerun_loses_and_doubles_nothing(state_dir):
    rng = random.Random(20261201)
    env = {**os.environ, "PIPELINE_STATE_DIR": str(state_dir), "PIPELINE_MAX_EPOCHS": "2",
           "PIPELINE_MIN_PR_AUC": "0", "PIPELINE_MIN_ROC_AUC": "0", "PIPELINE_MIN_THRESHOLD_PRECISION": "0",
           "PIPELINE_MIN_THRESHOLD_RECALL": "0", "PIPELINE_HOLDOUT_DAYS": "1", "PIPELINE_BOOTSTRAP_RESAMPLES": "20"}
    env.pop("PIPELINE_LAKE_URI", None)
    lake = get_lake()
    delivered: dict[str, int] = {}

    def deliver(day: str, name: str, rows: int) -> None:
        frame = inject_bad_rows(generate_day(day, rows, delivery=name), 3)
        lake.write_bytes(layout.raw_object(day, name), frame.to_csv(index=False).encode())
        delivered[layout.raw_object(day, name)] = rows

    for day in DAYS:
        deliver(day, "first.csv", 300)
    run(env, "ingest", "--date", DAYS[-1], "--run-id", "base")
    validate_s = timed(env, "validate", "--date", DAYS[-1], "--run-id", "base")
    for n in range(TRIALS):  # validate: a new delivery each time, killed while it checks or commits
        deliver(DAYS[n % len(DAYS)], f"again-{n}.csv", 300)
        run(env, "ingest", "--date", DAYS[-1], "--run-id", f"v{n}")
        run(env, "validate", "--date", DAYS[-1], "--run-id", f"v{n}", kill_after=rng.uniform(0.5, validate_s))
        run(env, "validate", "--date", DAYS[-1], "--run-id", f"v{n}")  # Airflow's retry
        run(env, "ingest", "--date", DAYS[-1], "--run-id", f"v{n}-next")  # the next run: nothing new
        run(env, "validate", "--date", DAYS[-1], "--run-id", f"v{n}-next")

    features_s = timed(env, "features", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", "fbase")
    for n in range(TRIALS):  # features: a forced rebuild killed mid-Spark or mid-commit
        args = ("features", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", f"f{n}", "--force")
        run(env, *args, kill_after=rng.uniform(1.0, features_s))
        run(env, *args)
        run(env, "features", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", f"f{n}-next")

    run(env, "train", "--date", DAYS[-1], "--run-id", "t")
    version = _latest_version(state_dir)
    run(env, "evaluate", "--date", DAYS[-1], "--model-version", version)
    run(env, "promote", "--model-version", version)
    score_s = timed(env, "score", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", "sbase")
    for n in range(TRIALS):
        args = ("score", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", f"s{n}", "--force")
        run(env, *args, kill_after=rng.uniform(0.5, score_s))
        run(env, *args)
        run(env, "score", "--start", DAYS[0], "--date", DAYS[-1], "--run-id", f"s{n}-next")

    silver = tables.read(lake, layout.SILVER_TRANSACTIONS)
    quarantine = tables.read(lake, layout.QUARANTINE_ROWS)
    ledger = read_ledger(lake)
    assert silver["transaction_id"].is_unique
    assert sorted(e["key"] for e in ledger) == sorted(delivered)  # each object once
    for entry in ledger:
        rows_in_silver = int((silver["_source_key"] == entry["key"]).sum())
        rows_in_quarantine = int((quarantine["_source_key"] == entry["key"]).sum())
        assert entry["rows_delivered"] == delivered[entry["key"]] == rows_in_silver + rows_in_quarantine, entry
        assert (entry["rows_silver"], entry["rows_quarantined"]) == (rows_in_silver, rows_in_quarantine), entry
    both = set(zip(quarantine["_source_key"], quarantine["_source_row"], strict=True)) & \
        set(zip(silver["_source_key"], silver["_source_row"], strict=True))
    assert not both  # never in both
    gold = tables.read(lake, layout.GOLD_FEATURES)
    predictions = tables.read(lake, layout.PREDICTIONS)
    assert gold["transaction_id"].is_unique and set(gold["transaction_id"]) == set(silver["transaction_id"])
    assert predictions["transaction_id"].is_unique and set(predictions["transaction_id"]) == set(gold["transaction_id"])


def _latest_version(state_dir: Path) -> str:
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=(uri := f"sqlite:///{state_dir / 'mlflow' / 'mlflow.db'}"), registry_uri=uri)
    return str(max(int(mv.version) for mv in client.search_model_versions("name='fraud-detector'")))
