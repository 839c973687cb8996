"""Synthetic card transactions: realistic, seedable, with knobs for fraud, drift and bad data.

The same ``seed`` always gives the same card population, and the same ``(seed, date)`` always
gives the same day of transactions, so any date can be regenerated independently.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np
import pandas as pd

from jobs.shared.schemas import RAW_COLUMNS

CATEGORIES = [
    "grocery", "restaurants", "fuel", "transport", "pharmacy", "clothing",
    "entertainment", "travel", "utilities", "home", "electronics", "gift_cards", "jewelry",
]
# Merchant categories fraudsters favour: easy to resell.
FRAUD_CATEGORIES = ["electronics", "gift_cards", "jewelry", "travel"]
# Categories that only appear when the drift knob is turned.
DRIFT_CATEGORIES = ["crypto_exchange", "online_gaming", "buy_now_pay_later"]
CHANNELS = ["pos", "online", "atm"]
COUNTRY_CURRENCY = {"US": "USD", "GB": "GBP", "DE": "EUR", "FR": "EUR", "ES": "EUR", "CA": "CAD"}
COUNTRIES = list(COUNTRY_CURRENCY)
HOME_COUNTRY_WEIGHTS = [0.45, 0.2, 0.12, 0.1, 0.05, 0.08]
# Share of legitimate spending by hour of day (people sleep at night).
HOUR_WEIGHTS = np.array(
    [1, 0.5, 0.3, 0.2, 0.2, 0.4, 1, 2, 3, 4, 4.5, 5, 5.5, 5, 4.5, 4.5, 5, 5.5, 6, 5.5, 4.5, 3.5, 2.5, 1.5]
)


@dataclass(frozen=True)
class CardPopulation:
    """Stable per-card behaviour that every generated day shares."""

    card_ids: np.ndarray
    customer_ids: np.ndarray
    home_country: np.ndarray
    log_amount_mu: np.ndarray
    category_prefs: np.ndarray  # (cards, len(CATEGORIES)) probabilities
    activity: np.ndarray  # relative transaction rate


def card_population(seed: int, n_cards: int) -> CardPopulation:
    """Cards with a home country, a typical spend level and favourite merchant categories."""
    rng = np.random.default_rng([seed, 0xCA4D])
    prefs = rng.dirichlet(np.full(len(CATEGORIES), 0.4), size=n_cards)
    # Legitimate customers rarely buy gift cards or jewelry.
    prefs[:, [CATEGORIES.index(c) for c in ("gift_cards", "jewelry")]] *= 0.15
    prefs /= prefs.sum(axis=1, keepdims=True)
    return CardPopulation(
        card_ids=np.array([f"card_{i:06d}" for i in range(n_cards)]),
        customer_ids=np.array([f"cust_{i // 2 + 1:06d}" for i in range(n_cards)]),
        home_country=rng.choice(COUNTRIES, size=n_cards, p=HOME_COUNTRY_WEIGHTS),
        log_amount_mu=rng.normal(3.4, 0.5, size=n_cards),
        category_prefs=prefs,
        activity=rng.gamma(2.0, 1.0, size=n_cards),
    )


def _day_rng(seed: int, date: str, delivery: str) -> np.random.Generator:
    digest = hashlib.sha256(f"{seed}:{date}:{delivery}".encode()).digest()
    return np.random.default_rng(int.from_bytes(digest[:8], "little"))


def generate_day(
    date: str,
    n_rows: int,
    *,
    seed: int = 7,
    n_cards: int = 3000,
    fraud_rate: float = 0.02,
    drift: float = 0.0,
    delivery: str = "",
) -> pd.DataFrame:
    """One day of transactions (UTC), sorted by time.

    ``delivery`` names an extra delivery for the same day: other transactions, other ids.

    ``drift`` in [0, 1] shifts the world: higher amounts, new merchant categories, more online
    spending and a changed fraud pattern (fraud moves to domestic card-present purchases).
    """
    if not 0.0 <= drift <= 1.0:
        raise ValueError(f"drift must be within [0, 1], got {drift}")
    cards = card_population(seed, n_cards)
    rng = _day_rng(seed, date, delivery)
    day_start = pd.Timestamp(date, tz="UTC").tz_localize(None)

    n_fraud = int(round(n_rows * fraud_rate))
    n_legit = n_rows - n_fraud

    # --- legitimate spending --------------------------------------------------------------
    p_card = cards.activity / cards.activity.sum()
    card_idx = rng.choice(len(cards.card_ids), size=n_legit, p=p_card)
    hours = rng.choice(24, size=n_legit, p=HOUR_WEIGHTS / HOUR_WEIGHTS.sum())
    seconds = hours * 3600 + rng.integers(0, 3600, size=n_legit)
    cum = cards.category_prefs[card_idx].cumsum(axis=1)
    cat_idx = (rng.random(n_legit)[:, None] > cum).sum(axis=1).clip(max=len(CATEGORIES) - 1)
    categories = np.array(CATEGORIES)[cat_idx].astype(object)
    amount = np.exp(rng.normal(cards.log_amount_mu[card_idx] + 0.8 * drift, 0.6))
    online_share = 0.33 + 0.3 * drift
    channel = rng.choice(CHANNELS, size=n_legit, p=[0.95 - online_share, online_share, 0.05])
    country = cards.home_country[card_idx].astype(object)
    abroad = rng.random(n_legit) < 0.04
    country[abroad] = rng.choice(COUNTRIES, size=int(abroad.sum()))
    if drift > 0:
        novel = rng.random(n_legit) < 0.35 * drift
        categories[novel] = rng.choice(DRIFT_CATEGORIES, size=int(novel.sum()))
    legit = pd.DataFrame(
        {
            "card_idx": card_idx,
            "merchant_category": categories,
            "amount": amount,
            "seconds": seconds,
            "channel": channel,
            "country": country,
            "is_fraud": 0,
        }
    )

    # --- fraud: compromised cards used in short bursts ------------------------------------
    frames = [legit]
    if n_fraud:
        burst_sizes = []
        while sum(burst_sizes) < n_fraud:
            burst_sizes.append(int(rng.integers(1, 5)))
        burst_sizes[-1] -= sum(burst_sizes) - n_fraud
        burst_sizes = [b for b in burst_sizes if b > 0]
        victims = rng.choice(len(cards.card_ids), size=len(burst_sizes), p=p_card)
        night = rng.random(len(burst_sizes)) < 0.5
        burst_start = np.where(
            night, rng.integers(0, 6 * 3600, len(burst_sizes)), rng.integers(0, 86400 - 3600, len(burst_sizes))
        )
        f_card = np.repeat(victims, burst_sizes)
        f_seconds = np.repeat(burst_start, burst_sizes) + rng.integers(0, 3600, n_fraud)
        f_amount = np.exp(rng.normal(cards.log_amount_mu[f_card] + 1.3 - 0.6 * drift, 0.7))
        f_channel = rng.choice(
            CHANNELS, size=n_fraud, p=[0.15 + 0.6 * drift, 0.8 - 0.6 * drift, 0.05]
        )
        foreign = rng.random(n_fraud) < 0.55 * (1 - drift)
        f_country = cards.home_country[f_card].astype(object)
        f_country[foreign] = rng.choice(COUNTRIES, size=int(foreign.sum()))
        frames.append(
            pd.DataFrame(
                {
                    "card_idx": f_card,
                    "merchant_category": rng.choice(FRAUD_CATEGORIES, size=n_fraud),
                    "amount": f_amount,
                    "seconds": f_seconds.clip(max=86399),
                    "channel": f_channel,
                    "country": f_country,
                    "is_fraud": 1,
                }
            )
        )
    df = pd.concat(frames, ignore_index=True)
    df = df.sort_values(["seconds", "card_idx"], kind="stable").reset_index(drop=True)

    out = pd.DataFrame(
        {
            "transaction_id": [
                f"tx_{date.replace('-', '')}{('_' + delivery) if delivery else ''}_{i:07d}" for i in range(len(df))
            ],
            "card_id": cards.card_ids[df["card_idx"]],
            "customer_id": cards.customer_ids[df["card_idx"]],
            "merchant_id": [
                f"m_{c[:4]}_{int(x) % 97:03d}"
                for c, x in zip(df["merchant_category"], rng.integers(0, 10_000, len(df)), strict=True)
            ],
            "merchant_category": df["merchant_category"].astype(str),
            "amount": df["amount"].round(2).clip(lower=0.5),
            "currency": df["country"].map(COUNTRY_CURRENCY),
            "timestamp": (day_start + pd.to_timedelta(df["seconds"], unit="s")).dt.strftime(
                "%Y-%m-%dT%H:%M:%SZ"
            ),
            "channel": df["channel"].astype(str),
            "country": df["country"].astype(str),
            "is_fraud": df["is_fraud"].astype(int),
        }
    )
    return out[RAW_COLUMNS]


def inject_bad_rows(df: pd.DataFrame, n_bad: int, seed: int = 0) -> pd.DataFrame:
    """Break ``n_bad`` rows the way real exports break (for tests and demos).

    Cycles through: negative amount, unknown currency, missing card id, unknown channel.
    """
    rng = np.random.default_rng(seed)
    df = df.copy()
    rows = rng.choice(len(df), size=min(n_bad, len(df)), replace=False)
    for i, row in enumerate(sorted(rows)):
        kind = i % 4
        if kind == 0:
            df.loc[row, "amount"] = -abs(df.loc[row, "amount"])
        elif kind == 1:
            df.loc[row, "currency"] = "XXX"
        elif kind == 2:
            df.loc[row, "card_id"] = None
        else:
            df.loc[row, "channel"] = "carrier_pigeon"
    return df
