"""``PIPELINE_JOB_RUNNER=docker``: each job is a container of the job image (Docker provider).

The worker talks to a Docker engine (``PIPELINE_DOCKER_URL``; in docker-compose a socket proxy),
starts ``python -m jobs <step> ...`` in the CPU image, or in the GPU image with a GPU device
request when the job asks for GPUs and ``PIPELINE_JOB_GPUS`` is true, on ``PIPELINE_DOCKER_NETWORK``
so that it reaches the lake and MLflow by name. The worker's pipeline, AWS, MLflow and connection
variables are passed as environment; credentials only as ``private_environment`` (never rendered
or logged). The result is the job's last ``::pipeline-result::`` log line.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from airflow.providers.docker.exceptions import DockerContainerFailedException
from airflow.providers.docker.operators.docker import DockerOperator
from docker.types import DeviceRequest, Mount

from jobs.shared.result import parse_result_line
from pipeline.execution.runners import Resources, forwarded_env, job_message
from pipeline.execution.task import JobTask
from pipeline.settings import AirflowSettings
from pipeline.web.links import JOB_LINKS

_STATUS = re.compile(r"'StatusCode': (\d+)")


def docker_mounts(spec: str) -> list[Mount]:
    """``"name:/path,/host/dir:/path"`` -> named volumes and bind mounts."""
    mounts = []
    for item in filter(None, (part.strip() for part in spec.split(","))):
        source, _, target = item.partition(":")
        if not target:
            raise ValueError(f"PIPELINE_DOCKER_MOUNTS item {item!r} is not source:target")
        mounts.append(Mount(target=target, source=source, type="bind" if source.startswith("/") else "volume"))
    return mounts


class DockerJobOperator(JobTask, DockerOperator):
    """A job in a Docker container; see the module docstring."""

    template_fields: Sequence[str] = (*DockerOperator.template_fields, *JobTask.job_template_fields)
    operator_extra_links = (*DockerOperator.operator_extra_links, *JOB_LINKS)
    ui_color = "#d6ecff"

    def __init__(self, *, step: str, arguments: Sequence[str] = (), date: str | None = None,
                 pass_date: bool = True, pass_run_id: bool = False, job_resources: Resources = Resources(),
                 env: dict[str, str] | None = None, **kwargs):
        settings = AirflowSettings()
        gpu = settings.uses_gpu(job_resources)
        kwargs.setdefault("image", settings.image(job_resources))
        super().__init__(
            docker_url=settings.docker_url,
            network_mode=settings.docker_network or None,
            mounts=docker_mounts(settings.docker_mounts),
            cpus=job_resources.cpu,
            mem_limit=f"{job_resources.memory_gb:g}g",
            # torch's data loading and NCCL between GPU processes need more than Docker's 64 MB /dev/shm.
            shm_size=2 * 1024**3 if gpu or job_resources.processes > 1 else None,
            device_requests=[DeviceRequest(count=job_resources.gpu, capabilities=[["gpu"]])] if gpu else None,
            mount_tmp_dir=False,  # the worker's temp folder is not a path on the Docker host
            auto_remove="force",  # the log is in the task log; no container is left behind
            do_xcom_push=True,
            xcom_all=True,  # the result line is searched from the end, after any exit-time logging
            labels={"org.fraud-pipeline.step": step},
            **kwargs,
        )
        self._init_job(step=step, arguments=arguments, date=date, pass_date=pass_date, pass_run_id=pass_run_id,
                       job_resources=job_resources, env=env)

    def prepare(self, context, environ=None) -> None:
        """Fill in the container's command line and environment for this run."""
        spec = self.build_spec(context)
        self.entrypoint, self.command = spec.command[:1], spec.command[1:]
        plain, secret = forwarded_env(os.environ if environ is None else environ, spec.env, spec.step)
        self.environment = {**plain, "PYTHONUNBUFFERED": "1"}
        self._private_environment = secret
        self.labels = {**(self.labels or {}), "org.fraud-pipeline.dag": self.dag_id,
                       "org.fraud-pipeline.run": str(context.get("run_id", ""))[:63]}

    def execute(self, context):
        self.prepare(context)
        self.log.info("docker runner: %s %s in %s (resources %s)", " ".join(self.entrypoint),
                      " ".join(self.command), self.image, self.job_resources)
        try:
            lines = super().execute(context) or []
        except DockerContainerFailedException as exc:
            match = _STATUS.search(str(exc))
            raise self.job_failed(int(match.group(1)) if match else 1, job_message(exc.logs or [])) from None
        lines = [lines] if isinstance(lines, str) else lines
        for line in reversed(lines):
            result = parse_result_line(line)
            if result is not None:
                return self.publish(result, context)
        raise self.job_failed(1, "the container exited 0 without a ::pipeline-result:: line")
