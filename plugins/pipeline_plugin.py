"""The project's Airflow plugin: registers what the scheduler and API server must know by name,
and the report view (``pipeline.web.reports``) with its entry in the UI's navigation."""

from __future__ import annotations

from airflow.plugins_manager import AirflowPlugin
from pipeline.timetables import DailyPartitionedAssets

from jobs.shared import links


class PipelinePlugin(AirflowPlugin):
    name = "pipeline"
    timetables = [DailyPartitionedAssets]
    external_views = [{"name": "Pipeline reports", "href": links.index(), "destination": "nav",
                       "category": "browse"}]

    @property
    def fastapi_apps(self):  # built only where the API server asks for it
        from pipeline.web.reports import app

        return [{"app": app, "url_prefix": links.PREFIX, "name": "Pipeline reports"}]
