"""The job result protocol shared by every runner.

A job ends by emitting one small JSON object (URIs, counts, metrics; never data). It is
written to ``$PIPELINE_JOB_RESULT_FILE`` when set (local runner, Kubernetes' xcom sidecar
path) and always printed as the last stdout line after :data:`RESULT_MARKER` (Docker, where
the operator returns the last log line).
"""

from __future__ import annotations

import json
import os
import sys

RESULT_MARKER = "::pipeline-result::"
RESULT_FILE_ENV = "PIPELINE_JOB_RESULT_FILE"


class JobError(RuntimeError):
    """A job refused its input or failed in a way a person must act on.

    The message is shown as-is in the Airflow task log and failure: it must name the file,
    the counts and the rule that broke.
    """

    exit_code = 1


class DataRejected(JobError):
    """Input data broke its contract; it was quarantined and the pipeline must stop."""

    exit_code = 3


class MissingInput(JobError):
    """The lake holds nothing for the job to work on (no features for the window, no champion).

    Retrying minutes later cannot help: an upstream step must run first. Runners fail the task
    at once instead of retrying, so a run for a date without data never blocks the next run.
    """

    exit_code = 4


class MissingRuntime(JobError):
    """The host lacks a runtime the job needs (Java 17+ for Spark).

    A retry on the same host or image meets the same lack: runners fail the task at once, with the
    message saying what to install.
    """

    exit_code = 5


NOT_RETRYABLE = frozenset({DataRejected.exit_code, MissingInput.exit_code, MissingRuntime.exit_code})


def emit(result: dict) -> dict:
    """Publish the job's result for whichever runner started it."""
    payload = json.dumps(result, sort_keys=True, default=str)
    path = os.environ.get(RESULT_FILE_ENV)
    if path and os.environ.get("RANK", "0") == "0":  # under torchrun, rank 0 speaks for the job
        with open(path, "w", encoding="utf-8") as fh:
            fh.write(payload)
    sys.stdout.write(f"{RESULT_MARKER}{payload}\n")
    sys.stdout.flush()
    return result


def parse_result_line(line: str) -> dict | None:
    """The result carried by a log line, or None for any other line."""
    line = line.strip()
    if line.startswith(RESULT_MARKER):
        return json.loads(line[len(RESULT_MARKER):])
    return None
