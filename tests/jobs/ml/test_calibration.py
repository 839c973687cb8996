"""Calibration and the operating threshold (jobs.ml.calibration) on scores with a known truth."""

import numpy as np
import pytest

from jobs.ml import calibration


def inflated(n=20_000, seed=0):
    """Labels drawn from a true probability, and scores that overstate it (as class weighting does)."""
    rng = np.random.default_rng(seed)
    true_p = 1 / (1 + np.exp(-rng.normal(-4.5, 1.6, n)))
    y = (rng.random(n) < true_p).astype(int)
    z = np.log(true_p / (1 - true_p))
    scores = 1 / (1 + np.exp(-(0.8 * z + 3.0)))  # weighted by neg/pos: pushed towards 1
    return y, scores


def test_platt_scaling_fixes_inflated_probabilities():
    y, scores = inflated()
    d = calibration.decision(y, scores, precision_target=0.6)
    v = d["validation"]
    assert v["brier_calibrated"] < v["brier_raw"] and v["ece_calibrated"] < v["ece_raw"] / 3
    assert v["ece_calibrated"] < 0.01
    calibrated = calibration.apply(d["calibration"], scores)
    assert abs(calibrated.mean() - y.mean()) < 0.005  # the mean probability is the fraud rate
    assert np.array_equal(np.argsort(calibrated, kind="stable"), np.argsort(scores, kind="stable"))  # same ranking


def test_the_threshold_reaches_the_precision_target_with_the_best_recall():
    y, scores = inflated(seed=1)
    p = calibration.apply(calibration.fit_platt(y, scores), scores)
    chosen = calibration.choose_threshold(y, p, precision_target=0.6)
    assert chosen["target_met"] and chosen["precision"] >= 0.6
    at = calibration.at_threshold(y, p, chosen["threshold"])
    assert at["precision"] == pytest.approx(chosen["precision"]) and at["recall"] == pytest.approx(chosen["recall"])
    # Any lower threshold flags more but falls below the target: this one has the best recall at it.
    lower = calibration.at_threshold(y, p, chosen["threshold"] - 0.05)
    assert lower["recall"] >= at["recall"] and lower["precision"] < 0.6


def test_an_unreachable_target_falls_back_to_the_best_f1_and_says_so():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 2, 2000)
    noise = rng.random(2000)  # no skill: precision never reaches 0.99
    chosen = calibration.choose_threshold(y, noise, precision_target=0.99)
    assert not chosen["target_met"] and 0 <= chosen["threshold"] <= 1


def test_without_a_calibration_scores_are_left_alone():
    scores = np.array([0.1, 0.5, 0.9])
    assert np.array_equal(calibration.apply(None, scores), scores)
    with pytest.raises(ValueError, match="unknown calibration"):
        calibration.apply({"method": "isotonic"}, scores)
