"""
### Roll the champion back

**Manual only.** Points the `champion` alias of `fraud-detector` back at the version that holds
`previous-champion` (and the current one becomes `previous-champion`, so a second rollback undoes
the first). Scoring picks the restored champion up on its next run; its ONNX hash is checked as
always. The same thing from a shell: `python -m jobs rollback --reason "..."`.

**Safe to retry, never a second swap.** `current_champion` pins the champion the rollback is meant
to replace (the form's `expected_version`, else the champion when the run started); `rollback`
only swaps if the champion is still that version. A retried task, or a champion moved by a
promotion in between, changes nothing and says so in the log.

**Recorded**: the reason, who triggered the run and a link to this task are tags on both model
versions in MLflow (`rollback_*` on the restored one, `rolled_back_*` on the replaced one) and
lines in the task log.

Runs in the `model_promotion` pool (one slot), so it never interleaves with a promotion.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param
from pipeline.assets import CHAMPION_MODEL
from pipeline.defaults import DEFAULT_ARGS, PROMOTION_POOL, START_DATE, TAGS
from pipeline.operators import job_task

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
        doc_md="Reads which version is the champion now: the version this rollback expects to replace.",
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
        ],
        outlets=[CHAMPION_MODEL],
        doc_md="Moves champion back to previous-champion if it is still the expected version. "
               "Reason: {{ params.reason }}",
    )
    current >> rollback
