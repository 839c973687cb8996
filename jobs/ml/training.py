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

from jobs.ml.model import Preprocessing, build_model, classification_metrics, in_chunks
from jobs.settings import Settings
from jobs.shared.result import JobError, MissingInput
from jobs.shared.schemas import CATEGORICAL_FEATURES, FEATURE_COLUMNS, LABEL, LOOKBACK_DAYS, NUMERIC_FEATURES

log = logging.getLogger(__name__)

VALIDATION_SHARE = 0.15  # most recent share of the fitting rows, used for early stopping
REFERENCE_ROWS = 5000  # fitting rows kept with the model as the drift reference
PARITY_ROWS = 20_000  # holdout rows the exported ONNX model is checked on against PyTorch
# What training reads of gold: the model's columns, the label, and what orders and identifies a row.
FINGERPRINT_COLUMNS = ["transaction_id", "timestamp", *FEATURE_COLUMNS, LABEL]
TRAINING_COLUMNS = [*FINGERPRINT_COLUMNS, "date"]
_ORDER = "_order"  # a row's seeded hash: the tie-break after its timestamp, and its rank in a sample


@dataclass(frozen=True)
class Split:
    """How a training window divides by time: the last ``holdout_days`` dates are the holdout; the rest
    is ordered by (timestamp, transaction_id) and its last ``VALIDATION_SHARE`` validates early
    stopping, starting at ``boundary`` (the first validation row's timestamp and id)."""

    dates: list[str]
    holdout_dates: list[str]
    boundary: tuple
    fit_rows: int  # before negative sampling
    validation_rows: int
    holdout_rows: int


def plan_split(counts: dict[str, int], holdout_days: int, keys_of) -> Split:
    """The :class:`Split` of a window from its rows per date (``counts``, from the table's log) and
    ``keys_of(date)``: that date's ``timestamp`` and ``transaction_id`` (read for one date only, the
    date the validation share starts in)."""
    dates = sorted(d for d, n in counts.items() if n)
    if len(dates) <= holdout_days:
        # Not retryable: more days of features must be built first (a retry finds the same lake).
        raise MissingInput(f"need more than {holdout_days} days of features to hold out {holdout_days}; have "
                           f"{len(dates)} ({dates[0] if dates else '-'}..{dates[-1] if dates else '-'}): build more "
                           "days (build_features with a start date) or lower PIPELINE_HOLDOUT_DAYS")
    holdout, rest = dates[-holdout_days:], dates[:-holdout_days]
    total = sum(counts[d] for d in rest)
    cut = int(total * (1 - VALIDATION_SHARE))
    seen = 0
    for day in rest:
        if seen + counts[day] > cut:
            keys = keys_of(day).sort_values(["timestamp", "transaction_id"], ignore_index=True)
            first = keys.iloc[cut - seen]
            return Split(dates, holdout, (first["timestamp"], first["transaction_id"]), cut, total - cut,
                         sum(counts[d] for d in holdout))
        seen += counts[day]
    raise AssertionError("unreachable: the cut lies inside the rows before the holdout")


def is_fitting(frame: pd.DataFrame, split: Split) -> np.ndarray:
    """Which rows of ``frame`` (none of them holdout rows) come before the split's validation boundary."""
    at, tid = split.boundary
    ts = frame["timestamp"]
    return ((ts < at) | ((ts == at) & (frame["transaction_id"] < tid))).to_numpy()


def time_split(frame: pd.DataFrame, holdout_days: int) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    """(fit, validation, holdout) of a loaded frame, by the :func:`plan_split` rules."""
    split = _split_of(frame, holdout_days)
    held = frame["date"].isin(split.holdout_dates).to_numpy()
    rest = frame[~held].sort_values(["timestamp", "transaction_id"])
    fitting = is_fitting(rest, split)
    return rest[fitting], rest[~fitting], frame[held]


def _split_of(frame: pd.DataFrame, holdout_days: int) -> Split:
    counts = frame["date"].value_counts().to_dict()
    return plan_split(counts, holdout_days, lambda d: frame.loc[frame["date"] == d, ["timestamp", "transaction_id"]])


def row_uniforms(ids: pd.Series, seed: int, purpose: str) -> np.ndarray:
    """A uniform number in [0, 1) per transaction id, from a hash keyed by ``seed`` and ``purpose``:
    the same for a row whichever batch, file or order it is read in (sampling inside a scan)."""
    key = f"{purpose[:6]:<6}{seed % 10**10:010d}"  # SipHash's key: 16 characters
    hashed = pd.util.hash_pandas_object(ids.astype(object), index=False, hash_key=key).to_numpy()
    return (hashed >> np.uint64(11)).astype(np.float64) / float(2**53)


def downsample_negatives(fit_rows: pd.DataFrame, rate: float, seed: int) -> pd.DataFrame:
    """Every fraud row and a ``rate`` share of the others (chosen by :func:`row_uniforms` of the
    transaction id, so a scan decides row by row), in the original (time) order.

    The loss weights positives by the negative/positive ratio of the rows it is given (see
    :func:`fit`), so after sampling the two classes still carry equal total weight: each kept
    negative stands for ``1 / rate`` of them, which is the reweighting that keeps the objective
    unbiased. Only fitting rows are sampled; validation and the holdout stay whole.
    """
    if rate >= 1.0:
        return fit_rows
    return fit_rows[kept_by_sampling(fit_rows, rate, seed)]


def kept_by_sampling(rows: pd.DataFrame, rate: float, seed: int) -> np.ndarray:
    """Which of ``rows`` negative downsampling keeps: every fraud row and the others whose
    :func:`row_uniforms` of the transaction id falls under ``rate``."""
    ids = rows["transaction_id"] if "transaction_id" in rows else pd.Series(rows.index.astype(str))
    return (rows[LABEL].to_numpy() == 1) | (row_uniforms(ids, seed, "sample") < rate)


class Fingerprint:
    """A fingerprint of exact feature rows, built batch by batch: the same for the same rows in any
    order and batching (training orders its rows itself), different when any value changes."""

    def __init__(self):
        self.rows, self._sum, self._squares = 0, 0, 0

    def add(self, frame: pd.DataFrame) -> Fingerprint:
        hashed = pd.util.hash_pandas_object(frame[FINGERPRINT_COLUMNS], index=False).to_numpy()
        self.rows += len(hashed)
        self._sum = (self._sum + int(hashed.sum(dtype=np.uint64))) % 2**64  # numpy wraps at 2**64
        self._squares = (self._squares + int((hashed * hashed).sum(dtype=np.uint64))) % 2**64
        return self

    def hexdigest(self) -> str:
        import hashlib

        return hashlib.sha256(f"{self.rows}:{self._sum}:{self._squares}".encode()).hexdigest()[:16]


def feature_fingerprint(frame: pd.DataFrame) -> str:
    """The :class:`Fingerprint` of a loaded frame's training columns."""
    return Fingerprint().add(frame).hexdigest()


@dataclass(frozen=True)
class TrainingRows:
    """What one training uses: the fitting rows (negatives sampled) and the validation rows, both in
    time order with the model's columns only; a seeded sample of the holdout (ONNX parity) and of
    the fitting rows before sampling (the drift reference: data as it arrives); and the counts."""

    fit: pd.DataFrame
    validation: pd.DataFrame
    holdout_sample: pd.DataFrame
    reference: pd.DataFrame
    split: Split
    fingerprint: str
    permuted: bool = False  # labels shuffled: the no-skill baseline


class RowSelector:
    """Builds :class:`TrainingRows` from a window's rows given batch by batch (any batching, any order).

    Memory holds the kept fitting and validation rows (model columns, float32) and two bounded
    samples, never the window: negative sampling, the time split, both samples and the fingerprint
    are decided row by row as batches pass.
    """

    def __init__(self, split: Split, settings: Settings, permute_labels: bool = False):
        self.split, self._seed, self._rate, self._permute = split, settings.seed, settings.negative_sample_rate, \
            permute_labels
        self._holdout = set(split.holdout_dates)
        # Rows whose card history was fully observable (after the first LOOKBACK_DAYS) describe the
        # data a later day brings; the first days' short histories would read as drift on normal data.
        self._complete_from = (Date.fromisoformat(split.dates[0]) + timedelta(days=LOOKBACK_DAYS)).isoformat()
        self._fit: list[pd.DataFrame] = []
        self._validation: list[pd.DataFrame] = []
        self._parity, self._reference, self._early = SeededSample(PARITY_ROWS), SeededSample(REFERENCE_ROWS), \
            SeededSample(REFERENCE_ROWS)
        self._fingerprint = Fingerprint()
        self.rows = 0

    def add(self, frame: pd.DataFrame) -> None:
        if list(frame.columns) != TRAINING_COLUMNS:
            frame = frame[TRAINING_COLUMNS]
        self._fingerprint.add(frame)
        self.rows += len(frame)
        order = row_uniforms(frame["transaction_id"], self._seed, "order")
        held = frame["date"].isin(self._holdout).to_numpy()
        self._parity.add(frame[held], order[held])
        rest = ~held
        fitting = np.zeros(len(frame), dtype=bool)
        fitting[rest] = is_fitting(frame[rest], self.split)
        validating = rest & ~fitting
        if validating.any():
            self._validation.append(_compact(frame[validating], order[validating]))
        if fitting.any():
            rows, keys = frame[fitting], order[fitting]
            complete = (rows["date"] >= self._complete_from).to_numpy()
            self._reference.add(rows[complete], keys[complete])
            self._early.add(rows[~complete], keys[~complete])
            if self._rate < 1.0:
                keep = kept_by_sampling(rows, self._rate, self._seed)
                rows, keys = rows[keep], keys[keep]
            self._fit.append(_compact(rows, keys))

    def result(self) -> TrainingRows:
        fit_rows, validation = _in_time_order(self._fit), _in_time_order(self._validation)
        if self._permute:  # a no-skill baseline: labels shuffled among the rows
            rng = np.random.default_rng(self._seed)
            fit_rows[LABEL] = rng.permutation(fit_rows[LABEL].to_numpy())
            validation[LABEL] = rng.permutation(validation[LABEL].to_numpy())
        reference = self._reference.rows()
        if len(reference) < 500:  # a short window: the early days too
            reference = SeededSample.merged(self._reference, self._early, REFERENCE_ROWS)
        if self._rate < 1.0:
            log.info("negative downsampling at %.3f: %d of %d fitting rows kept (every fraud row)",
                     self._rate, len(fit_rows), self.split.fit_rows)
        return TrainingRows(fit_rows, validation, self._parity.rows(), reference, self.split,
                            self._fingerprint.hexdigest(), self._permute)


def select_rows(frame: pd.DataFrame, settings: Settings, permute_labels: bool = False) -> TrainingRows:
    """:class:`TrainingRows` of a loaded window (what the streamed selection equals, row for row)."""
    selector = RowSelector(_split_of(frame, settings.holdout_days), settings, permute_labels)
    selector.add(frame)
    return selector.result()


def _compact(rows: pd.DataFrame, keys: np.ndarray) -> pd.DataFrame:
    """The model's columns (numeric as float32, categories as Arrow strings), the label and the order."""
    out = rows[NUMERIC_FEATURES].astype("float32")
    for column in CATEGORICAL_FEATURES:
        out[column] = rows[column].astype(pd.StringDtype("pyarrow"))
    out[LABEL] = rows[LABEL].to_numpy().astype("int8")
    out["timestamp"] = rows["timestamp"].to_numpy()
    out[_ORDER] = keys
    return out


def _in_time_order(parts: list[pd.DataFrame]) -> pd.DataFrame:
    if not parts:
        return pd.DataFrame(columns=[*FEATURE_COLUMNS, LABEL])
    frame = pd.concat(parts, ignore_index=True).sort_values(["timestamp", _ORDER], ignore_index=True)
    return frame.drop(columns=["timestamp", _ORDER])


class SeededSample:
    """The ``size`` rows with the smallest keys seen so far: a seeded uniform sample without replacement,
    the same whatever the batching."""

    def __init__(self, size: int):
        self.size, self._rows = size, None

    def add(self, rows: pd.DataFrame, keys: np.ndarray) -> None:
        if not len(rows):
            return
        rows = rows.assign(**{_ORDER: keys})
        if self._rows is not None and len(self._rows) >= self.size:
            rows = rows[rows[_ORDER].to_numpy() < self._rows[_ORDER].max()]
        self._rows = rows if self._rows is None else pd.concat([self._rows, rows], ignore_index=True)
        if len(self._rows) > 2 * self.size:
            self._rows = self._rows.nsmallest(self.size, _ORDER)

    def rows(self) -> pd.DataFrame:
        if self._rows is None:
            return pd.DataFrame(columns=TRAINING_COLUMNS)
        return self._rows.nsmallest(self.size, _ORDER).sort_values(_ORDER).drop(columns=_ORDER).reset_index(drop=True)

    @staticmethod
    def merged(a: SeededSample, b: SeededSample, size: int) -> pd.DataFrame:
        both = SeededSample(size)
        for part in (a, b):
            if part._rows is not None:
                both.add(part._rows.drop(columns=_ORDER), part._rows[_ORDER].to_numpy())
        return both.rows()


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
    import time

    import torch

    use_bf16 = device.startswith("cuda")

    while loop.epoch <= settings.max_epochs and not loop.finished:
        epoch, started, first_row = loop.epoch, time.monotonic(), loop.position
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
        with torch.no_grad():  # in chunks: the hidden layers of millions of rows at once would not fit
            val_scores = in_chunks(lambda n, c: torch.sigmoid(net(n, c)).float().cpu().numpy(), vn, vc)
        val = classification_metrics(val_rows[LABEL].to_numpy(), val_scores)
        row = {"epoch": epoch, "train_loss": float(loop.total) / len(order), "val_pr_auc": val["pr_auc"],
               "val_roc_auc": val["roc_auc"]}
        loop.history.append(row)
        rate = (len(order) - first_row) * world / max(time.monotonic() - started, 1e-9)
        log.info("epoch %d/%d  loss=%.4f  val_pr_auc=%.4f  val_roc_auc=%.4f  (%.0f rows/s)",
                 epoch, settings.max_epochs, row["train_loss"], row["val_pr_auc"], row["val_roc_auc"], rate)
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
        return in_chunks(lambda n, c: torch.sigmoid(net(torch.from_numpy(n), torch.from_numpy(c))).numpy(),
                         numeric, categorical)
