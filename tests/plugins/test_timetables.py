"""Partition timetables: day keys, backfill ranges, serialization, and the Airflow 3.3 limits they work around.

The ``test_airflow_*`` tests pin Airflow behaviour this project works around (see
docs/operations.md, "Partitions and backfills"). When one fails after an Airflow upgrade, the workaround it names
can go.
"""

from datetime import UTC, datetime

import pytest
from airflow.sdk import Asset
from pipeline.timetables import DailyPartitionedAssets, nightly_partitions

SILVER = Asset("silver_transactions", uri="file:///lake/silver/transactions")


def keys(infos) -> list[str]:
    return [i.partition_key for i in infos]


def test_a_backfill_range_has_one_run_per_day_both_ends_included():
    daily = DailyPartitionedAssets(assets=SILVER)
    assert daily.partitioned and daily.periodic  # what the UI and the backfill API ask for
    infos = list(daily.iter_partition_dagrun_infos(earliest=datetime(2026, 5, 1, tzinfo=UTC),
                                                   latest=datetime(2026, 5, 3, tzinfo=UTC)))
    assert keys(infos) == ["2026-05-01", "2026-05-02", "2026-05-03"]
    assert infos[0].partition_date == datetime(2026, 5, 1, tzinfo=UTC) and infos[0].data_interval is None
    # A bound inside a day starts at the next midnight; keys decode back to their day.
    assert keys(daily.iter_partition_dagrun_infos(earliest=datetime(2026, 5, 1, 9, tzinfo=UTC),
                                                  latest=datetime(2026, 5, 2, 23, tzinfo=UTC))) == ["2026-05-02"]
    assert daily.resolve_partition_date("2026-05-02") == datetime(2026, 5, 2, tzinfo=UTC)


def test_nightly_ingestion_is_keyed_by_the_day_that_ended():
    nightly = nightly_partitions()
    from airflow.timetables.base import TimeRestriction

    info = nightly.next_dagrun_info_v2(last_dagrun_info=None, restriction=TimeRestriction(
        earliest=datetime(2026, 5, 11, tzinfo=UTC), latest=None, catchup=True))
    assert (info.run_after, info.partition_key) == (datetime(2026, 5, 11, tzinfo=UTC), "2026-05-10")
    assert keys(nightly.iter_partition_dagrun_infos(earliest=datetime(2026, 5, 1, tzinfo=UTC),
                                                    latest=datetime(2026, 5, 2, tzinfo=UTC))) == ["2026-05-01",
                                                                                                  "2026-05-02"]


def test_the_timetable_survives_airflows_serialization():
    """What the scheduler and API server read back: the registered plugin timetable, not the stock one."""
    from airflow.serialization.decoders import decode_timetable
    from airflow.serialization.encoders import encode_timetable

    decoded = decode_timetable(encode_timetable(DailyPartitionedAssets(assets=SILVER)))
    assert type(decoded).__name__ == "DailyPartitionedAssets" and decoded.periodic and decoded.partitioned
    assert decoded.get_partition_mapper(name="silver_transactions").to_downstream("2026-05-02") == "2026-05-02"


def test_airflow_the_stock_partitioned_asset_timetable_is_not_backfillable():
    """Workaround: DailyPartitionedAssets (periodic, one partition per day)."""
    from airflow.timetables.simple import PartitionedAssetTimetable

    stock = PartitionedAssetTimetable(assets=SILVER)
    assert stock.partitioned and not stock.periodic  # the UI greys Backfill out for non-periodic timetables
    with pytest.raises(NotImplementedError):
        list(stock.iter_partition_dagrun_infos(earliest=datetime(2026, 5, 1, tzinfo=UTC),
                                               latest=datetime(2026, 5, 2, tzinfo=UTC)))


def test_airflow_asset_or_time_schedules_do_not_carry_partitions():
    """Workaround: event-driven ingestion (AssetWatcher, no partition key) is a DAG of its own."""
    from airflow.timetables.assets import AssetOrTimeSchedule

    combined = AssetOrTimeSchedule(timetable=nightly_partitions(), assets=[SILVER])
    assert nightly_partitions().partitioned and not combined.partitioned


def test_airflow_a_partitioned_event_never_starts_a_non_partitioned_dag():
    """Workaround: every DAG downstream of a partitioned one is partitioned (train_model too)."""
    import inspect

    from airflow.assets.manager import AssetManager

    source = inspect.getsource(AssetManager._queue_dagruns)
    assert "if not non_partitioned_dags or partition_key is not None:" in source


def test_airflow_dags_test_fails_after_a_successful_run_of_a_dag_with_a_deadline(tmp_path):
    """apache/airflow#73428. Workaround: the deadline is opt-in (PIPELINE_PREDICTIONS_DEADLINE_MINUTES,
    set by the stack) and `make run`, which drives the DAGs with `airflow dags test`, unsets it."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    dags = tmp_path / "dags"
    dags.mkdir()
    (dags / "with_deadline.py").write_text(
        "from datetime import datetime, timedelta\n"
        "from airflow.providers.standard.operators.empty import EmptyOperator\n"
        "from airflow.sdk import DAG, AsyncCallback, DeadlineAlert, DeadlineReference\n"
        "async def told(**kwargs):\n    pass\n"
        "with DAG('with_deadline', schedule=None, start_date=datetime(2026, 1, 1), deadline=DeadlineAlert(\n"
        "        reference=DeadlineReference.DAGRUN_QUEUED_AT, interval=timedelta(hours=1),\n"
        "        callback=AsyncCallback(told))):\n"
        "    EmptyOperator(task_id='nothing')\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("AIRFLOW")}
    env.update(AIRFLOW_HOME=str(tmp_path / "home"), AIRFLOW__CORE__DAGS_FOLDER=str(dags),
               AIRFLOW__CORE__LOAD_EXAMPLES="False", PYTHONPATH=str(dags),
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=f"sqlite:///{tmp_path}/airflow.db")
    airflow = str(Path(sys.executable).parent / "airflow")
    subprocess.run([airflow, "db", "migrate"], env=env, capture_output=True, check=True, timeout=300)
    out = subprocess.run([airflow, "dags", "test", "with_deadline", "2026-01-02"], env=env, capture_output=True,
                         text=True, timeout=300)
    assert out.returncode != 0 and "'dict' object has no attribute 'hex'" in out.stdout + out.stderr
