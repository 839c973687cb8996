"""Runners: where a job's command line executes. Chosen by ``PIPELINE_JOB_RUNNER``, never by a DAG.

Every job is the same ``python -m jobs <step> <arguments>`` (:class:`JobSpec`) and ends with the
same JSON result (see ``jobs.shared.result``):

- ``local``: a subprocess on the Airflow worker (embedded default and tests);
- ``docker``: a container of the job image, through the Docker provider's ``DockerOperator``;
- ``kubernetes``: a pod, through the cncf.kubernetes provider's ``KubernetesPodOperator``.

The container runners' knobs (images, GPUs, network, namespace, secrets) are the Airflow side's
settings (:class:`pipeline.settings.AirflowSettings`); :func:`forwarded_env` decides which of the
worker's variables a job sees.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tempfile
from collections import deque
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from jobs.shared.result import NOT_RETRYABLE, RESULT_FILE_ENV, RESULT_MARKER
from pipeline.settings import AirflowSettings

RUNNER_ENV = "PIPELINE_JOB_RUNNER"
RUNNER_NAMES = ("local", "docker", "kubernetes")


# Variables a job needs from the worker: its settings, the lake's and MLflow's client settings, and
# Airflow connections. The runner's own settings stay on the worker.
_FORWARDED_PREFIXES = ("PIPELINE_", "AWS_", "MLFLOW_", "AIRFLOW_CONN_")
# Settings of the worker alone: where jobs run, and who is told (jobs never mail: the SMTP
# credentials stay on the worker).
_RUNNER_ONLY = re.compile(r"^(PIPELINE_(JOB_(RUNNER|IMAGE|IMAGE_GPU|GPUS|RESULT_FILE)|DOCKER_\w+|K8S_\w+|NOTIFY_\w+|"
                          r"PREDICTIONS_DEADLINE_MINUTES)|AIRFLOW_CONN_SMTP\w*)$")
_SECRET_NAME = re.compile(r"SECRET|PASSWORD|TOKEN|ACCESS_KEY|CREDENTIAL|SIGNING_KEY|DEPLOY_KEY|^AIRFLOW_CONN_")
# The promotion identity (the MLflow user allowed to move aliases) goes to these jobs only.
PROMOTION_STEPS = frozenset({"promote", "rollback"})
_PROMOTION_ONLY = re.compile(r"^PIPELINE_PROMOTION_")
# The gate's signing key (jobs/storage/verdict.py) goes to the evaluate job only.
GATE_STEPS = frozenset({"evaluate"})
_GATE_ONLY = re.compile(r"^PIPELINE_GATE_SIGNING_KEY$")
# The scoring services' deploy key goes to the deploy job only; the online store's URL (it may hold
# Redis's password) to the online store's batch layer only.
DEPLOY_STEPS = frozenset({"deploy"})
_DEPLOY_ONLY = re.compile(r"^PIPELINE_SERVING_DEPLOY_KEY$")
ONLINE_STEPS = frozenset({"online"})
_STORE_ONLY = re.compile(r"^PIPELINE_SERVING_STORE_URL$")
_STEP_SCOPED = ((_PROMOTION_ONLY, PROMOTION_STEPS), (_GATE_ONLY, GATE_STEPS), (_DEPLOY_ONLY, DEPLOY_STEPS),
                (_STORE_ONLY, ONLINE_STEPS))


def reaches(key: str, step: str | None) -> bool:
    """Whether the worker variable ``key`` may reach the job ``step`` (step-scoped identities and keys)."""
    return all(step in steps for pattern, steps in _STEP_SCOPED if pattern.match(key))
_SECRET_IN_URI = re.compile(r"://[^/@\s]*:[^/@\s]*@")  # scheme://user:password@host


def forwarded_env(environ: Mapping[str, str], extra: Mapping[str, str] = (), step: str | None = None
                  ) -> tuple[dict, dict]:
    """The worker variables the job ``step`` gets, split into (plain, secret).

    Secret ones (credentials, connection URIs, URIs with a password) must never be written
    into a rendered template, an operator's fields or a pod spec in clear. The promotion
    identity (``PIPELINE_PROMOTION_*``) reaches the promote and rollback jobs only, the gate's
    signing key (``PIPELINE_GATE_SIGNING_KEY``) the evaluate job only, the scoring services' deploy
    key the deploy job only, the online store's URL the online job only.
    """
    plain, secret = {}, {}
    for key, value in {**environ, **dict(extra)}.items():
        if not key.startswith(_FORWARDED_PREFIXES) or _RUNNER_ONLY.match(key):
            continue
        if not reaches(key, step):
            continue
        target = secret if _SECRET_NAME.search(key) or _SECRET_IN_URI.search(value) else plain
        target[key] = value
    return plain, secret


def job_message(lines: Iterable[str]) -> str:
    """The job's own error text (its ``ERROR:`` block), else the last lines of its output."""
    lines = [line.rstrip("\n") for line in lines]
    error_lines: list[str] = []
    for line in lines:
        if line.startswith("ERROR: ") or (error_lines and line.startswith("  ")):
            error_lines.append(line.removeprefix("ERROR: "))
    return "\n".join(error_lines) or "\n".join(lines[-15:])


@dataclass(frozen=True)
class Resources:
    """What a job needs; container runners turn it into requests/limits and GPU devices."""

    cpu: float = 1.0
    memory_gb: float = 2.0
    gpu: int = 0
    processes: int = 1  # > 1: launched with torchrun, one process per GPU (or CPU workers with gloo)


@dataclass
class JobSpec:
    """A job = ``python -m jobs <step> <arguments>`` + resources + extra environment."""

    step: str
    arguments: list[str]
    resources: Resources = field(default_factory=Resources)
    env: dict[str, str] = field(default_factory=dict)

    @property
    def command(self) -> list[str]:
        if self.resources.processes > 1:
            return ["python", "-m", "torch.distributed.run", "--standalone",
                    f"--nproc-per-node={self.resources.processes}", "-m", "jobs", self.step, *self.arguments]
        return ["python", "-m", "jobs", self.step, *self.arguments]


class JobFailed(Exception):
    """The job exited non-zero; ``message`` is the job's own error text."""

    def __init__(self, step: str, exit_code: int, message: str):
        super().__init__(f"job '{step}' exited with code {exit_code}: {message}")
        self.exit_code = exit_code
        self.retryable = exit_code not in NOT_RETRYABLE  # rejected or missing input: retrying cannot help


class LocalRunner:
    """Runs the job as a subprocess of the worker, streaming its output into the task log."""

    name = "local"

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def run(self, spec: JobSpec, log) -> dict:
        with tempfile.TemporaryDirectory(prefix=f"job-{spec.step}-") as tmp:
            result_file = os.path.join(tmp, "result.json")
            env = {k: v for k, v in {**os.environ, **spec.env}.items()  # step-scoped identities: their jobs only
                   if reaches(k, spec.step)}
            env.update({RESULT_FILE_ENV: result_file, "PYTHONUNBUFFERED": "1"})
            cmd = [sys.executable, *spec.command[1:]]
            log.info("local runner: %s (resources %s; a local process uses what the host has)",
                     " ".join(spec.command), spec.resources)
            tail: deque[str] = deque(maxlen=40)
            error_lines: list[str] = []  # the ERROR block can be longer than the tail
            self._proc = subprocess.Popen(
                cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, bufsize=1
            )
            assert self._proc.stdout is not None
            for line in self._proc.stdout:
                line = line.rstrip("\n")
                if line.startswith(RESULT_MARKER):
                    continue  # read from the result file instead
                log.info("%s", line)
                tail.append(line)
                if line.startswith("ERROR: ") or (error_lines and line.startswith("  ")):
                    error_lines.append(line)
            code = self._proc.wait()
            self._proc = None
            if code != 0:
                message = job_message(error_lines or tail)
                raise JobFailed(spec.step, code, message)
            with open(result_file, encoding="utf-8") as fh:
                return json.load(fh)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()


def runner_name(name: str | None = None) -> str:
    """The configured runner (``PIPELINE_JOB_RUNNER``, default ``local``), checked."""
    name = name or AirflowSettings().job_runner
    if name not in RUNNER_NAMES:
        raise ValueError(f"{RUNNER_ENV}={name!r} is not a known runner; choose one of {', '.join(RUNNER_NAMES)}")
    return name


def get_runner(name: str | None = None) -> LocalRunner:
    """A runner that executes a :class:`JobSpec` in this process's host (``local``).

    The container runners are Airflow operators (``pipeline.execution.docker_job``,
    ``pipeline.execution.kubernetes_job``),
    chosen by :func:`pipeline.execution.operators.job_task` when the DAG is parsed.
    """
    if runner_name(name) != "local":
        raise ValueError(f"the {name} runner runs inside Airflow only (pipeline.execution.operators.job_task)")
    return LocalRunner()
