"""Which date a run processes: the form, else the triggering events, else the logical date."""

from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.dates import partition_date, triggering_dates

RUN_AFTER = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def context(params=None, events=None, logical_date=None):
    return {
        "params": params or {},
        "triggering_asset_events": {"asset": [SimpleNamespace(extra=e) for e in events or []]},
        "logical_date": logical_date,
        "dag_run": SimpleNamespace(run_after=RUN_AFTER),
    }


def test_the_form_wins():
    ctx = context({"date": "2026-01-05"}, [{"dates": ["2026-11-20"]}], datetime(2026, 11, 21, tzinfo=UTC))
    assert partition_date(ctx) == "2026-01-05"


def test_asset_triggered_runs_use_the_latest_date_the_producer_named():
    ctx = context(events=[{"silver_dates": ["2026-11-19", "2026-11-20"]}, {"dates": ["2026-11-18"]}])
    assert partition_date(ctx) == "2026-11-20"
    assert triggering_dates(ctx) == ["2026-11-18", "2026-11-19", "2026-11-20"]
    assert triggering_dates(ctx, "dates") == ["2026-11-18"]
    assert partition_date(context(events=[{"date": "2026-11-17", "drift_share": 0.5}])) == "2026-11-17"


def test_scheduled_runs_use_the_logical_date_and_dateless_runs_the_last_complete_day():
    assert partition_date(context(logical_date=datetime(2026, 11, 21, 3, tzinfo=UTC))) == "2026-11-21"
    assert partition_date(context()) == "2026-11-21"


def test_s3_event_notifications_relayed_by_the_asset_watcher_name_the_date():
    import json

    body = {"Records": [{"s3": {"object": {"key": "lake/raw/transactions/date%3D2026-11-19/t.csv"}}}]}
    ctx = context(events=[{"from_trigger": True, "payload": {"status": "success",
                                                            "message_batch": [{"Body": json.dumps(body)}]}}])
    assert partition_date(ctx) == "2026-11-19"
