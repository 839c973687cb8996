"""
### Ingest transactions (raw -> bronze -> silver)

**Consumes** the lake's `raw/transactions/date=<date>/` zone: every object delivered for the
partition date or earlier that the ingestion ledger has not seen (key + SHA-256).

**Produces** the Delta tables `silver/transactions` (Asset `silver_transactions`, one
partition key per date that received rows), `quarantine/rows` (rejected rows as delivered, with reasons) and
`_ledger/objects` (one entry per delivered object), whole unusable files in `quarantine/files/`,
a validation report in `reports/validation/` and Data Docs in `reports/data_docs/`.

**Starts** nightly (00:00 UTC; partition key = the day that just ended), when a person triggers
it with a partition key or a date, and for every day of a **backfill** (the UI's Backfill option
or `POST /api/v2/backfills`). The sensor waits until the day's delivery is in the raw zone. On S3
lakes with `PIPELINE_LAKE_EVENTS_QUEUE` set, the DAG `ingest_deliveries` (same tasks) runs as
soon as an S3 event notification for a new raw object arrives (AssetWatcher on SQS; the run
takes the object's date): Airflow's asset watchers emit events without partition keys, and a
DAG is either partitioned or not, so event-driven ingestion is a DAG of its own.

**When a delivery is rejected** (it broke the data contract, `expectations/raw_transactions.json`),
the good objects of the same run still land and `announce_silver` passes their dates on to
features and scoring; then `stop_on_rejections` fails the run with a message naming each
rejected file, its row counts and the broken rules. The bad rows or file are in `quarantine/`,
raw is untouched. Fix the delivery upstream and deliver it again (a new object, or
`python -m jobs replay`), then re-run. Re-running the same date is safe: objects already in the
ledger are skipped, and a retried `validate` converges to what one clean run would have written.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowFailException, AirflowSkipException
from pipeline.assets import SILVER_TRANSACTIONS, raw_deliveries_watched
from pipeline.defaults import DEFAULT_ARGS, START_DATE, TAGS
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources
from pipeline.notify import predictions_deadline
from pipeline.sensors import raw_delivery_sensor
from pipeline.timetables import nightly_partitions

from jobs.shared import layout

# Runs may overlap (a nightly run waiting for a late delivery must not hold back a run for another
# day): claims make ingest safe to run concurrently, and validate's Delta MERGE commits are
# optimistic (a conflicting commit is redone on the new version), so they may too.
DAG_ARGS = dict(start_date=START_DATE, catchup=False, max_active_runs=4, default_args=DEFAULT_ARGS,
                params={"date": Param(None, type=["null", "string"], format="date", title="Partition date",
                                      description="Day whose delivery to ingest (also picks up earlier "
                                                  "undelivered days). Empty: the run's partition key.")})


def ingestion_tasks() -> None:
    """wait_for_raw >> ingest >> validate, then announce_silver and stop_on_rejections."""
    wait_for_raw = raw_delivery_sensor(
        task_id="wait_for_raw",
        prefix=layout.date_partition(layout.RAW_TRANSACTIONS, "{date}"),
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
        arguments=["--no-fail-on-rejection"],  # rejections come back in the result; stop_on_rejections fails
        # Bounded by the batch, not the object: 1.25 GiB measured on a 10M-row file (the size cap's order).
        job_resources=Resources(cpu=1, memory_gb=2),
        doc_md="Runs the Great Expectations contract; every row lands in silver or in quarantine with its "
               "reasons, and each object in the ledger. Rejected objects are listed in its result.",
    )

    @task(outlets=[SILVER_TRANSACTIONS])
    def announce_silver(validated: dict, **context) -> list[str]:
        """Emits `silver_transactions` with one partition key per date that received rows, even when
        other objects were rejected, so good data flows on to features and scoring (one downstream
        run per date). Skipped when nothing landed."""
        dates = validated.get("silver_dates") or []
        if not dates:
            raise AirflowSkipException("no rows landed in silver: nothing for features to build")
        event = context["outlet_events"][SILVER_TRANSACTIONS]
        event.add_partitions(dates)
        event.extra = {"step": "validate", "rows_silver": validated.get("rows_silver", 0),
                       "silver": validated.get("silver", "")}
        return dates

    @task
    def stop_on_rejections(validated: dict) -> None:
        """Fails the run (no retry: retrying cannot fix a delivery) when any object was rejected,
        with the message that names each rejected file, its counts and the rules it broke."""
        if validated.get("rejected"):
            raise AirflowFailException(validated["rejection_message"])

    wait_for_raw >> ingest >> validate
    announce_silver(validate.output)
    stop_on_rejections(validate.output)


# With PIPELINE_NOTIFY_EMAIL set: "predictions for D are late" when the nightly run is not done in time.
with DAG(dag_id="ingest_transactions", doc_md=__doc__, schedule=nightly_partitions(),
         deadline=predictions_deadline(), tags=[*TAGS, "ingestion"], **DAG_ARGS) as dag:
    ingestion_tasks()

# With PIPELINE_LAKE_EVENTS_QUEUE set, S3 event notifications start this one (AssetWatcher).
_events = raw_deliveries_watched()
if _events:
    with DAG(dag_id="ingest_deliveries", doc_md=__doc__, schedule=[_events], tags=[*TAGS, "ingestion", "events"],
             **DAG_ARGS):
        ingestion_tasks()


if __name__ == "__main__":
    dag.test()
