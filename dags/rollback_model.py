"""
### Roll the champion back

**Manual only.** Points the `champion` alias of `fraud-detector` back at the version that holds
`previous-champion` (and the current one becomes `previous-champion`, so a second rollback undoes
the first). Scoring picks the restored champion up on its next run; its ONNX hash is checked as
always. The same thing from a shell: `python -m jobs rollback`.

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
                        description="Recorded in the task log (an incident id, a symptom)."),
    },
) as dag:
    job_task(
        step="rollback",
        pass_date=False,
        pool=PROMOTION_POOL,
        outlets=[CHAMPION_MODEL],
        doc_md="Moves champion back to previous-champion. Reason: {{ params.reason }}",
    )
