"""
### Build features (silver -> gold, Spark)

**Consumes** `silver/transactions` (Asset `silver_transactions`): one run per day partition
that ingestion publishes (partition key = the date).

**Produces** `gold/features/date=*/` (Asset `gold_features`): point-in-time per-card features
(rolling counts and sums over 1 h / 24 h / 7 d, amount vs the card's history, time since the
previous transaction, category and country novelty). A feature only uses transactions strictly
before its own, so training and scoring see the same thing.

**Runs on** Spark: `local[*]` by default, a cluster when `PIPELINE_SPARK_MASTER` points at one.

**Re-run** any range safely: each date partition is replaced atomically. **Backfill** a date
range from the UI's Backfill option (or `POST /api/v2/backfills`): one run per day; clear one
partition's run to recompute it. A manual run with `start_date`/`date` rebuilds a range in one
Spark job (e.g. after a feature change).

**Then** `online`: the scoring service's batch layer loads silver's last 7 days into the online
store (SQLite on the embedded default, Redis in the stack) and expires what left the window.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param
from pipeline.assets import GOLD_FEATURES, SILVER_TRANSACTIONS
from pipeline.dates import plan_dates
from pipeline.defaults import DEFAULT_ARGS, FORCE_ARG, START_DATE, TAGS, force_param
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources
from pipeline.timetables import DailyPartitionedAssets

with DAG(
    dag_id="build_features",
    doc_md=__doc__,
    schedule=DailyPartitionedAssets(assets=SILVER_TRANSACTIONS),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "features", "spark"],
    params={
        "force": force_param(),
        "start_date": Param(None, type=["null", "string"], format="date", title="First date",
                            description="First date to build. Empty: the last date alone."),
        "date": Param(None, type=["null", "string"], format="date", title="Last date",
                      description="Last date to build. Empty: the run's partition key."),
    },
) as dag:

    plan = plan_dates()
    features = job_task(
        step="features",
        date=plan["end"],
        arguments=["--start", plan["start"], FORCE_ARG],
        pass_run_id=True,
        job_resources=Resources(cpu=2, memory_gb=4),
        outlets=[GOLD_FEATURES],
        doc_md="Builds gold features with Spark for the planned dates; each date is published atomically.",
    )
    online = job_task(
        step="online",
        date=plan["end"],
        arguments=[FORCE_ARG],
        trigger_rule="none_failed",  # features unchanged: the store may still lack the days (a Redis restarted)
        job_resources=Resources(cpu=1, memory_gb=1),
        doc_md="The scoring service's batch layer: silver's 7 days up to the date into the online store "
               "(days it holds unchanged are skipped), then what left the window expires.",
    )
    plan >> features >> online


if __name__ == "__main__":
    dag.test()
