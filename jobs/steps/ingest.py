"""Ingestion: new raw objects -> a typed-as-delivered bronze batch, file-level rejects quarantined.

Raw objects are never modified. Each object is identified by key + SHA-256 of its bytes; an
object already in the ledger is skipped, so re-running ingestion ingests nothing twice.
"""

from __future__ import annotations

import json
import logging
import tempfile
from datetime import UTC, datetime
from pathlib import Path

from jobs.shared import layout
from jobs.shared.layout import BATCH_MANIFEST
from jobs.shared.schemas import BRONZE_EXTRA, RAW_COLUMNS
from jobs.storage import lake as lk
from jobs.storage.ledger import in_ledger, read_ledger
from jobs.storage.raw import (
    DEFAULT_BATCH_ROWS,
    DEFAULT_MAX_DECOMPRESSED,
    GZIP_MAGIC,
    FileRejected,
    RawFile,
    gunzip_file,
    key_date,
)

log = logging.getLogger(__name__)



def claim(lake: lk.Lake, key: str, digest: str, run_id: str, ttl_hours: float) -> str | None:
    """Take the exclusive claim on one delivered object (key + content) for ``run_id``.

    Returns None when this run holds the claim (new, or a retry of the same run), else the run
    that holds it. The claim is created with a create-only write (``O_EXCL`` link locally,
    ``If-None-Match: *`` on S3), so two overlapping runs can never both take it. A claim older
    than ``ttl_hours`` whose run never finished is taken over by compare-and-set (the claim is
    replaced only if it is still the stale one just read), so two runs cannot both take it over.
    """
    ckey = layout.claim(key, digest)
    now = datetime.now(UTC)
    payload = json.dumps({"key": key, "sha256": digest, "run_id": run_id, "claimed_at": now.isoformat()}).encode()
    for _ in range(3):
        if lake.create_only(ckey, payload):
            return None
        try:
            raw = lake.read_bytes(ckey)
        except lk.ObjectMissing:
            continue  # released between our two calls: try to create it again
        held = json.loads(raw)
        if held["run_id"] == run_id:
            return None
        age_h = (now - datetime.fromisoformat(held["claimed_at"])).total_seconds() / 3600
        if age_h <= ttl_hours:
            return held["run_id"]
        if lake.replace_if_unchanged(ckey, raw, payload):
            log.warning("took over the claim of run %s on %s (%.1f h old, TTL %.1f h)", held["run_id"], key, age_h,
                        ttl_hours)
            return None
        # someone else replaced it first: read who holds it now
    held = lake.read_json(ckey)
    return None if held["run_id"] == run_id else held["run_id"]


def pending_objects(lake: lk.Lake, date: str, not_after: datetime | None = None) -> list[lk.ObjectInfo]:
    """Raw objects delivered for ``date`` or earlier that the ledger has not seen.

    With ``not_after`` (now plus the allowed clock skew), objects under a ``date=`` partition
    later than that are pending too: they are refused, not left waiting for a day to come.

    Decided from the listing alone: an object whose key, size and version tag (S3 ETag, file
    mtime) match a ledger entry was ingested and is never downloaded again, so a run that finds
    nothing new costs one listing and one ledger read, however many objects were ever delivered.
    """
    known = {(e["key"], e.get("size"), e.get("tag")) for e in read_ledger(lake)}
    pending = []
    markers = 0
    for info in lake.list_objects(layout.RAW_TRANSACTIONS):
        if layout.is_marker(info.key):
            markers += 1
            continue
        d = key_date(info.key)
        if d is not None and d > date and not (not_after is not None and d > not_after.date().isoformat()):
            continue
        if (info.key, info.size, info.tag) not in known:
            pending.append(info)
    if markers:
        log.info("skipped %d marker, checksum or folder-placeholder object(s) (_SUCCESS, .crc, .../): not deliveries",
                 markers)
    return pending


def ingest(lake: lk.Lake, date: str, run_id: str, claim_ttl_hours: float = 24.0,
           max_object_bytes: int = 256 << 20, max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED,
           batch_rows: int = DEFAULT_BATCH_ROWS, not_after: datetime | None = None,
           max_read_attempts: int = 3) -> dict:
    """Stage every pending raw object as a bronze batch; quarantine unusable files whole.

    Each new object is downloaded once as a stream (hashed on the way) into a local file and
    parsed from it in record batches of ``batch_rows``, so memory stays bounded whatever the
    object's size. Each object is claimed first: one claimed by another, still running ingestion
    is skipped; after claiming, the ledger is read again, so an object another run finished
    meanwhile is skipped too. An object larger than ``max_object_bytes`` (from the listing) is
    rejected whole without being copied: it is hashed as a stream and stays in raw, with its
    reason in quarantine. An object the store refuses to read is left for the next run, the
    others go on; after ``max_read_attempts`` runs it is rejected with the store's answer
    (:func:`_unreadable`). Listing and ledger errors still fail the run.
    """
    batch_key = layout.bronze_batch(run_id)
    pending = pending_objects(lake, date, not_after)
    log.info("%d new object(s) in %s up to %s", len(pending), lake.uri_of(layout.RAW_TRANSACTIONS), date)
    manifest = {"run_id": run_id, "date": date, "objects": []}
    held_elsewhere, deferred = [], []
    failed_before = set(lake.list(layout.UNREADABLE)) if pending else set()
    limits = {"max_object_bytes": max_object_bytes, "max_decompressed_bytes": max_decompressed_bytes,
              "batch_rows": batch_rows, "not_after": not_after}
    with lake.publish(batch_key) as folder, tempfile.TemporaryDirectory(prefix="ingest-") as tmp:
        for n, info in enumerate(pending):
            local = Path(tmp) / f"object-{n:05d}"
            try:  # an object over the size limit is hashed as a stream, never copied
                oversized = info.size > max_object_bytes
                digest = lake.stream_sha256(info.key) if oversized else lake.download(info.key, local)
            except lk.StorageUnavailable as exc:
                entry = _unreadable(lake, info, exc, max_read_attempts, run_id)
                if entry is None:
                    deferred.append({"key": info.key, "error": str(exc)})
                else:
                    manifest["objects"].append(entry)
                continue
            if layout.read_attempts(info.key, info.tag) in failed_before:  # read at last: its failures are history
                lake.remove(layout.read_attempts(info.key, info.tag))
            holder = _taken(lake, info.key, digest, run_id, claim_ttl_hours)
            if holder is not None:
                if holder:
                    held_elsewhere.append({"key": info.key, "run_id": holder})
                local.unlink(missing_ok=True)
                continue
            manifest["objects"].append(_stage_object(lake, info, digest, local, folder, f"part-{n:05d}.parquet",
                                                     date, run_id, **limits))
            local.unlink(missing_ok=True)
        (folder / BATCH_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return {
        "bronze_batch": lake.uri_of(batch_key),
        "run_id": run_id,
        "objects": len(manifest["objects"]),
        "skipped_claimed_elsewhere": len(held_elsewhere),
        "unreadable_deferred": deferred,
        "rows_delivered": sum(o["rows_delivered"] or 0 for o in manifest["objects"]),
        "files_rejected": [o["key"] for o in manifest["objects"] if o["status"] == "rejected_file"],
    }


def _taken(lake: lk.Lake, key: str, digest: str, run_id: str, claim_ttl_hours: float) -> str | None:
    """None when this run may ingest the object; else who has it: the run holding its claim, or ""
    when its content is already in the ledger (another run ingested it meanwhile, or it was
    rewritten unchanged)."""
    holder = claim(lake, key, digest, run_id, claim_ttl_hours)
    if holder is not None:
        log.info("skipping %s: run %s is ingesting it", lake.uri_of(key), holder)
        return holder
    if in_ledger(lake, key, digest):
        log.info("skipping %s: its content is already in the ledger (another run ingested it meanwhile, "
                 "or it was rewritten unchanged)", lake.uri_of(key))
        return ""
    return None


def _stage_object(lake: lk.Lake, info: lk.ObjectInfo, digest: str, local: Path, folder: Path, part: str, date: str,
                  run_id: str, *, max_object_bytes: int, max_decompressed_bytes: int, batch_rows: int,
                  not_after: datetime | None) -> dict:
    """One claimed object: staged as a bronze part, or rejected whole (kept in quarantine with its reason)."""
    import time

    key, started = info.key, time.perf_counter()
    oversized = info.size > max_object_bytes
    entry = {"key": key, "sha256": digest, "bytes": info.size, "size": info.size, "tag": info.tag,
             "delivery_date": key_date(key) or date}
    future = not_after is not None and (key_date(key) or "") > not_after.date().isoformat()
    try:
        if future:
            raise FileRejected("future_partition", f"delivered under date={key_date(key)}, later than now "
                                                   f"({not_after:%Y-%m-%d %H:%M} UTC with the allowed "
                                                   "clock skew): a wrong partition or a wrong clock")
        if oversized:
            raise FileRejected("too_large", f"{info.size:,} bytes > {max_object_bytes:,} (the limit, "
                                            "PIPELINE_MAX_OBJECT_MB); split the export, or raise the limit")
        rows, extra, broken = _stage(key, digest, local, folder / part, max_decompressed_bytes, batch_rows)
    except FileRejected as exc:
        (folder / part).unlink(missing_ok=True)
        qkey = layout.quarantined_file(run_id, key, digest)
        if oversized:  # not copied: it stays in raw, never modified
            quarantine = lake.uri_of(key)
        else:
            lake.upload_file(qkey, local)
            quarantine = lake.uri_of(qkey)
        lake.write_json(layout.quarantine_reason(qkey), {"source": lake.uri_of(key), "sha256": digest,
                                                 "rule": exc.rule, "detail": exc.detail, "kept_at": quarantine})
        entry.update(status="rejected_file", rule=exc.rule, detail=exc.detail,
                     rows_delivered=None if oversized else _count_lines(local, max_decompressed_bytes),
                     quarantine=quarantine)
        log.warning("rejected %s: %s", lake.uri_of(key), exc)
        return entry
    entry.update(status="staged", rows_delivered=rows, bronze_part=part, extra_columns=extra, broken_lines=broken)
    seconds = time.perf_counter() - started
    log.info("staged %s: %d rows in %.1f s (%.0f rows/s)%s", lake.uri_of(key), rows, seconds,
             rows / max(seconds, 1e-9), f" (extra columns ignored: {extra})" if extra else "")
    return entry


def _unreadable(lake: lk.Lake, info: lk.ObjectInfo, exc: Exception, max_attempts: int, run_id: str) -> dict | None:
    """Count one failed read of a raw object; its rejected manifest entry once ``max_attempts`` runs failed.

    The count lives in the lake per listed object (key + version tag), so Airflow's retries and
    the nightly runs all count; a new version of the object starts again at zero.
    """
    record_key = layout.read_attempts(info.key, info.tag)
    try:
        record = lake.read_json(record_key)
    except lk.ObjectMissing:
        record = {"key": info.key, "tag": info.tag, "attempts": []}
    if not any(a["run_id"] == run_id for a in record["attempts"]):  # a task retry is the same attempt
        record["attempts"].append({"run_id": run_id, "error": str(exc),
                                   "at": datetime.now(UTC).isoformat(timespec="seconds")})
        lake.write_json(record_key, record)
    tried = len(record["attempts"])
    if tried < max_attempts:
        log.error("cannot read %s (%d of %d attempts; the other objects go on, the next run tries again): %s",
                  lake.uri_of(info.key), tried, max_attempts, exc)
        return None
    log.error("rejecting %s: unreadable in %d runs: %s", lake.uri_of(info.key), tried, exc)
    detail = f"the store refused to read it in {tried} runs: {exc}"
    return {"key": info.key, "sha256": f"unreadable-{info.tag}", "bytes": info.size, "size": info.size,
            "tag": info.tag, "delivery_date": key_date(info.key), "status": "rejected_file", "rule": "unreadable",
            "detail": detail, "rows_delivered": None, "quarantine": lake.uri_of(info.key)}


def bronze_schema():
    import pyarrow as pa

    return pa.schema([(c, pa.string()) for c in RAW_COLUMNS + BRONZE_EXTRA]
                     + [("_source_key", pa.string()), ("_source_sha256", pa.string()), ("_source_row", pa.int64())])


def _stage(key: str, digest: str, local: Path, out: Path, max_decompressed: int, batch_rows: int
           ) -> tuple[int, list[str], list[int]]:
    """Stream one object into a bronze Parquet file, batch by batch.

    Returns the rows, the extra columns ignored and the lines quarantined as malformed.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    schema = bronze_schema()
    rows, next_log = 0, 1_000_000
    with RawFile(key, local, max_decompressed, batch_rows) as raw, pq.ParquetWriter(out, schema) as writer:
        for batch in raw.batches():
            n = batch.num_rows
            batch = batch.append_column("_source_key", pa.array([key] * n, pa.string())) \
                .append_column("_source_sha256", pa.array([digest] * n, pa.string())) \
                .append_column("_source_row", pa.array(range(rows, rows + n), pa.int64()))
            writer.write_table(batch.cast(schema))
            rows += n
            if rows >= next_log:
                log.info("%s: %d rows parsed", key, rows)
                next_log += 1_000_000
        return rows, raw.extra_columns, raw.broken_lines


def _count_lines(path: Path, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> int | None:
    """Best-effort row count of an unusable file (non-blank lines after a header), for the ledger."""
    try:
        with open(path, "rb") as f:
            gz = f.read(2) == GZIP_MAGIC
        with tempfile.TemporaryDirectory(prefix="count-") as tmp:
            if gz:
                plain = Path(tmp) / "plain"
                gunzip_file(path, plain, max_decompressed)
                path = plain
            with open(path, "rb") as f:
                lines = sum(1 for line in f if line.strip())
    except Exception:
        return None
    return max(lines - 1, 0)
