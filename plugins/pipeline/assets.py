"""Assets that link the DAGs, named by the lake URIs they stand for (defined once, here).

Producers list them in ``outlets``, consumers in ``schedule``.
"""

from __future__ import annotations

from airflow.sdk import Asset

from jobs import lake as lk
from jobs.settings import get_settings

LAKE_URI = get_settings().resolved_lake_uri


def _lake_asset(name: str, key: str) -> Asset:
    return Asset(name, uri=f"{LAKE_URI}/{key}")


SILVER_TRANSACTIONS = _lake_asset("silver_transactions", lk.SILVER_TRANSACTIONS)
GOLD_FEATURES = _lake_asset("gold_features", lk.GOLD_FEATURES)
PREDICTIONS = _lake_asset("fraud_predictions", lk.PREDICTIONS)
# Not a lake zone: a signal that the drift monitor asks for retraining (extra: drift summary).
DRIFT_SIGNAL = _lake_asset("drift_detected", f"{lk.REPORTS}/drift")
CHAMPION_MODEL = Asset("champion_model", uri=f"{LAKE_URI}/_registry/{get_settings().model_name}/champion")
