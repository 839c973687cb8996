"""Partition keys are days: ``YYYY-MM-DD``, the same string as the lake's ``date=`` partitions.

- Ingestion runs on Airflow's :class:`CronPartitionTimetable` (``nightly_partitions``): at
  midnight UTC for the day that just ended.
- Every downstream DAG runs on :class:`DailyPartitionedAssets`: Airflow's
  ``PartitionedAssetTimetable`` (one run per day key its producer published, the key mapped
  one to one) that is also *periodic*, with one partition per calendar day. That makes the
  UI's **Backfill** option and ``POST /api/v2/backfills`` work on it over a date range, which
  the stock asset-driven timetable does not offer (it is not periodic, so Airflow 3.3 greys
  the option out). Registered with Airflow by ``plugins/pipeline_plugin.py``: a custom
  timetable must be, so the scheduler can deserialize it.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime, timedelta

from airflow.partition_mappers.temporal import StartOfDayMapper
from airflow.timetables.base import DagRunInfo
from airflow.timetables.simple import PartitionedAssetTimetable
from airflow.timetables.trigger import CronPartitionTimetable

KEY_FORMAT = "%Y-%m-%d"


def nightly_partitions(cron: str = "0 0 * * *") -> CronPartitionTimetable:
    """Runs at ``cron`` (UTC) for the day before: the run at 2026-05-11 00:00 has key ``2026-05-10``.

    A backfill over ``[from, to]`` has one run per day in it (both ends included).
    """
    return CronPartitionTimetable(cron, timezone="UTC", run_offset=-1, key_format=KEY_FORMAT)


class DailyPartitionedAssets(PartitionedAssetTimetable):
    """One run per day key the consumed assets publish; backfillable over a date range.

    Keys map one to one (``StartOfDayMapper`` on ``YYYY-MM-DD``, so runs also carry their
    ``partition_date`` and can be cleared by date window).
    """

    periodic = True  # what the UI and the backfill API ask before they offer a backfill
    description = "One run per day partition published by its assets; backfill by date range"

    def __init__(self, *, assets, partition_mapper_config=None, default_partition_mapper=None) -> None:
        super().__init__(assets=assets, partition_mapper_config=partition_mapper_config,
                         default_partition_mapper=default_partition_mapper or day_mapper())

    @property
    def summary(self) -> str:
        return "Daily partitions of assets"

    def iter_partition_dagrun_infos(self, *, earliest: datetime, latest: datetime) -> Iterable[DagRunInfo]:
        """One run per UTC day whose midnight lies in ``[earliest, latest]`` (what a backfill creates)."""
        from airflow._shared.timezones.timezone import coerce_datetime

        earliest, latest = coerce_datetime(earliest), coerce_datetime(latest)
        day = earliest.in_timezone("UTC").start_of("day")
        if day < earliest:
            day = day + timedelta(days=1)
        while day <= latest:
            yield DagRunInfo(run_after=day, data_interval=None, partition_date=day,
                             partition_key=day.strftime(KEY_FORMAT))
            day = day + timedelta(days=1)


def day_mapper() -> StartOfDayMapper:
    return StartOfDayMapper(input_format=KEY_FORMAT, output_format=KEY_FORMAT)
