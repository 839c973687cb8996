"""Assets that link the DAGs, named by the lake URIs they stand for (defined once, here).

Producers list them in ``outlets``, consumers in ``schedule``.
"""

from __future__ import annotations

from airflow.sdk import Asset

from jobs.shared import layout
from jobs.storage.lake import configured_uri
from pipeline.settings import AirflowSettings

LAKE_URI = configured_uri()


def _lake_asset(name: str, key: str) -> Asset:
    return Asset(name, uri=f"{LAKE_URI}/{key}")


SILVER_TRANSACTIONS = _lake_asset("silver_transactions", layout.SILVER_TRANSACTIONS)
GOLD_FEATURES = _lake_asset("gold_features", layout.GOLD_FEATURES)
PREDICTIONS = _lake_asset("fraud_predictions", layout.PREDICTIONS)
# Not a lake zone: a signal that the drift monitor asks for retraining (extra: drift summary).
DRIFT_SIGNAL = _lake_asset("drift_detected", layout.DRIFT_SIGNAL)
RAW_DELIVERIES = _lake_asset("raw_deliveries", layout.RAW_TRANSACTIONS)
CHAMPION_MODEL = Asset("champion_model", uri=f"{LAKE_URI}/_registry/{AirflowSettings().model_name}/champion")
# The version on live trial (shadow or canary) changed: put on trial, or taken off it.
CHALLENGER_MODEL = Asset("challenger_model", uri=f"{LAKE_URI}/_registry/{AirflowSettings().model_name}/challenger")


def raw_deliveries_watched() -> Asset | None:
    """``raw_deliveries`` with an AssetWatcher on the lake's S3 event queue, when one is configured.

    S3 event notifications (``s3:ObjectCreated:*`` on ``raw/``) -> SQS -> the amazon provider's
    ``SqsSensorTrigger`` in the triggerer -> an asset event whose extra carries the messages.
    """
    settings = AirflowSettings()
    if not settings.lake_events_queue:
        return None
    from airflow.providers.amazon.aws.triggers.sqs import SqsSensorTrigger
    from airflow.sdk import AssetWatcher

    trigger = SqsSensorTrigger(sqs_queue=settings.lake_events_queue, aws_conn_id=settings.aws_conn_id,
                               waiter_delay=settings.lake_events_poll_seconds)
    return Asset(RAW_DELIVERIES.name, uri=RAW_DELIVERIES.uri,
                 watchers=[AssetWatcher(name="raw_delivery_events", trigger=trigger)])
