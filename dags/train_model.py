"""
### Train, evaluate, gate and promote the fraud model

**Consumes** `gold/features` over the training window ending at the run's date
(`PIPELINE_TRAIN_WINDOW_DAYS`, default 30). Runs whenever the drift monitor emits
`drift_detected` for a day (partition key = the last training day), when a person triggers it
with a date, and for every day of a backfill. (Airflow 3.3 does not let a partitioned asset event
start a non-partitioned DAG, so the drift-driven DAG is partitioned and has no nightly cron.)

**Produces** an MLflow run and a registered version of `fraud-detector` (ONNX + preprocessing +
training reference sample), a gate report in `reports/gate/` and in MLflow, and, only if the
gate passes, the `champion` alias on the new version (Asset `champion_model`).

**The gate** (`gate` task, its log shows every check): PR-AUC and ROC-AUC floors, ONNX parity
with PyTorch, scoring latency, and not worse than the current champion on the same frozen
holdout (the most recent `PIPELINE_HOLDOUT_DAYS` days). With no champion yet the floors decide.

**Human approval** (optional): with `PIPELINE_PROMOTION_APPROVAL=true` an `approve_promotion`
task (Airflow's HITL approval) waits up to 24 h for a person to approve the promotion in the UI.

**Roll back** with `python -m jobs rollback` (the previous champion keeps the
`previous-champion` alias).
"""

from __future__ import annotations

import os
from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task
from pipeline.assets import CHAMPION_MODEL, DRIFT_SIGNAL
from pipeline.defaults import DEFAULT_ARGS, FORCE_ARG, PROMOTION_POOL, START_DATE, TAGS, force_param
from pipeline.notify import DAY, on_event
from pipeline.operators import job_task
from pipeline.runners import Resources
from pipeline.timetables import DailyPartitionedAssets

TRAIN_PROCESSES = int(os.environ.get("PIPELINE_TRAIN_PROCESSES", "1"))
# PIPELINE_PROMOTION_APPROVAL=true: a person approves each promotion in the UI (Airflow HITL).
PROMOTION_APPROVAL = os.environ.get("PIPELINE_PROMOTION_APPROVAL", "false").lower() == "true"

with DAG(
    dag_id="train_model",
    doc_md=__doc__,
    schedule=DailyPartitionedAssets(assets=DRIFT_SIGNAL),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "training", "gpu"],
    params={
        "force": force_param(),
        "date": Param(None, type=["null", "string"], format="date", title="Last training date",
                      description="The training window ends here. Empty: the run's partition key."),
    },
) as dag:
    train = job_task(
        step="train",
        pass_run_id=True,
        # Only the drift monitor's asset event schedules this DAG, so asset-triggered means drift.
        # run_type renders as "DagRunType.SCHEDULED" under the scheduler: keep the plain value.
        arguments=["--trigger", "{{ 'drift' if dag_run.run_type == 'asset_triggered' else "
                                "(dag_run.run_type | string | replace('DagRunType.', '') | lower) }}", FORCE_ARG],
        # PIPELINE_TRAIN_PROCESSES > 1 trains with torchrun / DistributedDataParallel (one process per GPU).
        job_resources=Resources(cpu=4, memory_gb=8, gpu=TRAIN_PROCESSES, processes=TRAIN_PROCESSES),
        doc_md="Fits the PyTorch model (CUDA + bf16 when present, else CPU), exports ONNX, registers a version.",
    )
    evaluate = job_task(
        step="evaluate",
        arguments=["--model-version", "{{ ti.xcom_pull(task_ids='train')['model_version'] }}"],
        job_resources=Resources(cpu=2, memory_gb=4),
        doc_md="Scores challenger and champion on the frozen holdout and writes the gate report.",
    )

    @task.branch
    def gate(**context) -> str:
        """Promotes only when every gate check passed; the verdict and each check are logged here."""
        result = context["ti"].xcom_pull(task_ids="evaluate")
        print(f"Gate verdict for v{result['model_version']}: {result['verdict']}")
        for name, passed in result["checks"].items():
            print(f"  {name}: {'pass' if passed else 'FAIL'}")
        print(f"Report: {result['report']}")
        if not result["passed"]:
            return "keep_champion"
        return "approve_promotion" if PROMOTION_APPROVAL else "promote"

    promote = job_task(
        step="promote",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=["--model-version", "{{ ti.xcom_pull(task_ids='train')['model_version'] }}"],
        outlets=[CHAMPION_MODEL],
        on_success_callback=on_event(
            "PROMOTED fraud-detector v{{ ti.xcom_pull(task_ids='train')['model_version'] }} to champion "
            f"(trained up to {DAY})",
            "{{ ti.xcom_pull(task_ids='evaluate')['verdict'] }}"),
        doc_md="Moves the champion alias to the new version (the old one becomes previous-champion).",
    )
    keep_champion = EmptyOperator(
        task_id="keep_champion",
        on_success_callback=on_event(
            "GATE REFUSED fraud-detector v{{ ti.xcom_pull(task_ids='train')['model_version'] }} "
            f"(trained up to {DAY})",
            "{{ ti.xcom_pull(task_ids='evaluate')['verdict'] }}"),
        doc_md="The challenger failed the gate: nothing changes.")

    decision = train >> evaluate >> gate()
    if PROMOTION_APPROVAL:
        from airflow.providers.standard.operators.hitl import ApprovalOperator

        approve = ApprovalOperator(
            task_id="approve_promotion",
            subject="Promote fraud-detector v{{ ti.xcom_pull(task_ids='train')['model_version'] }} to champion?",
            body="{{ ti.xcom_pull(task_ids='evaluate')['verdict'] }}\n\n"
                 "Gate report: {{ ti.xcom_pull(task_ids='evaluate')['report'] }}",
            response_timeout=timedelta(hours=24),
            execution_timeout=None,
            retries=0,
            doc_md="Waits for a person to approve (or reject) the promotion the gate allowed.",
        )
        decision >> [approve, keep_champion]
        approve >> promote
    else:
        decision >> [promote, keep_champion]
