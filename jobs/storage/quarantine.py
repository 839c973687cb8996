"""Inspecting the quarantine, and delivering a fixed file again (replay)."""

from __future__ import annotations

import hashlib
from collections import Counter
from pathlib import Path

from jobs.shared import layout
from jobs.shared.result import JobError
from jobs.storage import lake as lk


def quarantine_report(lake: lk.Lake, run_id: str | None = None) -> dict:
    """Rejected files with their reasons and quarantined rows counted by reason, per run."""
    from jobs.storage import tables

    files = []
    for key in lake.list(layout.quarantined_files(run_id) if run_id else layout.QUARANTINE_FILES):
        if (kept := layout.reason_of(key)) is not None:
            reason = lake.read_json(key)
            files.append({"run_id": layout.run_of_quarantined(key), "quarantined": lake.uri_of(kept),
                          "source": reason["source"], "rule": reason["rule"], "detail": reason["detail"]})

    rows: dict[str, Counter] = {}
    quarantined = tables.read(lake, layout.QUARANTINE_ROWS, columns=["run_id", "_reason"],
                              filters=[("run_id", "=", run_id)] if run_id else None)
    for run, reasons in quarantined.groupby("run_id")["_reason"] if not quarantined.empty else []:
        rows.setdefault(run, Counter()).update(rule for r in reasons for rule in r.split(" | "))
    return {"files": files, "rows": {run: dict(c) for run, c in rows.items()}}


def render(report: dict) -> str:
    lines = [f"Rejected files: {len(report['files'])}"]
    for f in report["files"]:
        lines.append(f"  [{f['run_id']}] {f['source']}: {f['rule']} - {f['detail']}\n      kept at {f['quarantined']}")
    lines.append(f"Quarantined rows, by run and rule: {sum(sum(c.values()) for c in report['rows'].values())}")
    for run, counts in report["rows"].items():
        for rule, n in sorted(counts.items(), key=lambda kv: -kv[1]):
            lines.append(f"  [{run}] {n:>7}  {rule}")
    return "\n".join(lines)


def replay(lake: lk.Lake, file: Path, date: str) -> dict:
    """Deliver a fixed file as a new raw object for ``date`` (raw objects are never overwritten)."""
    if not file.is_file():
        raise JobError(f"{file} is not a file")
    data = file.read_bytes()
    digest = hashlib.sha256(data).hexdigest()
    stem, dot, ext = file.name.partition(".")
    key = layout.raw_object(date, f"{stem}-replay-{digest[:8]}{dot}{ext}")
    lake.write_bytes(key, data)
    return {"raw_object": lake.uri_of(key), "sha256": digest, "date": date,
            "next": f"trigger ingest_transactions for {date} (or wait for the sensor / nightly run)"}
