"""Features on a real Spark standalone cluster (a master and a worker started here, on loopback).

The same ``python -m jobs features`` as on ``local[*]``, with ``PIPELINE_SPARK_MASTER=spark://...``
and ``PIPELINE_SPARK_STAGING_DIR`` (the folder driver and executors share). The result must equal
the independent reference, and the cluster's master must list the finished application.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pandas as pd
import pytest
from test_features import reference_features

from jobs.devkit.generate import generate_day
from jobs.quality.contract import to_typed
from jobs.shared import layout
from jobs.steps.validate import silver_rows
from jobs.storage import tables

DAYS = ["2026-04-01", "2026-04-02"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spark_class(*args: str, log: Path, env: dict) -> subprocess.Popen:
    import pyspark

    spark_home = Path(pyspark.__file__).parent
    return subprocess.Popen([str(spark_home / "bin" / "spark-class"), *args],
                            env={**env, "SPARK_HOME": str(spark_home)}, stdout=open(log, "w"),
                            stderr=subprocess.STDOUT, start_new_session=True)


@pytest.fixture
def spark_cluster(tmp_path):
    env = {**os.environ, "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    port, ui = free_port(), free_port()
    master = spark_class("org.apache.spark.deploy.master.Master", "--host", "127.0.0.1", "--port", str(port),
                         "--webui-port", str(ui), log=tmp_path / "master.log", env=env)
    worker = spark_class("org.apache.spark.deploy.worker.Worker", "--cores", "2", "--memory", "1g",
                         "--webui-port", str(free_port()), "--work-dir", str(tmp_path / "work"),
                         f"spark://127.0.0.1:{port}", log=tmp_path / "worker.log", env=env)
    status = {}
    try:
        for _ in range(120):
            time.sleep(0.5)
            try:
                status = json.load(urllib.request.urlopen(f"http://127.0.0.1:{ui}/json/", timeout=2))
            except OSError:
                continue
            if status.get("aliveworkers", 0) >= 1:
                break
        else:
            pytest.fail(f"Spark cluster did not start: {status}\n{(tmp_path / 'worker.log').read_text()[-3000:]}")
        yield f"spark://127.0.0.1:{port}", f"http://127.0.0.1:{ui}/json/"
    finally:
        for proc in (worker, master):
            proc.terminate()
            proc.wait(timeout=30)


def test_features_job_runs_on_a_standalone_cluster(state_dir, spark_cluster, tmp_path):
    from jobs.storage.lake import get_lake

    master_url, status_url = spark_cluster
    lake = get_lake()
    silver = pd.concat([to_typed(generate_day(d, 150, n_cards=40)) for d in DAYS], ignore_index=True)
    tables.merge_new_rows(lake, layout.SILVER_TRANSACTIONS, silver_rows(silver.assign(
        _source_key="test", _source_sha256="test", _source_row=range(len(silver)))), keys=["transaction_id", "date"])
    env = {**os.environ, "PIPELINE_SPARK_MASTER": master_url, "PIPELINE_SPARK_STAGING_DIR": str(tmp_path / "shared"),
           "SPARK_LOCAL_IP": "127.0.0.1", "PYSPARK_PYTHON": sys.executable}
    out = subprocess.run([sys.executable, "-m", "jobs", "features", "--start", DAYS[0], "--date", DAYS[-1]],
                         env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    assert f"with Spark {master_url}" in out.stdout + out.stderr

    status = json.load(urllib.request.urlopen(status_url, timeout=5))
    apps = [a["name"] for a in status.get("completedapps", []) + status.get("activeapps", [])]
    assert "fraud-features" in apps, status

    gold = tables.read(lake, layout.GOLD_FEATURES, dates=DAYS)
    gold = gold.sort_values("transaction_id").reset_index(drop=True)
    expected = reference_features(silver.assign(timestamp=silver["timestamp"].astype("datetime64[us]")))
    assert len(gold) == len(silver) == len(expected)
    for column in expected.columns.drop("transaction_id"):
        assert gold[column].to_numpy() == pytest.approx(expected[column].to_numpy(), rel=1e-6, abs=1e-9), column
    assert not any((tmp_path / "shared").iterdir()), "staging folders are removed after publishing"
