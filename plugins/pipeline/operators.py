"""Job tasks: a DAG declares a job (step, arguments, resources); configuration decides where it runs.

``job_task(...)`` returns, by ``PIPELINE_JOB_RUNNER`` at parse time:

- ``local``: :class:`LocalJobOperator`, a subprocess on the worker;
- ``docker``: ``pipeline.docker_job.DockerJobOperator`` (the Docker provider's ``DockerOperator``);
- ``kubernetes``: ``pipeline.kubernetes_job.KubernetesJobOperator`` (``KubernetesPodOperator``).

All three run ``python -m jobs <step> --date <date> [--run-id <run>] <arguments>``, turn the job's
JSON result into the task's XCom ``return_value`` and the extra of every asset event the task
emits, skip the task when the job found its inputs unchanged (``force`` in the trigger form
re-runs), and fail without retries when the job rejected its data (exit code 3), found no input
(exit code 4) or found its host without a runtime it needs (exit code 5: Java for Spark). Each shows
the links of its job's result (``pipeline.links``: MLflow run, model version, gate report, drift
report, Data Docs) on the task instance. The DAG files never change when the runner does.
"""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from jobs.result import NOT_RETRYABLE
from pipeline.dates import partition_date
from pipeline.links import JOB_LINKS
from pipeline.runners import JobFailed, JobSpec, LocalRunner, Resources, runner_name

# Result values small enough to ride along in an asset event's extra.
_EXTRA_TYPES = (str, int, float, bool)


class JobTask:
    """What every job operator shares: the job's command line, its result and its failure modes."""

    job_template_fields: tuple[str, ...] = ("job_arguments", "date", "job_env")
    job_result: dict | None = None  # the job's result, once it ended: read by the task's extra links

    def _init_job(self, *, step: str, arguments: Sequence[str], date: str | None, pass_date: bool,
                  pass_run_id: bool, job_resources: Resources, env: dict[str, str] | None) -> None:
        self.step = step
        self.job_arguments = list(arguments)
        self.date = date
        self.pass_date = pass_date
        self.pass_run_id = pass_run_id
        self.job_resources = job_resources
        self.job_env = dict(env or {})

    def build_spec(self, context) -> JobSpec:
        args = []
        if self.pass_date:
            args += ["--date", self.date or partition_date(context)]
        if self.pass_run_id:
            args += ["--run-id", _safe_run_id(context["run_id"])]
        args += [str(a) for a in self.job_arguments if str(a) != ""]  # a template may render to nothing
        return JobSpec(self.step, args, self.job_resources, {**airflow_identity(context), **self.job_env})

    def publish(self, result: dict, context) -> dict:
        """The job's result becomes the extra of every asset event this task emits, and the dates
        it published (``dates``) the events' partition keys.

        A job that found its inputs unchanged since the last success of *another* run (``skipped``
        in its result) makes the task *skipped*: its result stays readable in XCom, no asset event
        is emitted and nothing downstream runs, since nothing changed. When the work it found done
        is this run's own (a retry after a crash past the job's commit, or a person clearing the
        task), the events go out as they would have: downstream may never have heard of the work,
        and decides for itself whether anything changed.
        """
        self.job_result = result
        if result.get("skipped"):
            if result.get("unchanged_since") != str(context.get("run_id") or ""):
                context["ti"].xcom_push(key="return_value", value=result)
                raise AirflowSkipException(result.get("skip_reason") or "unchanged since the last success: skipped")
            self.log.info("%s; the work is this run's own (an earlier try, or the task was cleared): its asset "
                          "events go out again, so downstream hears of it", result.get("skip_reason", "done"))
        extra = {"step": self.step, **{k: v for k, v in result.items() if isinstance(v, _EXTRA_TYPES)}}
        for outlet in self.outlets:
            event = context["outlet_events"][outlet]
            event.extra = extra
            # One partition key per date the job published: one downstream run per date, also
            # when this run has no key of its own (a manual range build or `airflow dags test`).
            if result.get("dates"):
                event.add_partitions([str(d) for d in result["dates"]])
        return result

    def job_failed(self, exit_code: int, message: str):
        """The Airflow exception for a failed job: no retry when retrying cannot help."""
        text = f"job '{self.step}' exited with code {exit_code}: {message}"
        if exit_code in NOT_RETRYABLE:
            return AirflowFailException(text)
        return AirflowException(text)


class LocalJobOperator(JobTask, BaseOperator):
    """Runs the job as a subprocess of the Airflow worker (``PIPELINE_JOB_RUNNER=local``)."""

    template_fields: Sequence[str] = JobTask.job_template_fields
    operator_extra_links = JOB_LINKS
    ui_color = "#e8f4ff"

    def __init__(self, *, step: str, arguments: Sequence[str] = (), date: str | None = None,
                 pass_date: bool = True, pass_run_id: bool = False, job_resources: Resources = Resources(),
                 env: dict[str, str] | None = None, **kwargs):
        super().__init__(**kwargs)
        self._init_job(step=step, arguments=arguments, date=date, pass_date=pass_date, pass_run_id=pass_run_id,
                       job_resources=job_resources, env=env)
        self._runner: LocalRunner | None = None

    def execute(self, context):
        spec = self.build_spec(context)
        self._runner = LocalRunner()
        try:
            result = self._runner.run(spec, self.log)
        except JobFailed as exc:
            raise self.job_failed(exc.exit_code, str(exc).split(": ", 1)[-1]) from None
        return self.publish(result, context)

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.kill()


def job_task(*, step: str, arguments: Sequence[str] = (), date: str | None = None, pass_date: bool = True,
             pass_run_id: bool = False, job_resources: Resources = Resources(), env: dict[str, str] | None = None,
             runner: str | None = None, **kwargs) -> BaseOperator:
    """The operator running ``python -m jobs <step> ...`` with the configured runner (see the module doc)."""
    name = runner_name(runner)
    if name == "docker":
        from pipeline.docker_job import DockerJobOperator as operator_class
    elif name == "kubernetes":
        from pipeline.kubernetes_job import KubernetesJobOperator as operator_class
    else:
        operator_class = LocalJobOperator
    kwargs.setdefault("task_id", step)
    return operator_class(step=step, arguments=arguments, date=date, pass_date=pass_date, pass_run_id=pass_run_id,
                          job_resources=job_resources, env=env, **kwargs)


def airflow_identity(context) -> dict[str, str]:
    """The real run id and the task instance's URL, for the job to record (MLflow tags, logs)."""
    ti = context.get("ti")
    url = ""
    try:
        url = ti.log_url if ti is not None else ""
    except Exception:  # noqa: BLE001 - a URL is a convenience, never a reason to fail the task
        url = ""
    return {"PIPELINE_AIRFLOW_RUN_ID": str(context.get("run_id") or ""), "PIPELINE_AIRFLOW_TASK_URL": url}


def _safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; lake keys and file names should not."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
