"""The online feature store: each card's recent transactions, for features computed one request at a time.

Two layers write it, one definition reads it (:mod:`jobs.ml.features_online`):

- the **batch layer** loads the card histories of a range of silver days (:meth:`OnlineStore.load`),
  idempotently, in bounded chunks, and expires what has left the longest window;
- the **speed layer** appends every transaction it scores (:meth:`OnlineStore.append`), keyed by
  ``transaction_id``: a client's retry never counts twice.

This module keeps the history in **SQLite** (the embedded default, one file under the state folder,
WAL mode so readers never wait for the writer).
"""

from __future__ import annotations

import logging
import sqlite3
from collections.abc import Iterable
from pathlib import Path

from jobs.ml.features_online import LONGEST, Past, epoch_seconds

log = logging.getLogger(__name__)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS card_history (
    transaction_id TEXT PRIMARY KEY,
    card_id TEXT NOT NULL,
    ts INTEGER NOT NULL,
    amount REAL NOT NULL,
    merchant_category TEXT NOT NULL,
    country TEXT NOT NULL
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS card_history_by_card ON card_history (card_id, ts);
"""
LOAD_CHUNK = 50_000  # rows per insert transaction of the batch layer: memory stays bounded


class OnlineStore:
    """Card histories in a SQLite file (``path``)."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.executescript(_SCHEMA)

    def close(self) -> None:
        self._db.close()

    def history(self, card_id: str, ts: int) -> list[Past]:
        """The card's transactions with ``ts`` in ``[ts - 7 d, ts - 1]``: what its features read."""
        rows = self._db.execute(
            "SELECT ts, amount, merchant_category, country FROM card_history "
            "WHERE card_id = ? AND ts BETWEEN ? AND ? ORDER BY ts", (card_id, ts - LONGEST, ts - 1)).fetchall()
        return [Past(*row) for row in rows]

    def known(self, card_id: str) -> bool:
        """Whether the store holds any transaction of this card (a card it never saw has no history)."""
        found = self._db.execute("SELECT 1 FROM card_history WHERE card_id = ? LIMIT 1", (card_id,)).fetchone()
        return found is not None

    def append(self, transactions: Iterable[dict]) -> int:
        """Add transactions (raw fields); one already held (same ``transaction_id``) is kept as it is.

        Returns how many were new.
        """
        rows = [(t["transaction_id"], t["card_id"], epoch_seconds(t["timestamp"]), float(t["amount"]),
                 t["merchant_category"], t["country"]) for t in transactions]
        with self._transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO card_history VALUES (?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def load(self, frames: Iterable, until_ts: int) -> dict:
        """The batch layer: every row of ``frames`` (pandas frames of silver rows, in chunks), then
        expire what is older than the longest window before ``until_ts``. Idempotent."""
        added = seen = 0
        for frame in frames:
            for start in range(0, len(frame), LOAD_CHUNK):
                chunk = frame.iloc[start:start + LOAD_CHUNK]
                added += self.append(chunk.to_dict("records"))
                seen += len(chunk)
                log.info("online store: %d rows read, %d new", seen, added)
        expired = self.expire(until_ts - LONGEST)
        return {"rows_read": seen, "rows_added": added, "rows_expired": expired, "rows_held": self.size()}

    def expire(self, before_ts: int) -> int:
        """Drop transactions older than ``before_ts``: no feature of a later transaction reads them."""
        with self._transaction() as db:
            return db.execute("DELETE FROM card_history WHERE ts < ?", (before_ts,)).rowcount

    def size(self) -> int:
        return self._db.execute("SELECT count(*) FROM card_history").fetchone()[0]

    def _transaction(self):
        db = self._db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")
                return db

            def __exit__(self, kind, value, tb):
                db.execute("ROLLBACK" if kind else "COMMIT")
                return False

        return _Tx()
