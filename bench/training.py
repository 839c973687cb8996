"""Training throughput (rows/s) and what negative downsampling costs in PR-AUC, on the same holdout.

Generates ``--days`` days of transactions, computes the point-in-time features (DuckDB, the
parity reference of the Spark build), splits them as training does (the last 5 days are the
holdout, the end of the rest validates early stopping) and fits the production model once per
``--rates`` value of PIPELINE_NEGATIVE_SAMPLE_RATE (1.0 = every row). For each it prints fitting
rows, epochs, seconds, rows/s, and holdout PR-AUC beside the full-data PR-AUC; then what one
epoch of a 30-day window at 1M rows a day would take at that rate. Usage:

    .venv/bin/python bench/training.py --days 20 --rows-per-day 50000 --rates 1.0,0.2,0.05 [--device cpu]
"""

from __future__ import annotations

import argparse
import logging
import os
import platform
import sys
import time
from datetime import date, timedelta
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.devkit.generate import generate_day  # noqa: E402
from jobs.ml.features_duckdb import build_features_duckdb  # noqa: E402
from jobs.ml.model import classification_metrics  # noqa: E402
from jobs.ml.training import downsample_negatives, fit, time_split, torch_scores  # noqa: E402
from jobs.quality.contract import to_typed  # noqa: E402
from jobs.settings import Settings  # noqa: E402

NIGHTLY_FIT_ROWS = 30 * 1_000_000 * 25 / 30 * 0.85  # 30 days of 1M, less 5 holdout days, less validation


def gold(days: int, rows_per_day: int) -> pd.DataFrame:
    end = date(2026, 9, 30)
    frames = []
    for i in range(days):
        day = (end - timedelta(days=days - 1 - i)).isoformat()
        frame = to_typed(generate_day(day, rows_per_day, n_cards=max(2000, rows_per_day // 5), delivery="bench"))
        frame["is_fraud"] = frame["is_fraud"].astype("int64")
        frames.append(frame)
    silver = pd.concat(frames, ignore_index=True)
    silver["date"] = silver["timestamp"].dt.strftime("%Y-%m-%d")
    return build_features_duckdb(silver).sort_values(["timestamp", "transaction_id"], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=20)
    parser.add_argument("--rows-per-day", type=int, default=50_000)
    parser.add_argument("--rates", default="1.0,0.2,0.05")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--max-epochs", type=int, default=12)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    import torch

    t0 = time.perf_counter()
    frame = gold(args.days, args.rows_per_day)
    fit_rows, val_rows, holdout = time_split(frame, 5)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, torch {torch.__version__} "
          f"({torch.get_num_threads()} threads), device {args.device}")
    print(f"data: {len(frame):,} feature rows in {time.perf_counter() - t0:.0f} s; fit {len(fit_rows):,} "
          f"({int(fit_rows['is_fraud'].sum()):,} fraud), validation {len(val_rows):,}, holdout {len(holdout):,} "
          f"({int(holdout['is_fraud'].sum()):,} fraud)")
    print(f"\n{'rate':>5} | {'fit rows':>9} {'epochs':>6} {'fit s':>7} {'rows/s':>9} {'s/epoch':>7} | "
          f"{'holdout PR-AUC':>14} {'vs full':>8} | {'30d x 1M/day: s/epoch':>21}")
    full = None
    for rate in (float(r) for r in args.rates.split(",")):
        settings = Settings(max_epochs=args.max_epochs, negative_sample_rate=rate, device=args.device)
        sample = downsample_negatives(fit_rows, rate, settings.seed)
        started = time.perf_counter()
        epochs = []
        net, pre, _ = fit(sample, val_rows, settings, args.device, on_epoch=epochs.append)
        seconds = time.perf_counter() - started
        pr_auc = classification_metrics(holdout["is_fraud"].to_numpy(), torch_scores(net, pre, holdout))["pr_auc"]
        full = pr_auc if full is None else full
        rows_per_s = len(sample) * len(epochs) / seconds
        nightly = NIGHTLY_FIT_ROWS * rate / rows_per_s
        print(f"{rate:>5.2f} | {len(sample):>9,} {len(epochs):>6} {seconds:>7.1f} {rows_per_s:>9,.0f} "
              f"{seconds / len(epochs):>7.2f} | {pr_auc:>14.4f} {pr_auc - full:>+8.4f} | {nightly:>21,.0f}",
              flush=True)


if __name__ == "__main__":
    main()
