"""The job CLI on an S3 lake (local S3 server over HTTP): ingest, validate and Spark features."""

import os
import subprocess
import sys

from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.lake import get_lake


def test_cli_chain_on_an_s3_lake(s3_env, state_dir, monkeypatch):
    monkeypatch.setenv("PIPELINE_LAKE_URI", f"s3://{s3_env}/lake")
    env = dict(os.environ)

    def job(*args):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-3000:]

    job("generate", "--date", "2026-08-03", "--days", "3", "--rows-per-day", "200")
    job("ingest", "--date", "2026-08-03", "--run-id", "r1")
    job("validate", "--date", "2026-08-03", "--run-id", "r1")
    job("features", "--start", "2026-08-02", "--date", "2026-08-03")
    from jobs.settings import get_settings

    get_settings.cache_clear()
    lake = get_lake()
    assert lake.uri == f"s3://{s3_env}/lake"
    assert tables.partitions(lake, layout.SILVER_TRANSACTIONS) == ["2026-08-01", "2026-08-02", "2026-08-03"]
    assert tables.partitions(lake, layout.GOLD_FEATURES) == ["2026-08-02", "2026-08-03"]
    assert lake.exists("silver/transactions/_delta_log/00000000000000000000.json")  # a Delta table on S3
    gold = tables.read(lake, layout.GOLD_FEATURES, dates=["2026-08-03"])
    assert len(gold) == 200 and gold["card_txn_count_7d"].max() >= 1  # history from earlier days was read
