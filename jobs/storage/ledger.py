"""The ingestion ledger: one entry per delivered object (key + content), what became of its rows.

A Delta table (``layout.LEDGER``); entries are added idempotently, never rewritten.
"""

from __future__ import annotations

import json

from jobs.shared import layout
from jobs.storage import lake as lk

LEDGER_COLUMNS = ["key", "sha256", "status", "rows_delivered", "rows_silver", "rows_quarantined",
                  "broken_rules", "detail", "run_id", "ingested_at", "silver_version", "size", "tag"]


def read_ledger(lake: lk.Lake) -> list[dict]:
    """Every ledger entry (one per ingested object: key + content), oldest first.

    ``broken_rules`` comes back as a dict. A storage error raises: an unreadable ledger is never
    taken for an empty one (which would re-ingest the whole raw history).
    """
    from jobs.storage import tables

    frame = tables.read(lake, layout.LEDGER)
    if frame.empty:
        return []
    frame = frame.sort_values(["ingested_at", "key"], kind="stable")
    entries = []
    for row in frame.to_dict("records"):
        row["broken_rules"] = json.loads(row.get("broken_rules") or "{}")
        for k in ("rows_delivered", "rows_silver", "rows_quarantined", "silver_version", "size"):
            if row.get(k) is not None and row[k] == row[k]:
                row[k] = int(row[k])
        entries.append(row)
    return entries


def record_in_ledger(lake: lk.Lake, entries: list[dict]) -> None:
    """Add entries to the ledger; an object (key + sha256) already there keeps its entry (idempotent)."""
    import pyarrow as pa

    from jobs.storage import tables

    if not entries:
        return
    schema = pa.schema([("key", pa.string()), ("sha256", pa.string()), ("status", pa.string()),
                        ("rows_delivered", pa.int64()), ("rows_silver", pa.int64()),
                        ("rows_quarantined", pa.int64()), ("broken_rules", pa.string()), ("detail", pa.string()),
                        ("run_id", pa.string()), ("ingested_at", pa.string()), ("silver_version", pa.int64()),
                        ("size", pa.int64()), ("tag", pa.string())])
    rows = [{**{c: e.get(c) for c in LEDGER_COLUMNS},
             "broken_rules": json.dumps(e.get("broken_rules") or {}, sort_keys=True)} for e in entries]
    tables.merge_new_rows(lake, layout.LEDGER, pa.Table.from_pylist(rows, schema=schema), keys=["key", "sha256"],
                          metadata={"step": "ledger", "run_id": entries[0]["run_id"]})


def in_ledger(lake: lk.Lake, key: str, digest: str) -> bool:
    from jobs.storage import tables

    found = tables.read(lake, layout.LEDGER, columns=["key"],
                        filters=[("key", "=", key), ("sha256", "=", digest)])
    return not found.empty
