"""Drift -> retraining decisions: cooldown and limits against retraining storms."""

import numpy as np
import pandas as pd

from jobs.ml.drift import MIN_POSITIVES, recent_performance, retraining_decision

KW = dict(cooldown_days=3, max_requests=2, window_days=14)


def test_no_drift_no_retraining():
    assert retraining_decision(False, [], "2026-05-10", [], **KW) == (False, "no drift")


def test_first_drift_requests_retraining():
    retrain, why = retraining_decision(True, ["log_amount drifted"], "2026-05-10", [], **KW)
    assert retrain and why == "retraining requested: log_amount drifted"


def test_cooldown_holds_while_drift_persists():
    retrain, why = retraining_decision(True, ["x"], "2026-05-12", ["2026-05-10"], **KW)
    assert not retrain and why.startswith("cooldown: retraining was already requested on 2026-05-10")
    assert retraining_decision(True, ["x"], "2026-05-13", ["2026-05-10"], **KW)[0]  # 3 days later


def test_at_most_n_requests_per_window():
    retrain, why = retraining_decision(True, ["x"], "2026-05-20", ["2026-05-10", "2026-05-15"], **KW)
    assert not retrain and why.startswith("limit: 2 retraining requests in the last 14 days")
    assert retraining_decision(True, ["x"], "2026-05-25", ["2026-05-10", "2026-05-15"], **KW)[0]


def test_rerunning_the_same_date_decides_the_same_way():
    assert retraining_decision(True, ["x"], "2026-05-10", ["2026-05-10"], **KW)[0]


def test_performance_needs_enough_labelled_frauds():
    rng = np.random.default_rng(0)
    y = np.r_[np.ones(MIN_POSITIVES), np.zeros(2000)]
    frame = pd.DataFrame({"is_fraud": y, "fraud_probability": np.clip(y * 0.5 + rng.random(len(y)) * 0.5, 0, 1)})
    full = recent_performance(frame, holdout_pr_auc=0.95)
    assert full["pr_auc_drop"] == 0.95 - full["pr_auc_recent"]
    few = recent_performance(frame.iloc[5:], holdout_pr_auc=0.95)
    assert "pr_auc_drop" not in few and "performance not compared" in few["note"]
