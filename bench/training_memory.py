"""Training in bounded memory: the train job on a 30-day window of 1M rows a day, and the streamed read
beside a read that loads the whole window.

Prepares a folder lake whose gold table holds ``--days`` dates of ``--rows-per-day`` feature rows:
real point-in-time features of generated transactions (DuckDB, the parity reference of the Spark
build) for a few template days, repeated under new transaction ids and shifted to each date (the
memory and the speed of training depend on the rows' number and types, not on their values). Then:

1. **The train job** (``python -m jobs train``, the command a DAG task runs: streamed read, fit,
   ONNX export, registration) at ``--rate``, measured by the job's own cost meter (peak RSS of the
   process tree, CPU seconds) and by sampling from outside; printed beside the 4 GiB target with
   rows/s of the read and of the fit.
2. **Streamed against load-everything** on the first ``--compare-days`` dates (a size where both
   fit): the rows each selects (equal, row for row), their peak memory, the models they train and
   the holdout PR-AUC of each, scored in batches (target: within 0.002).

    .venv/bin/python bench/training_memory.py --days 30 --rows-per-day 1000000 --rate 0.2

With ``--state DIR`` the prepared lake is kept and reused by a later run.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from datetime import date, timedelta
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

TARGET_GIB = 4.0
TARGET_PR_AUC_GAP = 0.002
END = date(2026, 9, 30)


def prepare(state: Path, days: int, rows_per_day: int, template_rows: int) -> None:
    """Gold for ``days`` dates ending at END, from template days of real features."""
    import numpy as np
    import pandas as pd
    import pyarrow as pa
    from training import gold  # bench/training.py: generated days and their DuckDB features

    from jobs.shared import layout
    from jobs.storage import tables
    from jobs.storage.lake import LocalLake

    lake = LocalLake((state / "lake").as_uri())
    if tables.version(lake, layout.GOLD_FEATURES) is not None:
        print(f"reusing the gold table in {state}")
        return
    t0 = time.perf_counter()
    frame = gold(10, template_rows)
    dates = sorted(frame["date"].unique())
    templates = [frame[frame["date"] == d].reset_index(drop=True) for d in dates[7:]]  # full 7-day histories
    print(f"templates: {len(templates)} days of {template_rows:,} rows with features, "
          f"{time.perf_counter() - t0:.0f} s")
    for i in range(days):
        day = END - timedelta(days=days - 1 - i)
        template = templates[i % len(templates)]
        shift = pd.Timedelta(days=(day - date.fromisoformat(template["date"].iloc[0])).days)
        copies = -(-rows_per_day // len(template))
        parts = []
        for copy in range(copies):
            part = template.copy()
            part["transaction_id"] = f"{day:%Y%m%d}-{copy:03d}-" + part["transaction_id"].astype(str)
            part["timestamp"] = part["timestamp"] + shift + np.timedelta64(copy, "us")
            part["date"] = day.isoformat()
            parts.append(part)
        out = pd.concat(parts, ignore_index=True).iloc[:rows_per_day]
        stamps = out["timestamp"] if out["timestamp"].dt.tz is not None else out["timestamp"].dt.tz_localize("UTC")
        out["timestamp"] = stamps.astype("datetime64[us, UTC]")  # as the features job writes it
        tables.replace_partitions(lake, layout.GOLD_FEATURES, pa.Table.from_pandas(out, preserve_index=False),
                                  [day.isoformat()])
        print(f"  gold {day}: {len(out):,} rows ({time.perf_counter() - t0:.0f} s)", flush=True)


def train_job(state: Path, days: int, rate: float, epochs: int) -> dict:
    from procs import wait_for_peak_rss

    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PIPELINE_")},
           "PIPELINE_STATE_DIR": str(state), "PIPELINE_TRAIN_WINDOW_DAYS": str(days),
           "PIPELINE_NEGATIVE_SAMPLE_RATE": str(rate), "PIPELINE_MAX_EPOCHS": str(epochs),
           "PIPELINE_DEVICE": "cpu", "PYTHONPATH": str(ROOT)}
    log = state / "train.log"
    started = time.perf_counter()
    with open(log, "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "jobs", "train", "--date", END.isoformat(), "--force"],
                                cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=out, text=True)
        peak = wait_for_peak_rss(proc, every=0.2)
        stdout = proc.stdout.read()
    if proc.returncode != 0:
        raise SystemExit(f"train failed (exit {proc.returncode}); log {log}:\n{log.read_text()[-3000:]}")
    from jobs.shared.result import parse_result_line

    result = [r for r in map(parse_result_line, stdout.splitlines()) if r is not None][-1]
    text = log.read_text()
    read = next(line for line in text.splitlines() if "gold rows of" in line)
    epoch_rates = [float(line.rsplit("(", 1)[1].split()[0]) for line in text.splitlines() if "rows/s)" in line
                   and "epoch " in line]
    return {"result": result, "wall_s": time.perf_counter() - started, "sampled_peak_gib": peak / 2**30,
            "read_line": read.split("] ", 1)[-1] if "] " in read else read, "epoch_rows_s": epoch_rates}


def compare(state: Path, days: int, rate: float, epochs: int) -> None:
    """Streamed and load-everything selections of the same window, each in its own process."""
    results = {}
    for mode in ("streamed", "load-all"):
        out = subprocess.run([sys.executable, __file__, "--state", str(state), "--one", mode, "--days", str(days),
                              "--rate", str(rate), "--epochs", str(epochs)], capture_output=True, text=True)
        if out.returncode != 0:
            raise SystemExit(out.stderr[-3000:])
        results[mode] = json.loads(out.stdout.strip().splitlines()[-1])
    s, a = results["streamed"], results["load-all"]
    print(f"\nstreamed against load-everything, {s['window_rows']:,} rows ({days} days) at rate {rate}:")
    print(f"  {'':<14} {'peak GiB':>9} {'read s':>7} {'fit rows':>10} {'fit s':>7} {'holdout PR-AUC':>15}")
    for name, r in (("streamed", s), ("load-all", a)):
        print(f"  {name:<14} {r['peak_gib']:>9.2f} {r['read_s']:>7.1f} {r['fit_rows']:>10,} {r['fit_s']:>7.1f} "
              f"{r['pr_auc']:>15.4f}")
    gap = abs(s["pr_auc"] - a["pr_auc"])
    same = s["fingerprint"] == a["fingerprint"] and s["selected"] == a["selected"]
    print(f"  rows selected equal: {same}; PR-AUC gap {gap:.4f} (target <= {TARGET_PR_AUC_GAP}): "
          f"{'met' if gap <= TARGET_PR_AUC_GAP else 'NOT met'}; memory load-all / streamed "
          f"{a['peak_gib'] / s['peak_gib']:.1f}x")


def one(state: Path, mode: str, days: int, rate: float, epochs: int) -> None:
    """One selection and fit in this process: its peak memory, its rows and its holdout PR-AUC."""
    import hashlib

    import numpy as np
    import pandas as pd

    from jobs.ml.model import classification_metrics
    from jobs.ml.training import TRAINING_COLUMNS, fit, select_rows, torch_scores
    from jobs.settings import Settings
    from jobs.shared import layout
    from jobs.shared.cost import own_peak_bytes
    from jobs.shared.dates import Window
    from jobs.steps.train import read_training_rows
    from jobs.storage import tables
    from jobs.storage.lake import LocalLake

    lake = LocalLake((state / "lake").as_uri())
    settings = Settings(state_dir=state, negative_sample_rate=rate, max_epochs=epochs, train_window_days=days)
    window = Window.ending(END.isoformat(), days).days()
    version = tables.version(lake, layout.GOLD_FEATURES)
    started = time.perf_counter()
    if mode == "streamed":
        rows = read_training_rows(lake, window, version, settings)
    else:
        frame = tables.read(lake, layout.GOLD_FEATURES, dates=window, columns=TRAINING_COLUMNS, version=version)
        rows = select_rows(frame, settings)
        del frame
    read_s = time.perf_counter() - started
    selected = hashlib.sha256(pd.util.hash_pandas_object(rows.fit, index=False).to_numpy().tobytes()
                              + pd.util.hash_pandas_object(rows.validation, index=False).to_numpy().tobytes())
    started = time.perf_counter()
    net, pre, _ = fit(rows.fit, rows.validation, settings, "cpu")
    fit_s = time.perf_counter() - started
    labels, scores = [], []  # the holdout scored batch by batch
    for batch in tables.batches(lake, layout.GOLD_FEATURES, TRAINING_COLUMNS, dates=rows.split.holdout_dates,
                                version=version, batch_size=131_072):
        part = batch.to_pandas()
        labels.append(part["is_fraud"].to_numpy())
        scores.append(torch_scores(net, pre, part))
    pr_auc = classification_metrics(np.concatenate(labels), np.concatenate(scores))["pr_auc"]
    print(json.dumps({"peak_gib": own_peak_bytes() / 2**30, "read_s": read_s, "fit_s": fit_s,
                      "fit_rows": len(rows.fit), "window_rows": rows.split.fit_rows + rows.split.validation_rows
                      + rows.split.holdout_rows, "fingerprint": rows.fingerprint,
                      "selected": selected.hexdigest()[:16], "pr_auc": pr_auc}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--days", type=int, default=30)
    parser.add_argument("--rows-per-day", type=int, default=1_000_000)
    parser.add_argument("--template-rows", type=int, default=100_000, help="generated rows per template day")
    parser.add_argument("--rate", type=float, default=0.2, help="negative sample rate")
    parser.add_argument("--epochs", type=int, default=2, 
                        help="epochs of the train job (memory does not grow with them)")
    parser.add_argument("--compare-days", type=int, default=10, help="window of the streamed/load-all comparison")
    parser.add_argument("--compare-epochs", type=int, default=4)
    parser.add_argument("--no-compare", action="store_true", help="the train job only")
    parser.add_argument("--state", type=Path, help="keep (and reuse) the prepared lake here")
    parser.add_argument("--one", choices=["streamed", "load-all"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    import logging

    logging.basicConfig(level=logging.WARNING)
    if args.one:
        return one(args.state, args.one, args.days, args.rate, args.epochs)
    state = args.state or Path(tempfile.mkdtemp(prefix="bench-training-memory-"))
    state.mkdir(parents=True, exist_ok=True)
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    prepare(state, args.days, args.rows_per_day, args.template_rows)
    job = train_job(state, args.days, args.rate, args.epochs)
    cost = job["result"]["cost"]
    peak = max(cost["peak_rss_mb"] / 1024, job["sampled_peak_gib"])
    print(f"\ntrain job, {args.days} days x {args.rows_per_day:,} rows at negative sample rate {args.rate}, "
          f"{args.epochs} epochs, cpu:")
    print(f"  {job['read_line']}")
    print(f"  fit rows {job['result']['fit_rows']:,}; epochs at {', '.join(f'{r:,.0f}' for r in job['epoch_rows_s'])}"
          " rows/s")
    print(f"  wall {job['wall_s']:.0f} s, CPU {cost['cpu_s']:.0f} s, peak RSS {peak:.2f} GiB (target <= {TARGET_GIB}: "
          f"{'met' if peak <= TARGET_GIB else 'NOT met'}; {peak / TARGET_GIB:.2f}x of it)")
    if not args.no_compare:
        compare(state, args.compare_days, args.rate, args.compare_epochs)


if __name__ == "__main__":
    main()
