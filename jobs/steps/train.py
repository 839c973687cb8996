"""Training: fit the fraud MLP on a time window of gold features, export ONNX, register in MLflow.

The most recent ``holdout_days`` are never used for fitting: they are the frozen, time-based
holdout that evaluation scores challenger and champion on.
"""

from __future__ import annotations

import json
import logging
import os
import tempfile
from datetime import date as Date
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd

from jobs.ml import calibration
from jobs.ml.model import Preprocessing, build_model, classification_metrics
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.dates import Window
from jobs.shared.names import BUNDLE_DIR, DECISION_SHA_TAG, ONNX_SHA_TAG, PREPROCESSING_SHA_TAG
from jobs.shared.result import JobError, MissingInput
from jobs.shared.schemas import FEATURE_COLUMNS, LABEL, LOOKBACK_DAYS
from jobs.storage import lake as lk
from jobs.storage import unchanged
from jobs.storage.registry import file_sha256, mlflow_client, read_gold

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.15  # most recent share of the fitting rows, used for early stopping
REFERENCE_ROWS = 5000  # training sample stored with the model for drift checks


def time_split(frame: pd.DataFrame, holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fit, validation, holdout) by time: holdout = last days, validation = end of the rest."""
    dates = sorted(frame["date"].unique())
    if len(dates) <= holdout_days:
        raise JobError(f"need more than {holdout_days} days of features to hold out {holdout_days}; have {len(dates)}")
    holdout_dates = dates[-holdout_days:]
    holdout = frame[frame["date"].isin(holdout_dates)]
    rest = frame[~frame["date"].isin(holdout_dates)].sort_values("timestamp")
    cut = int(len(rest) * (1 - VALIDATION_SHARE))
    return rest.iloc[:cut], rest.iloc[cut:], holdout


def downsample_negatives(fit_rows: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """Every fraud row and a random ``rate`` share of the others, in the original (time) order.

    The loss weights positives by the negative/positive ratio of the rows it is given (see
    :func:`fit`), so after sampling the two classes still carry equal total weight: each kept
    negative stands for ``1 / rate`` of them, which is the reweighting that keeps the objective
    unbiased. Only fitting rows are sampled; validation and the holdout stay whole.
    """
    if rate >= 1.0:
        return fit_rows
    rng = np.random.default_rng(seed)
    keep = (fit_rows[LABEL].to_numpy() == 1) | (rng.random(len(fit_rows)) < rate)
    return fit_rows[keep]


def drift_reference(fit_rows: pd.DataFrame, min_rows: int = 500) -> pd.DataFrame:
    """Fitting rows whose card history was fully observable (after the first LOOKBACK_DAYS).

    Rows in the first days of the window have short histories, so their history features look
    different from any later day's; a reference built on them would report drift on normal data.
    """
    first = Date.fromisoformat(fit_rows["date"].min())
    complete = fit_rows[fit_rows["date"] >= (first + timedelta(days=LOOKBACK_DAYS)).isoformat()]
    return complete if len(complete) >= min_rows else fit_rows


def feature_fingerprint(frame: pd.DataFrame) -> str:
    """A fingerprint of exact feature rows (values and order)."""
    import hashlib

    rows = pd.util.hash_pandas_object(frame.drop(columns=["date"]), index=False).to_numpy().tobytes()
    return hashlib.sha256(rows).hexdigest()[:16]


def lineage_snapshots(lake: lk.Lake, frame: pd.DataFrame, gold_version: int) -> dict[str, str]:
    """What a model was built from, recorded with its run and version.

    ``gold_version``: the version of the gold table the training frame was read from (reading the
    window at that version gives the frame back exactly); ``silver_version``: the newest silver
    version the gold builds behind it read; ``data_snapshot``: the raw objects ingested so far
    (ledger keys + content hashes); ``feature_snapshot``: the exact feature rows of the window.
    """
    import hashlib

    from jobs.storage.ledger import read_ledger
    from jobs.storage.tables import silver_version_of_gold

    objects = sorted(f"{e['key']}:{e['sha256']}" for e in read_ledger(lake) if e.get("status") == "ingested")
    return {
        "gold_version": str(gold_version),
        "silver_version": str(silver_version_of_gold(lake, gold_version)),
        "data_snapshot": hashlib.sha256("\n".join(objects).encode()).hexdigest()[:16],
        "feature_snapshot": feature_fingerprint(frame),
    }


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) when launched by torchrun; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def fit(fit_rows: pd.DataFrame, val_rows: pd.DataFrame, settings: Settings, device: str, on_epoch=None):
    """Train with early stopping on validation PR-AUC; returns (model, preprocessing, history).

    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on
    GPUs, gloo on CPUs) and each process trains on its own shard of every epoch's permutation;
    all processes see the same validation set, so early stopping decides the same everywhere.
    """
    import torch
    import torch.distributed as dist

    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS on CUDA
    torch.manual_seed(settings.seed)
    np.random.seed(settings.seed)
    torch.use_deterministic_algorithms(True, warn_only=True)
    rank, world, _ = distributed()
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if device.startswith("cuda") else "gloo")
    pre = Preprocessing.fit(fit_rows)
    net, _ = build_model(pre)
    net.to(device)
    model = net
    if world > 1:
        from torch.nn.parallel import DistributedDataParallel

        model = DistributedDataParallel(net, device_ids=[torch.device(device).index] if device.startswith("cuda")
                                        else None)
    # The whole (small) training set lives on the device: no host-to-device copy per batch.
    xn, xc = (torch.from_numpy(a).to(device) for a in pre.encode(fit_rows))
    y = torch.from_numpy(fit_rows[LABEL].to_numpy().astype("float32")).to(device)
    vn, vc = (torch.from_numpy(a).to(device) for a in pre.encode(val_rows))
    positives = float(y.sum().cpu())
    if positives == 0 or val_rows[LABEL].nunique() < 2:
        raise JobError("training window holds no fraud examples in fitting or validation rows")
    # Class imbalance: weight positives by the negative/positive ratio.
    pos_weight = torch.tensor((len(y) - positives) / positives, device=device)
    loss_fn = torch.nn.BCEWithLogitsLoss(pos_weight=pos_weight)
    opt = torch.optim.AdamW(model.parameters(), lr=settings.learning_rate, weight_decay=1e-4)
    gen = torch.Generator().manual_seed(settings.seed)
    use_bf16 = device.startswith("cuda")
    best, best_state, stale, history = -1.0, None, 0, []
    for epoch in range(1, settings.max_epochs + 1):
        model.train()
        order = torch.randperm(len(y), generator=gen)  # same on every process (same seed)
        if world > 1:  # equal, disjoint shards: every process runs the same number of steps
            order = order[: len(order) - len(order) % world][rank::world]
        total = torch.zeros((), device=device)  # summed on the device: no sync per batch
        for i in range(0, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(xn[idx], xc[idx])
            loss = loss_fn(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            total += loss.detach() * len(idx)
        net.eval()
        with torch.no_grad():
            val_scores = torch.sigmoid(net(vn, vc)).float().cpu().numpy()
        val = classification_metrics(val_rows[LABEL].to_numpy(), val_scores)
        row = {"epoch": epoch, "train_loss": float(total) / len(order), "val_pr_auc": val["pr_auc"],
               "val_roc_auc": val["roc_auc"]}
        history.append(row)
        log.info("epoch %d/%d  loss=%.4f  val_pr_auc=%.4f  val_roc_auc=%.4f",
                 epoch, settings.max_epochs, row["train_loss"], row["val_pr_auc"], row["val_roc_auc"])
        if on_epoch:
            on_epoch(row)
        if val["pr_auc"] > best + 1e-4:
            best, stale = val["pr_auc"], 0
            best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= settings.early_stopping_patience:
                log.info("early stopping: no val PR-AUC gain for %d epochs (best %.4f)", stale, best)
                break
    net.load_state_dict(best_state)
    if world > 1:
        dist.destroy_process_group()
    return net.cpu().eval(), pre, history


def export_onnx(net, pre: Preprocessing, path: Path) -> None:
    """Export probabilities(numeric, categorical) with a dynamic batch dimension."""
    import torch

    _, Probability = build_model(pre)
    wrapped = Probability(net).eval()
    example = (torch.zeros(2, len(pre.numeric)), torch.zeros(2, len(pre.categorical), dtype=torch.int64))
    batch = torch.export.Dim("batch", min=1)
    torch.onnx.export(
        wrapped, example, str(path), input_names=["numeric", "categorical"], output_names=["probability"],
        dynamic_shapes=({0: batch}, {0: batch}), dynamo=True, external_data=False, verbose=False,
    )


def torch_scores(net, pre: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
    """Reference probabilities from the PyTorch model (CPU, float32)."""
    import torch

    numeric, categorical = pre.encode(frame)
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(numeric), torch.from_numpy(categorical))).numpy()


def training_inputs(window: list[str], feature_snapshot: str, settings: Settings, permute_labels: bool) -> dict:
    """Everything a trained model depends on: the exact feature rows, the code and the parameters."""
    return {"window": [window[0], window[-1]], "feature_snapshot": feature_snapshot,
            "code_version": settings.resolved_code_version, "permute_labels": permute_labels,
            "params": {k: getattr(settings, k) for k in (
                "seed", "max_epochs", "batch_size", "learning_rate", "negative_sample_rate", "holdout_days",
                "train_window_days", "device")}, "features": list(FEATURE_COLUMNS)}


def train(lake: lk.Lake, date: str, settings: Settings, trigger: str = "manual", airflow_run_id: str = "",
          permute_labels: bool = False, force: bool = False) -> dict:
    """Fit on the window ending at ``date``, register a new model version, return its identity.

    Unchanged inputs (same feature rows, code and parameters as the version this date last
    trained, which still exists) train nothing and register nothing: the result names that
    version, with ``skipped``; ``force`` trains anyway. ``permute_labels`` shuffles the fitting
    labels: a no-skill baseline that the gate must reject (used by the tests; tagged on the run
    so it can never pass unnoticed).
    """
    import mlflow
    import onnx
    import onnxruntime as ort
    import torch
    from mlflow.models import infer_signature

    window = Window.ending(date, settings.train_window_days).days()
    from jobs.storage import tables

    gold_version = tables.version(lake, layout.GOLD_FEATURES)
    frame = read_gold(lake, window, version=gold_version)
    if frame.empty:
        raise MissingInput(f"no gold features in {lake.uri_of(layout.GOLD_FEATURES)} for {window[0]}..{window[-1]}")
    inputs = training_inputs(window, feature_fingerprint(frame), settings, permute_labels)
    done = None if force else unchanged.previous(lake, "train", date, inputs)
    if done is not None and _version_exists(settings, done["result"].get("model_version")):
        return unchanged.skipped(done, "train", date)
    fit_rows, val_rows, holdout = time_split(frame, settings.holdout_days)
    if permute_labels:
        rng = np.random.default_rng(settings.seed)
        fit_rows = fit_rows.assign(**{LABEL: rng.permutation(fit_rows[LABEL].to_numpy())})
        val_rows = val_rows.assign(**{LABEL: rng.permutation(val_rows[LABEL].to_numpy())})
    unsampled = fit_rows  # the drift reference describes the data as it arrives, not the sample
    if settings.negative_sample_rate < 1.0:
        before = len(fit_rows)
        fit_rows = downsample_negatives(fit_rows, settings.negative_sample_rate, settings.seed)
        log.info("negative downsampling at %.3f: %d of %d fitting rows kept (every fraud row)",
                 settings.negative_sample_rate, len(fit_rows), before)
    device = pick_device(settings.device)
    rank, world, local_rank = distributed()
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    if rank != 0:  # other torchrun processes train their shard; rank 0 logs, exports and registers
        fit(fit_rows, val_rows, settings, device)
        return {"rank": rank, "world_size": world}
    log.info("training on %d rows (%d fraud), validating on %d, holding out %d (%s..%s) on %s",
             len(fit_rows), int(fit_rows[LABEL].sum()), len(val_rows), len(holdout),
             holdout["date"].min(), holdout["date"].max(), device)
    snapshots = lineage_snapshots(lake, frame, gold_version)
    client = mlflow_client(settings)
    with mlflow.start_run(run_name=f"train-{date}") as run:
        mlflow.set_tags({**snapshots, "trigger": trigger, "logical_date": date,
                         **airflow_tags(settings, airflow_run_id), "device": device,
                         "code_version": settings.resolved_code_version,
                         "labels": "permuted (baseline)" if permute_labels else "as delivered"})
        mlflow.log_params({
            "train_window": f"{window[0]}..{window[-1]}", "holdout_dates": ",".join(sorted(holdout["date"].unique())),
            "fit_rows": len(fit_rows), "val_rows": len(val_rows), "seed": settings.seed,
            "max_epochs": settings.max_epochs, "batch_size": settings.batch_size, "lr": settings.learning_rate,
            "features": ",".join(FEATURE_COLUMNS), "device": device, "torch": torch.__version__,
            "world_size": world, "negative_sample_rate": settings.negative_sample_rate,
        })
        net, pre, history = fit(
            fit_rows, val_rows, settings, device,
            on_epoch=lambda r: mlflow.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"]),
        )
        with tempfile.TemporaryDirectory() as tmp:
            tmp = Path(tmp)
            onnx_path = tmp / "model.onnx"
            export_onnx(net, pre, onnx_path)
            # The bytes the registry will hold (MLflow stores the model with onnx.save_model): checked
            # for parity here, hashed here, and compared with what the registry gives back below.
            exported = onnx.load(str(onnx_path))
            onnx.save_model(exported, str(onnx_path))
            exported_digest = file_sha256(onnx_path)
            session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
            numeric, categorical = pre.encode(holdout)
            onnx_scores = session.run(None, {"numeric": numeric, "categorical": categorical})[0]
            parity = float(np.max(np.abs(onnx_scores - torch_scores(net, pre, holdout))))
            log.info("ONNX parity on %d holdout rows: max |onnx - torch| = %.2e", len(holdout), parity)
            (tmp / "preprocessing.json").write_text(json.dumps(pre.to_dict(), indent=2))
            preprocessing_digest = file_sha256(tmp / "preprocessing.json")
            torch.save(net.state_dict(), tmp / "model_state.pt")
            reference = drift_reference(unsampled)
            sample = reference.sample(min(REFERENCE_ROWS, len(reference)), random_state=settings.seed)
            mlflow.log_param("reference_window", f"{reference['date'].min()}..{reference['date'].max()}")
            sample.to_parquet(tmp / "reference.parquet", index=False)
            # Calibration and the operating threshold, from the validation rows (jobs.ml.calibration).
            val_numeric, val_categorical = pre.encode(val_rows)
            raw_val = session.run(None, {"numeric": val_numeric, "categorical": val_categorical})[0]
            decision = calibration.decision(val_rows[LABEL].to_numpy(), raw_val, settings.decision_precision_target)
            checked = decision["validation"]
            log.info("calibration (Platt) on %d validation rows: Brier %.4f -> %.4f, ECE %.4f -> %.4f; threshold "
                     "%.4f for precision >= %.2f: precision %.3f, recall %.3f%s", checked["rows"],
                     checked["brier_raw"], checked["brier_calibrated"], checked["ece_raw"], checked["ece_calibrated"],
                     decision["threshold"], settings.decision_precision_target, checked["precision"],
                     checked["recall"], "" if checked["target_met"] else " (target not reached: best F1 instead)")
            mlflow.log_metrics({f"val_{k}": float(v) for k, v in checked.items() if k not in ("rows", "frauds")})
            mlflow.log_metric("decision_threshold", decision["threshold"])
            (tmp / "decision.json").write_text(json.dumps(decision, indent=2))
            decision_digest = file_sha256(tmp / "decision.json")
            for name in ("preprocessing.json", "decision.json", "model_state.pt", "reference.parquet"):
                mlflow.log_artifact(str(tmp / name), artifact_path=BUNDLE_DIR)
            mlflow.log_metrics({"onnx_max_abs_diff": parity, "best_val_pr_auc": max(h["val_pr_auc"] for h in history),
                                "epochs": len(history)})
            # The model card's signature and input example: the ONNX inputs (raw features, encoded by
            # the bundle's preprocessing) and the fraud probability out.
            example = {"numeric": numeric[:5], "categorical": categorical[:5]}
            signature = infer_signature(example, onnx_scores[:5])
            info = mlflow.onnx.log_model(
                exported, name="model", registered_model_name=settings.model_name,
                pip_requirements=["onnxruntime"], save_as_external_data=False,
                signature=signature, input_example=example,
            )
        version = str(info.registered_model_version)
        stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{settings.model_name}/{version}"))
        digest = file_sha256(next(stored.rglob("*.onnx")))
        if digest != exported_digest:
            raise JobError(f"{settings.model_name} v{version}: the registry holds an ONNX file with sha256 {digest}, "
                           f"not the exported {exported_digest}: refusing to tag it (upload corrupted?)")
        for key, value in {**snapshots, ONNX_SHA_TAG: exported_digest, PREPROCESSING_SHA_TAG: preprocessing_digest,
                           DECISION_SHA_TAG: decision_digest, "decision_threshold": f"{decision['threshold']:.6f}",
                           "trigger": trigger, "logical_date": date,
                           "train_window": f"{window[0]}..{window[-1]}", "code_version": settings.resolved_code_version,
                           "holdout_dates": ",".join(sorted(holdout["date"].unique())),
                           **airflow_tags(settings, airflow_run_id)}.items():
            client.set_model_version_tag(settings.model_name, version, key, value)
    result = {
        "mlflow_run_id": run.info.run_id, "model_name": settings.model_name, "model_version": version,
        "device": device, "world_size": world, "epochs": len(history),
        "best_val_pr_auc": max(h["val_pr_auc"] for h in history),
        "onnx_max_abs_diff": parity, "onnx_sha256": digest, "fit_rows": len(fit_rows),
        "holdout_rows": len(holdout), "decision_threshold": decision["threshold"],
        "calibration": decision["validation"],
        "links": {links.MLFLOW_RUN: links.mlflow_run(run.info.run_id),
                  links.MODEL_VERSION: links.model_version(settings.model_name, version)},
    }
    unchanged.remember(lake, "train", date, inputs, result, airflow_run_id or run.info.run_id)
    return result


def airflow_tags(settings: Settings, airflow_run_id: str = "") -> dict[str, str]:
    """The Airflow run (its real id, findable in the UI and API) and task instance URL behind a model."""
    tags = {"airflow_run_id": settings.airflow_run_id or airflow_run_id}
    if settings.airflow_task_url:
        tags["airflow_task_url"] = settings.airflow_task_url
    return tags


def _version_exists(settings: Settings, version: str | None) -> bool:
    """Whether the registry still holds ``version`` (a deleted one is trained again)."""
    from mlflow.exceptions import MlflowException

    if not version:
        return False
    try:
        mlflow_client(settings).get_model_version(settings.model_name, str(version))
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return False
        raise
    return True
