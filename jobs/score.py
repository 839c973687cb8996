"""Batch scoring: the champion's ONNX model on onnxruntime over one date of gold features."""

from __future__ import annotations

import logging

from jobs import lake as lk
from jobs.registry import alias_version, load_bundle, mlflow_client, read_gold
from jobs.result import MissingInput
from jobs.settings import Settings

log = logging.getLogger(__name__)

ALERT_THRESHOLD = 0.5  # probability above which a transaction is counted as flagged in the summary


def score(lake: lk.Lake, dates: list[str], settings: Settings) -> dict:
    """Write ``predictions/date=<date>/`` with the champion's fraud probability per transaction."""
    client = mlflow_client(settings)
    version = alias_version(client, settings, settings.champion_alias)
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: train and promote a model first")
    bundle = load_bundle(client, settings, version)  # verifies the ONNX hash before any row is scored
    present = [d for d in dates if lake.exists(lk.date_partition(lk.GOLD_FEATURES, d))]
    if not present:
        raise MissingInput(f"no gold features for {dates[0]}..{dates[-1]} in {lake.uri_of(lk.GOLD_FEATURES)}")
    rows = flagged = 0
    for date in present:
        features = read_gold(lake, [date])
        out = features[["transaction_id", "card_id", "timestamp"]].copy()
        out["fraud_probability"] = bundle.predict(features).astype("float64")
        out["model_name"] = settings.model_name
        out["model_version"] = version
        with lake.publish(lk.date_partition(lk.PREDICTIONS, date)) as folder:
            out.to_parquet(folder / "part-00000.parquet", index=False)
        n_flagged = int((out["fraud_probability"] > ALERT_THRESHOLD).sum())
        log.info("scored %d transactions for %s with v%s on %s; %d flagged", len(out), date, version,
                 bundle.providers[0], n_flagged)
        rows, flagged = rows + len(out), flagged + n_flagged
    return {"dates": present, "rows": rows, "flagged": flagged, "model_version": version,
            "provider": bundle.providers[0], "predictions": lake.uri_of(lk.PREDICTIONS)}
