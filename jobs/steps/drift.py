"""Drift: Evidently compares the champion's training reference with recent gold features."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from jobs.ml.drift import drift_report, drifted_columns, recent_performance, retraining_decision
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.dates import Window
from jobs.shared.names import BUNDLE_DIR, ONNX_SHA_TAG
from jobs.shared.result import MissingInput
from jobs.shared.schemas import PREDICTION
from jobs.storage import lake as lk
from jobs.storage import monitoring, unchanged
from jobs.storage.registry import gated_champion, load_bundle, mlflow_client, read_gold

log = logging.getLogger(__name__)

def _outputs(lake: lk.Lake, date: str) -> dict:
    """The drift report of ``date`` as the lake holds it now (its JSON's digest; None when absent)."""
    import hashlib

    key = layout.drift_report(date, "json")
    return {"report": hashlib.sha256(lake.read_bytes(key)).hexdigest() if lake.exists(key) else None,
            "html": lake.exists(layout.drift_report(date, "html"))}


def check_drift(lake: lk.Lake, date: str, settings: Settings, days: int = 1, force: bool = False) -> dict:
    """Compare the last ``days`` of gold features ending at ``date`` with the champion's reference.

    Skipped when the window's gold files, the champion (version and ONNX hash), the code version,
    the drift settings, the earlier retraining requests and the report it wrote are what they were
    at the last check of this window; ``force`` checks anyway.
    """
    import mlflow

    from jobs.storage import tables

    client = mlflow_client(settings)
    version = gated_champion(client, settings)  # refuses a champion that never passed its gate
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: nothing to compare drift against")
    mv = client.get_model_version(settings.model_name, version)
    span = Window.ending(date, days)
    window = span.days()
    earlier = [layout.retrain_request_date(k) for k in lake.list(layout.RETRAIN_REQUESTS)]
    key = date if days == 1 else f"{window[0]}..{date}"
    inputs = {"window": window, "model_version": str(version), "onnx_sha256": mv.tags.get(ONNX_SHA_TAG, ""),
              "code_version": settings.resolved_code_version,
              "gold": tables.snapshot_of(lake, layout.GOLD_FEATURES, window),
              "settings": {k: getattr(settings, k) for k in (
                  "drift_share_threshold", "max_pr_auc_drop", "retrain_cooldown_days", "max_retrains_per_window",
                  "retrain_window_days")},
              # Only earlier days' requests decide (retraining_decision); this day's is its own output.
              "retrain_requests": sorted(d for d in earlier if d < date)}
    done = None if force else unchanged.previous(lake, "drift", key, inputs, _outputs(lake, date))
    if done is not None:
        return unchanged.skipped(done, "drift", key)
    current = read_gold(lake, window)
    if current.empty:
        raise MissingInput(f"no gold features for {window[0]}..{window[-1]} in {lake.uri_of(layout.GOLD_FEATURES)}")
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=f"{BUNDLE_DIR}/reference.parquet", dst_path=tmp)
        reference = pd.read_parquet(ref_file)
        bundle = load_bundle(client, settings, version)  # hash-checked, like scoring
        reference[PREDICTION] = bundle.predict(reference)
        current[PREDICTION] = bundle.predict(current)
        started = time.perf_counter()
        snapshot, columns, share = drift_report(reference, current, settings.drift_share_threshold)
        log.info("Evidently compared %d recent rows with %d reference rows in %.1f s", len(current), len(reference),
                 time.perf_counter() - started)
        performance = recent_performance(current, client.get_run(mv.run_id).data.metrics.get("holdout_pr_auc"))
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))
        drifted_cols = drifted_columns(snapshot)
        reasons = []
        if share is not None and share >= settings.drift_share_threshold:
            features = ", ".join(c for c in drifted_cols if c != PREDICTION)
            reasons.append(f"{share:.0%} of monitored columns drifted (threshold "
                           f"{settings.drift_share_threshold:.0%}): {features}")
        drop = performance.get("pr_auc_drop")
        if drop is not None and drop > settings.max_pr_auc_drop:
            reasons.append(f"PR-AUC on recent labelled data fell by {drop:.3f} (> {settings.max_pr_auc_drop})")
        drifted = bool(reasons)
        retrain, decision = retraining_decision(
            drifted, reasons, date, earlier, settings.retrain_cooldown_days, settings.max_retrains_per_window,
            settings.retrain_window_days)
        summary = {
            "date": date, "window_start": window[0], "window_end": window[-1], "model_version": version,
            "reference_rows": len(reference), "current_rows": len(current), "drift_share": share,
            "drift_share_threshold": settings.drift_share_threshold, "drifted": drifted,
            "drifted_columns": drifted_cols, "column_scores": columns,
            "prediction_drift_score": columns.get(PREDICTION), "prediction_drifted": PREDICTION in drifted_cols,
            "performance": performance, "retrain": retrain, "decision": decision,
        }
        if retrain:
            lake.write_json(layout.retrain_request(date), {"date": date, "decision": decision})
        lake.write_bytes(layout.drift_report(date, "html"), html.read_bytes())
        lake.write_json(layout.drift_report(date, "json"), summary)
        with mlflow.start_run(run_id=mv.run_id):
            mlflow.log_artifact(str(html), artifact_path=f"drift/{date}")
            mlflow.log_dict(summary, f"drift/{date}/drift.json")
        monitor_run = monitoring.log_day(client, settings, date, summary)  # the trend, one point per day
    log.info("drift %s vs v%s reference: share %.2f (threshold %.2f) -> %s; drifted columns: %s",
             f"{summary['window_start']}..{summary['window_end']}", version, share or 0.0,
             settings.drift_share_threshold,
             "DRIFT" if drifted else "no drift", ", ".join(drifted_cols) or "none")
    log.info("decision: %s", decision)
    result = {**{k: summary[k] for k in ("drifted", "drift_share", "drifted_columns", "model_version", "window_start",
                                         "window_end", "retrain", "decision", "prediction_drift_score")},
              "report_html": lake.uri_of(layout.drift_report(date, "html")),
              "report_json": lake.uri_of(layout.drift_report(date, "json")),
              "links": {links.DRIFT_REPORT: links.report(layout.drift_report(date, "html")),
                        links.MODEL_VERSION: links.model_version(settings.model_name, summary["model_version"]),
                        links.DRIFT_TREND: links.drift_trend()},
              "monitor_run_id": monitor_run}
    unchanged.remember(lake, "drift", key, inputs, result, "", _outputs(lake, date))
    return result
