"""Fitting the fraud MLP: the time split, negative sampling, the training loop with early stopping
(DistributedDataParallel under torchrun) and the drift reference. Frames in, a model out; the train
step reads gold, exports ONNX and registers the version around it (:mod:`jobs.steps.train`)."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from datetime import date as Date
from datetime import timedelta

import numpy as np
import pandas as pd

from jobs.ml.model import Preprocessing, build_model, classification_metrics
from jobs.settings import Settings
from jobs.shared.result import JobError, MissingInput
from jobs.shared.schemas import LABEL, LOOKBACK_DAYS

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.15  # most recent share of the fitting rows, used for early stopping

def time_split(frame: pd.DataFrame, holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fit, validation, holdout) by time: holdout = last days, validation = end of the rest."""
    dates = sorted(frame["date"].unique())
    if len(dates) <= holdout_days:
        # Not retryable: more days of features must be built first (a retry finds the same lake).
        raise MissingInput(f"need more than {holdout_days} days of features to hold out {holdout_days}; have "
                           f"{len(dates)} ({dates[0] if dates else '-'}..{dates[-1] if dates else '-'}): build more "
                           "days (build_features with a start date) or lower PIPELINE_HOLDOUT_DAYS")
    holdout_dates = dates[-holdout_days:]
    holdout = frame[frame["date"].isin(holdout_dates)]
    rest = frame[~frame["date"].isin(holdout_dates)].sort_values("timestamp")
    cut = int(len(rest) * (1 - VALIDATION_SHARE))
    return rest.iloc[:cut], rest.iloc[cut:], holdout


@dataclass(frozen=True)
class TrainingRows:
    """The rows one training uses, by time: fitting (sampled), validation, the holdout; and the
    fitting rows before sampling (the drift reference describes the data as it arrives)."""

    fit: pd.DataFrame
    validation: pd.DataFrame
    holdout: pd.DataFrame
    unsampled: pd.DataFrame


def training_rows(frame: pd.DataFrame, settings: Settings, permute_labels: bool = False) -> TrainingRows:
    """Split ``frame`` by time, permute the labels for a no-skill baseline, downsample the negatives."""
    fit_rows, val_rows, holdout = time_split(frame, settings.holdout_days)
    if permute_labels:
        rng = np.random.default_rng(settings.seed)
        fit_rows = fit_rows.assign(**{LABEL: rng.permutation(fit_rows[LABEL].to_numpy())})
        val_rows = val_rows.assign(**{LABEL: rng.permutation(val_rows[LABEL].to_numpy())})
    unsampled = fit_rows
    if settings.negative_sample_rate < 1.0:
        fit_rows = downsample_negatives(unsampled, settings.negative_sample_rate, settings.seed)
        log.info("negative downsampling at %.3f: %d of %d fitting rows kept (every fraud row)",
                 settings.negative_sample_rate, len(fit_rows), len(unsampled))
    return TrainingRows(fit_rows, val_rows, holdout, unsampled)


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


def pick_device(requested: str = "auto") -> str:
    import torch

    if requested == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return requested


def distributed() -> tuple[int, int, int]:
    """(rank, world_size, local_rank) when launched by torchrun; (0, 1, 0) otherwise."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1)), int(os.environ.get("LOCAL_RANK", 0))


def fit(fit_rows: pd.DataFrame, val_rows: pd.DataFrame, settings: Settings, device: str, on_epoch=None,
        checkpoints=None):
    """Train with early stopping on validation PR-AUC; returns (model, preprocessing, history).

    Under ``torchrun`` (WORLD_SIZE > 1) the model is wrapped in DistributedDataParallel (NCCL on
    GPUs, gloo on CPUs) and each process trains on its own shard of every epoch's permutation;
    all processes see the same validation set, so early stopping decides the same everywhere.

    ``checkpoints`` (:class:`jobs.storage.checkpoints.Checkpoints`): the training starts from the
    checkpoint it holds, if any, and saves one at every epoch's end and, mid-epoch, whenever
    ``checkpoints.due()``. A checkpoint is everything the loop's next step depends on (weights,
    optimiser, the best epoch so far, the epoch and batch reached, the shuffle generator as it was
    at the epoch's start and every random state), so a resumed single-process training ends with
    the very model an uninterrupted one does. Under torchrun only rank 0 saves, at epoch ends (a
    mid-epoch save would need every process to agree on the moment); each process's dropout
    randomness then differs from an uninterrupted run's after a resume.
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
    loop = _Loop(epoch=1, position=0, epoch_generator=gen.get_state(), total=torch.zeros((), device=device))
    saved = checkpoints.load() if checkpoints is not None else None
    if saved is not None:
        loop = _resume(saved, net, opt, gen, device)
        for row in loop.history:
            if on_epoch:
                on_epoch(row)  # the new try's run gets the whole series
    saving = checkpoints is not None and rank == 0
    notice = _PreemptionNotice() if saving and world == 1 else None

    def save() -> None:
        checkpoints.save(_checkpoint(loop, net, opt, device))

    try:
        _train_epochs(loop, model, net, opt, gen, loss_fn, xn, xc, y, vn, vc, val_rows, settings, device, world,
                      rank, on_epoch, save if saving else None, checkpoints, notice)
    finally:
        if notice is not None:
            notice.restore()
    net.load_state_dict(loop.best_state)
    if world > 1:
        dist.destroy_process_group()
    return net.cpu().eval(), pre, loop.history


class Preempted(JobError):
    """The node gave notice (SIGTERM: a spot node reclaimed, a pod evicted): the checkpoint is saved and
    the job ends; its retry resumes from it (an ordinary, retryable failure)."""


class _PreemptionNotice:
    """Turns SIGTERM into a request to checkpoint at the next batch and stop (main thread only)."""

    def __init__(self):
        import signal
        import threading

        self.given = False
        self._previous = None
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGTERM, self._notice)

    def _notice(self, signum, frame) -> None:
        self.given = True

    def restore(self) -> None:
        import signal

        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _train_epochs(loop, model, net, opt, gen, loss_fn, xn, xc, y, vn, vc, val_rows, settings, device, world, rank,
                  on_epoch, save, checkpoints, notice) -> None:
    """The epochs from where ``loop`` stands; ``save`` (rank 0 with checkpoints) checkpoints on the way."""
    import torch

    use_bf16 = device.startswith("cuda")

    while loop.epoch <= settings.max_epochs and not loop.finished:
        epoch = loop.epoch
        model.train()
        gen.set_state(loop.epoch_generator)  # the epoch's permutation, again after a resume
        order = torch.randperm(len(y), generator=gen)  # same on every process (same seed)
        if world > 1:  # equal, disjoint shards: every process runs the same number of steps
            order = order[: len(order) - len(order) % world][rank::world]
        for i in range(loop.position, len(order), settings.batch_size):
            idx = order[i : i + settings.batch_size].to(device)
            with torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=use_bf16):
                logits = model(xn[idx], xc[idx])
            loss = loss_fn(logits.float(), y[idx])
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            loop.total += loss.detach() * len(idx)  # summed on the device: no sync per batch
            if save is not None and world == 1 and i + settings.batch_size < len(order) and (
                    checkpoints.due() or notice is not None and notice.given):
                loop.position = i + settings.batch_size
                save()
                if notice is not None and notice.given:
                    raise Preempted(f"preempted (SIGTERM) in epoch {epoch}: checkpoint saved at row "
                                    f"{loop.position} of {len(order)}; the retry resumes from it")
        net.eval()
        with torch.no_grad():
            val_scores = torch.sigmoid(net(vn, vc)).float().cpu().numpy()
        val = classification_metrics(val_rows[LABEL].to_numpy(), val_scores)
        row = {"epoch": epoch, "train_loss": float(loop.total) / len(order), "val_pr_auc": val["pr_auc"],
               "val_roc_auc": val["roc_auc"]}
        loop.history.append(row)
        log.info("epoch %d/%d  loss=%.4f  val_pr_auc=%.4f  val_roc_auc=%.4f",
                 epoch, settings.max_epochs, row["train_loss"], row["val_pr_auc"], row["val_roc_auc"])
        if on_epoch:
            on_epoch(row)
        if val["pr_auc"] > loop.best + 1e-4:
            loop.best, loop.stale = val["pr_auc"], 0
            loop.best_state = {k: v.detach().cpu().clone() for k, v in net.state_dict().items()}
        else:
            loop.stale += 1
            if loop.stale >= settings.early_stopping_patience:
                log.info("early stopping: no val PR-AUC gain for %d epochs (best %.4f)", loop.stale, loop.best)
                loop.finished = True
        loop.epoch, loop.position, loop.total = epoch + 1, 0, torch.zeros((), device=device)
        loop.epoch_generator = gen.get_state()
        if save is not None:
            save()
            if notice is not None and notice.given and not loop.finished:
                raise Preempted(f"preempted (SIGTERM) after epoch {epoch}: checkpoint saved; the retry resumes "
                                "from it")


@dataclass
class _Loop:
    """Where the training loop stands: what a checkpoint holds besides weights and optimiser."""

    epoch: int  # the epoch in progress (1-based)
    position: int  # rows of its permutation already trained on
    epoch_generator: object  # the shuffle generator's state at the epoch's start (its permutation)
    total: object  # the epoch's summed loss so far (a tensor on the device)
    best: float = -1.0
    best_state: dict | None = None
    stale: int = 0
    history: list = field(default_factory=list)
    finished: bool = False


def _checkpoint(loop: _Loop, net, opt, device: str) -> dict:
    import torch

    return {
        "epoch": loop.epoch, "position": loop.position, "epoch_generator": loop.epoch_generator,
        "total": loop.total.detach().cpu(), "best": loop.best, "best_state": loop.best_state, "stale": loop.stale,
        "history": loop.history, "finished": loop.finished, "model": net.state_dict(), "optimizer": opt.state_dict(),
        "torch_rng": torch.get_rng_state(),
        "cuda_rng": torch.cuda.get_rng_state_all() if device.startswith("cuda") else [],
        "numpy_rng": _numpy_state(),
    }


def _resume(saved: dict, net, opt, gen, device: str) -> _Loop:
    import torch

    net.load_state_dict(saved["model"])
    opt.load_state_dict(saved["optimizer"])
    torch.set_rng_state(saved["torch_rng"])
    if device.startswith("cuda") and saved["cuda_rng"]:
        torch.cuda.set_rng_state_all(saved["cuda_rng"])
    name, keys, pos, has_gauss, cached = saved["numpy_rng"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), pos, has_gauss, cached))
    gen.set_state(saved["epoch_generator"])
    return _Loop(epoch=saved["epoch"], position=saved["position"], epoch_generator=saved["epoch_generator"],
                 total=saved["total"].to(device), best=saved["best"], best_state=saved["best_state"],
                 stale=saved["stale"], history=list(saved["history"]), finished=saved["finished"])


def _numpy_state() -> list:
    """NumPy's global random state in types ``torch.load(weights_only=True)`` reads back."""
    import torch

    name, keys, pos, has_gauss, cached = np.random.get_state()
    return [name, torch.from_numpy(keys.astype(np.int64)), int(pos), int(has_gauss), float(cached)]


def torch_scores(net, pre: Preprocessing, frame: pd.DataFrame) -> np.ndarray:
    """Reference probabilities from the PyTorch model (CPU, float32)."""
    import torch

    numeric, categorical = pre.encode(frame)
    with torch.no_grad():
        return torch.sigmoid(net(torch.from_numpy(numeric), torch.from_numpy(categorical))).numpy()
