"""The project's Airflow plugin: registers what the scheduler and API server must know by name."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from pipeline.timetables import DailyPartitionedAssets


class PipelinePlugin(AirflowPlugin):
    name = "pipeline"
    timetables = [DailyPartitionedAssets]
