"""
### Ingest transactions (raw -> bronze -> silver)

**Consumes** the lake's `raw/transactions/date=<date>/` zone: every object delivered for the
partition date or earlier that the ingestion ledger has not seen (key + SHA-256).

**Produces** `silver/transactions/date=*/` (Asset `silver_transactions`, extra: the dates it
touched), `quarantine/` (rejected rows and files, with reasons), the ledger entries and a
validation report in `reports/validation/`.

**Starts** nightly (00:30 UTC, for the day that just ended), when a person triggers it with a
date, and, on S3 lakes with `PIPELINE_LAKE_EVENTS_QUEUE` set, as soon as an S3 event
notification for a new raw object arrives (AssetWatcher on SQS; the run takes the object's date).
The sensor waits until the day's delivery is in the raw zone.

**When it fails** at `validate`, a delivery broke the data contract
(`expectations/raw_transactions.json`): the task log names the file, the counts and the
broken rules, the bad rows or file are in `quarantine/`, raw is untouched and nothing
downstream runs. Fix the delivery upstream and deliver it again (a new object), then re-run.
Re-running the same date is safe: objects already in the ledger are skipped.
"""

from __future__ import annotations

from airflow.sdk import DAG, AssetOrTimeSchedule, CronDataIntervalTimetable, Param
from pipeline.assets import SILVER_TRANSACTIONS, raw_deliveries_watched
from pipeline.defaults import DEFAULT_ARGS, START_DATE, TAGS
from pipeline.operators import job_task
from pipeline.runners import Resources
from pipeline.sensors import raw_delivery_sensor

NIGHTLY = CronDataIntervalTimetable("30 0 * * *", timezone="UTC")
# With PIPELINE_LAKE_EVENTS_QUEUE set, S3 event notifications also start a run (AssetWatcher).
_events = raw_deliveries_watched()

with DAG(
    dag_id="ingest_transactions",
    doc_md=__doc__,
    schedule=AssetOrTimeSchedule(timetable=NIGHTLY, assets=[_events]) if _events else NIGHTLY,
    start_date=START_DATE,
    catchup=False,
    # Runs may overlap (a nightly run waiting for a late delivery must not hold back an event-driven
    # run for another day): claims make ingest safe to run concurrently; validate merges into silver
    # partitions, so only one validate runs at a time (max_active_tis_per_dag below).
    max_active_runs=4,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "ingestion"],
    params={
        "date": Param(None, type=["null", "string"], format="date", title="Partition date",
                      description="Day whose delivery to ingest (also picks up earlier undelivered days). "
                                  "Empty: the run's logical date."),
    },
) as dag:
    wait_for_raw = raw_delivery_sensor(
        task_id="wait_for_raw",
        prefix="raw/transactions/date={date}",
        poke_interval=300,
        timeout=6 * 3600,
        mode="reschedule",
        doc_md="Waits until the day's delivery is in the raw zone (checks every 5 minutes, up to 6 hours).",
    )
    ingest = job_task(
        step="ingest",
        pass_run_id=True,
        job_resources=Resources(cpu=1, memory_gb=2),
        doc_md="Stages every new raw object as a bronze batch; unusable files are quarantined whole.",
    )
    validate = job_task(
        step="validate",
        pass_run_id=True,
        job_resources=Resources(cpu=1, memory_gb=4),
        outlets=[SILVER_TRANSACTIONS],
        max_active_tis_per_dag=1,
        doc_md="Runs the Great Expectations contract; every row lands in silver or in quarantine with "
               "its reasons. Fails (no retry) when a delivery is rejected.",
    )
    wait_for_raw >> ingest >> validate
