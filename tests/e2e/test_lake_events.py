"""Event-driven ingestion with a real scheduler and triggerer (``airflow standalone``).

S3 event notifications for ``raw/`` go to an SQS queue on a local moto server; the AssetWatcher's
``SqsSensorTrigger`` turns them into ``raw_deliveries`` asset events, which start
``ingest_deliveries`` for the date in the object's key. No patching: real HTTP, real Airflow.
"""

from __future__ import annotations

import json
import os
import sys
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from urllib.parse import quote

import boto3
import pytest
from standalone import airflow_standalone, poll_db

from jobs.devkit.generate import generate_day

pytestmark = pytest.mark.e2e


def test_s3_event_starts_ingestion_through_the_asset_watcher(s3_endpoint, tmp_path):
    creds = {"endpoint_url": s3_endpoint, "aws_access_key_id": "testing", "aws_secret_access_key": "testing",
             "region_name": "us-east-1"}
    s3, sqs = boto3.client("s3", **creds), boto3.client("sqs", **creds)
    bucket = f"lake-{uuid.uuid4().hex[:10]}"
    s3.create_bucket(Bucket=bucket)
    queue_url = sqs.create_queue(QueueName=f"raw-events-{uuid.uuid4().hex[:8]}")["QueueUrl"]
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"]["QueueArn"]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={"QueueConfigurations": [{
        "QueueArn": queue_arn, "Events": ["s3:ObjectCreated:*"],
        "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "lake/raw/"}]}},
    }]})
    # Deliver the days a nightly run created at start-up may be waiting for, so it does not block.
    today = datetime.now(UTC).date()
    days = [(today - timedelta(days=n)).isoformat() for n in (1, 2)]
    for day in days:
        s3.put_object(Bucket=bucket, Key=f"lake/raw/transactions/date={day}/t.csv",
                      Body=generate_day(day, 200).to_csv(index=False).encode())
    assert int(sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])
               ["Attributes"]["ApproximateNumberOfMessages"]) >= 2  # plus S3's s3:TestEvent

    state = tmp_path / "state"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_", "AWS_"))}
    env.update(
        PATH=f"{Path(sys.executable).parent}:{env['PATH']}", PIPELINE_STATE_DIR=str(state),
        PIPELINE_LAKE_URI=f"s3://{bucket}/lake", PIPELINE_LAKE_EVENTS_QUEUE=queue_url,
        PIPELINE_LAKE_EVENTS_POLL_SECONDS="2", AWS_ENDPOINT_URL=s3_endpoint, AWS_ACCESS_KEY_ID="testing",
        AWS_SECRET_ACCESS_KEY="testing", AWS_DEFAULT_REGION="us-east-1",
        AIRFLOW_CONN_LAKE_S3=f"aws://testing:testing@/?endpoint_url={quote(s3_endpoint, safe='')}"
                             "&region_name=us-east-1",
    )

    def observe(conn):
        events = [json.loads(e) for (e,) in conn.execute(
            "select e.extra from asset_event e join asset a on a.id = e.asset_id where a.name = 'raw_deliveries'")]
        runs = conn.execute("select dag_id, run_type, state from dag_run "
                            "where dag_id in ('ingest_transactions', 'ingest_deliveries')").fetchall()
        return events, runs

    with airflow_standalone(env, tmp_path / "standalone.log") as proc:
        observed = poll_db(state / "airflow" / "airflow.db", proc, observe,
                           # Runs overlap: the nightly run started at boot may claim the same objects
                           # (exactly once), so wait for every ingestion run to finish, not just this one.
                           lambda r: ("ingest_deliveries", "asset_triggered", "success") in r[1]
                           and not any(state in ("queued", "running") for _, _, state in r[1]), timeout=420)
    events, runs = observed or ([], [])
    log = (tmp_path / "standalone.log").read_text()[-6000:]
    assert events and events[0]["from_trigger"] is True, log
    assert ("ingest_deliveries", "asset_triggered", "success") in runs, f"{runs}\n{log}"
    listed = s3.list_objects_v2(Bucket=bucket, Prefix="lake/silver/transactions/")
    assert any("/_delta_log/" in o["Key"] for o in listed.get("Contents", []))  # silver is a Delta table
