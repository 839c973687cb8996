"""The online store's batch layer: silver's last days into the store the scoring service reads.

After the nightly feature build, the cards' transactions of the 7 days up to ``date`` (the longest
feature window) are loaded into the online store (:mod:`jobs.storage.online_store`: SQLite on the
embedded default, Redis in the stack), a bounded batch at a time, and what has left the window is
expired. Idempotent: each day's silver files are remembered *in the store* (so a store that lost its
data, a Redis restarted empty, is loaded again), and a day whose files did not change is skipped.
"""

from __future__ import annotations

import logging
import time

from jobs.ml.features_online import LONGEST, epoch_seconds
from jobs.settings import Settings
from jobs.shared import layout
from jobs.shared.dates import date_range, shifted
from jobs.storage import lake as lk
from jobs.storage import tables
from jobs.storage.online_store import LOAD_CHUNK, open_store

log = logging.getLogger(__name__)

COLUMNS = ["transaction_id", "card_id", "timestamp", "amount", "merchant_category", "country"]
WINDOW_DAYS = LONGEST // 86_400


def load_online(lake: lk.Lake, date: str, settings: Settings, force: bool = False) -> dict:
    """Load silver's ``[date - 6, date]`` into the online store and expire what left the window
    before ``date + 1`` (the first day the service scores next)."""
    store = open_store(settings)
    try:
        version = tables.version(lake, layout.SILVER_TRANSACTIONS)
        held = set(tables.partitions(lake, layout.SILVER_TRANSACTIONS, version)) if version is not None else set()
        days = [d for d in date_range(shifted(date, -(WINDOW_DAYS - 1)), date) if d in held]
        loaded, skipped, rows_read, rows_added, started = [], [], 0, 0, time.monotonic()
        for day in days:
            files = tables.snapshot_of(lake, layout.SILVER_TRANSACTIONS, [day], version)
            if not force and (store.meta(f"day:{day}") or {}).get("files") == files:
                skipped.append(day)
                continue
            chunks = (batch.to_pylist() for batch in tables.batches(
                lake, layout.SILVER_TRANSACTIONS, COLUMNS, [day], batch_size=LOAD_CHUNK, version=version))
            summary = store.load(chunks)
            store.set_meta(f"day:{day}", {"files": files, "rows": summary["rows_read"]})
            rows_read, rows_added = rows_read + summary["rows_read"], rows_added + summary["rows_added"]
            loaded.append(day)
            log.info("online store: %s loaded (%d rows, %d new, %.0f rows/s so far)", day, summary["rows_read"],
                     summary["rows_added"], rows_read / max(time.monotonic() - started, 1e-9))
        until = epoch_seconds(f"{shifted(date, 1)}T00:00:00Z")
        expired = store.expire(until - LONGEST)
        held_rows = store.size()
        store.set_meta("last_load", {"loaded_at": time.time(), "until_ts": until, "date": date,
                                     "days_loaded": loaded, "rows_held": held_rows})
        log.info("online store %s: %d days loaded, %d unchanged, %d rows expired, %d held", store, len(loaded),
                 len(skipped), expired, held_rows)
        return {"date": date, "store": repr(store), "days_loaded": loaded, "days_unchanged": skipped,
                "rows_read": rows_read, "rows_added": rows_added, "rows_expired": expired, "rows_held": held_rows,
                "silver_version": version}
    finally:
        store.close()
