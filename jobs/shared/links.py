"""One home for the web addresses of what a run produced.

Reports live in the lake (``file://`` or ``s3://``), which no browser opens. The project's Airflow
plugin (``plugins/pipeline/web/reports.py``) serves them over HTTP from the Airflow API server, behind
Airflow's own login, under :data:`PREFIX`:

- ``/pipeline/lake/<key>``: one report object of the lake's ``reports/`` zone (gate and drift
  reports, validation reports, Data Docs pages);
- ``/pipeline/docs/<validation run id>``: the Data Docs site of one validation run (its current
  version: Data Docs are published as a whole);
- ``/pipeline/mlflow/runs/<id>``, ``/pipeline/mlflow/models/<name>/versions/<n>`` and
  ``/pipeline/mlflow/drift-trend`` (the drift monitor's charts, ``jobs.storage.monitoring``): redirects to
  the MLflow UI the API server is configured with (``PIPELINE_MLFLOW_UI_URL``), so a link recorded
  today stays valid when MLflow moves;
- ``/pipeline/``: an index of the newest reports.

Jobs put the paths of their reports in their result (``links``: name -> path); the Airflow tasks
show them as extra links, the run summary and ``make up`` print them. Paths are relative to the
Airflow UI's address (:func:`absolute` joins them).
"""

from __future__ import annotations

from urllib.parse import quote

from jobs.shared import layout

PREFIX = "/pipeline"

# The names of the links, as the Airflow UI shows them on a task (one operator extra link each).
MLFLOW_RUN = "MLflow run"
MODEL_VERSION = "Model version"
GATE_REPORT = "Gate report"
DRIFT_REPORT = "Drift report"
DATA_DOCS = "Data Docs"
DRIFT_TREND = "Drift trend"
SERVICE_HEALTH = "Service health"  # a scoring service's /readyz (the deployment's first service)
SERVICE_METRICS = "Service metrics"  # its /metrics (Prometheus; a key with role metrics or deploy)
NAMES = (MLFLOW_RUN, MODEL_VERSION, GATE_REPORT, DRIFT_REPORT, DATA_DOCS, DRIFT_TREND, SERVICE_HEALTH,
         SERVICE_METRICS)

# Zones of the lake the report view may serve: reports only, never data.
SERVED_ZONES = (layout.REPORTS,)


def report(key: str) -> str:
    """The path of one report object of the lake."""
    return f"{PREFIX}/lake/{quote(key, safe='/=')}"


def data_docs(validation_run_id: str) -> str:
    return f"{PREFIX}/docs/{quote(validation_run_id, safe='')}"


def mlflow_run(run_id: str) -> str:
    return f"{PREFIX}/mlflow/runs/{quote(run_id, safe='')}"


def model_version(name: str, version: str | int) -> str:
    return f"{PREFIX}/mlflow/models/{quote(name, safe='')}/versions/{quote(str(version), safe='')}"


def drift_trend() -> str:
    """The drift monitor's charts in the MLflow UI (``jobs.storage.monitoring``): every day's figures."""
    return f"{PREFIX}/mlflow/drift-trend"


def index() -> str:
    return f"{PREFIX}/"


def servable(key: str) -> bool:
    """Whether the report view may serve ``key``: a plain key inside a report zone."""
    parts = key.split("/")
    return (bool(key) and not key.startswith("/") and "\\" not in key
            and all(p not in ("", ".", "..") for p in parts) and parts[0] in SERVED_ZONES)


def absolute(base_url: str, path: str) -> str:
    """``path`` under the Airflow UI's address (e.g. ``http://127.0.0.1:8080``); ``path`` itself
    when no address is known (the Airflow UI resolves it against its own). A full URL (a scoring
    service's) is its own address."""
    if path.startswith(("http://", "https://")):
        return path
    return f"{base_url.rstrip('/')}{path}" if base_url else path


def render(paths: dict[str, str], base_url: str, indent: int = 2) -> list[str]:
    """Named links as lines of text, each under the Airflow UI at ``base_url`` (run summary, `make up`)."""
    return [f"{' ' * indent}{name + ':':<15}{absolute(base_url, path)}" for name, path in paths.items()]
