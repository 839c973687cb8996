"""
### Maintain the lake's Delta tables (compact, checkpoint, vacuum)

**Weekly** (Sunday 05:00 UTC), or by a person. For every Delta table of the lake
(`silver/transactions`, `quarantine/rows`, `gold/features`, `predictions`, `_ledger/objects`):
compacts the small files that MERGEs and daily overwrites leave, writes a log checkpoint, and
**vacuums** files that no table version of the last `retention_hours` (default
`PIPELINE_VACUUM_RETENTION_HOURS`, 168 h = 7 days) reads.

The vacuum is the only thing that ever deletes table files: a reader holding an older snapshot
never fails because a writer moved on, and time travel (`DeltaTable(uri, version=N)`, the
`gold_version` / `silver_version` tags of every model version) works within the retention.
A dry run lists what would go. The same from a shell: `python -m jobs maintain [--dry-run]`.
"""

from __future__ import annotations

from airflow.sdk import DAG, CronTriggerTimetable, Param
from pipeline.defaults import DEFAULT_ARGS, START_DATE, TAGS
from pipeline.execution.operators import job_task
from pipeline.execution.runners import Resources

with DAG(
    dag_id="maintain_lake",
    doc_md=__doc__,
    schedule=CronTriggerTimetable("0 5 * * 0", timezone="UTC"),
    start_date=START_DATE,
    catchup=False,
    max_active_runs=1,
    default_args=DEFAULT_ARGS,
    tags=[*TAGS, "operations", "lake"],
    params={
        "retention_hours": Param(None, type=["null", "integer"], minimum=0, title="Retention (hours)",
                                 description="Keep the files that table versions of the last N hours read. Empty: "
                                             "PIPELINE_VACUUM_RETENTION_HOURS."),
        "dry_run": Param(False, type="boolean", title="Dry run", description="Only list what would be deleted."),
    },
) as dag:
    job_task(
        step="maintain",
        pass_date=False,
        arguments=[
            "{{ '--retention-hours=' ~ params.retention_hours if params.retention_hours is not none else '' }}",
            "{{ '--dry-run' if params.dry_run else '--no-dry-run' }}",
        ],
        job_resources=Resources(cpu=1, memory_gb=2),
        doc_md="Compacts, checkpoints and vacuums every Delta table of the lake.",
    )


if __name__ == "__main__":
    dag.test()
