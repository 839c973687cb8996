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

from jobs import layout, tables
from jobs.generate import generate_day, inject_bad_rows
from jobs.ingest import read_ledger
from jobs.lake import S3Lake

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
