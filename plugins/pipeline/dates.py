"""Which partition date a run works on."""

from __future__ import annotations


def partition_date(context) -> str:
    """The date a task processes: ``params.date`` when a person set it, else the logical date.

    Runs without a logical date (asset-triggered or manual runs in Airflow 3) fall back to the
    day the run was due (``run_after``).
    """
    params = context.get("params") or {}
    if params.get("date"):
        return str(params["date"])
    when = context.get("logical_date") or context["dag_run"].run_after
    return when.strftime("%Y-%m-%d")


def triggering_dates(context, key: str) -> list[str]:
    """Dates listed under ``key`` in the extras of the asset events that triggered this run."""
    dates: set[str] = set()
    for events in (context.get("triggering_asset_events") or {}).values():
        for event in events:
            dates.update((event.extra or {}).get(key) or [])
    return sorted(dates)
