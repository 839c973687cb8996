"""The online feature store: each card's recent transactions, for features computed one request at a time.

Two layers write it, one definition reads it (:mod:`jobs.ml.features_online`):

- the **batch layer** loads the card histories of a range of silver days (:meth:`OnlineStore.load`),
  idempotently, in bounded chunks, and expires what has left the longest window;
- the **speed layer** records every transaction it scores with its answer (:meth:`OnlineStore.record`),
  keyed by ``transaction_id``: a client's retry gets the first answer back and never counts twice.

Two backends, one behaviour (the same tests run on both):

- :class:`SqliteStore`: one file under the state folder (the embedded default), WAL mode so readers
  never wait for the writer; one process.
- :class:`RedisStore`: a Redis server (the stack, Kubernetes), shared by every replica of the
  service: a card's history is a sorted set scored by time, the speed layer's write is one Lua script
  (first answer wins, atomically, across replicas).

:func:`open_store` picks one from ``Settings.serving_store_url``.
"""

from __future__ import annotations

import json
import logging
import sqlite3
import threading
import time
from collections.abc import Iterable
from pathlib import Path

from jobs.ml.features_online import LONGEST, Past, epoch_seconds

log = logging.getLogger(__name__)

LOAD_CHUNK = 50_000  # rows per write of the batch layer: memory stays bounded
ANSWER_TTL = LONGEST + 86_400  # how long a transaction's first answer is kept for retries (seconds)


class StoreUnavailable(Exception):
    """The online store did not answer: no score is given on partial history (the service answers 503)."""


def _row(t: dict) -> tuple[str, str, int, float, str, str]:
    return (str(t["transaction_id"]), str(t["card_id"]), epoch_seconds(t["timestamp"]), float(t["amount"]),
            str(t["merchant_category"]), str(t["country"]))


class OnlineStore:
    """What both backends do; the batch layer's loop is shared."""

    def history(self, card_id: str, ts: int) -> list[Past]:
        """The card's transactions with ``ts`` in ``[ts - 7 d, ts - 1]``: what its features read."""
        raise NotImplementedError

    def known(self, card_id: str) -> bool:
        """Whether the store holds any transaction of this card (a card it never saw has no history)."""
        raise NotImplementedError

    def answered(self, card_id: str, transaction_id: str) -> dict | None:
        """The first answer given for this transaction, if it was scored before."""
        raise NotImplementedError

    def lookup(self, card_id: str, transaction_id: str, ts: int) -> tuple[dict | None, list[Past], bool]:
        """What scoring one transaction reads, at once: its first answer if it was scored before, the
        card's history before ``ts`` (:meth:`history`) and whether the card was ever seen (:meth:`known`)."""
        first = self.answered(card_id, transaction_id)
        if first is not None:
            return first, [], True
        history = self.history(card_id, ts)
        return None, history, bool(history) or self.known(card_id)

    def record(self, transaction: dict, answer: dict) -> dict | None:
        """The speed layer: join the card's history and keep ``answer``, unless the transaction was
        scored already; then nothing changes and the first answer is returned."""
        raise NotImplementedError

    def append(self, transactions: Iterable[dict]) -> int:
        """Add transactions (raw or silver fields); one already held is kept as it is. Returns how many were new."""
        raise NotImplementedError

    def expire(self, before_ts: int) -> int:
        """Drop transactions older than ``before_ts``: no feature of a later transaction reads them."""
        raise NotImplementedError

    def size(self) -> int:
        raise NotImplementedError

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the store answers."""
        raise NotImplementedError

    def meta(self, name: str) -> dict | None:
        """A value the store keeps about itself (what the batch layer loaded), or None."""
        raise NotImplementedError

    def set_meta(self, name: str, value: dict) -> None:
        raise NotImplementedError

    def last_load(self) -> dict | None:
        """What the batch layer last loaded: ``{"loaded_at": epoch seconds, "until_ts": ..., ...}``."""
        return self.meta("last_load")

    def close(self) -> None:
        """Release connections."""

    def load(self, chunks: Iterable[list[dict]], until_ts: int | None = None) -> dict:
        """The batch layer: every row of ``chunks`` (silver rows as dicts, a bounded chunk at a time);
        with ``until_ts``, then expire what is older than the longest window before it and record the
        load. Idempotent: loading the same rows again adds nothing."""
        added = seen = 0
        for chunk in chunks:
            added += self.append(chunk)
            seen += len(chunk)
            log.info("online store %s: %d rows read, %d new", self, seen, added)
        summary = {"rows_read": seen, "rows_added": added}
        if until_ts is not None:
            summary["rows_expired"] = self.expire(until_ts - LONGEST)
            summary["rows_held"] = self.size()
            self.set_meta("last_load", {**summary, "until_ts": until_ts, "loaded_at": time.time()})
        return summary


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
CREATE TABLE IF NOT EXISTS answers (transaction_id TEXT PRIMARY KEY, answer TEXT NOT NULL) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
"""


class SqliteStore(OnlineStore):
    """Card histories in a SQLite file (``path``); one connection, its writes serialized."""

    CHECKPOINT_SECONDS = 1.0

    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._db = sqlite3.connect(self.path, timeout=30, check_same_thread=False, isolation_level=None)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        # No checkpoint inside a write: copying the WAL into the file (and its fsync) would stall the
        # request that happens to commit the 1000th page. A thread of this store checkpoints instead,
        # on its own connection, without the lock (sqlite releases the interpreter meanwhile).
        self._db.execute("PRAGMA wal_autocheckpoint=0")
        self._db.executescript(_SCHEMA)
        self._lock = threading.RLock()
        self._closed = threading.Event()
        self._checkpointer = threading.Thread(target=self._checkpoint, name="online-store-checkpoint", daemon=True)
        self._checkpointer.start()

    def _checkpoint(self) -> None:
        db = sqlite3.connect(self.path, timeout=30, isolation_level=None)
        try:
            while not self._closed.wait(self.CHECKPOINT_SECONDS):
                try:
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except sqlite3.Error as exc:  # the next one tries again; readers and writers go on
                    log.warning("online store checkpoint: %s", exc)
        finally:
            db.close()

    def __repr__(self) -> str:
        return f"SqliteStore({self.path})"

    def close(self) -> None:
        self._closed.set()
        self._checkpointer.join(5)
        self._db.close()

    def history(self, card_id: str, ts: int) -> list[Past]:
        with self._lock:
            rows = self._db.execute(
                "SELECT ts, amount, merchant_category, country FROM card_history "
                "WHERE card_id = ? AND ts BETWEEN ? AND ? ORDER BY ts", (card_id, ts - LONGEST, ts - 1)).fetchall()
        return [Past(*row) for row in rows]

    def known(self, card_id: str) -> bool:
        with self._lock:
            found = self._db.execute("SELECT 1 FROM card_history WHERE card_id = ? LIMIT 1", (card_id,)).fetchone()
        return found is not None

    def answered(self, card_id: str, transaction_id: str) -> dict | None:
        with self._lock:
            found = self._db.execute("SELECT answer FROM answers WHERE transaction_id = ?",
                                     (transaction_id,)).fetchone()
        return json.loads(found[0]) if found else None

    def record(self, transaction: dict, answer: dict) -> dict | None:
        row = _row(transaction)
        with self._lock, self._transaction() as db:
            first = db.execute("SELECT answer FROM answers WHERE transaction_id = ?", (row[0],)).fetchone()
            if first:
                return json.loads(first[0])
            db.execute("INSERT INTO answers VALUES (?, ?)", (row[0], json.dumps(answer)))
            db.execute("INSERT OR IGNORE INTO card_history VALUES (?, ?, ?, ?, ?, ?)", row)
            return None

    def append(self, transactions: Iterable[dict]) -> int:
        rows = [_row(t) for t in transactions]
        with self._lock, self._transaction() as db:
            before = db.total_changes
            db.executemany("INSERT OR IGNORE INTO card_history VALUES (?, ?, ?, ?, ?, ?)", rows)
            return db.total_changes - before

    def expire(self, before_ts: int) -> int:
        with self._lock, self._transaction() as db:
            expired = db.execute("DELETE FROM card_history WHERE ts < ?", (before_ts,)).rowcount
            # answers are kept for retries as long as their transaction can still be in a window
            db.execute("DELETE FROM answers WHERE transaction_id NOT IN (SELECT transaction_id FROM card_history)")
            return expired

    def size(self) -> int:
        with self._lock:
            return self._db.execute("SELECT count(*) FROM card_history").fetchone()[0]

    def ping(self) -> None:
        try:
            with self._lock:
                self._db.execute("SELECT 1 FROM card_history LIMIT 1").fetchall()
        except sqlite3.Error as exc:
            raise StoreUnavailable(f"{self}: {exc}") from exc

    def meta(self, name: str) -> dict | None:
        with self._lock:
            found = self._db.execute("SELECT value FROM meta WHERE name = ?", (name,)).fetchone()
        return json.loads(found[0]) if found else None

    def set_meta(self, name: str, value: dict) -> None:
        with self._lock, self._transaction() as db:
            db.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (name, json.dumps(value)))

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


# The speed layer's write, atomic on the server: the first answer for a transaction wins; only it
# joins the card's history. KEYS: answer, card history. ARGV: answer json, ts, member, ttl seconds.
_RECORD = """
local first = redis.call('GET', KEYS[1])
if first then return first end
redis.call('SET', KEYS[1], ARGV[1], 'EX', tonumber(ARGV[4]))
redis.call('ZADD', KEYS[2], tonumber(ARGV[2]), ARGV[3])
return false
"""
_SEP = "\x1f"  # between a history member's fields (the contract keeps it out of every value)


class RedisStore(OnlineStore):
    """Card histories in Redis at ``url`` (``redis://host:port/db``; ``rediss://`` for TLS).

    Keys (``prefix`` first, a card's keys share one hash slot): ``card:{<card>}`` a sorted set of
    ``transaction_id, amount, category, country`` scored by epoch seconds; ``answer:{<card>}:<id>``
    the first answer, kept ``ANSWER_TTL``; ``meta:<name>`` what the batch layer loaded.
    """

    def __init__(self, url: str, prefix: str = "fraud:", timeout: float = 0.5):
        import redis

        self.url, self.prefix = url, prefix
        self._errors = (redis.RedisError, OSError)
        self._redis = redis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout,
                                           decode_responses=True, health_check_interval=0)
        self._record = self._redis.register_script(_RECORD)

    def __repr__(self) -> str:
        # never the password of a redis://user:password@host URL
        from urllib.parse import urlsplit

        parts = urlsplit(self.url)
        return f"RedisStore({parts.scheme}://{parts.hostname}:{parts.port or 6379}{parts.path})"

    def _card(self, card_id: str) -> str:
        return f"{self.prefix}card:{{{card_id}}}"

    def _answer(self, card_id: str, transaction_id: str) -> str:
        return f"{self.prefix}answer:{{{card_id}}}:{transaction_id}"

    @staticmethod
    def _member(row) -> str:
        return _SEP.join((row[0], repr(row[3]), row[4], row[5]))

    def _call(self, what, *args):
        try:
            return what(*args)
        except self._errors as exc:
            raise StoreUnavailable(f"{self}: {type(exc).__name__}: {exc}") from exc

    def close(self) -> None:
        self._redis.close()

    def history(self, card_id: str, ts: int) -> list[Past]:
        return self._pasts(self._call(self._redis.zrangebyscore, self._card(card_id), ts - LONGEST, ts - 1, None,
                                      None, True))

    def known(self, card_id: str) -> bool:
        return bool(self._call(self._redis.exists, self._card(card_id)))

    def answered(self, card_id: str, transaction_id: str) -> dict | None:
        found = self._call(self._redis.get, self._answer(card_id, transaction_id))
        return json.loads(found) if found else None

    def lookup(self, card_id: str, transaction_id: str, ts: int) -> tuple[dict | None, list[Past], bool]:
        def read():  # one round trip
            pipe = self._redis.pipeline(transaction=False)
            pipe.get(self._answer(card_id, transaction_id))
            pipe.zrangebyscore(self._card(card_id), ts - LONGEST, ts - 1, withscores=True)
            pipe.exists(self._card(card_id))
            return pipe.execute()

        first, found, known = self._call(read)
        if first:
            return json.loads(first), [], True
        return None, self._pasts(found), bool(known)

    @staticmethod
    def _pasts(found) -> list[Past]:
        out = []
        for member, score in found:
            _, amount, category, country = member.split(_SEP)
            out.append(Past(int(score), float(amount), category, country))
        return out

    def record(self, transaction: dict, answer: dict) -> dict | None:
        row = _row(transaction)
        first = self._call(self._record, [self._answer(row[1], row[0]), self._card(row[1])],
                           [json.dumps(answer), row[2], self._member(row), ANSWER_TTL])
        return json.loads(first) if first else None

    def append(self, transactions: Iterable[dict]) -> int:
        def write():
            pipe = self._redis.pipeline(transaction=False)
            for row in map(_row, transactions):
                pipe.zadd(self._card(row[1]), {self._member(row): row[2]})
            return sum(pipe.execute())

        return self._call(write)

    def _cards(self):
        return self._redis.scan_iter(match=f"{self.prefix}card:*", count=1000)

    def expire(self, before_ts: int) -> int:
        def sweep():
            expired, batch = 0, []
            for key in self._cards():
                batch.append(key)
                if len(batch) == 1000:
                    expired += self._drop(batch, before_ts)
                    batch = []
            return expired + (self._drop(batch, before_ts) if batch else 0)

        return self._call(sweep)

    def _drop(self, keys: list[str], before_ts: int) -> int:
        pipe = self._redis.pipeline(transaction=False)
        for key in keys:
            pipe.zremrangebyscore(key, "-inf", f"({before_ts}")
        return sum(pipe.execute())

    def size(self) -> int:
        def count():
            total, pipe, n = 0, self._redis.pipeline(transaction=False), 0
            for key in self._cards():
                pipe.zcard(key)
                n += 1
                if n % 1000 == 0:
                    total += sum(pipe.execute())
            return total + sum(pipe.execute())

        return self._call(count)

    def ping(self) -> None:
        self._call(self._redis.ping)

    def meta(self, name: str) -> dict | None:
        found = self._call(self._redis.get, f"{self.prefix}meta:{name}")
        return json.loads(found) if found else None

    def set_meta(self, name: str, value: dict) -> None:
        self._call(self._redis.set, f"{self.prefix}meta:{name}", json.dumps(value))


def open_store(settings) -> OnlineStore:
    """The online store ``settings`` name: Redis at ``serving_store_url``, else SQLite in the state folder."""
    url = settings.serving_store_url.get_secret_value()
    if url:
        return RedisStore(url)
    return SqliteStore(settings.serving_dir / "online.db")
