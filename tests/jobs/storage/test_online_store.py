"""The online store's two backends behave alike (SQLite file, real Redis server): the batch layer
loads idempotently and expires, the speed layer keeps the first answer of each transaction, the
features read from it equal the batch build, and an outage is an error, never an empty history."""

from __future__ import annotations

import threading

import pandas as pd
import pytest
from redis_server import redis_server

from jobs.devkit.generate import generate_day
from jobs.ml.features_duckdb import build_features_duckdb
from jobs.ml.features_online import epoch_seconds, features
from jobs.quality.contract import to_typed
from jobs.shared.schemas import CATEGORICAL_FEATURES, NUMERIC_FEATURES
from jobs.storage.online_store import RedisStore, SqliteStore, StoreUnavailable

DAYS = ("2026-04-01", "2026-04-02", "2026-04-03")


def silver(frames: list[pd.DataFrame]) -> pd.DataFrame:
    df = pd.concat([to_typed(f) for f in frames], ignore_index=True)
    df["is_fraud"] = df["is_fraud"].astype(int)
    df["timestamp"] = df["timestamp"].astype("datetime64[us]")
    return df


@pytest.fixture(scope="module")
def redis(tmp_path_factory):
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(params=["sqlite", "redis"])
def store(request, tmp_path):
    if request.param == "sqlite":
        made = SqliteStore(tmp_path / "online.db")
    else:
        made = RedisStore(request.getfixturevalue("redis").url, prefix=f"{tmp_path.name}:")
    yield made
    made.close()


def chunks(frames):
    return [f.to_dict("records") for f in frames]


def test_a_day_replayed_transaction_by_transaction_equals_the_batch_build(store):
    raw = {d: generate_day(d, 400, n_cards=60) for d in DAYS}
    batch = build_features_duckdb(silver(list(raw.values()))).set_index("transaction_id")
    # The batch layer as of the end of the day before; then the day's transactions in time order.
    loaded = store.load(chunks([raw[d] for d in DAYS[:-1]]), until_ts=epoch_seconds(f"{DAYS[-1]}T00:00:00Z"))
    assert loaded["rows_added"] == loaded["rows_held"] == 800
    day = raw[DAYS[-1]].sort_values(["timestamp", "transaction_id"], kind="stable")
    for txn in day.to_dict("records"):
        got = features(txn, store.history(txn["card_id"], epoch_seconds(txn["timestamp"])))
        assert store.record(txn, {"features": got}) is None  # the speed layer: the card's next one sees this
        want = batch.loc[txn["transaction_id"]]
        for name in NUMERIC_FEATURES:
            assert got[name] == pytest.approx(float(want[name]), rel=1e-9, abs=1e-9), (txn["transaction_id"], name)
        assert [got[c] for c in CATEGORICAL_FEATURES] == [want[c] for c in CATEGORICAL_FEATURES]
    assert store.size() == 1200
    assert store.append(day.to_dict("records")) == 0  # the batch layer loading the same rows adds nothing


def test_a_retry_gets_the_first_answer_and_never_a_second_history_entry(store):
    txn = generate_day(DAYS[0], 1, n_cards=1).to_dict("records")[0]
    assert store.answered(txn["card_id"], txn["transaction_id"]) is None
    assert store.record(txn, {"fraud_probability": 0.25}) is None
    assert store.record({**txn, "amount": 999.0}, {"fraud_probability": 0.75}) == {"fraud_probability": 0.25}
    assert store.answered(txn["card_id"], txn["transaction_id"]) == {"fraud_probability": 0.25}
    assert store.size() == 1 and store.known(txn["card_id"])
    later = {**txn, "transaction_id": "t-later", "timestamp": "2026-04-01T23:59:59Z"}
    assert [p.amount for p in store.history(txn["card_id"], epoch_seconds(later["timestamp"]))] == [txn["amount"]]


def test_concurrent_retries_of_one_transaction_record_it_once(store):
    txn = generate_day(DAYS[0], 1, n_cards=1).to_dict("records")[0]
    firsts = []

    def client(n):
        firsts.append(store.record(txn, {"by": n}))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    winners = [f for f in firsts if f is None]
    assert len(winners) == 1 and store.size() == 1
    assert len({f["by"] for f in firsts if f is not None}) == 1  # every other call saw the same first answer


def test_the_batch_layer_is_idempotent_and_forgets_what_left_the_longest_window(store):
    frames = chunks([generate_day(d, 200, n_cards=30) for d in DAYS])
    first = store.load(frames, until_ts=epoch_seconds("2026-04-04T00:00:00Z"))
    again = store.load(frames, until_ts=epoch_seconds("2026-04-04T00:00:00Z"))
    assert (first["rows_added"], again["rows_added"], again["rows_held"]) == (600, 0, 600)
    later = store.load([], until_ts=epoch_seconds("2026-04-10T00:00:00Z"))  # 7 days on: the first two days left
    assert later["rows_expired"] == 400 and later["rows_held"] == 200
    assert store.last_load()["until_ts"] == epoch_seconds("2026-04-10T00:00:00Z")


def test_the_sqlite_file_is_the_store_a_restart_keeps_it(tmp_path):
    store = SqliteStore(tmp_path / "online.db")
    store.append(generate_day(DAYS[0], 50, n_cards=5).to_dict("records"))
    store.close()
    assert SqliteStore(tmp_path / "online.db").size() == 50


def test_a_redis_outage_is_an_error_with_a_reason_not_an_empty_history(tmp_path):
    with redis_server(tmp_path) as server:
        store = RedisStore(server.url)
        txn = generate_day(DAYS[0], 1, n_cards=1).to_dict("records")[0]
        store.record(txn, {"fraud_probability": 0.5})
        store.ping()
        server.stop()  # SIGKILL
        for call in (store.ping, lambda: store.history(txn["card_id"], 0), lambda: store.known(txn["card_id"]),
                     lambda: store.record(txn, {})):
            with pytest.raises(StoreUnavailable, match=rf"RedisStore\(redis://127.0.0.1:{server.port}/0\)"):
                call()
        assert server.password not in repr(store)


def test_a_card_never_seen_gets_the_features_of_a_card_without_history(store):
    txn = generate_day(DAYS[0], 1, n_cards=1).to_dict("records")[0]
    batch = build_features_duckdb(silver([generate_day(DAYS[0], 1, n_cards=1)])).iloc[0]
    assert not store.known(txn["card_id"])
    got = features(txn, store.history(txn["card_id"], epoch_seconds(txn["timestamp"])))
    assert got == {**{n: pytest.approx(float(batch[n])) for n in NUMERIC_FEATURES},
                   **{c: batch[c] for c in CATEGORICAL_FEATURES}}
    assert got["card_txn_count_7d"] == 0 and got["category_new_for_card_7d"] == 1.0
