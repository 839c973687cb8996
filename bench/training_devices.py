"""Training and ONNX scoring on CPU vs CUDA, on the same gold features.

Prints seconds per epoch, validation PR-AUC and ONNX parity for each device, the CUDA/CPU ratio,
and which onnxruntime providers really run. Usage:

    python bench/training_devices.py --gold .state/lake/gold/features [--devices cpu,cuda]
"""

from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from jobs.ml.training import fit, time_split, torch_scores  # noqa: E402
from jobs.settings import Settings  # noqa: E402
from jobs.steps.train import export_onnx  # noqa: E402


def load_gold(folder: Path) -> pd.DataFrame:
    """The latest version of the gold Delta table at ``folder``."""
    from deltalake import DeltaTable

    frame = DeltaTable(str(folder)).to_pandas()
    return frame.sort_values(["timestamp", "transaction_id"], ignore_index=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--gold", type=Path, required=True)
    parser.add_argument("--devices", default="cpu,cuda")
    parser.add_argument("--epochs", type=int, default=8)
    parser.add_argument("--batch-size", type=int, default=512)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)

    import onnxruntime as ort
    import torch

    frame = load_gold(args.gold)
    fit_rows, val_rows, holdout = time_split(frame, 5)
    print(f"rows: fit {len(fit_rows)}, validation {len(val_rows)}, holdout {len(holdout)}; torch {torch.__version__}, "
          f"cuda available: {torch.cuda.is_available()}"
          + (f" ({torch.cuda.get_device_name(0)})" if torch.cuda.is_available() else ""))
    settings = Settings(max_epochs=args.epochs, early_stopping_patience=args.epochs, batch_size=args.batch_size)
    results = {}
    for device in args.devices.split(","):
        if device.startswith("cuda") and not torch.cuda.is_available():
            print(f"{device}: skipped (no CUDA)")
            continue
        t0 = time.perf_counter()
        net, pre, history = fit(fit_rows, val_rows, settings, device)
        seconds = time.perf_counter() - t0
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(net, pre, path)
            numeric, categorical = pre.encode(holdout)
            reference = torch_scores(net, pre, holdout)
            rows = []
            for provider in ("CPUExecutionProvider", "CUDAExecutionProvider"):
                if provider not in ort.get_available_providers():
                    continue
                session = ort.InferenceSession(str(path), providers=[provider])
                if session.get_providers()[0] != provider:
                    rows.append(f"{provider}: not usable here")
                    continue
                feeds = {"numeric": numeric, "categorical": categorical}
                got = session.run(None, feeds)[0]
                t1 = time.perf_counter()
                for _ in range(20):
                    session.run(None, feeds)
                ms = (time.perf_counter() - t1) / 20 * 1000
                diff = np.max(np.abs(got - reference))
                rows.append(f"{provider}: {ms:.2f} ms per {len(holdout)} rows, max|onnx-torch| {diff:.2e}")
        results[device] = seconds / len(history)
        print(f"{device}: {len(history)} epochs in {seconds:.1f}s ({results[device]:.2f}s/epoch), "
              f"best val PR-AUC {max(h['val_pr_auc'] for h in history):.4f}")
        for r in rows:
            print(f"   onnxruntime {r}")
    if "cpu" in results and "cuda" in results:
        print(f"cuda/cpu time per epoch: {results['cuda'] / results['cpu']:.2f}x")


if __name__ == "__main__":
    main()
