"""Negative downsampling: every fraud row kept, the rest sampled at the rate, time order kept."""

import numpy as np
import pandas as pd
import pytest

from jobs.ml.training import downsample_negatives
from jobs.settings import Settings


def test_downsampling_keeps_every_fraud_and_the_rate_of_the_rest():
    rng = np.random.default_rng(0)
    frame = pd.DataFrame({"timestamp": np.arange(100_000), "is_fraud": (rng.random(100_000) < 0.02).astype(int)})
    sample = downsample_negatives(frame, 0.1, seed=42)
    assert sample["is_fraud"].sum() == frame["is_fraud"].sum()  # every fraud
    negatives = (frame["is_fraud"] == 0).sum()
    kept = (sample["is_fraud"] == 0).sum()
    assert abs(kept / negatives - 0.1) < 0.01
    assert sample["timestamp"].is_monotonic_increasing
    assert downsample_negatives(frame, 0.1, seed=42).equals(sample)  # reproducible from the seed
    assert downsample_negatives(frame, 1.0, seed=42) is frame  # off by default


def test_the_rate_is_a_share():
    for bad in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError):
            Settings(negative_sample_rate=bad)


def test_too_few_days_to_hold_out_is_missing_input_not_a_retry():
    """A retry finds the same lake: the task must fail at once, saying what to build."""
    from jobs.ml.training import time_split
    from jobs.shared.result import MissingInput

    frame = pd.DataFrame({"date": ["2026-03-01", "2026-03-02"], "timestamp": [1, 2], "is_fraud": [0, 1]})
    with pytest.raises(MissingInput, match=r"hold out 5; have 2 \(2026-03-01..2026-03-02\)") as refused:
        time_split(frame, 5)
    assert refused.value.exit_code == 4
