"""Extra links on every job task: the MLflow run, the model version, the gate report, the drift
report, the drift trend and the Data Docs a task produced or used, as buttons on the task instance in the Airflow UI.

A job puts the paths of its reports in its result (``links``, see ``jobs/shared/links.py``); when the task
ends (success, skip or failure), Airflow asks each link for its URL and keeps it in XCom, and the UI
shows the links that have one. The paths are served by the project's plugin view
(``pipeline.web.reports``, behind Airflow's login), which reads the lake whatever its scheme and
redirects MLflow pages to the MLflow UI: a browser never gets a ``file://`` or ``s3://`` URI.
"""

from __future__ import annotations

from typing import ClassVar

from airflow.sdk import BaseOperatorLink

from jobs.shared import links


def ui_address() -> str:
    """The Airflow UI's configured address (``[api] base_url``), or "" for links relative to it."""
    from airflow.configuration import conf

    return conf.get("api", "base_url", fallback="") or ""


class JobResultLink(BaseOperatorLink):
    """One named link of a job task, read from the job's result (``JobTask.job_result``)."""

    name: ClassVar[str]

    def get_link(self, operator, *, ti_key) -> str:
        result = getattr(operator, "job_result", None) or {}
        path = (result.get("links") or {}).get(self.name)
        return links.absolute(ui_address(), path) if path else ""


class MlflowRunLink(JobResultLink):
    name = links.MLFLOW_RUN


class ModelVersionLink(JobResultLink):
    name = links.MODEL_VERSION


class GateReportLink(JobResultLink):
    name = links.GATE_REPORT


class DriftReportLink(JobResultLink):
    name = links.DRIFT_REPORT


class DataDocsLink(JobResultLink):
    name = links.DATA_DOCS


class DriftTrendLink(JobResultLink):
    name = links.DRIFT_TREND


class ServiceHealthLink(JobResultLink):
    name = links.SERVICE_HEALTH


class ServiceMetricsLink(JobResultLink):
    name = links.SERVICE_METRICS


JOB_LINKS = (MlflowRunLink(), ModelVersionLink(), GateReportLink(), DriftReportLink(), DataDocsLink(),
             DriftTrendLink(), ServiceHealthLink(), ServiceMetricsLink())
