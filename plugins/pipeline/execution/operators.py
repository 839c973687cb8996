"""Job tasks: a DAG declares a job (step, arguments, resources); configuration decides where it runs.

``job_task(...)`` returns, by ``PIPELINE_JOB_RUNNER`` at parse time:

- ``local``: :class:`LocalJobOperator`, a subprocess on the worker;
- ``docker``: ``pipeline.execution.docker_job.DockerJobOperator`` (the Docker provider's ``DockerOperator``);
- ``kubernetes``: ``pipeline.execution.kubernetes_job.KubernetesJobOperator`` (``KubernetesPodOperator``).

All three run ``python -m jobs <step> --date <date> [--run-id <run>] <arguments>``, turn the job's
JSON result into the task's XCom ``return_value`` and the extra of every asset event the task
emits, skip the task when the job found its inputs unchanged (``force`` in the trigger form
re-runs), and fail without retries when the job rejected its data (exit code 3), found no input
(exit code 4) or found its host without a runtime it needs (exit code 5: Java for Spark). Each shows
the links of its job's result (``pipeline.web.links``: MLflow run, model version, gate report, drift
report, Data Docs) on the task instance. The DAG files never change when the runner does.
"""
from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator

from pipeline.execution.local_job import LocalJobOperator
from pipeline.execution.runners import Resources, runner_name
from pipeline.execution.task import JobTask, airflow_identity

__all__ = ["JobTask", "LocalJobOperator", "airflow_identity", "job_task"]


def job_task(*, step: str, arguments: Sequence[str] = (), date: str | None = None, pass_date: bool = True,
             pass_run_id: bool = False, job_resources: Resources = Resources(), env: dict[str, str] | None = None,
             runner: str | None = None, **kwargs) -> BaseOperator:
    """The operator running ``python -m jobs <step> ...`` with the configured runner (see the module doc)."""
    name = runner_name(runner)
    if name == "docker":
        from pipeline.execution.docker_job import DockerJobOperator as operator_class
    elif name == "kubernetes":
        from pipeline.execution.kubernetes_job import KubernetesJobOperator as operator_class
    else:
        operator_class = LocalJobOperator
    kwargs.setdefault("task_id", step)
    # Each key of the job's result is an XCom of its own too, so a DAG passes values on as
    # XComArgs (``train.output["model_version"]``), never as Jinja strings naming task ids.
    kwargs.setdefault("multiple_outputs", True)
    return operator_class(step=step, arguments=arguments, date=date, pass_date=pass_date, pass_run_id=pass_run_id,
                          job_resources=job_resources, env=env, **kwargs)
