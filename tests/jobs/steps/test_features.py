"""Spark point-in-time features: no leakage, and equal to an independent pandas computation."""

import numpy as np
import pandas as pd
import pytest

from jobs.devkit.generate import generate_day
from jobs.ml.features_spark import build_features
from jobs.quality.contract import to_typed
from jobs.shared.schemas import FEATURE_COLUMNS, KEY_COLUMNS, LABEL
from jobs.steps.features import spark_session


@pytest.fixture(scope="module")
def spark():
    session = spark_session("local[2]", "1g", app_name="tests")
    yield session
    session.stop()


def silver_frame(days=("2026-04-01", "2026-04-02"), rows=400) -> pd.DataFrame:
    frames = [to_typed(generate_day(d, rows, n_cards=60)) for d in days]
    df = pd.concat(frames, ignore_index=True)
    df["is_fraud"] = df["is_fraud"].astype(int)
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    return df


def spark_features(spark, frame: pd.DataFrame) -> pd.DataFrame:
    out = build_features(spark.createDataFrame(frame)).toPandas()
    return out.sort_values("transaction_id").reset_index(drop=True)


def reference_features(frame: pd.DataFrame) -> pd.DataFrame:
    """Straightforward per-row loops: for each transaction, look only at the card's earlier rows."""
    rows = []
    ts = frame["timestamp"].astype("int64") // 10**6  # seconds
    frame = frame.assign(ts=ts)
    for _, group in frame.groupby("card_id"):
        for _, r in group.iterrows():
            before = group[group.ts < r.ts]
            row = {"transaction_id": r.transaction_id}
            for name, seconds in {"1h": 3600, "24h": 86400, "7d": 604800}.items():
                w = before[before.ts >= r.ts - seconds]
                row[f"card_txn_count_{name}"] = float(len(w))
                row[f"card_log_amount_sum_{name}"] = float(np.log1p(w.amount.sum()))
            w7 = before[before.ts >= r.ts - 604800]
            row["amount_to_card_mean_7d"] = r.amount / w7.amount.mean() if len(w7) else 1.0
            row["log_secs_since_prev_txn"] = float(np.log1p(r.ts - w7.ts.max() if len(w7) else 604800))
            row["category_new_for_card_7d"] = float(not (w7.merchant_category == r.merchant_category).any())
            row["country_new_for_card_7d"] = float(not (w7.country == r.country).any())
            rows.append(row)
    return pd.DataFrame(rows).sort_values("transaction_id").reset_index(drop=True)


def test_output_schema(spark):
    out = spark_features(spark, silver_frame(rows=50))
    assert list(out.columns) == KEY_COLUMNS + FEATURE_COLUMNS + [LABEL]
    assert len(out) == 100


def test_spark_equals_independent_reference(spark):
    frame = silver_frame()
    got = spark_features(spark, frame)
    want = reference_features(frame)
    for col in want.columns.drop("transaction_id"):
        np.testing.assert_allclose(got[col].to_numpy(), want[col].to_numpy(), rtol=1e-9, atol=1e-9, err_msg=col)
    assert got["card_txn_count_7d"].max() > 5  # the sample really exercises history


def test_planted_future_transaction_never_changes_earlier_features(spark):
    frame = silver_frame(rows=200)
    before = spark_features(spark, frame)
    target = frame.iloc[100]
    future = target.copy()
    future["transaction_id"] = "tx_planted_future"
    future["timestamp"] = target["timestamp"] + pd.Timedelta(seconds=1)
    future["amount"] = 99999.0
    planted = pd.concat([frame, future.to_frame().T.astype(frame.dtypes.to_dict())], ignore_index=True)
    after = spark_features(spark, planted)
    after = after[after.transaction_id != "tx_planted_future"].reset_index(drop=True)
    not_later = (before["timestamp"] <= future["timestamp"]).to_numpy()
    assert not_later.sum() > 100
    pd.testing.assert_frame_equal(before.loc[not_later, FEATURE_COLUMNS], after.loc[not_later, FEATURE_COLUMNS])
    # ...while a transaction after it does see it.
    later = frame[(frame.card_id == target.card_id) & (frame.timestamp > future["timestamp"])]
    if len(later):
        tid = later.iloc[0].transaction_id
        b = before.set_index("transaction_id").loc[tid, "card_txn_count_7d"]
        a = after.set_index("transaction_id").loc[tid, "card_txn_count_7d"]
        assert a == b + 1


def test_gold_contract_passes_real_features_and_names_broken_rules(spark, tmp_path):
    from jobs.settings import get_settings
    from jobs.shared.result import JobError
    from jobs.steps.features import check_contract

    out = spark_features(spark, silver_frame(rows=100))
    check_contract(out, ["2026-04-01", "2026-04-02"], get_settings().expectations_dir)
    out.loc[0:2, "hour_of_day"] = 30
    out.loc[5, "card_txn_count_1h"] = out.loc[5, "card_txn_count_24h"] + 1
    with pytest.raises(JobError, match=r"hour of day is 0-23 \(3 rows\); a 24 h window holds at least the 1 h window"):
        check_contract(out, ["2026-04-01", "2026-04-02"], get_settings().expectations_dir)


def test_a_staged_build_is_checked_date_by_date_and_its_ids_across_dates(spark, tmp_path, monkeypatch):
    """A range build never holds the range in pandas: the contract runs per date of the staged output
    and names each broken rule with its dates; transaction ids are unique across dates too (Spark
    counts them), which no per-date check could see."""
    import pyarrow as pa
    import pyarrow.dataset as ds

    from jobs.settings import get_settings
    from jobs.shared.result import JobError
    from jobs.steps import features
    from jobs.steps.features import _contract_per_date, _ids_unique_across_dates

    monkeypatch.setattr(features, "CONTRACT_ROWS", 37)  # each date in several pieces
    expectations, days = get_settings().expectations_dir, ["2026-04-01", "2026-04-02"]
    good = spark_features(spark, silver_frame(rows=100))

    def staged(frame, name):  # written as the build stages its output: by Spark, partitioned by date
        spark.createDataFrame(frame).write.partitionBy("date").parquet(str(tmp_path / name))
        partitioning = ds.partitioning(pa.schema([("date", pa.string())]), flavor="hive")
        return tmp_path / name, ds.dataset(str(tmp_path / name), format="parquet", partitioning=partitioning)

    where, built = staged(good, "good")
    assert _contract_per_date(built, days, expectations) == good["date"].value_counts().sort_index().to_dict()
    _ids_unique_across_dates(spark, where, days, len(good), expectations)

    bad = good.copy()
    second = bad.index[bad["date"] == days[1]]
    bad.loc[second[:3], "hour_of_day"] = 30
    with pytest.raises(JobError, match=r"hour of day is 0-23 \(3 rows on 2026-04-02\)"):
        _contract_per_date(staged(bad, "bad")[1], days, expectations)

    repeated = good.copy()
    first_id = repeated.loc[repeated["date"] == days[0], "transaction_id"].iloc[0]
    repeated.loc[second[0], "transaction_id"] = first_id  # the same id on two dates: each date alone is fine
    where, built = staged(repeated, "repeated")
    _contract_per_date(built, days, expectations)
    with pytest.raises(JobError, match=rf"one feature row per transaction across dates \(1 rows\) \(e.g. {first_id}\)"):
        _ids_unique_across_dates(spark, where, days, len(repeated), expectations)


def test_spark_equals_the_independent_duckdb_implementation(spark):
    """Two engines, two implementations (Spark DataFrame windows, DuckDB SQL windows), one answer."""
    from jobs.ml.features_duckdb import build_features_duckdb

    frame = silver_frame(days=("2026-04-01", "2026-04-02", "2026-04-03"), rows=500)
    got = spark_features(spark, frame)
    ref = build_features_duckdb(frame).sort_values("transaction_id").reset_index(drop=True)
    assert len(got) == len(ref) == len(frame)
    assert list(got["transaction_id"]) == list(ref["transaction_id"]) and list(got["date"]) == list(ref["date"])
    for column in FEATURE_COLUMNS:
        if got[column].dtype == object:
            assert list(got[column]) == list(ref[column]), column
        else:
            assert got[column].to_numpy() == pytest.approx(ref[column].to_numpy(), rel=1e-9, abs=1e-12), column
    assert (got[LABEL].to_numpy() == ref[LABEL].to_numpy()).all()
