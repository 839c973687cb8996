"""Drift: Evidently compares the champion's training reference with recent gold features."""

from __future__ import annotations

import logging
import tempfile
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import pandas as pd

from jobs import lake as lk
from jobs.registry import BUNDLE_DIR, alias_version, mlflow_client, read_gold
from jobs.result import JobError
from jobs.settings import Settings

log = logging.getLogger(__name__)

# Monitored columns: raw behaviour plus the card-history features the model leans on.
DRIFT_NUMERIC = ["log_amount", "hour_of_day", "card_txn_count_24h", "amount_to_card_mean_7d", "log_secs_since_prev_txn"]
DRIFT_CATEGORICAL = ["merchant_category", "channel", "country"]


def drift_report(reference: pd.DataFrame, current: pd.DataFrame, drift_share: float):
    """Run Evidently's data drift preset; returns (snapshot, per-column results, drifted share)."""
    logging.getLogger("evidently").setLevel(logging.WARNING)
    from evidently import DataDefinition, Dataset, Report
    from evidently.presets import DataDriftPreset

    definition = DataDefinition(numerical_columns=DRIFT_NUMERIC, categorical_columns=DRIFT_CATEGORICAL)
    cols = DRIFT_NUMERIC + DRIFT_CATEGORICAL
    ref = Dataset.from_pandas(reference[cols], data_definition=definition)
    cur = Dataset.from_pandas(current[cols], data_definition=definition)
    report = Report([DataDriftPreset(columns=cols, drift_share=drift_share)], include_tests=True)
    snapshot = report.run(current_data=cur, reference_data=ref)
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


def check_drift(lake: lk.Lake, date: str, settings: Settings, days: int = 1) -> dict:
    """Compare the last ``days`` of gold features ending at ``date`` with the champion's reference."""
    import mlflow

    client = mlflow_client(settings)
    version = alias_version(client, settings, settings.champion_alias)
    if version is None:
        raise JobError(f"no @{settings.champion_alias} for {settings.model_name}: nothing to compare drift against")
    mv = client.get_model_version(settings.model_name, version)
    end = Date.fromisoformat(date)
    window = [(end - timedelta(days=i)).isoformat() for i in range(days)][::-1]
    current = read_gold(lake, window)
    if current.empty:
        raise JobError(f"no gold features for {window[0]}..{window[-1]} in {lake.uri_of(lk.GOLD_FEATURES)}")
    with tempfile.TemporaryDirectory() as tmp:
        ref_file = mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=f"{BUNDLE_DIR}/reference.parquet", dst_path=tmp)
        reference = pd.read_parquet(ref_file)
        snapshot, columns, share = drift_report(reference, current, settings.drift_share_threshold)
        html = Path(tmp) / "drift.html"
        snapshot.save_html(str(html))
        base = f"{lk.REPORTS}/drift/date={date}"
        drifted_cols = _drifted_columns(snapshot)
        drifted = share is not None and share >= settings.drift_share_threshold
        summary = {
            "date": date, "window": f"{window[0]}..{window[-1]}", "model_version": version,
            "reference_rows": len(reference), "current_rows": len(current), "drift_share": share,
            "drift_share_threshold": settings.drift_share_threshold, "drifted": drifted,
            "drifted_columns": drifted_cols, "column_scores": columns,
        }
        lake.write_bytes(base + "/drift.html", html.read_bytes())
        lake.write_json(base + "/drift.json", summary)
        with mlflow.start_run(run_id=mv.run_id):
            mlflow.log_artifact(str(html), artifact_path=f"drift/{date}")
            mlflow.log_dict(summary, f"drift/{date}/drift.json")
    log.info("drift %s vs v%s reference: share %.2f (threshold %.2f) -> %s; drifted columns: %s",
             summary["window"], version, share or 0.0, settings.drift_share_threshold,
             "DRIFT" if drifted else "no drift", ", ".join(drifted_cols) or "none")
    return {**{k: summary[k] for k in ("drifted", "drift_share", "drifted_columns", "model_version", "window")},
            "report_html": lake.uri_of(base + "/drift.html"), "report_json": lake.uri_of(base + "/drift.json")}


def _drifted_columns(snapshot) -> list[str]:
    """Columns whose Evidently per-column drift test failed."""
    out = []
    for t in snapshot.dict().get("tests", []):
        column = (t.get("metric_config") or {}).get("params", {}).get("column")
        if column and str(t.get("status")).endswith("FAIL"):
            out.append(column)
    return sorted(set(out))
