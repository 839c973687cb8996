"""Settle the asset queues after `make run`, so the first scheduler never replays its work.

`make run` runs every DAG in chain order with ``airflow dags test``, which records each asset event
(one per partition key) and, for every consumer, a provisional run waiting for a scheduler: an
``asset_partition_dag_run`` without a created run, or an ``asset_dag_run_queue`` entry. The chain
already did that work. Left in place, the first ``make up`` queues them all at once (74 runs for
a month of demo data), each only to find its work done, and on two cores the flood starves the
task supervisors. ``python -m pipeline.queues`` drops the provisional runs; the events themselves
stay (the Assets' history in the UI is unchanged), and new events start runs as always.
"""

from __future__ import annotations

import logging

log = logging.getLogger(__name__)


def drop_provisional_runs() -> dict[str, int]:
    """Delete the asset-triggered runs that no scheduler created yet; how many of each kind."""
    from airflow.models.asset import AssetDagRunQueue, AssetPartitionDagRun, PartitionedAssetKeyLog
    from airflow.utils.session import create_session

    with create_session() as session:
        pending = [i for (i,) in session.query(AssetPartitionDagRun.id)
                   .filter(AssetPartitionDagRun.created_dag_run_id.is_(None))]
        keys = session.query(PartitionedAssetKeyLog).filter(
            PartitionedAssetKeyLog.asset_partition_dag_run_id.in_(pending)).delete(synchronize_session=False)
        partitions = session.query(AssetPartitionDagRun).filter(
            AssetPartitionDagRun.id.in_(pending)).delete(synchronize_session=False)
        queued = session.query(AssetDagRunQueue).delete(synchronize_session=False)
    return {"partition_runs": partitions, "partition_keys": keys, "queued_runs": queued}


if __name__ == "__main__":
    dropped = drop_provisional_runs()
    print(f"asset queues settled: {dropped['partition_runs']} provisional partition run(s) and "
          f"{dropped['queued_runs']} queued run(s) that make run already did were dropped")
