"""S3 lake end to end through Airflow: a file uploaded under raw/ is sensed and lands in silver.

The lake is a bucket on a local S3-compatible server (moto's server mode) reached over HTTP; the
sensor is the amazon provider's S3KeySensor (through an Airflow connection, deferrable mode), the
jobs use boto3, nothing is patched.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest

from jobs.devkit.generate import generate_day, inject_bad_rows
from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.lake import S3Lake
from jobs.storage.ledger import read_ledger

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-07-01"

pytestmark = pytest.mark.e2e


def test_upload_under_raw_is_sensed_and_lands_in_silver(s3_endpoint, tmp_path, monkeypatch):
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    aws = {"AWS_ENDPOINT_URL": s3_endpoint, "AWS_ACCESS_KEY_ID": "testing",
           "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1"}
    s3 = boto3.client("s3", endpoint_url=s3_endpoint, aws_access_key_id="testing",
                      aws_secret_access_key="testing", region_name="us-east-1")
    s3.create_bucket(Bucket=bucket)
    delivered = inject_bad_rows(generate_day(DATE, 500), 5)
    s3.put_object(Bucket=bucket, Key=f"lake/raw/transactions/date={DATE}/transactions.csv",
                  Body=delivered.to_csv(index=False).encode())

    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_", "AWS_"))}
    env.update(aws)
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
        PIPELINE_STATE_DIR=str(tmp_path / "state"),
        PIPELINE_LAKE_URI=f"s3://{bucket}/lake",
        PIPELINE_SENSOR_DEFERRABLE="true",
        AIRFLOW_CONN_LAKE_S3=f"aws://testing:testing@/?endpoint_url={quote(s3_endpoint, safe='')}"
                             "&region_name=us-east-1",
    )
    script = f"source scripts/env.sh && airflow db migrate >/dev/null && airflow dags test ingest_transactions {DATE}"
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    log = out.stdout + out.stderr
    assert out.returncode == 0, log[-5000:]
    assert f"waiting for s3://{bucket}/lake/raw/transactions/date={DATE}/*" in log

    for name, value in aws.items():
        monkeypatch.setenv(name, value)
    lake = S3Lake(f"s3://{bucket}/lake")
    silver = tables.read(lake, layout.SILVER_TRANSACTIONS, dates=[DATE])
    quarantine = tables.read(lake, layout.QUARANTINE_ROWS)
    assert len(silver) == 495 and len(quarantine) == 5
    assert silver["transaction_id"].is_unique
    assert [e["rows_silver"] for e in read_ledger(lake)] == [495]
    assert len(lake.list(layout.CLAIMS)) == 1  # the object was claimed once


    # The run's reports open in a browser from the task, read from the S3 lake by the plugin view:
    # the validation's Data Docs (a versioned partition of the bucket).
    from browser import browser, follow_extra_link, sign_in
    from standalone import airflow_api_server, rest_api, wait_for_api

    home = tmp_path / "state" / "airflow"
    with airflow_api_server(env, tmp_path / "api.log") as proc:
        wait_for_api(proc)
        api = rest_api(proc, home)
        (run,) = api.call("GET", "/api/v2/dags/ingest_transactions/dagRuns")["dag_runs"]
        links = api.call("GET", f"/api/v2/dags/ingest_transactions/dagRuns/{run['dag_run_id']}/taskInstances/"
                                "validate/links")["extra_links"]
        assert links["Data Docs"] and links["Data Docs"].startswith("/pipeline/docs/"), links
        with browser() as context:
            page = context.new_page()
            sign_in(page, proc.api_url, home)
            follow_extra_link(page, proc.api_url, "ingest_transactions", run["dag_run_id"], "validate", "Data Docs")
            page.get_by_text("Validation Results").first.wait_for(timeout=60_000)
            assert "/_v-" in page.url, page.url  # the published version of the Data Docs in the bucket
