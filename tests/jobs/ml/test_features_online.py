"""One definition of the features: a day replayed one transaction at a time through the online
store equals the batch build (DuckDB here, which the Spark build equals: tests/jobs/steps)."""

from __future__ import annotations

import pandas as pd
import pytest

from jobs.devkit.generate import generate_day
from jobs.ml.features_duckdb import build_features_duckdb
from jobs.ml.features_online import epoch_seconds, features
from jobs.quality.contract import to_typed
from jobs.shared.schemas import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from jobs.storage.online_store import OnlineStore

DAYS = ("2026-04-01", "2026-04-02", "2026-04-03")


def silver(frames: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat([to_typed(f) for f in frames], ignore_index=True)
    df["is_fraud"] = df["is_fraud"].astype(int)
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    return df


def test_a_day_replayed_transaction_by_transaction_equals_the_batch_build(tmp_path):
    raw = {d: generate_day(d, 400, n_cards=60) for d in DAYS}
    batch = build_features_duckdb(silver(list(raw.values()))).set_index("transaction_id")
    store = OnlineStore(tmp_path / "online.db")
    # The batch layer as of the end of the day before; then the day's transactions in time order.
    loaded = store.load([raw[d] for d in DAYS[:-1]], until_ts=epoch_seconds(f"{DAYS[-1]}T00:00:00Z"))
    assert loaded["rows_added"] == loaded["rows_held"] == 800
    day = raw[DAYS[-1]].sort_values(["timestamp", "transaction_id"], kind="stable")
    compared = 0
    for txn in day.to_dict("records"):
        got = features(txn, store.history(txn["card_id"], epoch_seconds(txn["timestamp"])))
        assert store.append([txn]) == 1  # the speed layer: the next transaction of the card sees this one
        want = batch.loc[txn["transaction_id"]]
        for name in NUMERIC_FEATURES:
            assert got[name] == pytest.approx(float(want[name]), rel=1e-9, abs=1e-9), (txn["transaction_id"], name)
        assert [got[c] for c in CATEGORICAL_FEATURES] == [want[c] for c in CATEGORICAL_FEATURES]
        compared += 1
    assert compared == 400
    assert store.append(day.to_dict("records")) == 0  # a client's retry never counts twice


def test_a_card_never_seen_gets_the_features_of_a_card_without_history(tmp_path):
    txn = generate_day(DAYS[0], 1, n_cards=1).to_dict("records")[0]
    batch = build_features_duckdb(silver([pd.DataFrame([txn])])).iloc[0]
    store = OnlineStore(tmp_path / "online.db")
    assert not store.known(txn["card_id"])
    got = features(txn, store.history(txn["card_id"], epoch_seconds(txn["timestamp"])))
    assert got == {**{n: pytest.approx(float(batch[n])) for n in NUMERIC_FEATURES},
                   **{c: batch[c] for c in CATEGORICAL_FEATURES}}
    assert got["card_txn_count_7d"] == 0 and got["category_new_for_card_7d"] == 1.0


def test_the_batch_layer_is_idempotent_and_forgets_what_left_the_longest_window(tmp_path):
    frames = [generate_day(d, 200, n_cards=30) for d in DAYS]
    store = OnlineStore(tmp_path / "online.db")
    first = store.load(frames, until_ts=epoch_seconds("2026-04-04T00:00:00Z"))
    again = store.load(frames, until_ts=epoch_seconds("2026-04-04T00:00:00Z"))
    assert (first["rows_added"], again["rows_added"], again["rows_held"]) == (600, 0, 600)
    later = store.load([], until_ts=epoch_seconds("2026-04-10T00:00:00Z"))  # 7 days on: the first two days left
    assert later["rows_expired"] == 400 and later["rows_held"] == 200
    store.close()
    assert OnlineStore(tmp_path / "online.db").size() == 200  # the file is the store: a restart keeps it


def test_features_read_only_the_window_strictly_before_the_transaction():
    from jobs.ml.features_online import Past

    txn = {"amount": 10.0, "timestamp": "2026-04-08T12:00:00Z", "merchant_category": "grocery", "channel": "pos",
           "country": "US"}
    t = epoch_seconds(txn["timestamp"])
    history = [Past(t, 500.0, "grocery", "US"),  # the same second: not before it
               Past(t - 7 * 86400 - 1, 500.0, "grocery", "US"),  # just out of the 7-day window
               Past(t - 30, 20.0, "travel", "FR")]
    got = features(txn, history)
    assert got["card_txn_count_1h"] == got["card_txn_count_7d"] == 1.0
    assert got["amount_to_card_mean_7d"] == 0.5 and got["category_new_for_card_7d"] == 1.0
    assert got["country_new_for_card_7d"] == 1.0 and got["day_of_week"] == 3.0  # a Wednesday, Sunday = 0
