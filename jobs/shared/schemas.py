"""The columns every layer agrees on: the raw delivery contract, bronze's bookkeeping columns, the
gold features and the prediction. One home: the generator, the readers, the features, the model
and the scorers import these lists, never spell them again."""

from __future__ import annotations

# What a delivery holds, in this order (the contract in expectations/raw_transactions.json checks values).
RAW_COLUMNS = [
    "transaction_id", "card_id", "customer_id", "merchant_id", "merchant_category",
    "amount", "currency", "timestamp", "channel", "country", "is_fraud",
]
ID_COLUMNS = ["transaction_id", "card_id", "customer_id", "merchant_id"]

# Bronze: where each row came from, and the as-delivered text of a line that could not be a row.
SOURCE_COLUMNS = ["_source_key", "_source_sha256", "_source_row"]
RAW_LINE = "_raw_line"  # the as-delivered text of a CSV line that did not have the header's fields
MALFORMED = "_malformed"  # why such a line cannot be read as a row (null for every good line)
BRONZE_EXTRA = [RAW_LINE, MALFORMED]

# Gold: point-in-time features per transaction, over these windows of the card's history.
WINDOWS = {"1h": 3600, "24h": 86400, "7d": 7 * 86400}
LOOKBACK_DAYS = 7  # the longest window: history read before the first built date
NUMERIC_FEATURES = [
    "log_amount",
    "hour_of_day",
    "day_of_week",
    "card_txn_count_1h",
    "card_txn_count_24h",
    "card_txn_count_7d",
    "card_log_amount_sum_1h",
    "card_log_amount_sum_24h",
    "card_log_amount_sum_7d",
    "amount_to_card_mean_7d",
    "log_secs_since_prev_txn",
    "category_new_for_card_7d",
    "country_new_for_card_7d",
]
CATEGORICAL_FEATURES = ["merchant_category", "channel", "country"]
KEY_COLUMNS = ["transaction_id", "card_id", "timestamp", "date"]
LABEL = "is_fraud"
FEATURE_COLUMNS = NUMERIC_FEATURES + CATEGORICAL_FEATURES

# Predictions: the model's calibrated fraud probability per transaction.
PREDICTION = "fraud_probability"
