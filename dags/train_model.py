"""
### Train, evaluate, gate and promote the fraud model

**Consumes** `gold/features` over the training window ending at the run's date
(`PIPELINE_TRAIN_WINDOW_DAYS`, default 30). Runs whenever the drift monitor emits
`drift_detected` for a day (partition key = the last training day), when a person triggers it
with a date, and for every day of a backfill. (Airflow 3.3 does not let a partitioned asset event
start a non-partitioned DAG, so the drift-driven DAG is partitioned and has no nightly cron.)

**Produces** an MLflow run and a registered version of `fraud-detector` (ONNX + preprocessing +
training reference sample), a gate report in `reports/gate/` and in MLflow, and, only if the
gate passes, the `champion` alias on the new version (Asset `champion_model`), or, with
`PIPELINE_LIVE_EVALUATION=shadow|canary`, the `challenger` alias (Asset `challenger_model`): the
scoring services try it on live traffic and `watch_challenger` promotes it or takes it off.

**The gate** (`gate` task, its log shows every check): PR-AUC and ROC-AUC floors, ONNX parity
with PyTorch, scoring latency, and not worse than the current champion on the same frozen
holdout (the most recent `PIPELINE_HOLDOUT_DAYS` days). With no champion yet the floors decide.

**Human approval** (optional): with `PIPELINE_PROMOTION_APPROVAL=true`, a challenger that passed
its gate waits (`approve_promotion`, Airflow's HITL, up to 24 h) for a person to choose in the UI:
promote it, keep the champion, or roll the champion back, with a reason; the form shows the gate
table. `record_decision` records who decided what and why on the version in MLflow, and
`route_decision` follows the choice. No answer in time keeps the champion.

**Roll back** with `python -m jobs rollback` (the previous champion keeps the
`previous-champion` alias).
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task
from pipeline.approval import decision_arguments
from pipeline.assets import CHALLENGER_MODEL, CHAMPION_MODEL, DRIFT_SIGNAL
from pipeline.defaults import DEFAULT_ARGS, FORCE_ARG, PROMOTION_POOL, START_DATE, TAGS, force_param
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources
from pipeline.notify import DAY, on_event
from pipeline.settings import AirflowSettings
from pipeline.timetables import DailyPartitionedAssets

SETTINGS = AirflowSettings()
TRAIN_PROCESSES = SETTINGS.train_processes
# PIPELINE_PROMOTION_APPROVAL=true: a person approves each promotion in the UI (Airflow HITL).
PROMOTION_APPROVAL = SETTINGS.promotion_approval

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
        arguments=["--model-version", train.output["model_version"], FORCE_ARG],
        job_resources=Resources(cpu=2, memory_gb=4),
        doc_md="Scores challenger and champion on the frozen holdout and writes the gate report (reuses the "
               "verdict when nothing changed since the last evaluation of the version).",
    )

    @task.branch
    def gate(result: dict) -> str:
        """Promotes only when every gate check passed; the verdict and each check are logged here."""
        print(f"Gate verdict for v{result['model_version']}: {result['verdict']}")
        for name, passed in result["checks"].items():
            print(f"  {name}: {'pass' if passed else 'FAIL'}")
        print(f"Report: {result['report']}")
        if not result["passed"]:
            return "keep_champion"
        if result.get("live_evaluation", "off") != "off":  # PIPELINE_LIVE_EVALUATION: live traffic decides
            return "stage_challenger"
        return "approve_promotion" if PROMOTION_APPROVAL else "promote"

    promote = job_task(
        step="promote",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=["--model-version", evaluate.output["model_version"]],
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

    stage_challenger = job_task(
        step="challenger",
        task_id="stage_challenger",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=["--model-version", evaluate.output["model_version"]],
        outlets=[CHALLENGER_MODEL],
        on_success_callback=on_event(
            "ON LIVE TRIAL fraud-detector v{{ ti.xcom_pull(task_ids='train')['model_version'] }} "
            f"(trained up to {DAY}): shadow or canary beside the champion",
            "{{ ti.xcom_pull(task_ids='evaluate')['verdict'] }}"),
        doc_md="PIPELINE_LIVE_EVALUATION=shadow|canary: the gated version takes the challenger alias; every "
               "scoring service scores it beside the champion and watch_challenger decides on the live evidence.",
    )

    decision = gate(evaluate.output)
    decision >> stage_challenger
    if PROMOTION_APPROVAL:
        from airflow.providers.standard.operators.hitl import HITLOperator

        from jobs.shared.names import DECISIONS

        approve_promotion = HITLOperator(
            task_id="approve_promotion",
            subject="Promote fraud-detector v{{ ti.xcom_pull(task_ids='train')['model_version'] }} to champion?",
            body="The challenger passed its gate. "
                 "{{ ti.xcom_pull(task_ids='evaluate')['verdict'] }}\n\n"
                 "{{ ti.xcom_pull(task_ids='evaluate')['gate_table'] }}\n\n"
                 "Promote it, keep the current champion, or roll the current champion back to the previous "
                 "one; say why (recorded with the version in MLflow).",
            options=list(DECISIONS.values()),
            defaults=[DECISIONS["keep"]],  # no answer within 24 h: nothing changes
            # Null by default (the form's defaults are validated when the task starts); a reason
            # given must say something.
            params={"reason": Param(None, type=["null", "string"], minLength=3, title="Why",
                                    description="Recorded in MLflow with your name and the time.")},
            response_timeout=timedelta(hours=24),
            execution_timeout=None,
            retries=0,
            doc_md="Waits for a person: promote / keep the champion / roll it back, with a reason.",
        )
        record = job_task(
            step="decision",
            task_id="record_decision",
            pass_date=False,
            arguments=decision_arguments(evaluate.output["model_version"]),
            doc_md="Records who decided what and why on the challenger's version in MLflow.",
        )

        @task.branch
        def route_decision(chosen: str) -> str:
            """Follows the person's decision (recorded by record_decision)."""
            return {"promote": "promote", "keep": "keep_by_decision", "rollback": "rollback_champion"}[chosen]

        keep_by_decision = EmptyOperator(task_id="keep_by_decision",
                                          doc_md="A person kept the champion: nothing changes.")
        rollback_champion = job_task(
            step="rollback",
            task_id="rollback_champion",
            pass_date=False,
            pool=PROMOTION_POOL,
            retries=1,
            arguments=[
                # The champion the gate compared with: if it moved since, the rollback changes nothing.
                "--expected-version", evaluate.output["champion_version"],
                "--reason", record.output["decision_reason"],
                "--actor", record.output["decided_by"],
            ],
            outlets=[CHAMPION_MODEL],
            doc_md="A person rolled the champion back to the previous one (compare-and-set, reason recorded).",
        )
        decision >> [approve_promotion, keep_champion]
        approve_promotion >> record
        route_decision(record.output["decision"]) >> [promote, keep_by_decision, rollback_champion]
    else:
        decision >> [promote, keep_champion]


if __name__ == "__main__":
    dag.test()
