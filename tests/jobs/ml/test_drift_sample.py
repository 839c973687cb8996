"""The drift check compares a bounded, seeded sample of a large window, and says what it can detect."""

import math

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

from jobs.ml.drift import sample_confidence
from jobs.settings import Settings
from jobs.shared import layout
from jobs.shared.schemas import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES
from jobs.steps import drift
from jobs.storage import tables


@pytest.fixture
def gold(lake):
    """Three days of 2,000 gold rows each, in the lake's gold table."""
    rng = np.random.default_rng(3)
    n = 6000
    ts = pd.Timestamp("2026-03-01") + pd.to_timedelta(np.sort(rng.integers(0, 3 * 86400, n)), unit="s")
    frame = pd.DataFrame({name: rng.normal(size=n) for name in NUMERIC_FEATURES})
    for name in CATEGORICAL_FEATURES:
        frame[name] = rng.choice(["a", "b", "c"], n)
    frame[LABEL] = (rng.random(n) < 0.03).astype("int64")
    frame["transaction_id"] = [f"t{i:05d}" for i in rng.permutation(n)]
    frame["timestamp"] = ts.astype("datetime64[us]")  # as Spark writes gold
    frame["date"] = ts.strftime("%Y-%m-%d")
    dates = sorted(frame["date"].unique())
    tables.replace_partitions(lake, layout.GOLD_FEATURES, pa.Table.from_pandas(frame, preserve_index=False), dates)
    return frame, dates


def test_a_window_over_the_sample_size_is_read_as_the_same_seeded_sample_every_time(lake, gold, monkeypatch):
    frame, dates = gold
    monkeypatch.setattr(drift, "READ_BATCH_ROWS", 777)  # many batches: the sample must not depend on them
    settings = Settings(drift_sample_rows=1000)
    first, rows = drift.read_recent(lake, dates, settings)
    again, _ = drift.read_recent(lake, dates, settings)
    assert rows == len(frame) == 6000 and len(first) == 1000
    pd.testing.assert_frame_equal(first, again)
    # rows as stored, not altered: each sampled row equals its source row
    source = frame.set_index("transaction_id").loc[first["transaction_id"], first.columns.drop("transaction_id")]
    pd.testing.assert_frame_equal(first.drop(columns="transaction_id").reset_index(drop=True),
                                  source.reset_index(drop=True), check_dtype=False)
    # every date is represented, about in proportion (uniform over the window's rows)
    assert all(250 < n < 420 for n in first["date"].value_counts())
    other, _ = drift.read_recent(lake, dates, Settings(drift_sample_rows=1000, seed=7))
    assert set(other["transaction_id"]) != set(first["transaction_id"])  # the seed chooses the rows


def test_a_window_within_the_sample_size_is_read_whole(lake, gold):
    frame, dates = gold
    whole, rows = drift.read_recent(lake, dates, Settings(drift_sample_rows=6000))
    assert rows == 6000 and sorted(whole["transaction_id"]) == sorted(frame["transaction_id"])


def test_the_report_states_the_sample_and_what_it_can_detect():
    stated = sample_confidence(200_000, 10_000_000, 5000, 4000, 0.02)
    assert stated["sampled"] and stated["compared_rows"] == 200_000 and stated["window_rows"] == 10_000_000
    assert stated["min_detectable_ks_distance"] == round(1.358 * math.sqrt((200_000 + 5000) / (200_000 * 5000)), 4)
    assert stated["fraud_rate_margin"] == round(1.96 * math.sqrt(0.02 * 0.98 / 200_000), 6)
    # more recent rows help only down to the reference's share of the noise
    assert sample_confidence(10_000_000, 10_000_000, 5000, 0, None)["min_detectable_ks_distance"] > 0.019
    assert not sample_confidence(500, 500, 5000, 0, None)["sampled"]
