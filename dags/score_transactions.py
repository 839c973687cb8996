"""
### Score transactions with the champion (onnxruntime)

**Consumes** `gold/features` (Asset `gold_features`): one run per day partition a feature build
published, scored with the model version that holds the `champion` alias. **Backfill** a date
range from the UI's Backfill option (or `POST /api/v2/backfills`).

**Produces** `predictions/date=*/` (Asset `fraud_predictions`): fraud probability per
transaction, with the model name and version that scored it. Published atomically per date.

**Safety**: the ONNX file's SHA-256 is checked against the registry before any row is scored;
a mismatch fails the task. Uses onnxruntime's CUDA provider when a GPU is really usable, CPU
otherwise (the log says which).
"""

from __future__ import annotations

from airflow.sdk import DAG, Param
from pipeline.assets import GOLD_FEATURES, PREDICTIONS
from pipeline.dates import plan_dates
from pipeline.defaults import DEFAULT_ARGS, FORCE_ARG, START_DATE, TAGS, force_param
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources
from pipeline.timetables import DailyPartitionedAssets

with DAG(
    dag_id="score_transactions",
    doc_md=__doc__,
    schedule=DailyPartitionedAssets(assets=GOLD_FEATURES),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "scoring"],
    params={
        "force": force_param(),
        "start_date": Param(None, type=["null", "string"], format="date", title="First date",
                            description="First date to score. Empty: the last date alone."),
        "date": Param(None, type=["null", "string"], format="date", title="Last date",
                      description="Last date to score. Empty: the run's partition key."),
    },
) as dag:

    plan = plan_dates()
    score = job_task(
        step="score",
        date=plan["end"],
        arguments=["--start", plan["start"], FORCE_ARG],
        pass_run_id=True,
        job_resources=Resources(cpu=2, memory_gb=4),
        outlets=[PREDICTIONS],
        doc_md="Scores the planned dates with the champion's ONNX model after checking its hash.",
    )
    plan >> score


if __name__ == "__main__":
    dag.test()
