"""The decisions log: batched appends (not one commit a request), every recorded row once, a failed
write kept and written later (S3 answering 503 over real HTTP), and a SIGKILLed writer loses at most
what it had not written yet."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.decisions import DecisionLog, row

ROOT = Path(__file__).resolve().parents[3]


def decisions(n: int, first: int = 0) -> list[dict]:
    return [row({"transaction_id": f"tx_{i:06d}", "card_id": f"card_{i % 7}", "timestamp": "2026-03-02T02:04:48Z"},
                "test:1", ("3", 0.25, False, 1.5))
            for i in range(first, first + n)]


def test_rows_are_written_in_batches_and_each_once(lake):
    log = DecisionLog(lake, buffer_rows=100, flush_seconds=60)
    for d in decisions(1050):
        log.record(d)
    log.close()  # what was still buffered is written at shutdown
    table = tables.read(lake, layout.DECISIONS)
    assert len(table) == 1050 and table["transaction_id"].is_unique
    assert set(table["champion_version"]) == {"3"} and table["challenger_version"].isna().all()
    commits = [c for c in tables.history(lake, layout.DECISIONS) if c.get("operation") == "WRITE"]
    assert 1 <= len(commits) <= 11  # batches of at least the buffer, never one commit a request
    assert log.pending == 0 and log.written == 1050


def test_a_failed_write_is_kept_and_written_once_later(faulty_s3):
    lake, proxy = faulty_s3
    log = DecisionLog(lake, buffer_rows=10_000, flush_seconds=3600)
    for d in decisions(40):
        log.record(d)
    rule = proxy.fail("PUT,POST", r"/lake/decisions/", 503)
    assert log.flush() == 0 and log.failures == 1 and log.pending == 40
    proxy.rules.remove(rule)
    for d in decisions(10, first=40):
        log.record(d)
    assert log.flush() == 50 and log.pending == 0
    log.close()
    assert sorted(tables.read(lake, layout.DECISIONS)["transaction_id"]) == [f"tx_{i:06d}" for i in range(50)]


def test_a_killed_writer_loses_at_most_its_buffer(tmp_path):
    lake_uri = (tmp_path / "lake").as_uri()
    code = textwrap.dedent(f"""
        import sys, time
        sys.path.insert(0, {str(ROOT)!r}); sys.path.insert(0, {str(ROOT / 'tests')!r})
        from jobs.storage.lake import open_lake
        from jobs.storage.decisions import DecisionLog
        from jobs.storage.test_decisions import decisions
        log = DecisionLog(open_lake({lake_uri!r}), buffer_rows=100, flush_seconds=3600)
        for d in decisions(200):
            log.record(d)
        while log.written < 200:  # the full buffer is written by the log's thread
            time.sleep(0.05)
        for d in decisions(50, first=200):  # under the buffer, within the flush period: not yet written
            log.record(d)
        print("pending", log.pending, flush=True)
        time.sleep(600)
    """).replace("from jobs.storage.test_decisions", "from test_decisions")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "tests" / "jobs" / "storage")}
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, env=env)
    try:
        line = proc.stdout.readline()
        assert line.strip() == "pending 50", line
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    from jobs.storage.lake import open_lake

    held = tables.read(open_lake(lake_uri), layout.DECISIONS)
    assert len(held) == 200 and held["transaction_id"].is_unique  # the 50 never written: at most the buffer
