"""Drift: Evidently compares the champion's training reference with recent gold features."""

from __future__ import annotations

import logging
import tempfile
import time
from pathlib import Path

import pandas as pd

from jobs.ml.drift import (
    drift_reasons,
    drift_report,
    drifted_columns,
    recent_performance,
    retraining_decision,
    sample_confidence,
    served_figures,
    served_floor,
)
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.dates import Window
from jobs.shared.names import BUNDLE_DIR, HOLDOUT_PR_AUC, ONNX_SHA_TAG
from jobs.shared.result import MissingInput
from jobs.shared.schemas import LABEL, PREDICTION
from jobs.storage import lake as lk
from jobs.storage import monitoring, unchanged
from jobs.storage.decisions import served_with_labels
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
    from jobs.storage import tables

    client = mlflow_client(settings)
    version = gated_champion(client, settings)  # refuses a champion that never passed its gate
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: nothing to compare drift against")
    mv = client.get_model_version(settings.model_name, version)
    window = Window.ending(date, days).days()
    earlier = [layout.retrain_request_date(k) for k in lake.list(layout.RETRAIN_REQUESTS)]
    inputs = {"window": window, "model_version": str(version), "onnx_sha256": mv.tags.get(ONNX_SHA_TAG, ""),
              "code_version": settings.resolved_code_version,
              "gold": tables.snapshot_of(lake, layout.GOLD_FEATURES, window),
              # what the services served, and the labels since (silver): new decisions or labels re-check
              "decisions": tables.version(lake, layout.DECISIONS),
              "silver": tables.snapshot_of(lake, layout.SILVER_TRANSACTIONS,
                                           Window.ending(date, settings.served_label_days).days()),
              "settings": settings.group("drift"),
              # Only earlier days' requests decide (retraining_decision); this day's is its own output.
              "retrain_requests": sorted(d for d in earlier if d < date)}
    key = date if days == 1 else f"{window[0]}..{date}"
    return unchanged.once(lake, "drift", key, inputs,
                          lambda: _check(lake, date, window, earlier, client, mv, version, settings),
                          force=force, outputs=lambda result: _outputs(lake, date))


def _check(lake: lk.Lake, date: str, window: list[str], earlier: list[str], client, mv, version,
           settings: Settings) -> dict:
    """Compare, decide, publish the report (lake, MLflow, the monitoring trend) and the retraining request."""
    import mlflow

    current, window_rows = read_recent(lake, window, settings)
    if current.empty:
        raise MissingInput(f"no gold features for {window[0]}..{window[-1]} in {lake.uri_of(layout.GOLD_FEATURES)}")
    with tempfile.TemporaryDirectory() as tmp:
        summary, html = _compare(lake, date, window, earlier, current, window_rows, client, mv, version, settings,
                                 Path(tmp))
        if summary["retrain"]:
            lake.write_json(layout.retrain_request(date), {"date": date, "decision": summary["decision"]})
        lake.write_bytes(layout.drift_report(date, "html"), html.read_bytes())
        lake.write_json(layout.drift_report(date, "json"), summary)
        with mlflow.start_run(run_id=mv.run_id):
            mlflow.log_artifact(str(html), artifact_path=f"drift/{date}")
            mlflow.log_dict(summary, f"drift/{date}/drift.json")
        monitor_run = monitoring.log_day(client, settings, date, summary)  # the trend, one point per day
    log.info("drift %s..%s vs v%s reference: share %.2f (threshold %.2f) -> %s; drifted columns: %s",
             window[0], window[-1], version, summary["drift_share"] or 0.0, settings.drift_share_threshold,
             "DRIFT" if summary["drifted"] else "no drift", ", ".join(summary["drifted_columns"]) or "none")
    log.info("decision: %s", summary["decision"])
    return {**{k: summary[k] for k in ("drifted", "drift_share", "drifted_columns", "model_version", "window_start",
                                       "window_end", "retrain", "decision", "prediction_drift_score",
                                       "current_rows")},
            "report_html": lake.uri_of(layout.drift_report(date, "html")),
            "report_json": lake.uri_of(layout.drift_report(date, "json")),
            "links": {links.DRIFT_REPORT: links.report(layout.drift_report(date, "html")),
                      links.MODEL_VERSION: links.model_version(settings.model_name, summary["model_version"]),
                      links.DRIFT_TREND: links.drift_trend()},
            "monitor_run_id": monitor_run}


READ_BATCH_ROWS = 131_072  # gold rows per record batch when the window is sampled


def read_recent(lake: lk.Lake, window: list[str], settings: Settings) -> tuple[pd.DataFrame, int]:
    """The window's gold rows the check compares, and how many the window holds.

    All of them when they are at most ``PIPELINE_DRIFT_SAMPLE_ROWS`` (the log's row counts say so
    before anything is read); else a seeded uniform sample of that many (the rows with the smallest
    hash of their transaction id: the same rows on every re-check), read in record batches, so
    memory holds the sample, never the window.
    """
    from jobs.ml.training import TRAINING_COLUMNS, SeededSample, row_uniforms
    from jobs.storage import tables

    window_rows = sum(tables.date_counts(lake, layout.GOLD_FEATURES, window).values())
    if window_rows <= settings.drift_sample_rows:
        return read_gold(lake, window), window_rows
    sample = SeededSample(settings.drift_sample_rows)
    for batch in tables.batches(lake, layout.GOLD_FEATURES, TRAINING_COLUMNS, dates=window,
                                batch_size=READ_BATCH_ROWS):
        frame = batch.to_pandas()
        sample.add(frame, row_uniforms(frame["transaction_id"], settings.seed, "drift"))
    log.info("drift compares a seeded sample of %d of the window's %d gold rows", settings.drift_sample_rows,
             window_rows)
    return sample.rows(), window_rows


def _compare(lake: lk.Lake, date: str, window: list[str], earlier: list[str], current: pd.DataFrame,
             window_rows: int, client, mv, version, settings: Settings, tmp: Path) -> tuple[dict, Path]:
    """The champion's reference vs ``current`` (both scored by the champion): the summary and its HTML report."""
    import mlflow

    reference = pd.read_parquet(mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path=f"{BUNDLE_DIR}/reference.parquet", dst_path=str(tmp)))
    bundle = load_bundle(client, settings, version)  # hash-checked, like scoring
    reference[PREDICTION] = bundle.predict(reference)
    current[PREDICTION] = bundle.predict(current)
    started = time.perf_counter()
    snapshot, columns, share = drift_report(reference, current, settings.drift_share_threshold)
    log.info("Evidently compared %d recent rows (of %d in the window) with %d reference rows in %.1f s",
             len(current), window_rows, len(reference), time.perf_counter() - started)
    performance = recent_performance(current, client.get_run(mv.run_id).data.metrics.get(HOLDOUT_PR_AUC))
    labels = current[LABEL].dropna()
    sample = sample_confidence(len(current), window_rows, len(reference), int((labels == 1).sum()),
                               float(labels.mean()) if len(labels) else None)
    html = tmp / "drift.html"
    snapshot.save_html(str(html))
    drifted_cols = drifted_columns(snapshot)
    reasons = drift_reasons(share, drifted_cols, performance, settings.drift_share_threshold, settings.max_pr_auc_drop)
    served = served_figures(served_with_labels(lake, Window.ending(date, settings.served_label_days).days()))
    for f in served:
        if f["day"] == "all":
            log.info("served by v%s over %d days: %d decisions, %d labelled (%d frauds): precision %s, recall %s, "
                     "PR-AUC %s", f["version"], settings.served_label_days, f["rows"], f["labelled"], f["frauds"],
                     *(("n/a" if f[k] is None else f"{f[k]:.3f}") for k in ("precision", "recall", "pr_auc")))
    floor = served_floor(served, version, settings.served_min_pr_auc)
    if floor:
        reasons.append(floor)
    retrain, decision = retraining_decision(bool(reasons), reasons, date, earlier, settings.retrain_cooldown_days,
                                            settings.max_retrains_per_window, settings.retrain_window_days)
    return {
        "date": date, "window_start": window[0], "window_end": window[-1], "model_version": version,
        "reference_rows": len(reference), "current_rows": len(current), "sample": sample, "drift_share": share,
        "drift_share_threshold": settings.drift_share_threshold, "drifted": bool(reasons),
        "drifted_columns": drifted_cols, "column_scores": columns,
        "prediction_drift_score": columns.get(PREDICTION), "prediction_drifted": PREDICTION in drifted_cols,
        "performance": performance, "served": served, "served_label_days": settings.served_label_days,
        "retrain": retrain, "decision": decision,
    }, html
