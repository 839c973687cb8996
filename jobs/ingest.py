"""Ingestion: new raw objects -> a typed-as-delivered bronze batch, file-level rejects quarantined.

Raw objects are never modified. Each object is identified by key + SHA-256 of its bytes; an
object already in the ledger is skipped, so re-running ingestion ingests nothing twice.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import logging
import re
import zlib
from datetime import UTC, datetime

import pandas as pd

from jobs import lake as lk
from jobs.generate import RAW_COLUMNS

log = logging.getLogger(__name__)

CLAIMS = "_ledger/claims"  # one create-only object per delivered object being ingested
BATCH_MANIFEST = "_batch.json"  # what a bronze batch holds, object by object
SOURCE_COLUMNS = ["_source_key", "_source_sha256", "_source_row"]
_DATE_IN_KEY = re.compile(r"date=(\d{4}-\d{2}-\d{2})")


class FileRejected(Exception):
    """A whole raw object is unusable; the message is the reason recorded in quarantine."""

    def __init__(self, rule: str, detail: str):
        super().__init__(f"{rule}: {detail}")
        self.rule = rule
        self.detail = detail


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_date(key: str) -> str | None:
    """The ``date=YYYY-MM-DD`` partition a raw key was delivered under, if any."""
    m = _DATE_IN_KEY.search(key)
    return m.group(1) if m else None


GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def detect_format(name: str, data: bytes) -> str:
    """``parquet``, ``jsonl`` or ``csv`` from the (decompressed) content, the name as a tie-breaker.

    Content wins over the name: Parquet by its magic bytes, JSON lines by a leading ``{``;
    a file named ``.parquet`` that lacks the magic bytes is a truncated or foreign file.
    """
    if data[:4] == PARQUET_MAGIC:
        if data[-4:] != PARQUET_MAGIC:
            raise FileRejected("truncated", "Parquet data without its footer (the upload was cut short?)")
        return "parquet"
    if name.endswith(".parquet"):
        raise FileRejected("unparseable", "named .parquet but the content is not Parquet")
    head = data.lstrip()[:1]
    if head == b"{":
        return "jsonl"
    if name.endswith(".csv") or b"," in data[:4096].split(b"\n", 1)[0]:
        return "csv"
    raise FileRejected("unknown_format", f"cannot tell the format of {name!r} from its name or content")


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.apply(lambda col: col.map(lambda v: None if v is None else str(v)))


def parse_raw(key: str, data: bytes) -> pd.DataFrame:
    """Parse one delivered object into a frame of strings, exactly as delivered.

    CSV, JSON lines or Parquet, optionally gzip-compressed, detected from the content (see
    :func:`detect_format`). Raises :class:`FileRejected` for anything that makes the whole
    file unusable.
    """
    name = key.rsplit("/", 1)[-1].lower()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError, zlib.error) as exc:
            raise FileRejected("corrupt_gzip", str(exc)) from exc
    elif name.endswith(".gz"):
        raise FileRejected("corrupt_gzip", "named .gz but the content is not gzip data")
    name = name.removesuffix(".gz")
    if not data.strip():
        raise FileRejected("empty_file", "the object holds no rows")
    fmt = detect_format(name, data)
    try:
        if fmt == "parquet":
            frame = _as_strings(pd.read_parquet(io.BytesIO(data)))
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise FileRejected("not_utf8", f"byte {exc.start} is not valid UTF-8") from exc
            if fmt == "jsonl":
                frame = _as_strings(pd.read_json(io.StringIO(text), lines=True, dtype=False))
            else:
                frame = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False, na_values=[""])
    except FileRejected:
        raise
    except Exception as exc:  # any parser error makes the file unusable
        raise FileRejected("unparseable", f"{type(exc).__name__}: {exc}".splitlines()[0]) from exc
    if frame.empty:
        raise FileRejected("empty_file", "the object holds a header but no rows")
    missing = [c for c in RAW_COLUMNS if c not in frame.columns]
    if missing:
        raise FileRejected("missing_columns", f"columns {missing} are missing (has {list(frame.columns)})")
    return frame[RAW_COLUMNS].astype(object).where(frame[RAW_COLUMNS].notna(), None)


def read_ledger(lake: lk.Lake) -> list[dict]:
    """Every ledger entry, oldest first."""
    if not lake.exists(lk.LEDGER):
        return []
    return [json.loads(line) for line in lake.read_bytes(lk.LEDGER).decode().splitlines() if line.strip()]


def _claim_key(key: str, digest: str) -> str:
    return f"{CLAIMS}/{sha256(key.encode())[:24]}-{digest[:24]}.json"


def claim(lake: lk.Lake, key: str, digest: str, run_id: str, ttl_hours: float) -> str | None:
    """Take the exclusive claim on one delivered object (key + content) for ``run_id``.

    Returns None when this run holds the claim (new, or a retry of the same run), else the run
    that holds it. The claim is created with a create-only write (``O_EXCL`` link locally,
    ``If-None-Match: *`` on S3), so two overlapping runs can never both take it. A claim older
    than ``ttl_hours`` whose run never finished is taken over (logged).
    """
    ckey = _claim_key(key, digest)
    now = datetime.now(UTC)
    payload = json.dumps({"key": key, "sha256": digest, "run_id": run_id, "claimed_at": now.isoformat()}).encode()
    if lake.create_only(ckey, payload):
        return None
    held = lake.read_json(ckey)
    if held["run_id"] == run_id:
        return None
    age_h = (now - datetime.fromisoformat(held["claimed_at"])).total_seconds() / 3600
    if age_h > ttl_hours:
        log.warning("taking over the claim of run %s on %s (%.1f h old)", held["run_id"], key, age_h)
        lake.write_bytes(ckey, payload)
        return None
    return held["run_id"]


def pending_objects(lake: lk.Lake, date: str) -> list[str]:
    """Raw keys delivered for ``date`` or earlier that the ledger has not seen (by key + hash)."""
    seen = {(e["key"], e["sha256"]) for e in read_ledger(lake)}
    pending = []
    for key in lake.list(lk.RAW_TRANSACTIONS):
        d = key_date(key)
        if d is not None and d > date:
            continue
        if (key, sha256(lake.read_bytes(key))) not in seen:
            pending.append(key)
    return pending


def ingest(lake: lk.Lake, date: str, run_id: str, claim_ttl_hours: float = 6.0) -> dict:
    """Stage every pending raw object as a bronze batch; quarantine unusable files whole.

    Each object is claimed first: one claimed by another, still running ingestion is skipped.
    """
    batch_key = f"{lk.BRONZE_BATCHES}/{run_id}"
    keys = pending_objects(lake, date)
    manifest = {"run_id": run_id, "date": date, "objects": []}
    held_elsewhere = []
    with lake.publish(batch_key) as folder:
        for n, key in enumerate(keys):
            data = lake.read_bytes(key)
            digest = sha256(data)
            holder = claim(lake, key, digest, run_id, claim_ttl_hours)
            if holder is not None:
                log.info("skipping %s: run %s is ingesting it", lake.uri_of(key), holder)
                held_elsewhere.append({"key": key, "run_id": holder})
                continue
            entry = {"key": key, "sha256": digest, "bytes": len(data)}
            try:
                frame = parse_raw(key, data)
            except FileRejected as exc:
                qkey = f"{lk.QUARANTINE}/files/{run_id}/{key.rsplit('/', 1)[-1]}"
                lake.write_bytes(qkey, data)
                lake.write_json(qkey + ".reason.json", {"source": lake.uri_of(key), "sha256": digest,
                                                         "rule": exc.rule, "detail": exc.detail})
                entry.update(status="rejected_file", rule=exc.rule, detail=exc.detail,
                             rows_delivered=_count_lines(data), quarantine=lake.uri_of(qkey))
                log.warning("rejected %s: %s", lake.uri_of(key), exc)
            else:
                frame["_source_key"] = key
                frame["_source_sha256"] = digest
                frame["_source_row"] = range(len(frame))
                part = f"part-{n:05d}.parquet"
                frame.to_parquet(folder / part, index=False)
                entry.update(status="staged", rows_delivered=len(frame), bronze_part=part)
                log.info("staged %s: %d rows", lake.uri_of(key), len(frame))
            manifest["objects"].append(entry)
        (folder / BATCH_MANIFEST).write_text(json.dumps(manifest, indent=2))
    return {
        "bronze_batch": lake.uri_of(batch_key),
        "run_id": run_id,
        "objects": len(manifest["objects"]),
        "skipped_claimed_elsewhere": len(held_elsewhere),
        "rows_delivered": sum(o["rows_delivered"] or 0 for o in manifest["objects"]),
        "files_rejected": [o["key"] for o in manifest["objects"] if o["status"] == "rejected_file"],
    }


def _count_lines(data: bytes) -> int | None:
    """Best-effort row count of an unusable file (data lines after a header), for the ledger."""
    try:
        if data[:2] == b"\x1f\x8b":
            data = gzip.decompress(data)
    except Exception:
        return None
    lines = [ln for ln in data.splitlines() if ln.strip()]
    return max(len(lines) - 1, 0)
