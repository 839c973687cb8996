"""A decision threshold that means something: calibrated probabilities and an operating point.

Training weights frauds by the class imbalance, which inflates the network's probabilities. On
the validation rows (never fitted on), training

1. fits **Platt scaling** (a logistic regression on the logit of the network's score), so that a
   probability of 0.3 means about 30 % of such transactions are frauds; the Brier score and the
   expected calibration error before and after are logged;
2. chooses the **operating threshold** on the calibrated validation probabilities: the lowest one
   whose precision reaches ``PIPELINE_DECISION_PRECISION_TARGET`` (0.9), so recall is as high as
   that precision allows (when no threshold reaches it, the one with the best F1, flagged).

Both travel with the model version as ``bundle/decision.json`` (hashed like the ONNX file).
Scoring writes the calibrated probability and the decision; the gate checks the threshold's
precision and recall on the holdout.
"""

from __future__ import annotations

import numpy as np

EPS = 1e-6


def _logit(p) -> np.ndarray:
    p = np.clip(np.asarray(p, dtype="float64"), EPS, 1 - EPS)
    return np.log(p / (1 - p))


def fit_platt(y, scores) -> dict:
    """Platt scaling: calibrated = sigmoid(a * logit(score) + b), fitted on (y, scores)."""
    from sklearn.linear_model import LogisticRegression

    model = LogisticRegression(C=1e6, max_iter=1000).fit(_logit(scores).reshape(-1, 1), np.asarray(y).astype(int))
    return {"method": "platt", "a": float(model.coef_[0][0]), "b": float(model.intercept_[0])}


def apply(calibration: dict | None, scores) -> np.ndarray:
    """Calibrated probabilities (the scores themselves without a calibration)."""
    scores = np.asarray(scores, dtype="float64")
    if not calibration:
        return scores
    if calibration.get("method") != "platt":
        raise ValueError(f"unknown calibration method {calibration.get('method')!r}")
    z = calibration["a"] * _logit(scores) + calibration["b"]
    return 1.0 / (1.0 + np.exp(-z))


def expected_calibration_error(y, p, bins: int = 10) -> float:
    """ECE: the row-weighted mean |observed fraud rate - mean probability| over equal-width bins."""
    y = np.asarray(y).astype(float)
    p = np.asarray(p, dtype="float64")
    which = np.minimum((p * bins).astype(int), bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.sum() * abs(y[mask].mean() - p[mask].mean())
    return float(total / len(y))


def at_threshold(y, p, threshold: float) -> dict:
    """Precision and recall of the decision ``p >= threshold``."""
    y = np.asarray(y).astype(int)
    flagged = np.asarray(p) >= threshold
    tp = int((flagged & (y == 1)).sum())
    return {"precision": tp / int(flagged.sum()) if flagged.any() else 0.0,
            "recall": tp / int((y == 1).sum()) if (y == 1).any() else 0.0, "flagged": int(flagged.sum())}


MIN_TRUE_POSITIVES = 10  # a precision measured on fewer caught frauds is luck, not a property


def choose_threshold(y, p, precision_target: float) -> dict:
    """The lowest threshold whose precision reaches the target (the best recall at that precision),
    counting only thresholds that catch at least :data:`MIN_TRUE_POSITIVES` frauds; without one,
    the threshold with the best F1 (``target_met`` false)."""
    from sklearn.metrics import precision_recall_curve

    y = np.asarray(y).astype(int)
    precision, recall, thresholds = precision_recall_curve(y, p)
    precision, recall = precision[:-1], recall[:-1]  # the last point has no threshold
    caught = np.rint(recall * y.sum())
    ok = np.flatnonzero((precision >= precision_target) & (caught >= MIN_TRUE_POSITIVES))
    if ok.size:
        i = int(ok[np.argmax(recall[ok])])
        met = True
    else:
        f1 = 2 * precision * recall / np.maximum(precision + recall, EPS)
        i = int(np.argmax(f1))
        met = False
    return {"threshold": float(thresholds[i]), "precision": float(precision[i]), "recall": float(recall[i]),
            "precision_target": precision_target, "target_met": met}


def decision(y_val, raw_val, precision_target: float) -> dict:
    """Calibration + threshold from the validation rows, with the figures that justify them."""
    from sklearn.metrics import brier_score_loss

    calibration = fit_platt(y_val, raw_val)
    calibrated = apply(calibration, raw_val)
    threshold = choose_threshold(y_val, calibrated, precision_target)
    return {
        "calibration": calibration,
        "threshold": threshold["threshold"],
        "precision_target": precision_target,
        "validation": {
            "rows": int(len(y_val)), "frauds": int(np.asarray(y_val).sum()),
            "brier_raw": float(brier_score_loss(y_val, raw_val)),
            "brier_calibrated": float(brier_score_loss(y_val, calibrated)),
            "ece_raw": expected_calibration_error(y_val, raw_val),
            "ece_calibrated": expected_calibration_error(y_val, calibrated),
            "precision": threshold["precision"], "recall": threshold["recall"],
            "target_met": threshold["target_met"],
        },
    }
