"""Drift: Evidently compares the champion's training reference with recent gold features."""

from __future__ import annotations

import logging
import tempfile
import time
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import pandas as pd

from jobs import lake as lk
from jobs import layout, links, monitoring, unchanged
from jobs.registry import BUNDLE_DIR, ONNX_SHA_TAG, gated_champion, load_bundle, mlflow_client, read_gold
from jobs.result import MissingInput
from jobs.settings import Settings

log = logging.getLogger(__name__)

# Monitored columns: raw behaviour plus the card-history features the model leans on.
DRIFT_NUMERIC = ["log_amount", "hour_of_day", "card_txn_count_24h", "amount_to_card_mean_7d", "log_secs_since_prev_txn"]
DRIFT_CATEGORICAL = ["merchant_category", "channel", "country"]


PREDICTION = "fraud_probability"


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float):
    """Evidently's data drift preset on the monitored features, plus prediction drift when both
    frames carry the champion's ``fraud_probability``.

    Returns (snapshot, drift score per column, share of drifted feature columns).
    """
    logging.getLogger("evidently").setLevel(logging.WARNING)
    from evidently import DataDefinition, Dataset, Report
    from evidently.metrics import ValueDrift
    from evidently.presets import DataDriftPreset

    cols = DRIFT_NUMERIC + DRIFT_CATEGORICAL
    numeric = DRIFT_NUMERIC + ([PREDICTION] if PREDICTION in reference and PREDICTION in current else [])
    definition = DataDefinition(numerical_columns=numeric, categorical_columns=DRIFT_CATEGORICAL)
    all_cols = numeric + DRIFT_CATEGORICAL
    ref = Dataset.from_pandas(reference[all_cols], data_definition=definition)
    cur = Dataset.from_pandas(current[all_cols], data_definition=definition)
    metrics = [DataDriftPreset(columns=cols, drift_share=drift_share)]
    if PREDICTION in numeric:
        metrics.append(ValueDrift(column=PREDICTION))
    snapshot = Report(metrics, include_tests=True).run(current_data=cur, reference_data=ref)
    columns = {}
    share = None
    for m in snapshot.dict()["metrics"]:
        name, value = m.get("metric_name", ""), m.get("value")
        if name.startswith("DriftedColumnsCount"):
            share = float(value["share"])
        elif name.startswith("ValueDrift(column="):
            column = name[len("ValueDrift(column="):].split(",")[0].rstrip(")")
            columns[column] = float(value)
    return snapshot, columns, share


def retraining_decision(drifted: bool, reasons: list[str], date: str, earlier_requests: list[str],
                        cooldown_days: int, max_requests: int, window_days: int) -> tuple[bool, str]:
    """Whether this drift may start a retraining, given the dates of earlier requests.

    The clock is the run's own date, so re-running a date decides the same way. A request for
    the same date is not "earlier": re-running it does not trip its own cooldown.
    """
    if not drifted:
        return False, "no drift"
    day = Date.fromisoformat(date)
    before = sorted(d for d in earlier_requests if d < date)
    if before and (day - Date.fromisoformat(before[-1])).days < cooldown_days:
        return False, (f"cooldown: retraining was already requested on {before[-1]} "
                       f"(< {cooldown_days} days ago); {'; '.join(reasons)}")
    recent = [d for d in before if (day - Date.fromisoformat(d)).days < window_days]
    if len(recent) >= max_requests:
        return False, (f"limit: {len(recent)} retraining requests in the last {window_days} days "
                       f"(max {max_requests}); {'; '.join(reasons)}")
    return True, "retraining requested: " + "; ".join(reasons)


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

    from jobs import tables

    client = mlflow_client(settings)
    version = gated_champion(client, settings)  # refuses a champion that never passed its gate
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: nothing to compare drift against")
    mv = client.get_model_version(settings.model_name, version)
    end = Date.fromisoformat(date)
    window = [(end - timedelta(days=i)).isoformat() for i in range(days)][::-1]
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
        drifted_cols = _drifted_columns(snapshot)
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
            "date": date, "window": f"{window[0]}..{window[-1]}", "model_version": version,
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
             summary["window"], version, share or 0.0, settings.drift_share_threshold,
             "DRIFT" if drifted else "no drift", ", ".join(drifted_cols) or "none")
    log.info("decision: %s", decision)
    result = {**{k: summary[k] for k in ("drifted", "drift_share", "drifted_columns", "model_version", "window",
                                         "retrain", "decision", "prediction_drift_score")},
              "report_html": lake.uri_of(layout.drift_report(date, "html")),
              "report_json": lake.uri_of(layout.drift_report(date, "json")),
              "links": {links.DRIFT_REPORT: links.report(layout.drift_report(date, "html")),
                        links.MODEL_VERSION: links.model_version(settings.model_name, summary["model_version"]),
                        links.DRIFT_TREND: links.drift_trend()},
              "monitor_run_id": monitor_run}
    unchanged.remember(lake, "drift", key, inputs, result, "", _outputs(lake, date))
    return result


MIN_POSITIVES = 30  # below this, a PR-AUC is too noisy to act on


def recent_performance(current: pd.DataFrame, holdout_pr_auc: float | None) -> dict:
    """The champion's PR-AUC on recent rows whose labels have arrived, vs its holdout PR-AUC.

    With fewer than :data:`MIN_POSITIVES` labelled frauds the figures are reported but no drop
    is computed, so noise cannot trigger a retraining.
    """
    from jobs.features import LABEL
    from jobs.model import classification_metrics

    labelled = current.dropna(subset=[LABEL])
    if labelled.empty or labelled[LABEL].nunique() < 2:
        return {"labelled_rows": len(labelled), "note": "not enough labelled rows with both classes"}
    m = classification_metrics(labelled[LABEL].to_numpy(), labelled[PREDICTION].to_numpy())
    out = {"labelled_rows": len(labelled), "pr_auc_recent": m["pr_auc"], "roc_auc_recent": m["roc_auc"],
           "pr_auc_holdout": holdout_pr_auc}
    if holdout_pr_auc is not None and m["positives"] >= MIN_POSITIVES:
        out["pr_auc_drop"] = holdout_pr_auc - m["pr_auc"]
    elif holdout_pr_auc is not None:
        out["note"] = f"only {m['positives']} labelled frauds (< {MIN_POSITIVES}): performance not compared"
    return out


def _drifted_columns(snapshot) -> list[str]:
    """Columns whose Evidently per-column drift test failed."""
    out = []
    for t in snapshot.dict().get("tests", []):
        column = (t.get("metric_config") or {}).get("params", {}).get("column")
        if column and str(t.get("status")).endswith("FAIL"):
            out.append(column)
    return sorted(set(out))
