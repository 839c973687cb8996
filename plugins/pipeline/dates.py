"""Which partition date a run works on.

The rule, in order: the date a person typed in the trigger form; else the latest date named by
the asset events that triggered the run (producers put their dates in the event extra); else
the run's logical date. Nightly DAGs use data-interval timetables, so a run's logical date is
the day that just ended.
"""

from __future__ import annotations

from datetime import timedelta

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
    return sorted(dates)
