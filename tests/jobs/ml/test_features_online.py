"""One definition of the features, one transaction at a time: the window rules in isolation (a day
replayed through each online store equals the batch build: tests/jobs/storage/test_online_store.py)."""

from __future__ import annotations

from jobs.ml.features_online import epoch_seconds, features


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
