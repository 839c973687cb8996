"""Settings every DAG of the project shares."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

START_DATE = datetime(2026, 1, 1, tzinfo=UTC)
TAGS = ["fraud-detection"]
# One slot: promotions and rollbacks never run at the same time (scripts/env.sh creates it).
PROMOTION_POOL = "model_promotion"

DEFAULT_ARGS = {
    "owner": "ml-platform",
    "retries": 2,
    "retry_delay": timedelta(minutes=2),
    "retry_exponential_backoff": True,
    "execution_timeout": timedelta(hours=2),
}
