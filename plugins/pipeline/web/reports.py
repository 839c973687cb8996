"""The report view: what the pipeline wrote to the lake, served over HTTP by the Airflow API server.

Mounted by the project's plugin under ``/pipeline`` (paths: ``jobs/shared/links.py``). Every route needs an
Airflow login (the UI's session cookie or an API token) with read access to DAGs; a browser
without one is sent to Airflow's login page and comes back. The lake is read with the project's
own lake code, so ``file://`` and ``s3://`` lakes serve the same way, and only the ``reports/`` zone
is served: never data.
"""

from __future__ import annotations

import mimetypes
from html import escape
from typing import Annotated

from fastapi import Depends, FastAPI, HTTPException, Request, status
from fastapi.responses import HTMLResponse, RedirectResponse, Response

from jobs.shared import layout, links

app = FastAPI(title="Fraud pipeline reports", docs_url=None, redoc_url=None, openapi_url=None)

_TYPES = {".md": "text/plain; charset=utf-8", ".json": "application/json", ".html": "text/html; charset=utf-8"}
_NEWEST = 20
# Reports hold text that came from delivered files (Evidently writes category labels raw into a
# <script>). Each one runs sandboxed: an opaque origin (no cookies, no Airflow API as the viewer),
# no requests out, no forms; and the browser takes the declared type, never a sniffed one.
REPORT_HEADERS = {
    "Content-Security-Policy": "sandbox allow-scripts allow-popups allow-popups-to-escape-sandbox; "
                               "default-src 'none'; script-src 'unsafe-inline' 'unsafe-eval'; "
                               "style-src 'unsafe-inline'; img-src data: blob:; font-src data:; connect-src 'none'; "
                               "form-action 'none'; base-uri 'none'; frame-ancestors 'self'",
    "X-Content-Type-Options": "nosniff",
    "Cache-Control": "no-store",
}


def _authorized():
    """Airflow's own authentication (session cookie or API token) and authorization (read DAGs)."""
    from airflow.api_fastapi.core_api.security import requires_access_dag

    return Depends(requires_access_dag("GET"))


Authorized = Annotated[None, _authorized()]


@app.exception_handler(HTTPException)
async def _to_login(request: Request, exc: HTTPException):
    """A browser without a session goes to Airflow's login page, then back here."""
    if exc.status_code == status.HTTP_401_UNAUTHORIZED and "text/html" in request.headers.get("accept", ""):
        from airflow.api_fastapi.app import get_auth_manager

        return RedirectResponse(get_auth_manager().get_url_login(next_url=str(request.url)))
    return Response(escape(str(exc.detail)), status_code=exc.status_code, media_type="text/plain",
                    headers=exc.headers)


def _lake():
    from jobs.storage.lake import get_lake

    return get_lake()


def _mlflow_ui() -> str:
    from pipeline.settings import AirflowSettings

    return AirflowSettings().resolved_mlflow_ui_url


@app.get("/lake/{key:path}")
def lake_object(key: str, _: Authorized) -> Response:
    """One report object of the lake, as a browser shows it."""
    from jobs.storage.lake import LakeError

    if not links.servable(key):
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{key}: not a report (only {', '.join(links.SERVED_ZONES)}/)")
    lake = _lake()
    try:
        data = lake.read_bytes(key)
    except (LakeError, FileNotFoundError, IsADirectoryError):
        if key.endswith("/") or "." not in key.rsplit("/", 1)[-1]:  # a folder: its index page
            return RedirectResponse(links.report(key.rstrip("/") + "/index.html"))
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"{lake.uri_of(key)} does not exist") from None
    suffix = "." + key.rsplit(".", 1)[-1] if "." in key.rsplit("/", 1)[-1] else ""
    media = _TYPES.get(suffix) or mimetypes.guess_type(key)[0] or "application/octet-stream"
    return Response(data, media_type=media, headers=REPORT_HEADERS)


@app.get("/docs/{run_id}")
def data_docs(run_id: str, _: Authorized) -> Response:
    """The Data Docs site of one validation run (its current published version)."""
    from jobs.storage.lake import LakeError

    lake = _lake()
    try:
        key = lake.partition_file(layout.data_docs(run_id), "index.html")
    except LakeError:
        raise HTTPException(status.HTTP_404_NOT_FOUND, f"no Data Docs for validation run {run_id}") from None
    return RedirectResponse(links.report(key))


@app.get("/mlflow/runs/{run_id}")
def mlflow_run(run_id: str, _: Authorized) -> Response:
    return RedirectResponse(f"{_mlflow_ui()}/#/runs/{run_id}")


@app.get("/mlflow/models/{name}/versions/{version}")
def model_version(name: str, version: str, _: Authorized) -> Response:
    return RedirectResponse(f"{_mlflow_ui()}/#/models/{name}/versions/{version}")


@app.get("/mlflow/drift-trend")
def drift_trend(_: Authorized) -> Response:
    """The drift monitor's run in the MLflow UI: each daily check's figures as charts over days."""
    from mlflow import MlflowClient

    from jobs.settings import get_settings
    from jobs.storage.monitoring import monitoring_run

    settings = get_settings()
    client = MlflowClient(tracking_uri=settings.resolved_tracking_uri, registry_uri=settings.resolved_tracking_uri)
    run_id = monitoring_run(client, settings, create=False)
    if run_id is None:
        raise HTTPException(status.HTTP_404_NOT_FOUND, "no drift check has been logged yet")
    experiment_id = client.get_run(run_id).info.experiment_id
    return RedirectResponse(f"{_mlflow_ui()}/#/experiments/{experiment_id}/runs/{run_id}/model-metrics")


def newest_reports(lake, limit: int = _NEWEST) -> dict[str, list[tuple[str, str]]]:
    """(title, path) of the newest gate reports, drift reports and Data Docs sites."""
    keys = lake.list
    gate = sorted((k for k in keys(layout.GATE_REPORTS) if k.endswith(".html")), reverse=True)[:limit]
    drift = sorted((k for k in keys(layout.DRIFT_REPORTS) if k.endswith("/drift.html")), reverse=True)[:limit]
    docs_root = layout.DATA_DOCS + "/"
    runs = sorted({k[len(docs_root):].split("/", 1)[0] for k in keys(layout.DATA_DOCS)
                   if k.endswith("/index.html")}, reverse=True)[:limit]
    return {
        "Gate reports": [(k.removeprefix(f"{layout.GATE_REPORTS}/"), links.report(k)) for k in gate],
        "Drift reports": [(k.removeprefix(f"{layout.DRIFT_REPORTS}/"), links.report(k)) for k in drift],
        "Data Docs (validation runs)": [(run, links.data_docs(run)) for run in runs],
    }


@app.get("/", response_class=HTMLResponse)
def index(_: Authorized) -> str:
    """The newest reports, and the MLflow UI."""
    lake = _lake()
    sections = []
    for title, items in newest_reports(lake).items():
        rows = "".join(f'<li><a href="{escape(path)}">{escape(name)}</a></li>' for name, path in items)
        sections.append(f"<h2>{escape(title)}</h2><ul>{rows or '<li>none yet</li>'}</ul>")
    return (f"<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\"><title>Pipeline reports</title></head>"
            f"<body style=\"font-family: system-ui, sans-serif; margin: 2rem\"><h1>Pipeline reports</h1>"
            f"<p>Lake: <code>{escape(lake.uri)}</code> &middot; <a href=\"{escape(_mlflow_ui())}\">MLflow UI</a>"
            f" &middot; <a href=\"{links.drift_trend()}\">Drift trend</a> (every day's drift figures)</p>"
            + "".join(sections) + "</body></html>")
