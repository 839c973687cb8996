"""The decisions log: every first answer the scoring service gives, in the lake (Delta ``decisions``).

One row per scored transaction (a retry answered with its first answer is not a new decision): the
transaction, its card and its day (UTC: the silver partition its label lands in), when it was
scored, which model's decision was served (``served_by``: champion, or challenger for a canary
card), the champion's version, score, flag and model time, and, when a challenger on live trial
scored the same request, the challenger's version, score, flag and model time, or the error its
scoring raised. The late labels (chargebacks) join this table to tell how what was actually
served did (:func:`served_with_labels`, read by the nightly drift check).

The service appends in batches, never one commit per request: :class:`DecisionLog` buffers rows and
a thread of its own writes them every ``flush_seconds`` or ``buffer_rows`` rows, one append under
the batch's own id, kept when a write fails and is tried again (a write that did commit is never
repeated). A transaction is decided once across replicas (its first answer wins in the online
store), so no two batches hold it. Shutdown flushes; a crash loses at most the rows not yet
written, which :attr:`DecisionLog.pending` counts (the service exports it as a metric).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from datetime import UTC, datetime

from jobs.shared import layout
from jobs.storage import tables
from jobs.storage.lake import Lake

log = logging.getLogger(__name__)

COLUMNS = ("transaction_id", "card_id", "transaction_date", "scored_at", "date", "service", "served_version",
           "served_by", "champion_version", "champion_probability", "champion_flagged", "champion_latency_ms",
           "challenger_version", "challenger_probability", "challenger_flagged", "challenger_latency_ms",
           "challenger_error")


def schema():
    import pyarrow as pa

    return pa.schema([
        ("transaction_id", pa.string()), ("card_id", pa.string()), ("transaction_date", pa.string()),
        ("scored_at", pa.timestamp("us", tz="UTC")),
        ("date", pa.string()), ("service", pa.string()), ("served_version", pa.string()),
        ("served_by", pa.string()), ("champion_version", pa.string()), ("champion_probability", pa.float64()),
        ("champion_flagged", pa.bool_()), ("champion_latency_ms", pa.float64()),
        ("challenger_version", pa.string()), ("challenger_probability", pa.float64()),
        ("challenger_flagged", pa.bool_()), ("challenger_latency_ms", pa.float64()),
        ("challenger_error", pa.string()),
    ])


def row(transaction: dict, service: str, champion: tuple[str, float, bool, float],
        challenger: tuple | None = None, served_by: str = "champion") -> dict:
    """One decision: ``champion`` and ``challenger`` are (version, probability, flagged, model ms), the
    challenger's with a fifth item, the error, when its scoring failed (probability and flag None)."""
    now = datetime.now(UTC)
    empty = (None, None, None, None)
    moment = datetime.fromisoformat(transaction["timestamp"].replace("Z", "+00:00")).astimezone(UTC)
    out = {"transaction_id": transaction["transaction_id"], "card_id": transaction["card_id"],
           "transaction_date": moment.date().isoformat(), "scored_at": now,
           "date": now.date().isoformat(), "service": service, "served_by": served_by,
           "served_version": (challenger if served_by == "challenger" else champion)[0]}
    challenger = challenger or empty
    out["challenger_error"] = challenger[4] if len(challenger) > 4 else None
    for prefix, values in (("champion", champion), ("challenger", challenger[:4])):
        for name, value in zip(("version", "probability", "flagged", "latency_ms"), values, strict=True):
            out[f"{prefix}_{name}"] = value
    return out


class DecisionLog:
    """Rows buffered in memory, written to the lake in batches by a thread of its own."""

    def __init__(self, lake: Lake, buffer_rows: int = 1000, flush_seconds: float = 5.0):
        self.lake, self.buffer_rows, self.flush_seconds = lake, buffer_rows, flush_seconds
        self._rows: list[dict] = []
        self._batches: list[tuple[str, list[dict]]] = []  # formed, not yet written (each keeps its id)
        self._lock = threading.Lock()
        self._due = threading.Event()
        self._stopped = threading.Event()
        self.written = 0
        self.failures = 0
        self._thread = threading.Thread(target=self._run, name="decision-log", daemon=True)
        self._thread.start()

    @property
    def pending(self) -> int:
        """Rows not yet in the lake: what a crash now would lose."""
        with self._lock:
            return len(self._rows) + sum(len(rows) for _, rows in self._batches)

    def record(self, decision: dict) -> None:
        with self._lock:
            self._rows.append(decision)
            full = len(self._rows) >= self.buffer_rows
        if full:
            self._due.set()

    def flush(self) -> int:
        """Write what is buffered now (one commit per batch); the rows written. On a storage error the
        batch stays, with its id, for the next try."""
        import pyarrow as pa

        with self._lock:
            if self._rows:
                self._batches.append((f"decisions-{uuid.uuid4()}", self._rows))
                self._rows = []
            batches = list(self._batches)
        written = 0
        for batch_id, rows in batches:
            try:
                tables.append_rows(self.lake, layout.DECISIONS, pa.Table.from_pylist(rows, schema=schema()), batch_id)
            except Exception as exc:  # noqa: BLE001 - kept for the next flush; the service keeps answering
                self.failures += 1
                log.warning("decisions log: %d rows not written yet (%s: %s); trying again", len(rows),
                            type(exc).__name__, str(exc).splitlines()[0] if str(exc) else "")
                break
            with self._lock:
                self._batches.pop(0)
            written += len(rows)
        self.written += written
        return written

    def _run(self) -> None:
        while not self._stopped.is_set():
            self._due.wait(self.flush_seconds)
            self._due.clear()
            started = time.monotonic()
            written = self.flush()
            if written:
                log.info("decisions log: %d rows written in %.2f s", written, time.monotonic() - started)

    def close(self) -> None:
        """Stop the thread and write what is left."""
        self._stopped.set()
        self._due.set()
        self._thread.join(60)
        self.flush()


def served_with_labels(lake: Lake, dates: list[str]):
    """What was served for the transactions of ``dates`` (their UTC days), joined to the labels that
    reached silver for them since (the chargebacks): one row per decision with ``served_version``,
    ``served_probability``, ``served_flagged``, ``transaction_date`` and ``is_fraud`` (missing: no
    label yet). Decisions are partitioned by the day they were made, which is never before the
    transaction's: only those partitions are read."""
    import pandas as pd

    from jobs.shared.schemas import LABEL

    first = min(dates)
    scored_days = [d for d in tables.partitions(lake, layout.DECISIONS) if d >= first]
    columns = ["transaction_id", "transaction_date", "served_by", "served_version", "champion_probability",
               "champion_flagged", "challenger_probability", "challenger_flagged"]
    decisions = tables.read(lake, layout.DECISIONS, dates=scored_days, columns=columns)
    decisions = decisions[decisions["transaction_date"].isin(dates)]
    if decisions.empty:
        return pd.DataFrame(columns=["transaction_id", "transaction_date", "served_version", "served_probability",
                                     "served_flagged", LABEL])
    challenger = decisions["served_by"] == "challenger"
    decisions = decisions.assign(
        served_probability=decisions["challenger_probability"].where(challenger, decisions["champion_probability"]),
        served_flagged=decisions["challenger_flagged"].where(challenger, decisions["champion_flagged"]))
    labels = tables.read(lake, layout.SILVER_TRANSACTIONS, dates=dates, columns=["transaction_id", LABEL])
    joined = decisions.merge(labels, on="transaction_id", how="left")
    return joined[["transaction_id", "transaction_date", "served_version", "served_probability", "served_flagged",
                   LABEL]]
