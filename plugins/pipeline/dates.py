"""Which day a run works on: Airflow's partition key, and what partitions do not cover.

The rule, in order: the date a person typed in the trigger form; else the run's partition key
(nightly ingestion, every asset-triggered downstream run, every backfill run: see
``pipeline.timetables``); else the dates named by the S3 event notifications that an
AssetWatcher relayed (event-driven ingestion: those events carry no partition key); else the
run's logical date (``airflow dags test DAG DATE``); else, for a dateless manual run, the
last complete day.
"""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import unquote_plus

from jobs.shared.layout import partition_date as key_partition_date


def partition_date(context) -> str:
    """The date a task processes (see the module docstring)."""
    params = context.get("params") or {}
    if params.get("date"):
        return str(params["date"])
    key = run_partition_key(context)
    if key:
        return key
    from_events = event_dates(context)
    if from_events:
        return from_events[-1]
    when = context.get("logical_date")
    if when is None:  # a manual run without a date: the last complete day
        when = context["dag_run"].run_after - timedelta(days=1)
    return when.strftime("%Y-%m-%d")


def run_partition_key(context) -> str | None:
    """The run's partition key (a ``YYYY-MM-DD`` day), or None for a run without one."""
    run = context.get("dag_run")
    return context.get("partition_key") or getattr(run, "partition_key", None) or None


def s3_event_dates(extra: dict) -> set[str]:
    """Partition dates of the objects named by S3 event notifications that an AssetWatcher relayed."""
    dates = set()
    for message in (extra.get("payload") or {}).get("message_batch") or []:
        try:
            records = json.loads(message.get("Body", "{}")).get("Records", [])
        except (ValueError, AttributeError):
            continue
        for record in records:
            key = unquote_plus(record.get("s3", {}).get("object", {}).get("key", ""))
            day = key_partition_date(key)
            if day is not None:
                dates.add(day.isoformat())
    return dates


def event_dates(context) -> list[str]:
    """Dates of the raw objects named by the S3 events that triggered this run, sorted."""
    dates: set[str] = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            dates.update(s3_event_dates(event.extra or {}))
    return sorted(dates)


def planned_range(context) -> dict:
    """``{"start", "end"}`` for range jobs: the form's range, else the one day of the run."""
    params = context["params"]
    end = partition_date(context)
    return {"start": params.get("start_date") or end, "end": end}


def plan_dates():
    """The ``plan_dates`` task of a range DAG: ``{"start", "end"}`` for its job (see :func:`planned_range`).

    A DAG passes its outputs on as values: ``plan = plan_dates()``, then
    ``job_task(..., date=plan["end"], arguments=["--start", plan["start"]])``.
    """
    from airflow.sdk import task

    @task(task_id="plan_dates", multiple_outputs=True)
    def plan(**context) -> dict:
        """Decides which dates the job works on: the form's range, else the run's partition key."""
        return planned_range(context)

    return plan()
