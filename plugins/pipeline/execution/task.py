"""What every job operator shares (:class:`JobTask`): the job's command line, its JSON result as
XCom and asset-event extras, skips for unchanged inputs and the failure modes that must not retry.

The base lives apart from the factory that picks an operator (:mod:`pipeline.execution.operators`),
so the Docker and Kubernetes operators import it without an import cycle."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk.exceptions import AirflowException, AirflowFailException, AirflowSkipException

from jobs.shared.result import NOT_RETRYABLE
from pipeline.dates import partition_date
from pipeline.execution.runners import JobSpec, Resources

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
        # A template may render to nothing, an XComArg to None: neither is an argument.
        args += [str(a) for a in self.job_arguments if a is not None and str(a) != ""]
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
        if result.get("recheck_after_seconds"):
            self._defer_recheck(float(result["recheck_after_seconds"]), result)
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

    def _defer_recheck(self, seconds: float, result: dict) -> None:
        """The job asked to be run again later (a watch, not done yet): the task defers to the triggerer
        for ``seconds`` (no worker slot waits) and then runs the job again (:meth:`recheck`)."""
        from datetime import timedelta

        from airflow.providers.standard.triggers.temporal import TimeDeltaTrigger

        self.log.info("%s; the job runs again in %.0f s (deferred: no worker slot waits)",
                      result.get("reason") or "not done yet", seconds)
        self.defer(trigger=TimeDeltaTrigger(timedelta(seconds=seconds)), method_name="recheck")

    def recheck(self, context, event=None):
        """Resumed after a deferral the job asked for: run it again."""
        return self.execute(context)

    def job_failed(self, exit_code: int, message: str):
        """The Airflow exception for a failed job: no retry when retrying cannot help."""
        text = f"job '{self.step}' exited with code {exit_code}: {message}"
        if exit_code in NOT_RETRYABLE:
            return AirflowFailException(text)
        return AirflowException(text)


def airflow_identity(context) -> dict[str, str]:
    """The real run id, DAG, task and the task instance's URL, for the job to record (MLflow tags, logs)
    and to key what its tries share (training checkpoints)."""
    ti = context.get("ti")
    url = ""
    try:
        url = ti.log_url if ti is not None else ""
    except Exception:  # noqa: BLE001 - a URL is a convenience, never a reason to fail the task
        url = ""
    task_id = str(getattr(ti, "task_id", "") or "")
    map_index = getattr(ti, "map_index", -1)
    if isinstance(map_index, int) and map_index >= 0:
        task_id += f"[{map_index}]"
    # Never the try number: every try of a task shares its identity (a retry resumes a checkpoint).
    return {"PIPELINE_AIRFLOW_RUN_ID": str(context.get("run_id") or ""), "PIPELINE_AIRFLOW_TASK_URL": url,
            "PIPELINE_AIRFLOW_DAG_ID": str(getattr(ti, "dag_id", "") or ""), "PIPELINE_AIRFLOW_TASK_ID": task_id}


def _safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; lake keys and file names should not."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
