"""Drift decisions: Evidently's comparison of a reference with recent rows, which columns drifted,
the champion's recent performance and whether to ask for a retraining. Frames in, values out."""

from __future__ import annotations

import logging
from datetime import date as Date

import pandas as pd

from jobs.shared.schemas import LABEL, PREDICTION

# Monitored columns: raw behaviour plus the card-history features the model leans on.
DRIFT_NUMERIC = ["log_amount", "hour_of_day", "card_txn_count_24h", "amount_to_card_mean_7d", "log_secs_since_prev_txn"]
DRIFT_CATEGORICAL = ["merchant_category", "channel", "country"]





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


def drift_reasons(share: float | None, drifted_cols: list[str], performance: dict, drift_share_threshold: float,
                  max_pr_auc_drop: float) -> list[str]:
    """Why the data counts as drifted (none: it does not): too many drifted columns, a PR-AUC drop."""
    reasons = []
    if share is not None and share >= drift_share_threshold:
        features = ", ".join(c for c in drifted_cols if c != PREDICTION)
        reasons.append(f"{share:.0%} of monitored columns drifted (threshold {drift_share_threshold:.0%}): {features}")
    drop = performance.get("pr_auc_drop")
    if drop is not None and drop > max_pr_auc_drop:
        reasons.append(f"PR-AUC on recent labelled data fell by {drop:.3f} (> {max_pr_auc_drop})")
    return reasons


MIN_POSITIVES = 30  # below this, a PR-AUC is too noisy to act on


def served_figures(joined: pd.DataFrame) -> list[dict]:
    """Per day and per served version (and per version over all the days, ``day`` "all"): rows,
    labelled rows, frauds, precision and recall at the threshold it served with, and PR-AUC of the
    scores it served; figures need both classes among the labelled rows."""
    from sklearn.metrics import average_precision_score

    out = []
    if joined.empty:
        return out
    labelled_all = joined.dropna(subset=[LABEL])
    groups = [((day, version), g) for (day, version), g in labelled_all.groupby(["transaction_date", "served_version"])]
    groups += [(("all", version), g) for version, g in labelled_all.groupby("served_version")]
    counts = joined.groupby(["transaction_date", "served_version"]).size().to_dict()
    totals = joined.groupby("served_version").size().to_dict()
    for (day, version), g in groups:
        y, flagged = g[LABEL].astype(bool).to_numpy(), g["served_flagged"].astype(bool).to_numpy()
        frauds, hits = int(y.sum()), int((y & flagged).sum())
        row = {"day": day, "version": str(version), "rows": int(counts[(day, version)] if day != "all"
                                                                 else totals[version]),
               "labelled": len(g), "frauds": frauds, "flagged": int(flagged.sum()),
               "precision": hits / int(flagged.sum()) if flagged.any() else None,
               "recall": hits / frauds if frauds else None,
               "pr_auc": float(average_precision_score(y, g["served_probability"].astype(float)))
               if 0 < frauds < len(g) else None}
        out.append(row)
    return out


def served_floor(figures: list[dict], version: str | None, min_pr_auc: float) -> str | None:
    """Why what the champion served asks for retraining (its PR-AUC over the label window under the
    floor, on at least :data:`MIN_POSITIVES` labelled frauds), or None."""
    pooled = next((f for f in figures if f["day"] == "all" and f["version"] == str(version)), None)
    if pooled is None or pooled["pr_auc"] is None or pooled["frauds"] < MIN_POSITIVES:
        return None
    if pooled["pr_auc"] < min_pr_auc:
        return (f"PR-AUC of what v{version} served, on {pooled['labelled']} labelled transactions "
                f"({pooled['frauds']} frauds), is {pooled['pr_auc']:.3f} (< floor {min_pr_auc})")
    return None


KS_CRITICAL_95 = 1.358  # c(0.05) of the two-sample Kolmogorov-Smirnov test


def sample_confidence(compared: int, window_rows: int, reference_rows: int, labelled_frauds: int,
                      fraud_rate: float | None) -> dict:
    """What a comparison of ``compared`` recent rows with ``reference_rows`` can tell, stated in the report.

    ``min_detectable_ks_distance``: the smallest gap between two distributions (the largest
    difference of their cumulative shares) that a two-sample KS test tells from sampling noise at
    95 %, ``c(0.05) * sqrt((n + m) / (n * m))``: sampling more recent rows lowers it only down to
    the reference's own share of it. ``fraud_rate_margin``: the 95 % half-width of the compared
    rows' fraud rate (normal approximation). ``labelled_frauds``: the positives the recent PR-AUC
    rests on.
    """
    import math

    n, m = max(compared, 1), max(reference_rows, 1)
    out = {"window_rows": window_rows, "compared_rows": compared, "sampled": compared < window_rows,
           "reference_rows": reference_rows, "labelled_frauds": labelled_frauds,
           "min_detectable_ks_distance": round(KS_CRITICAL_95 * math.sqrt((n + m) / (n * m)), 4)}
    if fraud_rate is not None:
        out["fraud_rate"] = fraud_rate
        out["fraud_rate_margin"] = round(1.96 * math.sqrt(fraud_rate * (1 - fraud_rate) / n), 6)
    return out


def recent_performance(current: pd.DataFrame, holdout_pr_auc: float | None) -> dict:
    """The champion's PR-AUC on recent rows whose labels have arrived, vs its holdout PR-AUC.

    With fewer than :data:`MIN_POSITIVES` labelled frauds the figures are reported but no drop
    is computed, so noise cannot trigger a retraining.
    """
    from jobs.ml.model import classification_metrics

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


def drifted_columns(snapshot) -> list[str]:
    """Columns whose Evidently per-column drift test failed."""
    out = []
    for t in snapshot.dict().get("tests", []):
        column = (t.get("metric_config") or {}).get("params", {}).get("column")
        if column and str(t.get("status")).endswith("FAIL"):
            out.append(column)
    return sorted(set(out))
