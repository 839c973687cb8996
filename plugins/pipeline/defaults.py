"""Settings every DAG of the project shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from pipeline.notify import on_failure

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["fraud-detection"]
# One slot: promotions and rollbacks never run at the same time (scripts/env.sh creates it).
PROMOTION_POOL = "model_promotion"

_FAILURE_NOTIFIERS = on_failure()

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=2),
    # A task that fails for good mails PIPELINE_NOTIFY_EMAIL (pipeline.notify); none when unset.
    **({"on_failure_callback": _FAILURE_NOTIFIERS} if _FAILURE_NOTIFIERS else {}),
}

# Steps skip when their inputs equal those of their last success (jobs/storage/unchanged.py); a person
# re-runs anyway with "force" in the trigger form (or a backfill's conf: {"force": true}).
FORCE_ARG = "{{ '--force' if params.force else '' }}"


def force_param():
    from airflow.sdk import Param

    return Param(False, type="boolean", title="Force",
                 description="Run even when the inputs (table files, model, code, parameters) are those of the "
                             "last success, which otherwise skips, saying so in the log.")
