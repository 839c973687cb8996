"""Which date a run processes: the form, else the partition key, else the S3 events, else the logical date."""

from datetime import UTC, datetime
from types import SimpleNamespace

from pipeline.dates import partition_date, planned_range

RUN_AFTER = datetime(2026, 11, 22, 3, 0, tzinfo=UTC)


def context(params=None, events=None, logical_date=None, partition_key=None):
    return {
        "params": params or {},
        "triggering_asset_events": {"asset": [SimpleNamespace(extra=e) for e in events or []]},
        "logical_date": logical_date,
        "dag_run": SimpleNamespace(run_after=RUN_AFTER, partition_key=partition_key),
    }


def test_the_form_wins():
    ctx = context({"date": "2026-01-05"}, logical_date=datetime(2026, 11, 21, tzinfo=UTC), partition_key="2026-11-20")
    assert partition_date(ctx) == "2026-01-05"


def test_partitioned_runs_use_their_key_and_range_jobs_the_key_alone():
    ctx = context(partition_key="2026-11-19", logical_date=datetime(2026, 11, 21, tzinfo=UTC))
    assert partition_date(ctx) == "2026-11-19"
    assert planned_range(ctx) == {"start": "2026-11-19", "end": "2026-11-19"}
    ranged = context({"start_date": "2026-11-01"}, partition_key="2026-11-19")
    assert planned_range(ranged) == {"start": "2026-11-01", "end": "2026-11-19"}
    # Extras name no dates any more: only partition keys and S3 event notifications do.
    assert partition_date(context(events=[{"silver_dates": ["2026-11-20"]}], logical_date=datetime(
        2026, 11, 18, tzinfo=UTC))) == "2026-11-18"


def test_scheduled_runs_use_the_logical_date_and_dateless_runs_the_last_complete_day():
    assert partition_date(context(logical_date=datetime(2026, 11, 21, 3, tzinfo=UTC))) == "2026-11-21"
    assert partition_date(context()) == "2026-11-21"


def test_s3_event_notifications_relayed_by_the_asset_watcher_name_the_date():
    import json

    body = {"Records": [{"s3": {"object": {"key": "lake/raw/transactions/date%3D2026-11-19/t.csv"}}}]}
    ctx = context(events=[{"from_trigger": True, "payload": {"status": "success",
                                                            "message_batch": [{"Body": json.dumps(body)}]}}])
    assert partition_date(ctx) == "2026-11-19"
