"""Batch scoring: the champion's ONNX model on onnxruntime over one date of gold features."""

from __future__ import annotations

import logging
import time

from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.result import MissingInput
from jobs.storage import lake as lk
from jobs.storage import unchanged
from jobs.storage.registry import file_sha256, gated_champion, load_bundle, mlflow_client, read_gold

log = logging.getLogger(__name__)


def score(lake: lk.Lake, dates: list[str], settings: Settings, run_id: str = "", force: bool = False) -> dict:
    """Replace ``predictions`` for ``dates`` with the champion's calibrated fraud probability and its
    decision (``is_flagged``: probability >= the model's operating threshold) per transaction.

    All scored dates are published in one commit of the predictions table. Skipped when the gold
    files, the champion (version and ONNX hash), the code version and the predictions it wrote are
    what they were at the last scoring of these dates; ``force`` scores anyway.
    """
    from jobs.storage import tables

    client = mlflow_client(settings)
    version = gated_champion(client, settings)  # refuses a champion that never passed its gate
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: train and promote a model first")
    bundle = load_bundle(client, settings, version)  # verifies the ONNX hash before any row is scored
    # One gold version is read and recorded: features rebuilt meanwhile are scored by the next run.
    gold_version = tables.version(lake, layout.GOLD_FEATURES)
    present = [d for d in tables.partitions(lake, layout.GOLD_FEATURES, gold_version) if d in set(dates)]
    if not present:
        raise MissingInput(f"no gold features for {dates[0]}..{dates[-1]} in {lake.uri_of(layout.GOLD_FEATURES)}")
    onnx_sha256 = file_sha256(bundle.onnx_path)

    def inputs_of(days: list[str]) -> dict:
        return {"dates": days, "model_version": str(version), "onnx_sha256": onnx_sha256,
                "code_version": settings.resolved_code_version,
                "gold": tables.snapshot_of(lake, layout.GOLD_FEATURES, days, gold_version)}

    def outputs_of(days: list[str], result: dict | None) -> dict:
        at = None if result is None else result["predictions_version"]
        return {"predictions": tables.snapshot_of(lake, layout.PREDICTIONS, days, at)}

    def days_of(result: dict):  # a range scored: each day's own record, for a later run of one day
        for day in present if len(present) > 1 else ():
            yield day, inputs_of([day]), {**result, "dates": [day], "rows": result["rows_by_date"].get(day, 0),
                                          "flagged": result["flagged_by_date"].get(day, 0)}, outputs_of([day], result)

    key = present[0] if len(present) == 1 else f"{present[0]}..{present[-1]}"
    return unchanged.once(lake, "score", key, inputs_of(present),
                          lambda: _score_and_publish(lake, present, bundle, version, gold_version, settings, run_id),
                          force=force, outputs=lambda result: outputs_of(present, result), run_id=run_id,
                          parts=days_of)


def predictions_of(features, bundle, settings: Settings, version: str):
    """One day's predictions: the calibrated probability and the decision at the model's threshold."""
    out = features[["transaction_id", "card_id", "timestamp", "date"]].copy()
    out["fraud_probability"] = bundle.predict(features).astype("float64")  # calibrated
    # The decision at the model's operating threshold (chosen on validation, jobs.ml.calibration).
    out["is_flagged"] = out["fraud_probability"] >= bundle.threshold
    out["decision_threshold"] = bundle.threshold
    out["model_name"] = settings.model_name
    out["model_version"] = str(version)
    return out


def _score_and_publish(lake: lk.Lake, present: list[str], bundle, version: str, gold_version: int | None,
                       settings: Settings, run_id: str) -> dict:
    """Score each day of ``present`` from the pinned gold version and publish them in one commit."""
    import pandas as pd
    import pyarrow as pa

    from jobs.storage import tables

    frames, flagged_by_date = [], {}
    for date in present:
        started = time.perf_counter()
        out = predictions_of(read_gold(lake, [date], version=gold_version), bundle, settings, version)
        flagged_by_date[date] = int(out["is_flagged"].sum())
        seconds = time.perf_counter() - started
        log.info("scored %d transactions for %s with v%s on %s; %d flagged (%.1f s, %.0f rows/s)", len(out), date,
                 version, bundle.providers[0], flagged_by_date[date], seconds, len(out) / max(seconds, 1e-9))
        frames.append(out)
    scored = pd.concat(frames, ignore_index=True)
    scored["timestamp"] = scored["timestamp"].astype("datetime64[us]")
    predictions_version = tables.replace_partitions(
        lake, layout.PREDICTIONS, pa.Table.from_pandas(scored, preserve_index=False), present,
        metadata={"run_id": run_id, "model_version": version, "gold_version": gold_version},
        evolve_schema=True)  # lakes scored before the decision columns existed gain them
    return {"dates": present, "rows": len(scored), "flagged": sum(flagged_by_date.values()), "model_version": version,
            "decision_threshold": bundle.threshold,
            "provider": bundle.providers[0], "predictions": lake.uri_of(layout.PREDICTIONS),
            "predictions_version": predictions_version, "gold_version": gold_version,
            "rows_by_date": {d: int(n) for d, n in scored.groupby("date").size().items()},
            "flagged_by_date": flagged_by_date,
            "links": {links.MODEL_VERSION: links.model_version(settings.model_name, version)}}
