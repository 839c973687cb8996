"""
### Watch a challenger on live traffic: promote it, or take it off by itself

**Started by** the `challenger_model` Asset: `train_model` put a gated version on live trial
(`PIPELINE_LIVE_EVALUATION=shadow` or `canary`). Every scoring service scores it beside the champion
on the same requests and logs both answers in the lake's `decisions` table.

**`guardrails`** reads that evidence every `PIPELINE_GUARDRAIL_CHECK_MINUTES` (5) and **defers**
between looks (the triggerer waits, no worker slot does): the challenger's error rate, p99 model
time, flag rate against the champion's, PSI of its scores against the champion's, and agreement
of the decisions. The log shows every guardrail, its value and its limit at each look.

- A guardrail **trips** (on at least `PIPELINE_GUARDRAIL_TRIP_REQUESTS` requests): `retire_challenger`
  takes it off traffic at once (its alias removed; the services drop it at their next refresh, and
  `deploy_model` tells them now), the reason is recorded on both versions in MLflow and mailed.
- The baking period (`PIPELINE_GUARDRAIL_BAKE_MINUTES`) ends with enough requests
  (`PIPELINE_GUARDRAIL_MIN_REQUESTS`) and every guardrail held: **promoted** (with
  `PIPELINE_PROMOTION_APPROVAL=true`, once a person approves in the UI, who and why recorded on the
  version in MLflow; declined or no answer in 24 h: taken off traffic).
- Too few requests by `PIPELINE_GUARDRAIL_MAX_WAIT_HOURS`: taken off traffic, not promoted.

The gate report of the version gains its **live section** (the same table). The champion never
changes until a promotion: a rollback during the trial leaves every request on the champion.
"""

from __future__ import annotations

from datetime import timedelta

from airflow.providers.standard.operators.empty import EmptyOperator
from airflow.sdk import DAG, Param, task
from pipeline.approval import BY, REASON, decision_arguments
from pipeline.assets import CHALLENGER_MODEL, CHAMPION_MODEL
from pipeline.defaults import DEFAULT_ARGS, PROMOTION_POOL, START_DATE, TAGS
from pipeline.execution.operators import job_task
from pipeline.notify import on_event
from pipeline.settings import AirflowSettings

PROMOTION_APPROVAL = AirflowSettings().promotion_approval
WATCHED = "v{{ ti.xcom_pull(task_ids='guardrails')['model_version'] }}"
PROMOTE, DECLINE = "Promote", "Take it off traffic"
WATCH_TIMEOUT = timedelta(hours=72)

with DAG(
    dag_id="watch_challenger",
    doc_md=__doc__,
    schedule=[CHALLENGER_MODEL],
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "serving", "training"],
    params={"model_version": Param(None, type=["null", "string"], title="Challenger to watch",
                                   description="Empty: the version holding the challenger alias (a run started "
                                               "by hand after a service restart, or to look again).")},
) as dag:
    guardrails = job_task(
        step="guardrails",
        pass_date=False,
        pass_run_id=True,  # the challenger watched is pinned for the run: a retry watches the same one
        arguments=["{{ ('--model-version=' ~ params.model_version) if params.model_version else '' }}"],
        # The whole watch, deferrals included: longer than the longest wait (PIPELINE_GUARDRAIL_MAX_WAIT_HOURS,
        # 48 h); each look itself is a short job.
        execution_timeout=WATCH_TIMEOUT,
        doc_md="Checks the challenger's live guardrails; defers between looks until one trips or the baking "
               "period ends.",
    )

    @task.branch
    def route(result: dict) -> str:
        """Follows the guardrails' verdict (each guardrail is in the guardrails task's log)."""
        print(f"Challenger v{result['model_version']}: {result['state']}: {result['reason']}")
        if result["state"] == "passed":
            return "approve_promotion" if PROMOTION_APPROVAL else "promote"
        if result["state"] in ("tripped", "insufficient"):
            return "retire_challenger"
        return "challenger_gone"

    retire = job_task(
        step="retire",
        task_id="retire_challenger",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=["--model-version", guardrails.output["model_version"], "--reason", guardrails.output["reason"]],
        outlets=[CHALLENGER_MODEL],
        on_success_callback=on_event(
            f"ROLLED BACK challenger fraud-detector {WATCHED}: off live traffic, the champion stays",
            "{{ ti.xcom_pull(task_ids='guardrails')['reason'] }}"),
        doc_md="Takes the challenger off live traffic; the reason is recorded on it and on the champion.",
    )
    promote = job_task(
        step="promote",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=["--model-version", guardrails.output["model_version"]],
        outlets=[CHAMPION_MODEL],
        on_success_callback=on_event(
            f"PROMOTED fraud-detector {WATCHED} to champion on live evidence",
            "{{ ti.xcom_pull(task_ids='guardrails')['reason'] }}"),
        doc_md="The challenger held every guardrail over its baking period: it becomes the champion.",
    )
    challenger_gone = EmptyOperator(
        task_id="challenger_gone",
        doc_md="The challenger alias moved to another version (or was removed): nothing to decide.")
    branch = route(guardrails.output)
    if PROMOTION_APPROVAL:
        from airflow.providers.standard.operators.hitl import HITLOperator

        approve_promotion = HITLOperator(
            task_id="approve_promotion",
            subject=f"Promote fraud-detector {WATCHED} to champion on its live evidence?",
            body="{{ ti.xcom_pull(task_ids='guardrails')['reason'] }}. Every guardrail and its value is in the "
                 "version's gate report (live section) and in the guardrails task's log.",
            options=[PROMOTE, DECLINE],
            defaults=[DECLINE],  # no answer within 24 h: the champion stays
            params={"reason": Param(None, type=["null", "string"], minLength=3, title="Why",
                                    description="Recorded in MLflow with your name.")},
            response_timeout=timedelta(hours=24),
            execution_timeout=None,
            retries=0,
            doc_md="Waits for a person: promote the challenger, or take it off traffic (the champion stays).",
        )

        @task.branch
        def follow(answer: dict) -> str:
            """Follows the person's answer in the approval form."""
            return "record_approval" if answer["chosen_options"][0] == PROMOTE else "decline_challenger"

        record_approval = job_task(
            step="decision",
            task_id="record_approval",
            pass_date=False,
            arguments=decision_arguments(guardrails.output["model_version"], "promote"),
            doc_md="Records who approved the promotion, and why, on the challenger's version in MLflow.",
        )
        decline = job_task(
            step="retire",
            task_id="decline_challenger",
            pass_date=False,
            pool=PROMOTION_POOL,
            arguments=["--model-version", guardrails.output["model_version"],
                       f"--reason=declined in the approval form by {BY}: {REASON}"],
            outlets=[CHALLENGER_MODEL],
            doc_md="A person declined the promotion: the challenger leaves live traffic, the champion stays.",
        )
        branch >> [retire, approve_promotion, challenger_gone]
        follow(approve_promotion.output) >> [record_approval, decline]
        record_approval >> promote
    else:
        branch >> [retire, promote, challenger_gone]


if __name__ == "__main__":
    dag.test()
