"""Training reads its window batch by batch: the rows it keeps are the rows a load-everything read
would keep, whatever the batching and the order the files come in."""

import numpy as np
import pandas as pd
import pytest

from jobs.ml.training import (
    FINGERPRINT_COLUMNS,
    TRAINING_COLUMNS,
    RowSelector,
    feature_fingerprint,
    plan_split,
    select_rows,
    time_split,
)
from jobs.settings import Settings
from jobs.shared.schemas import CATEGORICAL_FEATURES, LABEL, NUMERIC_FEATURES


def window(days: int = 14, rows_per_day: int = 3000, seed: int = 0) -> pd.DataFrame:
    rng = np.random.default_rng(seed)
    n = days * rows_per_day
    start = pd.Timestamp("2026-03-01", tz="UTC")
    # Timestamps at whole seconds, so rows share them and the tie-break (the transaction id) matters.
    ts = start + pd.to_timedelta(np.sort(rng.integers(0, days * 86400, n)), unit="s")
    frame = pd.DataFrame({name: rng.normal(size=n) for name in NUMERIC_FEATURES})
    for name in CATEGORICAL_FEATURES:
        frame[name] = rng.choice(["a", "b", "c", "d"], n)
    frame[LABEL] = (rng.random(n) < 0.03).astype("int64")
    frame["transaction_id"] = [f"t{i:07d}" for i in rng.permutation(n)]
    frame["timestamp"] = ts
    frame["date"] = ts.strftime("%Y-%m-%d")
    frame["card_id"] = "c"  # a gold column training does not read
    return frame


def streamed(frame: pd.DataFrame, settings: Settings, permute: bool = False, seed: int = 1):
    """The selection fed as a scan would: the rows in shuffled order, in batches of random sizes."""
    rng = np.random.default_rng(seed)
    counts = frame["date"].value_counts().to_dict()
    split = plan_split(counts, settings.holdout_days,
                       lambda d: frame.loc[frame["date"] == d, ["timestamp", "transaction_id"]])
    selector = RowSelector(split, settings, permute)
    shuffled = frame[TRAINING_COLUMNS].sample(frac=1.0, random_state=seed)
    at = 0
    while at < len(shuffled):
        size = int(rng.integers(1, 5000))
        selector.add(shuffled.iloc[at : at + size])
        at += size
    return selector.result()


@pytest.mark.parametrize("rate", [1.0, 0.2])
def test_a_streamed_selection_equals_the_load_everything_one_row_for_row(rate):
    frame = window()
    settings = Settings(negative_sample_rate=rate, holdout_days=3)
    whole, batched = select_rows(frame, settings), streamed(frame, settings)
    for name in ("fit", "validation", "holdout_sample", "reference"):
        pd.testing.assert_frame_equal(getattr(whole, name), getattr(batched, name), obj=name)
    assert whole.fingerprint == batched.fingerprint == feature_fingerprint(frame)
    assert whole.split == batched.split


def test_the_split_is_by_time_and_accounts_for_every_row():
    frame = window()
    settings = Settings(negative_sample_rate=0.2, holdout_days=3)
    rows = select_rows(frame, settings)
    split = rows.split
    dates = sorted(frame["date"].unique())
    assert split.holdout_dates == dates[-3:]
    assert split.fit_rows + split.validation_rows + split.holdout_rows == len(frame)
    assert split.holdout_rows == frame["date"].isin(dates[-3:]).sum()
    assert len(rows.validation) == split.validation_rows
    assert split.validation_rows == (split.fit_rows + split.validation_rows) - int(
        (split.fit_rows + split.validation_rows) * 0.85)
    fit_rows, val_rows, holdout = time_split(frame, 3)
    assert len(fit_rows) == split.fit_rows and len(holdout) == split.holdout_rows
    # Every fitting row comes before every validating row, by (timestamp, transaction id).
    last_fit = max(zip(fit_rows["timestamp"], fit_rows["transaction_id"], strict=True))
    first_val = min(zip(val_rows["timestamp"], val_rows["transaction_id"], strict=True))
    assert last_fit < first_val == split.boundary
    # Negative sampling: every fraud of the fitting rows kept, about the rate of the others.
    assert rows.fit[LABEL].sum() == fit_rows[LABEL].sum()
    kept = (rows.fit[LABEL] == 0).sum() / (fit_rows[LABEL] == 0).sum()
    assert abs(kept - 0.2) < 0.02
    # The drift reference is of the fitting rows before sampling, after the first 7 days.
    assert len(rows.reference) == 5000 and rows.reference["date"].min() >= dates[7]
    assert set(rows.reference["transaction_id"]) <= set(fit_rows["transaction_id"])
    assert set(rows.holdout_sample["transaction_id"]) <= set(holdout["transaction_id"])
    assert list(rows.fit.columns) == [*NUMERIC_FEATURES, *CATEGORICAL_FEATURES, LABEL]


def test_the_fingerprint_sees_any_changed_value_and_no_reordering():
    frame = window(days=8, rows_per_day=500)
    before = feature_fingerprint(frame)
    assert feature_fingerprint(frame.iloc[::-1]) == before
    assert feature_fingerprint(frame.assign(card_id="other")) == before  # not a training column
    for column in FINGERPRINT_COLUMNS:
        changed = frame.copy()
        value = changed.at[17, column]
        changed.at[17, column] = value + (1 if column == LABEL else 1e-9) if column in NUMERIC_FEATURES + [LABEL] \
            else (value + pd.Timedelta(microseconds=1) if column == "timestamp" else f"{value}x")
        assert feature_fingerprint(changed) != before, column
    assert feature_fingerprint(frame.iloc[1:]) != before  # a row fewer


def test_permuted_labels_keep_their_counts_and_lose_their_meaning():
    frame = window()
    settings = Settings(holdout_days=3)
    true, permuted = select_rows(frame, settings), select_rows(frame, settings, permute_labels=True)
    assert permuted.permuted and not true.permuted
    assert permuted.fit[LABEL].sum() == true.fit[LABEL].sum()
    assert (permuted.fit[LABEL] != true.fit[LABEL]).any()
    assert permuted.fingerprint == true.fingerprint  # the same rows read; the baseline is in the inputs
