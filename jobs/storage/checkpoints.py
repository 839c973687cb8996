"""Training checkpoints in the lake: what a preempted training (a spot node reclaimed, a SIGKILL, an
OOM kill) resumes from on its retry.

One checkpoint per training task, keyed by the Airflow run and task (never the try number: every
try of one task shares it) under ``_ledger/checkpoints/train/``; outside Airflow by the date and a digest of
the training inputs, so the same command on the same data resumes. Each save replaces the object
atomically (the lake's ``write_bytes``: a rename on a folder, one PUT on S3), so a kill during a save
leaves the previous checkpoint whole. A checkpoint records the digest of the inputs it was taken
on: a retry on different inputs (gold rebuilt in between) starts afresh, saying so. The train step
removes it once its version is registered.

Checkpoints are read with ``torch.load(weights_only=True)``: tensors, numbers and strings only,
nothing that executes.
"""

from __future__ import annotations

import io
import logging
import time
from dataclasses import dataclass, field

from jobs.shared import layout
from jobs.storage.lake import Lake, ObjectMissing
from jobs.storage.unchanged import fingerprint

log = logging.getLogger(__name__)


def checkpoint_key(date: str, inputs: dict, dag_id: str = "", run_id: str = "", task_id: str = "") -> str:
    """Where one training task's checkpoint lives (see the module doc)."""
    if run_id and task_id:
        return layout.checkpoint(f"airflow-{layout.task_digest(dag_id, run_id, task_id)}")
    return layout.checkpoint(f"manual-{date}-{fingerprint(inputs)}")


@dataclass
class Checkpoints:
    """Saves and loads one training's checkpoint (a dict of tensors and plain values) in the lake.

    ``every_seconds``: the longest a training runs without saving (also mid-epoch); every epoch's
    end saves too. ``saves`` counts this process's saves (the cost summary reports it).
    """

    lake: Lake
    key: str
    inputs: str  # the fingerprint (jobs.storage.unchanged) of what this training fits on
    every_seconds: float
    saves: int = 0
    _last: float = field(default_factory=time.monotonic)

    def due(self) -> bool:
        return time.monotonic() - self._last >= self.every_seconds

    def save(self, state: dict) -> None:
        import torch

        buffer = io.BytesIO()
        torch.save({**state, "inputs": self.inputs}, buffer)
        started = time.monotonic()
        self.lake.write_bytes(self.key, buffer.getvalue())
        self.saves += 1
        self._last = time.monotonic()
        log.info("checkpoint: epoch %d at row %d saved to %s (%.1f KiB, %.0f ms)", state["epoch"],
                 state["position"], self.lake.uri_of(self.key), len(buffer.getvalue()) / 1024,
                 (self._last - started) * 1000)

    def load(self) -> dict | None:
        """The checkpoint to resume from, None when there is none (or it was taken on other inputs)."""
        import torch

        try:
            data = self.lake.read_bytes(self.key)
        except ObjectMissing:
            return None
        state = torch.load(io.BytesIO(data), weights_only=True)
        if state.get("inputs") != self.inputs:
            log.warning("checkpoint %s was taken on other training inputs: starting afresh",
                        self.lake.uri_of(self.key))
            return None
        log.info("resuming from checkpoint %s: epoch %d at row %d (%d epochs done)", self.lake.uri_of(self.key),
                 state["epoch"], state["position"], len(state["history"]))
        return state

    def remove(self) -> None:
        if self.lake.exists(self.key):
            self.lake.remove(self.key)
