"""
### Deploy the champion to the scoring services

**Started by** the `champion_model` Asset: every promotion (`train_model`, `watch_challenger`) and
rollback (`rollback_model`); and the `challenger_model` Asset: a challenger put on live trial or taken
off it (the services load or drop it now, not at their next registry refresh). Also by hand from
the UI (a service that restarted, a new replica).

**Deploys** the version that holds `champion` to every running scoring service (`services/scoring`):
each is told to load it now (`POST /v1/champion`: the new bundle is loaded beside the old one,
its hashes verified, then swapped; requests under way finish on the old one), waited for until it
serves that version, and checked with a known transaction, whose score must equal this job's own
score of it with the same verified bundle. An ungated champion is never deployed.

**Where**: `PIPELINE_SERVING_URL` (comma-separated; the stack sets the compose service), else the
services running on this machine (`make serve` registers itself). None: nothing to tell, said in
the log (a service started later loads the champion as it starts). On Kubernetes the Deployment's
pods also poll the registry; the Service URL reaches one of them per call (docs/serving.md).

**Recorded**: the services and the time as tags on the model version (`serving_services`,
`serving_deployed_at`); links on the task to the first service's health and metrics.
"""

from __future__ import annotations

from airflow.sdk import DAG, Param
from pipeline.assets import CHALLENGER_MODEL, CHAMPION_MODEL
from pipeline.defaults import DEFAULT_ARGS, START_DATE, TAGS
from pipeline.execution.operators import job_task

with DAG(
    dag_id="deploy_model",
    doc_md=__doc__,
    schedule=CHAMPION_MODEL | CHALLENGER_MODEL,
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "serving", "operations"],
    params={"reason": Param("", type="string", title="Why deploy by hand",
                            description="Recorded in the task log (a service restarted, a replica added). "
                                        "Empty for the runs the champion's Asset starts.")},
) as dag:
    job_task(
        step="deploy",
        pass_date=False,
        arguments=["--reason", "{{ params.reason or 'the champion moved' }}"],
        doc_md="Tells each scoring service to serve the champion, then checks it with a known transaction.",
    )


if __name__ == "__main__":
    dag.test()
