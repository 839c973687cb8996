"""Which partition date a run works on.

The rule, in order: the date a person typed in the trigger form; else the latest date named by
the asset events that triggered the run (producers put their dates in the event extra); else
the run's logical date. Nightly DAGs use data-interval timetables, so a run's logical date is
the day that just ended.
"""

from __future__ import annotations

import json
from datetime import timedelta
from urllib.parse import unquote_plus

from jobs.layout import partition_date as key_partition_date

# Keys under which producers list dates in their asset event extras.
_DATE_LIST_KEYS = ("dates", "silver_dates")


def partition_date(context) -> str:
    """The date a task processes (see the module docstring)."""
    params = context.get("params") or {}
    if params.get("date"):
        return str(params["date"])
    from_events = triggering_dates(context)
    if from_events:
        return from_events[-1]
    when = context.get("logical_date")
    if when is None:  # a manual run without a date: the last complete day
        when = context["dag_run"].run_after - timedelta(days=1)
    return when.strftime("%Y-%m-%d")


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


def triggering_dates(context, key: str | None = None) -> list[str]:
    """Dates named in the extras of the asset events that triggered this run, sorted.

    With ``key``, only that list; otherwise every date list and single ``date`` value.
    """
    dates: set[str] = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            extra = event.extra or {}
            for k in (key,) if key else _DATE_LIST_KEYS:
                dates.update(extra.get(k) or [])
            if key is None and extra.get("date"):
                dates.add(str(extra["date"]))
            if key is None:
                dates.update(s3_event_dates(extra))
    return sorted(dates)


def planned_range(context) -> dict:
    """``{"start", "end"}`` for range jobs: the form's range, else the triggering events' dates."""
    params = context["params"]
    dates = triggering_dates(context)
    if params.get("start_date") or params.get("date") or not dates:
        end = partition_date(context)
        return {"start": params.get("start_date") or end, "end": end}
    return {"start": dates[0], "end": dates[-1]}
