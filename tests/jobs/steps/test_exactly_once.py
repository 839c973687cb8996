"""Exactly once under crashes and races, on both lake schemes.

Crashes: the job is killed (``os._exit``, as SIGKILL would: no cleanup runs) right after its
N-th durable write (``PIPELINE_FAULT_CRASH_AFTER_WRITES``, see ``jobs/devkit/faults.py``), for every N
until it no longer crashes; each crashed run is retried the way Airflow retries a task (same
run id), and silver, quarantine and the ledger must equal those of a clean run, row by row.

Races: two validate processes for two deliveries of the same day start together; every row
must land once.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import uuid

import pandas as pd
import pytest

from jobs.devkit.faults import CRASH_ENV, CRASH_EXIT_CODE
from jobs.devkit.generate import generate_day, inject_bad_rows
from jobs.settings import get_settings
from jobs.shared import layout
from jobs.steps.ingest import ingest
from jobs.steps.validate import validate_batch
from jobs.storage import tables
from jobs.storage.lake import open_lake
from jobs.storage.ledger import read_ledger

DAY = "2026-03-02"
EARLIER = "2026-03-01"
RUN = "scheduled__2026-03-02"


def deliver(lake) -> None:
    """A realistic mixed batch: a clean day, a day with bad and repeated rows, a BOM'd JSON-lines
    file, an unusable file."""
    first = generate_day(EARLIER, 40)
    lake.write_bytes(layout.raw_object(EARLIER, "a.csv"), first.to_csv(index=False).encode())
    second = inject_bad_rows(generate_day(DAY, 40, delivery="b"), 1)
    second = pd.concat([second, first.iloc[:3]], ignore_index=True)  # 3 ids already delivered in a.csv
    lake.write_bytes(layout.raw_object(DAY, "b.csv"), second.to_csv(index=False).encode())
    jsonl = generate_day(DAY, 15, delivery="d").to_json(orient="records", lines=True).encode()
    lake.write_bytes(layout.raw_object(DAY, "d.jsonl"), b"\xef\xbb\xbf" + jsonl)
    lake.write_bytes(layout.raw_object(DAY, "c.csv"), b"transaction_id,amount\n\xff\xfe\x00")


def state(lake) -> dict:
    """What must be identical after a crash + retry and after a clean run (ids, not only counts)."""
    silver = tables.read(lake, layout.SILVER_TRANSACTIONS)
    quarantine = tables.read(lake, layout.QUARANTINE_ROWS)
    silver_rows = sorted(zip(silver["transaction_id"], silver["_source_key"], silver["_source_row"], strict=True)) \
        if not silver.empty else []
    quarantine_rows = sorted(zip(quarantine["_source_key"], quarantine["_source_row"], quarantine["_reason"],
                                 strict=True)) if not quarantine.empty else []
    ledger = sorted((e["key"], e["sha256"], e["status"], e["rows_delivered"], e["rows_silver"],
                     e["rows_quarantined"], json.dumps(e["broken_rules"], sort_keys=True), e["run_id"])
                    for e in read_ledger(lake))
    return {"silver": silver_rows, "quarantine": quarantine_rows, "ledger": ledger,
            "rejected_files": sorted(lake.list(layout.QUARANTINE_FILES))}


def validate(lake) -> dict:
    return validate_batch(lake, RUN, get_settings().expectations_dir, 0.05, fail_on_rejection=False)


@pytest.fixture(params=["file", "s3"])
def lakes(request, state_dir, tmp_path, monkeypatch):
    """``new()`` gives a fresh, empty lake of the scheme; ``copy(src)`` a fresh lake holding src's objects."""
    if request.param == "s3":
        import boto3

        bucket = request.getfixturevalue("s3_env")
        s3 = boto3.client("s3")

        def new():
            return open_lake(f"s3://{bucket}/lake-{uuid.uuid4().hex[:8]}")

        def copy(src):
            dst = new()
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=src.prefix + "/"):
                for o in page.get("Contents", []):
                    s3.copy_object(Bucket=bucket, Key=dst.prefix + o["Key"][len(src.prefix):],
                                   CopySource={"Bucket": bucket, "Key": o["Key"]})
            return dst
    else:
        def new():
            return open_lake((tmp_path / f"lake-{uuid.uuid4().hex[:8]}").as_uri())

        def copy(src):
            dst = new()
            shutil.copytree(src.root, dst.root)
            return dst
    return new, copy


def crash_after(lake, n: int, *args: str) -> int:
    # Small batches: the crashed run checks each object in several batches, the retry in one (the
    # default size). The write points are the commits, after the contract: on a folder lake 18 for
    # this delivery, with either size.
    env = {**os.environ, "PIPELINE_LAKE_URI": lake.uri, CRASH_ENV: str(n), "PIPELINE_BATCH_ROWS": "16"}
    out = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode in (0, CRASH_EXIT_CODE), out.stderr[-3000:]
    if out.returncode == CRASH_EXIT_CODE:
        assert f"FAULT: crashing right after write {n}" in out.stderr
    return out.returncode


def test_a_crash_at_any_write_point_then_a_retry_equals_a_clean_run(lakes):
    new, copy = lakes
    raw = new()
    deliver(raw)
    staged = copy(raw)
    ingest(staged, DAY, RUN)
    clean = copy(staged)
    result = validate(clean)
    expected = state(clean)
    # The batch is what the test means it to be: every kind of outcome is in it.
    assert {e[2] for e in expected["ledger"]} == {"ingested", "rejected_file"}
    assert any(r[2] == "transaction id already in silver (repeated delivery)" for r in expected["quarantine"])
    assert len(expected["silver"]) == 40 + 40 - 1 + 15 and result["rows_delivered"] == 40 + 43 + 15 + 1
    crashed = {"ingest": 0, "validate": 0}
    for step, template in (("ingest", raw), ("validate", staged)):
        for n in range(1, 60):
            lake = copy(template)
            args = [step, "--date", DAY, "--run-id", RUN] + (["--no-fail-on-rejection"] if step == "validate" else [])
            if crash_after(lake, n, *args) == 0:
                break  # past the last write: this run did not crash
            crashed[step] += 1
            if step == "ingest":
                ingest(lake, DAY, RUN)  # Airflow retries the crashed task...
            validate(lake)  # ...and the run goes on
            assert state(lake) == expected, f"crash after write {n} of {step}"
            assert validate(lake)["rows_silver"] == len(expected["silver"])  # a further retry changes nothing
            assert state(lake) == expected
        else:
            pytest.fail(f"{step} still crashing after 59 writes")
    assert crashed["ingest"] >= 4 and crashed["validate"] >= 8, crashed


def test_a_contract_process_killed_midway_commits_nothing_and_the_retry_equals_a_clean_run(lakes, tmp_path):
    """validate runs the contract in a child process and commits in its own. SIGKILL that child
    in the middle of its batches (what the out-of-memory killer does): the job fails as retryable
    (exit 1) with a message saying so, nothing reached the lake, and the retry is a clean run."""
    import signal
    import time

    import psutil

    new, copy = lakes
    staged = new()
    deliver(staged)
    ingest(staged, DAY, RUN)
    clean = copy(staged)
    validate(clean)
    before = state(staged)
    env = {**os.environ, "PIPELINE_LAKE_URI": staged.uri, "PIPELINE_BATCH_ROWS": "10"}

    def checking(log):
        """Start validate; return it and its contract process once that is in its batches."""
        job = subprocess.Popen([sys.executable, "-m", "jobs", "validate", "--date", DAY, "--run-id", RUN,
                                "--no-fail-on-rejection"], env=env, stdout=subprocess.DEVNULL, stderr=log.open("w"))
        deadline = time.monotonic() + 120
        while "rows checked" not in log.read_text() and job.poll() is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.poll() is None, log.read_text()[-3000:]
        children = psutil.Process(job.pid).children()
        assert len(children) == 1, (children, log.read_text()[-3000:])
        return job, children[0]

    job, contract = checking(tmp_path / "kill-contract.log")
    contract.send_signal(signal.SIGKILL)
    assert job.wait(timeout=120) == 1, (tmp_path / "kill-contract.log").read_text()[-3000:]
    assert "the contract check process died before it finished" in (tmp_path / "kill-contract.log").read_text()
    assert state(staged) == before  # no row, no ledger entry, no quarantine
    job, contract = checking(tmp_path / "kill-job.log")  # the task itself killed: no orphan works on
    job.send_signal(signal.SIGKILL)
    job.wait(timeout=60)
    psutil.wait_procs([contract], timeout=30)
    assert not contract.is_running() or contract.status() == psutil.STATUS_ZOMBIE
    assert state(staged) == before  # no row, no ledger entry, no quarantine
    validate(staged)  # Airflow's retry
    assert state(staged) == state(clean)


def test_two_validate_runs_at_once_lose_and_duplicate_nothing(state_dir, tmp_path):
    """Two deliveries of the same day, two runs, both validating at the same moment (the case
    `make run` beside `make up` on one state creates). Repeated a few times: races are chancy.

    On a folder lake the race is real (two processes). On S3 it is forced (next test): the local
    S3 server does not make conditional PUTs atomic under parallel requests, as S3 does.
    """
    def new():
        return open_lake((tmp_path / f"lake-{uuid.uuid4().hex[:8]}").as_uri())

    for attempt in range(3):
        lake = new()
        for run, name in (("run-a", "one"), ("run-b", "two")):  # one delivery each, then both validate
            frame = generate_day(DAY, 400, delivery=f"{name}-{attempt}")
            lake.write_bytes(layout.raw_object(DAY, f"{name}.csv"), frame.to_csv(index=False).encode())
            assert ingest(lake, DAY, run)["objects"] == 1
        env = {**os.environ, "PIPELINE_LAKE_URI": lake.uri}
        procs = [subprocess.Popen([sys.executable, "-m", "jobs", "validate", "--date", DAY, "--run-id", run],
                                  env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for run in ("run-a", "run-b")]
        outs = [p.communicate(timeout=300) for p in procs]
        assert [p.returncode for p in procs] == [0, 0], [o[1][-2000:] for o in outs]
        silver = tables.read(lake, layout.SILVER_TRANSACTIONS)
        assert len(silver) == 800 and silver["transaction_id"].is_unique, attempt
        ledger = read_ledger(lake)
        assert sorted(e["rows_silver"] for e in ledger) == [400, 400]
        assert tables.read(lake, layout.QUARANTINE_ROWS).empty



def test_a_merge_that_lost_a_commit_race_is_redone_not_lost(lakes, monkeypatch):
    """Forced interleaving: run A loaded silver, run B committed, then A commits. A's commit must be
    refused (optimistic concurrency) and redone on B's version: all rows of both, each once."""
    from jobs.quality.contract import to_typed
    from jobs.steps.validate import silver_rows
    from jobs.storage import tables as tables_module

    new, _ = lakes
    lake = new()

    def rows(name):
        frame = to_typed(generate_day(DAY, 200, delivery=name))
        return silver_rows(frame.assign(_source_key=name, _source_sha256=name, _source_row=range(len(frame))))

    tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, rows("first"), keys=["transaction_id", "date"])
    stale = tables.open_table(lake, layout.SILVER_TRANSACTIONS)  # what run A read
    tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, rows("b"), keys=["transaction_id", "date"],
                          app_id="b")  # run B commits in between
    real_ensure, calls = tables_module._ensure, []

    def a_stale_table_first(*args):
        calls.append(1)
        return stale if len(calls) == 1 else real_ensure(*args)

    monkeypatch.setattr(tables_module, "_ensure", a_stale_table_first)
    both = rows("b").to_pandas().iloc[:50]  # A's delivery repeats 50 of B's rows, and brings 200 new ones
    a = pd.concat([both, rows("a").to_pandas()], ignore_index=True)
    import pyarrow as pa

    result = tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, pa.Table.from_pandas(a, preserve_index=False),
                                   keys=["transaction_id", "date"], app_id="a")
    assert len(calls) == 2, "the stale commit must have been refused and redone"
    assert result["num_target_rows_inserted"] == 200
    silver = tables.read(lake, layout.SILVER_TRANSACTIONS)
    assert len(silver) == 600 and silver["transaction_id"].is_unique
