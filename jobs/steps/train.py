"""Training: fit the fraud MLP on a time window of gold features, export ONNX, register in MLflow.

The most recent ``holdout_days`` are never used for fitting: they are the frozen, time-based
holdout that evaluation scores challenger and champion on.
"""

from __future__ import annotations

import json
import logging
import tempfile
from pathlib import Path

import numpy as np

from jobs.ml import calibration
from jobs.ml.model import Preprocessing, build_model, in_chunks
from jobs.ml.training import (
    TRAINING_COLUMNS,
    RowSelector,
    TrainingRows,
    distributed,
    fit,
    pick_device,
    plan_split,
    torch_scores,
)
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.dates import Window
from jobs.shared.names import (
    BUNDLE_DIR,
    DECISION_SHA_TAG,
    HOLDOUT_DATES_TAG,
    ONNX_PARITY,
    ONNX_SHA_TAG,
    PREPROCESSING_SHA_TAG,
    TRAIN_WINDOW_TAG,
)
from jobs.shared.result import JobError, MissingInput
from jobs.shared.schemas import FEATURE_COLUMNS, LABEL
from jobs.storage import lake as lk
from jobs.storage import unchanged
from jobs.storage.checkpoints import Checkpoints, checkpoint_key
from jobs.storage.registry import file_sha256, mlflow_client

log = logging.getLogger(__name__)

READ_BATCH_ROWS = 131_072  # gold rows per record batch of the training scan
PROGRESS_ROWS = 5_000_000  # a progress line every this many rows read


def lineage_snapshots(lake: lk.Lake, fingerprint: str, gold_version: int) -> dict[str, str]:
    """What a model was built from, recorded with its run and version.

    ``gold_version``: the version of the gold table the training frame was read from (reading the
    window at that version gives the frame back exactly); ``silver_version``: the newest silver
    version the gold builds behind it read; ``data_snapshot``: the raw objects ingested so far
    (ledger keys + content hashes); ``feature_snapshot``: the :class:`jobs.ml.training.Fingerprint`
    of the window's rows.
    """
    import hashlib

    from jobs.storage.ledger import read_ledger
    from jobs.storage.tables import silver_version_of_gold

    objects = sorted(f"{e['key']}:{e['sha256']}" for e in read_ledger(lake) if e.get("status") == "ingested")
    return {
        "gold_version": str(gold_version),
        "silver_version": str(silver_version_of_gold(lake, gold_version)),
        "data_snapshot": hashlib.sha256("\n".join(objects).encode()).hexdigest()[:16],
        "feature_snapshot": fingerprint,
    }


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


def training_inputs(window: list[str], feature_snapshot: str, settings: Settings, permute_labels: bool) -> dict:
    """Everything a trained model depends on: the exact feature rows, the code and the parameters."""
    return {"window": [window[0], window[-1]], "feature_snapshot": feature_snapshot,
            "code_version": settings.resolved_code_version, "permute_labels": permute_labels,
            "params": settings.group("training"), "features": list(FEATURE_COLUMNS)}


def train(lake: lk.Lake, date: str, settings: Settings, trigger: str = "manual", airflow_run_id: str = "",
          permute_labels: bool = False, force: bool = False) -> dict:
    """Fit on the window ending at ``date``, register a new model version, return its identity.

    Unchanged inputs (same feature rows, code and parameters as the version this date last
    trained, which still exists) train nothing and register nothing: the result names that
    version, with ``skipped``; ``force`` trains anyway. ``permute_labels`` shuffles the fitting
    labels: a no-skill baseline that the gate must reject (used by the tests; tagged on the run
    so it can never pass unnoticed).
    """
    from jobs.storage import tables

    window = Window.ending(date, settings.train_window_days).days()
    gold_version = tables.version(lake, layout.GOLD_FEATURES)
    rows = read_training_rows(lake, window, gold_version, settings, permute_labels)
    inputs = training_inputs(window, rows.fingerprint, settings, permute_labels)

    def work() -> dict:
        return _fit_and_register(lake, date, window, rows, gold_version, settings, trigger, airflow_run_id,
                                 checkpoints_for(lake, date, inputs, settings, airflow_run_id))

    # Under torchrun every process decides the same way; only rank 0 registers and records.
    return unchanged.once(lake, "train", date, inputs, work, force=force,
                          still_valid=lambda result: _version_exists(settings, result.get("model_version")),
                          run_id=lambda result: airflow_run_id or result["mlflow_run_id"],
                          record=distributed()[0] == 0)


def read_training_rows(lake: lk.Lake, window: list[str], gold_version: int | None, settings: Settings,
                       permute_labels: bool = False) -> TrainingRows:
    """The window's training rows, read from gold at ``gold_version`` in record batches of the training
    columns only: the time split is planned from the log's row counts, and negative sampling, both
    samples and the fingerprint are decided as the batches pass (:class:`jobs.ml.training.RowSelector`),
    so memory holds what training keeps, not the window."""
    import time

    from jobs.storage import tables

    counts = tables.date_counts(lake, layout.GOLD_FEATURES, window, version=gold_version) if gold_version is not None \
        else {}
    if not counts:
        raise MissingInput(f"no gold features in {lake.uri_of(layout.GOLD_FEATURES)} for {window[0]}..{window[-1]}")
    split = plan_split(counts, settings.holdout_days, lambda day: tables.read(
        lake, layout.GOLD_FEATURES, dates=[day], columns=["timestamp", "transaction_id"], version=gold_version))
    selector = RowSelector(split, settings, permute_labels)
    total, started, reported = sum(counts.values()), time.monotonic(), 0
    for batch in tables.batches(lake, layout.GOLD_FEATURES, TRAINING_COLUMNS, dates=window, version=gold_version,
                                batch_size=READ_BATCH_ROWS):
        selector.add(batch.to_pandas())
        if selector.rows - reported >= PROGRESS_ROWS:
            reported = selector.rows
            log.info("read %d of %d gold rows (%.0f rows/s)", reported, total,
                     reported / max(time.monotonic() - started, 1e-9))
    if selector.rows != total:  # the log's statistics and the files disagree: never train on a guess
        raise JobError(f"gold {lake.uri_of(layout.GOLD_FEATURES)} v{gold_version} holds {selector.rows} rows for "
                       f"{window[0]}..{window[-1]}, its log says {total}")
    rows = selector.result()
    seconds = time.monotonic() - started
    log.info("read %d gold rows of %s..%s at v%s in %.1f s (%.0f rows/s): kept %d fitting rows of %d, %d validating, "
             "%d held out (%s..%s)", total, window[0], window[-1], gold_version, seconds, total / max(seconds, 1e-9),
             len(rows.fit), split.fit_rows, len(rows.validation), split.holdout_rows, split.holdout_dates[0],
             split.holdout_dates[-1])
    return rows


def checkpoints_for(lake: lk.Lake, date: str, inputs: dict, settings: Settings,
                    airflow_run_id: str = "") -> Checkpoints:
    """The checkpoint store of this training task: keyed by its Airflow run and task, else by date and inputs."""
    key = checkpoint_key(date, inputs, settings.airflow_dag_id, settings.airflow_run_id or airflow_run_id,
                         settings.airflow_task_id)
    return Checkpoints(lake, key, unchanged.fingerprint(inputs), settings.checkpoint_minutes * 60)


def _fit_and_register(lake: lk.Lake, date: str, window: list[str], rows: TrainingRows, gold_version: int | None,
                      settings: Settings, trigger: str, airflow_run_id: str,
                      checkpoints: Checkpoints | None = None) -> dict:
    """Fit (resuming from ``checkpoints`` when a try before saved one), export and check the ONNX model
    and its bundle, register the version and tag it; then the checkpoint goes."""
    import mlflow
    import torch

    permute_labels = rows.permuted
    device = pick_device(settings.device)
    rank, world, local_rank = distributed()
    if device == "cuda" and world > 1:
        device = f"cuda:{local_rank}"
    if rank != 0:  # other torchrun processes train their shard; rank 0 logs, exports and registers
        fit(rows.fit, rows.validation, settings, device, checkpoints=checkpoints)
        return {"rank": rank, "world_size": world}
    log.info("training on %d rows (%d fraud), validating on %d, holding out %d (%s..%s) on %s",
             len(rows.fit), int(rows.fit[LABEL].sum()), len(rows.validation), rows.split.holdout_rows,
             rows.split.holdout_dates[0], rows.split.holdout_dates[-1], device)
    snapshots = lineage_snapshots(lake, rows.fingerprint, gold_version)
    holdout_dates = ",".join(rows.split.holdout_dates)
    client = mlflow_client(settings)
    with mlflow.start_run(run_name=f"train-{date}") as run:
        mlflow.set_tags({**snapshots, "trigger": trigger, "logical_date": date,
                         **airflow_tags(settings, airflow_run_id), "device": device,
                         "code_version": settings.resolved_code_version,
                         "labels": "permuted (baseline)" if permute_labels else "as delivered"})
        mlflow.log_params({
            TRAIN_WINDOW_TAG: f"{window[0]}..{window[-1]}", HOLDOUT_DATES_TAG: holdout_dates,
            "fit_rows": len(rows.fit), "val_rows": len(rows.validation), "seed": settings.seed,
            "max_epochs": settings.max_epochs, "batch_size": settings.batch_size, "lr": settings.learning_rate,
            "features": ",".join(FEATURE_COLUMNS), "device": device, "torch": torch.__version__,
            "world_size": world, "negative_sample_rate": settings.negative_sample_rate,
        })
        net, pre, history = fit(
            rows.fit, rows.validation, settings, device,
            on_epoch=lambda r: mlflow.log_metrics({k: v for k, v in r.items() if k != "epoch"}, step=r["epoch"]),
            checkpoints=checkpoints,
        )
        with tempfile.TemporaryDirectory() as tmp:
            bundle = _export_and_log_bundle(Path(tmp), net, pre, rows, settings, history)
            info = mlflow.onnx.log_model(
                bundle["onnx"], name="model", registered_model_name=settings.model_name,
                pip_requirements=["onnxruntime"], save_as_external_data=False,
                signature=bundle["signature"], input_example=bundle["example"],
            )
        version = str(info.registered_model_version)
        digest = _registered_onnx_digest(settings, version, bundle["digests"][ONNX_SHA_TAG])
        for key, value in {**snapshots, **bundle["digests"], "decision_threshold": f"{bundle['threshold']:.6f}",
                           "trigger": trigger, "logical_date": date, TRAIN_WINDOW_TAG: f"{window[0]}..{window[-1]}",
                           "code_version": settings.resolved_code_version, HOLDOUT_DATES_TAG: holdout_dates,
                           **airflow_tags(settings, airflow_run_id)}.items():
            client.set_model_version_tag(settings.model_name, version, key, value)
    if checkpoints is not None:
        checkpoints.remove()  # registered: nothing left to resume
    return {
        "mlflow_run_id": run.info.run_id, "model_name": settings.model_name, "model_version": version,
        "device": device, "world_size": world, "epochs": len(history),
        "best_val_pr_auc": max(h["val_pr_auc"] for h in history),
        ONNX_PARITY: bundle["parity"], "onnx_sha256": digest, "fit_rows": len(rows.fit),
        "holdout_rows": rows.split.holdout_rows, "decision_threshold": bundle["threshold"],
        "calibration": bundle["calibration"],
        "links": {links.MLFLOW_RUN: links.mlflow_run(run.info.run_id),
                  links.MODEL_VERSION: links.model_version(settings.model_name, version)},
    }


def _export_and_log_bundle(tmp: Path, net, pre: Preprocessing, rows, settings: Settings, history: list[dict]) -> dict:
    """Export ONNX (checked for parity with PyTorch), calibrate, and log the bundle to the active run.

    Returns the ONNX model as the registry will store it, the bundle files' digests (as version
    tags), the operating threshold and its validation figures, and the model card's signature.
    """
    import mlflow
    import onnx
    import onnxruntime as ort
    import torch
    from mlflow.models import infer_signature

    onnx_path = tmp / "model.onnx"
    export_onnx(net, pre, onnx_path)
    # The bytes the registry will hold (MLflow stores the model with onnx.save_model): checked for
    # parity here, hashed here, and compared with what the registry gives back after registering.
    exported = onnx.load(str(onnx_path))
    onnx.save_model(exported, str(onnx_path))
    session = ort.InferenceSession(str(onnx_path), providers=["CPUExecutionProvider"])
    def onnx_run(n, c):
        return session.run(None, {"numeric": n, "categorical": c})[0]

    numeric, categorical = pre.encode(rows.holdout_sample)
    onnx_scores = in_chunks(onnx_run, numeric, categorical)
    parity = float(np.max(np.abs(onnx_scores - torch_scores(net, pre, rows.holdout_sample))))
    log.info("ONNX parity on %d holdout rows (a seeded sample of %d): max |onnx - torch| = %.2e",
             len(rows.holdout_sample), rows.split.holdout_rows, parity)
    (tmp / "preprocessing.json").write_text(json.dumps(pre.to_dict(), indent=2))
    torch.save(net.state_dict(), tmp / "model_state.pt")
    reference = rows.reference  # a seeded sample of the fitting rows before negative sampling
    mlflow.log_param("reference_window", f"{reference['date'].min()}..{reference['date'].max()}")
    reference.to_parquet(tmp / "reference.parquet", index=False)
    # Calibration and the operating threshold, from the validation rows (jobs.ml.calibration).
    val_numeric, val_categorical = pre.encode(rows.validation)
    raw_val = in_chunks(onnx_run, val_numeric, val_categorical)
    decision = calibration.decision(rows.validation[LABEL].to_numpy(), raw_val, settings.decision_precision_target)
    checked = decision["validation"]
    log.info("calibration (Platt) on %d validation rows: Brier %.4f -> %.4f, ECE %.4f -> %.4f; threshold "
             "%.4f for precision >= %.2f: precision %.3f, recall %.3f%s", checked["rows"],
             checked["brier_raw"], checked["brier_calibrated"], checked["ece_raw"], checked["ece_calibrated"],
             decision["threshold"], settings.decision_precision_target, checked["precision"],
             checked["recall"], "" if checked["target_met"] else " (target not reached: best F1 instead)")
    mlflow.log_metrics({f"val_{k}": float(v) for k, v in checked.items() if k not in ("rows", "frauds")})
    mlflow.log_metric("decision_threshold", decision["threshold"])
    (tmp / "decision.json").write_text(json.dumps(decision, indent=2))
    for name in ("preprocessing.json", "decision.json", "model_state.pt", "reference.parquet"):
        mlflow.log_artifact(str(tmp / name), artifact_path=BUNDLE_DIR)
    mlflow.log_metrics({ONNX_PARITY: parity, "best_val_pr_auc": max(h["val_pr_auc"] for h in history),
                        "epochs": len(history)})
    # The model card's signature and input example: the ONNX inputs (raw features, encoded by the
    # bundle's preprocessing) and the fraud probability out.
    example = {"numeric": numeric[:5], "categorical": categorical[:5]}
    return {"onnx": exported, "parity": parity, "threshold": decision["threshold"], "calibration": checked,
            "digests": {ONNX_SHA_TAG: file_sha256(onnx_path),
                        PREPROCESSING_SHA_TAG: file_sha256(tmp / "preprocessing.json"),
                        DECISION_SHA_TAG: file_sha256(tmp / "decision.json")},
            "example": example, "signature": infer_signature(example, onnx_scores[:5])}


def _registered_onnx_digest(settings: Settings, version: str, exported_digest: str) -> str:
    """The SHA-256 of the ONNX file the registry gives back for ``version``; it must be the exported one."""
    import mlflow

    stored = Path(mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{settings.model_name}/{version}"))
    digest = file_sha256(next(stored.rglob("*.onnx")))
    if digest != exported_digest:
        raise JobError(f"{settings.model_name} v{version}: the registry holds an ONNX file with sha256 {digest}, "
                       f"not the exported {exported_digest}: refusing to tag it (upload corrupted?)")
    return digest


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
