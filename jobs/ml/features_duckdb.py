"""The same point-in-time features as ``jobs.steps.features``, computed by DuckDB on one machine.

An independent implementation (SQL window functions, no Spark): the parity reference of the
Spark build in the tests, and its single-machine yardstick in ``bench/features.py``. The
definitions mirror :func:`jobs.ml.features_spark.build_features` column by column: every window is the
card's transactions in ``[t - window, t - 1 s]``, strictly before the row itself.
"""

from __future__ import annotations

from jobs.shared.schemas import FEATURE_COLUMNS, KEY_COLUMNS, LABEL, WINDOWS

_SQL = """
WITH tx AS (
    SELECT *, epoch(CAST("timestamp" AS TIMESTAMP))::BIGINT AS ts FROM silver
)
SELECT
    transaction_id, card_id, "timestamp", strftime(CAST("timestamp" AS TIMESTAMP), '%Y-%m-%d') AS date,
    ln(1 + amount) AS log_amount,
    CAST(hour(CAST("timestamp" AS TIMESTAMP)) AS DOUBLE) AS hour_of_day,
    CAST(dayofweek(CAST("timestamp" AS TIMESTAMP)) AS DOUBLE) AS day_of_week,
    {windows},
    coalesce(amount / avg(amount) OVER w7, 1.0) AS amount_to_card_mean_7d,
    ln(1 + CAST(coalesce(ts - max(ts) OVER w7, {week}) AS DOUBLE)) AS log_secs_since_prev_txn,
    CAST(count(amount) OVER (PARTITION BY card_id, merchant_category ORDER BY ts
                             RANGE BETWEEN {week} PRECEDING AND 1 PRECEDING) = 0 AS DOUBLE)
        AS category_new_for_card_7d,
    CAST(count(amount) OVER (PARTITION BY card_id, country ORDER BY ts
                             RANGE BETWEEN {week} PRECEDING AND 1 PRECEDING) = 0 AS DOUBLE)
        AS country_new_for_card_7d,
    merchant_category, channel, country,
    CAST(is_fraud AS INTEGER) AS is_fraud
FROM tx
WINDOW w7 AS (PARTITION BY card_id ORDER BY ts RANGE BETWEEN {week} PRECEDING AND 1 PRECEDING)
"""


def _window_columns() -> str:
    parts = []
    for name, seconds in WINDOWS.items():
        frame = f"(PARTITION BY card_id ORDER BY ts RANGE BETWEEN {seconds} PRECEDING AND 1 PRECEDING)"
        parts.append(f"CAST(count(amount) OVER {frame} AS DOUBLE) AS card_txn_count_{name}")
        parts.append(f"ln(1 + coalesce(sum(amount) OVER {frame}, 0.0)) AS card_log_amount_sum_{name}")
    return ",\n    ".join(parts)


def build_features_duckdb(silver, threads: int | None = None):
    """Point-in-time features for every row of ``silver`` (pandas DataFrame or Arrow table/dataset).

    Returns a pandas DataFrame with :data:`KEY_COLUMNS` + :data:`FEATURE_COLUMNS` + the label.
    """
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        if threads:
            con.execute(f"SET threads = {int(threads)}")
        con.register("silver", silver)
        sql = _SQL.format(windows=_window_columns(), week=WINDOWS["7d"])
        out = con.execute(sql).fetch_df()
    finally:
        con.close()
    return out[[*KEY_COLUMNS, *FEATURE_COLUMNS, LABEL]]
