"""Extra links on job tasks, and what the report view may serve.

The browser side (the UI shows the links, each opens its report) is tested end to end in
tests/e2e/test_pipeline.py and tests/e2e/test_s3_ingestion.py; here, fast, the parts a refactor
could break quietly: every runner's operator carries the links, the serialized DAG names them for
the API server, a link reads its job's result, and the view's key filter refuses anything but reports.
"""

from pathlib import Path

import pytest
from pipeline.web.links import JOB_LINKS, ui_address

from jobs.shared import links

ROOT = Path(__file__).resolve().parents[2]
NAMES = {"MLflow run", "Model version", "Gate report", "Drift report", "Data Docs", "Drift trend", "Service health",
         "Service metrics"}


@pytest.mark.parametrize("runner", ["local", "docker", "kubernetes"])
def test_every_job_task_of_every_runner_carries_the_links(monkeypatch, runner):
    from airflow.dag_processing.dagbag import DagBag
    from airflow.serialization.serialized_objects import OperatorSerialization
    from pipeline.execution.operators import JobTask

    monkeypatch.setenv("PIPELINE_JOB_RUNNER", runner)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    tasks = [(dag, t) for dag in bag.dags.values() for t in dag.tasks if isinstance(t, JobTask)]
    assert tasks
    for dag, task in tasks:
        assert {link.name for link in task.operator_extra_links} >= NAMES, (dag.dag_id, task.task_id)
        encoded = OperatorSerialization.serialize_operator(task)
        assert set(encoded["_operator_extra_links"]) >= NAMES  # what the API server reads them by


def test_a_link_is_what_the_job_result_names(monkeypatch):
    class Task:
        job_result = {"links": {"Gate report": links.report("reports/gate/date=2026-06-20/v3.html"),
                                "Model version": links.model_version("fraud-detector", "3"),
                                "Service health": "http://scoring:8000/readyz"}}

    monkeypatch.delenv("AIRFLOW__API__BASE_URL", raising=False)
    got = {link.name: link.get_link(Task(), ti_key=None) for link in JOB_LINKS}
    assert got == {"Gate report": "/pipeline/lake/reports/gate/date=2026-06-20/v3.html",
                   "Model version": "/pipeline/mlflow/models/fraud-detector/versions/3",
                   "Service health": "http://scoring:8000/readyz",  # a service's own address
                   "MLflow run": "", "Drift report": "", "Data Docs": "", "Drift trend": "",
                   "Service metrics": ""}  # empty: hidden
    monkeypatch.setenv("AIRFLOW__API__BASE_URL", "https://airflow.example.com/")
    assert ui_address() == "https://airflow.example.com/"
    assert JOB_LINKS[1].get_link(Task(), ti_key=None) == \
        "https://airflow.example.com/pipeline/mlflow/models/fraud-detector/versions/3"


def test_a_failed_job_has_no_links():
    class Task:
        job_result = None

    assert {link.get_link(Task(), ti_key=None) for link in JOB_LINKS} == {""}


@pytest.mark.parametrize("key", [
    "reports/gate/date=2026-06-20/v1.html",
    "reports/drift/date=2026-06-20/drift.html",
    "reports/data_docs/manual__2026-06-20T00_00_00_00_00/_v-0001/validations/x.html",
])
def test_the_view_serves_reports(key):
    assert links.servable(key)


@pytest.mark.parametrize("key", [
    "", "/etc/passwd", "silver/transactions/_delta_log/00000000000000000000.json", "raw/transactions/x.csv",
    "reports/../silver/transactions/part-0.parquet", "reports//x", "reports/./x", "reports\\..\\x",
    "quarantine/rows/part-0.parquet", "_ledger/objects/part-0.parquet",
])
def test_the_view_refuses_data_and_paths_out_of_the_reports(key):
    assert not links.servable(key)
