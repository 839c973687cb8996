"""Runners: where a job's command line executes. Chosen by ``PIPELINE_JOB_RUNNER``, never by a DAG.

Every runner takes the same :class:`JobSpec` and returns the job's JSON result (see
``jobs.result``). ``local`` runs a subprocess on the worker (embedded default and tests).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from collections import deque
from dataclasses import dataclass, field

from jobs.result import RESULT_FILE_ENV, RESULT_MARKER, DataRejected

RUNNER_ENV = "PIPELINE_JOB_RUNNER"
DATA_REJECTED_EXIT = DataRejected.exit_code  # retrying cannot help


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
        self.retryable = exit_code != DATA_REJECTED_EXIT


class LocalRunner:
    """Runs the job as a subprocess of the worker, streaming its output into the task log."""

    name = "local"

    def __init__(self):
        self._proc: subprocess.Popen | None = None

    def run(self, spec: JobSpec, log) -> dict:
        with tempfile.TemporaryDirectory(prefix=f"job-{spec.step}-") as tmp:
            result_file = os.path.join(tmp, "result.json")
            env = {**os.environ, **spec.env, RESULT_FILE_ENV: result_file, "PYTHONUNBUFFERED": "1"}
            cmd = [sys.executable, *spec.command[1:]]
            log.info("local runner: %s (resources %s; a local process uses what the host has)",
                     " ".join(spec.command), spec.resources)
            tail: deque[str] = deque(maxlen=40)
            error_lines: list[str] = []
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
                    error_lines.append(line.removeprefix("ERROR: "))
            code = self._proc.wait()
            self._proc = None
            if code != 0:
                message = "\n".join(error_lines) or "\n".join(list(tail)[-15:])
                raise JobFailed(spec.step, code, message)
            with open(result_file, encoding="utf-8") as fh:
                return json.load(fh)

    def kill(self) -> None:
        if self._proc is not None and self._proc.poll() is None:
            self._proc.terminate()


RUNNERS = {"local": LocalRunner}


def get_runner(name: str | None = None):
    """The configured runner (``PIPELINE_JOB_RUNNER``, default ``local``)."""
    name = name or os.environ.get(RUNNER_ENV, "local")
    try:
        return RUNNERS[name]()
    except KeyError:
        raise ValueError(f"{RUNNER_ENV}={name!r} is not a known runner; choose one of {sorted(RUNNERS)}") from None
