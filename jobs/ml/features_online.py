"""The same point-in-time features for one transaction at a time, from its card's recent history.

What a real-time scorer computes while the card is at the terminal: the card's transactions in
``[t - window, t - 1 s]`` (the rows an online store keeps, :mod:`jobs.storage.online_store`) in,
the gold feature values out. The definitions mirror :func:`jobs.ml.features_spark.build_features`
and :func:`jobs.ml.features_duckdb.build_features_duckdb` column by column; tests replay a day
through it and compare every value with theirs.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import UTC, datetime

from jobs.shared.schemas import CATEGORICAL_FEATURES, NUMERIC_FEATURES, WINDOWS

LONGEST = max(WINDOWS.values())  # history older than this never changes a feature


@dataclass(frozen=True)
class Past:
    """One earlier transaction of the card, as the history keeps it."""

    ts: int  # epoch seconds, UTC
    amount: float
    merchant_category: str
    country: str


def epoch_seconds(timestamp) -> int:
    """``2026-03-02T02:04:48Z`` (the delivery format, offset or ``Z``), or a datetime (silver's,
    UTC when naive), as whole epoch seconds."""
    parsed = datetime.fromisoformat(timestamp.replace("Z", "+00:00")) if isinstance(timestamp, str) else timestamp
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=UTC)
    return math.floor(parsed.timestamp())


def features(transaction: dict, history: list[Past]) -> dict:
    """The gold features of ``transaction`` (raw fields: amount, timestamp, merchant_category,
    channel, country) given its card's ``history``: every earlier transaction with ``ts`` in
    ``[t - 7 d, t - 1]``; older or later rows, and the transaction itself, are ignored here too."""
    ts = epoch_seconds(transaction["timestamp"])
    amount = float(transaction["amount"])
    recent = [p for p in history if ts - LONGEST <= p.ts <= ts - 1]
    out: dict[str, float | str] = {"log_amount": math.log1p(amount)}
    moment = datetime.fromtimestamp(ts, UTC)
    out["hour_of_day"] = float(moment.hour)
    out["day_of_week"] = float((moment.weekday() + 1) % 7)  # Sunday = 0, as Spark's dayofweek - 1
    for name, seconds in WINDOWS.items():
        window = [p.amount for p in recent if p.ts >= ts - seconds]
        out[f"card_txn_count_{name}"] = float(len(window))
        out[f"card_log_amount_sum_{name}"] = math.log1p(math.fsum(window))
    out["amount_to_card_mean_7d"] = amount / (math.fsum(p.amount for p in recent) / len(recent)) if recent else 1.0
    out["log_secs_since_prev_txn"] = float(math.log1p(ts - max(p.ts for p in recent) if recent else LONGEST))
    out["category_new_for_card_7d"] = float(all(p.merchant_category != transaction["merchant_category"]
                                                for p in recent))
    out["country_new_for_card_7d"] = float(all(p.country != transaction["country"] for p in recent))
    for name in CATEGORICAL_FEATURES:
        out[name] = transaction[name]
    return {name: out[name] for name in (*NUMERIC_FEATURES, *CATEGORICAL_FEATURES)}


def past_of(transaction: dict) -> Past:
    """What the history keeps of a transaction once it has been seen."""
    return Past(epoch_seconds(transaction["timestamp"]), float(transaction["amount"]),
                transaction["merchant_category"], transaction["country"])


# The transaction a deployment checks every scoring service with (a card without history): the
# service's answer must equal the bundle's own score of these features.
CHECK_TRANSACTION = {"transaction_id": "deploy-check", "card_id": "deploy-check", "customer_id": "deploy-check",
                     "merchant_id": "deploy-check", "merchant_category": "grocery", "amount": 42.5,
                     "currency": "USD", "timestamp": "2026-01-01T12:00:00Z", "channel": "pos", "country": "US"}
