"""The job as a subprocess of the Airflow worker (``PIPELINE_JOB_RUNNER=local``)."""

from __future__ import annotations

from collections.abc import Sequence

from airflow.sdk import BaseOperator

from pipeline.execution.runners import JobFailed, LocalRunner, Resources
from pipeline.execution.task import JobTask
from pipeline.web.links import JOB_LINKS


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
