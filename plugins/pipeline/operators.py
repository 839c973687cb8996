"""``JobOperator``: a DAG declares a job (step, arguments, resources); the runner decides where."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowException, AirflowFailException

from pipeline.dates import partition_date
from pipeline.runners import JobFailed, JobSpec, Resources, get_runner

# Result values small enough to ride along in an asset event's extra.
_EXTRA_TYPES = (str, int, float, bool)


class JobOperator(BaseOperator):
    """Run ``python -m jobs <step> --date <date> [--run-id <run>] <arguments>`` with the configured runner.

    The job's JSON result becomes this task's XCom ``return_value`` and the extra of every
    asset event it emits. A job that rejects its data (exit code 3) fails without retries.
    """

    template_fields: Sequence[str] = ("arguments", "date", "env")
    ui_color = "#e8f4ff"

    def __init__(
        self,
        *,
        step: str,
        arguments: Sequence[str] = (),
        date: str | None = None,
        pass_date: bool = True,
        pass_run_id: bool = False,
        job_resources: Resources = Resources(),
        env: dict[str, str] | None = None,
        **kwargs,
    ):
        kwargs.setdefault("task_id", step)
        super().__init__(**kwargs)
        self.step = step
        self.arguments = list(arguments)
        self.date = date
        self.pass_date = pass_date
        self.pass_run_id = pass_run_id
        self.job_resources = job_resources
        self.env = env or {}
        self._runner = None

    def build_spec(self, context) -> JobSpec:
        args = []
        if self.pass_date:
            args += ["--date", self.date or partition_date(context)]
        if self.pass_run_id:
            args += ["--run-id", _safe_run_id(context["run_id"])]
        return JobSpec(self.step, args + [str(a) for a in self.arguments], self.job_resources, dict(self.env))

    def execute(self, context):
        spec = self.build_spec(context)
        self._runner = get_runner()
        try:
            result = self._runner.run(spec, self.log)
        except JobFailed as exc:
            if exc.retryable:
                raise AirflowException(str(exc)) from None
            raise AirflowFailException(str(exc)) from None
        extra = {"step": self.step, **{k: v for k, v in result.items() if isinstance(v, _EXTRA_TYPES)}}
        for key in ("silver_dates", "dates"):
            if key in result:
                extra[key] = result[key]
        for outlet in self.outlets:
            context["outlet_events"][outlet].extra = extra
        return result

    def on_kill(self) -> None:
        if self._runner is not None:
            self._runner.kill()


def _safe_run_id(run_id: str) -> str:
    """Airflow run ids hold ':' and '+'; lake keys and file names should not."""
    return "".join(c if c.isalnum() or c in "-_." else "_" for c in run_id)
