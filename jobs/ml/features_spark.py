"""Point-in-time features with Spark: every window is the card's transactions in
``[t - window, t - 1 s]``, strictly before the row itself. A Spark DataFrame in, one out; the
features step reads silver and writes gold around it (:mod:`jobs.steps.features`)."""

from __future__ import annotations

from jobs.shared.schemas import FEATURE_COLUMNS, KEY_COLUMNS, LABEL, WINDOWS


def build_features(transactions):
    """Point-in-time features for every row of ``transactions`` (a Spark DataFrame of silver rows).

    Input columns: transaction_id, card_id, merchant_category, amount, timestamp, channel,
    country, is_fraud. Output: :data:`KEY_COLUMNS` + :data:`FEATURE_COLUMNS` + label.
    """
    from pyspark.sql import Window
    from pyspark.sql import functions as F

    df = transactions.withColumn("ts", F.unix_seconds(F.col("timestamp").cast("timestamp")))
    by_card = Window.partitionBy("card_id").orderBy("ts")
    out = df.withColumn("log_amount", F.log1p("amount"))
    for name, seconds in WINDOWS.items():
        w = by_card.rangeBetween(-seconds, -1)  # strictly before: excludes the row itself
        out = out.withColumn(f"card_txn_count_{name}", F.count("amount").over(w).cast("double"))
        out = out.withColumn(
            f"card_log_amount_sum_{name}", F.log1p(F.coalesce(F.sum("amount").over(w), F.lit(0.0)))
        )
    w7 = by_card.rangeBetween(-WINDOWS["7d"], -1)
    mean_7d = F.avg("amount").over(w7)
    out = out.withColumn("amount_to_card_mean_7d", F.coalesce(F.col("amount") / mean_7d, F.lit(1.0)))
    prev_ts = F.max("ts").over(w7)
    out = out.withColumn(
        "log_secs_since_prev_txn",
        F.log1p(F.coalesce(F.col("ts") - prev_ts, F.lit(WINDOWS["7d"])).cast("double")),
    )
    for col in ("merchant_category", "country"):
        w = Window.partitionBy("card_id", col).orderBy("ts").rangeBetween(-WINDOWS["7d"], -1)
        out = out.withColumn(
            f"{'category' if col == 'merchant_category' else col}_new_for_card_7d",
            (F.count("amount").over(w) == 0).cast("double"),
        )
    out = (
        out.withColumn("hour_of_day", F.hour("timestamp").cast("double"))
        .withColumn("day_of_week", (F.dayofweek("timestamp") - 1).cast("double"))
        .withColumn("date", F.date_format("timestamp", "yyyy-MM-dd"))
        .withColumn(LABEL, F.col(LABEL).cast("int"))
    )
    return out.select(*KEY_COLUMNS, *FEATURE_COLUMNS, LABEL)
