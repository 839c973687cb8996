"""Drift over time: every daily drift check's figures as MLflow metrics, one point per day.

One long-lived run per registered model (``drift monitor: <model>`` in the experiment
``<experiment>-monitoring``, found by its tag) holds the history: for each checked day, at
``step`` = days since 1970-01-01 and at that day's midnight (UTC) as the timestamp,

- ``drift_share`` and ``drifted_columns`` (how many feature columns drifted),
- ``prediction_drift_score`` (the champion's score distribution, recent vs reference),
- ``feature_drift.<column>`` (Evidently's drift score per monitored column),
- ``live_pr_auc`` and ``pr_auc_drop`` when labels have arrived,
- ``champion_version`` and ``current_rows``,
- what the scoring services actually served, from the late labels joined to the decisions log, per
  served version: ``served_day_<precision|recall|pr_auc>.v<N>`` at each transaction day, and the
  label window's pooled ``served_<...>.v<N>`` at the checked day.

So the run's metric charts in the MLflow UI show each figure's trend across days and model
versions (``make up`` prints the link; the report view redirects ``/pipeline/mlflow/drift-trend``
there). A check re-run for the same day logs the same values at the same step and time, which
MLflow stores once: the history has no duplicates.
"""

from __future__ import annotations

import math
from datetime import UTC, datetime
from datetime import date as Date

from jobs.settings import Settings
from jobs.shared.names import MONITOR_TAG

EPOCH = Date(1970, 1, 1)


def monitoring_experiment(settings: Settings) -> str:
    return f"{settings.experiment_name}-monitoring"


def monitoring_run(client, settings: Settings, create: bool = True) -> str | None:
    """The id of the model's drift-monitor run (created on first use when ``create``)."""
    name = monitoring_experiment(settings)
    experiment = client.get_experiment_by_name(name)
    if experiment is None:
        if not create:
            return None
        remote = settings.resolved_tracking_uri.startswith(("http://", "https://", "databricks"))
        experiment_id = client.create_experiment(
            name, artifact_location=None if remote else settings.mlflow_artifact_root)
    else:
        experiment_id = experiment.experiment_id
    runs = client.search_runs([experiment_id], filter_string=f"tags.{MONITOR_TAG} = '{settings.model_name}'",
                              order_by=["attributes.start_time ASC"], max_results=1)
    if runs:
        return runs[0].info.run_id
    if not create:
        return None
    run = client.create_run(experiment_id, run_name=f"drift monitor: {settings.model_name}",
                            tags={MONITOR_TAG: settings.model_name,
                                  "mlflow.note.content": "One point per checked day: drift share, per-feature "
                                                         "drift scores, prediction drift, live PR-AUC."})
    return run.info.run_id


def trend_metrics(summary: dict) -> dict[str, float]:
    """The figures of one drift check (``jobs.steps.drift`` summary) worth a point on a chart."""
    from jobs.shared.schemas import PREDICTION

    performance = summary.get("performance") or {}
    values = {
        "drift_share": summary.get("drift_share"),
        "drifted_columns": len([c for c in summary.get("drifted_columns") or [] if c != PREDICTION]),
        "prediction_drift_score": summary.get("prediction_drift_score"),
        "champion_version": float(summary["model_version"]) if summary.get("model_version") else None,
        "current_rows": summary.get("current_rows"),
        "live_pr_auc": performance.get("pr_auc_recent"),
        "pr_auc_drop": performance.get("pr_auc_drop"),
        **{f"feature_drift.{column}": score for column, score in (summary.get("column_scores") or {}).items()
           if column != PREDICTION},
    }
    return {k: float(v) for k, v in values.items() if v is not None and math.isfinite(float(v))}


def served_metrics(summary: dict) -> list[tuple[str, str, float]]:
    """(day, metric, value) of what the services served, from the late labels: each day's figures at
    that day (re-logged as more labels arrive), the label window's pooled figures at the checked day."""
    out = []
    for f in summary.get("served") or []:
        day = summary["date"] if f["day"] == "all" else f["day"]
        prefix = "served" if f["day"] == "all" else "served_day"
        for name in ("precision", "recall", "pr_auc", "labelled", "frauds"):
            if f.get(name) is not None and math.isfinite(float(f[name])):
                out.append((day, f"{prefix}_{name}.v{f['version']}", float(f[name])))
    return out


def _at(day: str) -> tuple[int, int]:
    """(timestamp in ms, step) of a day's point: its midnight UTC, days since 1970-01-01."""
    d = Date.fromisoformat(day)
    return int(datetime(d.year, d.month, d.day, tzinfo=UTC).timestamp() * 1000), (d - EPOCH).days


def log_day(client, settings: Settings, date: str, summary: dict) -> str:
    """Log the drift check of ``date`` into the monitor run; returns the run id."""
    from mlflow.entities import Metric

    timestamp, step = _at(date)
    run_id = monitoring_run(client, settings)
    metrics = [Metric(k, v, timestamp, step) for k, v in trend_metrics(summary).items()]
    metrics += [Metric(name, value, *_at(day)) for day, name, value in served_metrics(summary)]
    client.log_batch(run_id, metrics=metrics)
    return run_id
