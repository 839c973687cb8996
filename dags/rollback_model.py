"""
### Roll the champion back

**Manual only.** Points the `champion` alias of `fraud-detector` back at the version that holds
`previous-champion` (and the current one becomes `previous-champion`, so a second rollback undoes
the first). Scoring picks the restored champion up on its next run; its ONNX hash is checked as
always. The same thing from a shell: `python -m jobs rollback --reason "..."`.

**Safe to retry or clear, never a second swap.** `current_champion` pins, once per run (in the
lake, create-only), the champion the rollback is meant to replace and the one it restores (the
form's `expected_version`, else the champion when the run first started); `rollback` only swaps
if the champion is still the pinned one. A retried task, the whole run cleared and re-run after it
finished, or a champion moved by a promotion in between, changes nothing and says so in the log;
a try that died between the alias move and its record gets the record completed.

**Re-scores** the days the replaced version scored: `rescore` starts `score_transactions` for that
range (once per rollback run), so predictions come from the restored champion.

**Recorded**: the reason, who triggered the run and a link to this task are tags on both model
versions in MLflow (`rollback_*` on the restored one, `rolled_back_*` on the replaced one) and
lines in the task log.

Runs in the `model_promotion` pool (one slot), so it never interleaves with a promotion.
"""

from __future__ import annotations

from airflow.providers.standard.operators.trigger_dagrun import TriggerDagRunOperator
from airflow.sdk import DAG, Param, task
from airflow.sdk.exceptions import AirflowSkipException
from pipeline.assets import CHAMPION_MODEL
from pipeline.defaults import DEFAULT_ARGS, PROMOTION_POOL, START_DATE, TAGS
from pipeline.execution.operators import job_task

with DAG(
    dag_id="rollback_model",
    doc_md=__doc__,
    schedule=None,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args={**DEFAULT_ARGS, "retries": 1},
    tags=[*TAGS, "training", "operations"],
    params={
        "reason": Param("", type="string", minLength=3, title="Why roll back",
                        description="Recorded on both model versions in MLflow and in the task log "
                                    "(an incident id, a symptom)."),
        "expected_version": Param(None, type=["null", "string"], title="Champion to replace",
                                  description="The version you mean to roll back from. If the champion is "
                                              "another version by the time the rollback runs, nothing changes. "
                                              "Empty: the champion when the run starts."),
    },
) as dag:
    current = job_task(
        step="champion",
        task_id="current_champion",
        pass_date=False,
        pass_run_id=True,  # pinned for the run: a re-run reads what the first try read
        doc_md="Pins, once for this run, which version is the champion (the one to replace) and which one "
               "the rollback restores.",
    )
    rollback = job_task(
        step="rollback",
        pass_date=False,
        pool=PROMOTION_POOL,
        arguments=[
            "--expected-version",
            "{{ params.expected_version or ti.xcom_pull(task_ids='current_champion')['champion_version'] }}",
            "--reason", "{{ params.reason }}",
            "--actor", "{{ dag_run.triggering_user_name or 'unknown' }}",
            "--restore-version", "{{ ti.xcom_pull(task_ids='current_champion')['previous_champion_version'] or '' }}",
        ],
        outlets=[CHAMPION_MODEL],
        doc_md="Moves champion back to previous-champion if it is still the expected version. "
               "Reason: {{ params.reason }}",
    )

    @task(multiple_outputs=False)
    def stale_predictions(result: dict) -> dict:
        """The range of days the replaced champion scored; skipped when it scored none."""
        if not result.get("rescore_dates"):
            raise AirflowSkipException("the replaced champion scored no day: nothing to re-score")
        return {"start_date": result["rescore_start"], "date": result["rescore_end"]}

    stale = stale_predictions(rollback.output)
    rescore = TriggerDagRunOperator(
        task_id="rescore",
        trigger_dag_id="score_transactions",
        trigger_run_id="rescore__{{ run_id }}",  # once per rollback run, however often it is retried
        skip_when_already_exists=True,
        conf=stale,
        doc_md="Scores again, with the restored champion, the days the replaced one scored.",
    )
    current >> rollback


if __name__ == "__main__":
    dag.test()
