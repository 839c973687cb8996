"""Ingestion: new raw objects -> a typed-as-delivered bronze batch, file-level rejects quarantined.

Raw objects are never modified. Each object is identified by key + SHA-256 of its bytes; an
object already in the ledger is skipped, so re-running ingestion ingests nothing twice.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import zlib
from datetime import UTC, datetime

import pandas as pd

from jobs import lake as lk
from jobs import layout
from jobs.generate import RAW_COLUMNS

log = logging.getLogger(__name__)

BATCH_MANIFEST = "_batch.json"  # what a bronze batch holds, object by object
SOURCE_COLUMNS = ["_source_key", "_source_sha256", "_source_row"]
UTF8_BOM = b"\xef\xbb\xbf"


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
    d = layout.partition_date(key)
    return d.isoformat() if d else None


GZIP_MAGIC = b"\x1f\x8b"
PARQUET_MAGIC = b"PAR1"


def detect_format(name: str, data: bytes) -> str:
    """``parquet``, ``jsonl`` or ``csv`` from the (decompressed) content, the name as a tie-breaker.

    Content wins over the name: Parquet by its magic bytes, JSON lines by a leading ``{`` (after
    an optional UTF-8 byte-order mark); a file named ``.parquet`` that lacks the magic bytes is a
    truncated or foreign file.
    """
    if data[:4] == PARQUET_MAGIC:
        if data[-4:] != PARQUET_MAGIC:
            raise FileRejected("truncated", "Parquet data without its footer (the upload was cut short?)")
        return "parquet"
    if name.endswith(".parquet"):
        raise FileRejected("unparseable", "named .parquet but the content is not Parquet")
    head = data.removeprefix(UTF8_BOM).lstrip()[:1]
    if head == b"{":
        return "jsonl"
    if name.endswith(".csv") or b"," in data[:4096].split(b"\n", 1)[0]:
        return "csv"
    raise FileRejected("unknown_format", f"cannot tell the format of {name!r} from its name or content")


def _as_strings(frame: pd.DataFrame) -> pd.DataFrame:
    frame = frame.astype(object).where(frame.notna(), None)
    return frame.apply(lambda col: col.map(lambda v: None if v is None else str(v)))


def check_header(columns: list[str]) -> None:
    """A header must name every column once, with a readable name: else the file is unusable."""
    names = [str(c) for c in columns]
    blank = [i + 1 for i, c in enumerate(names) if not c.strip()]
    if blank:
        raise FileRejected("unreadable_header", f"header column(s) {blank} have no name (header: {names[:20]})")
    repeated = sorted({c for c in names if names.count(c) > 1})
    if repeated:
        raise FileRejected("duplicate_columns", f"the header names {repeated} more than once; which copy holds "
                                                "the value cannot be decided")


def _csv_header(text: str) -> list[str]:
    import csv

    try:
        return next(csv.reader(io.StringIO(text.split("\n", 1)[0])))
    except (csv.Error, StopIteration) as exc:
        raise FileRejected("unreadable_header", f"the first line is not a CSV header ({exc})") from exc


def _jsonl_keys(text: str, lines: int = 1000) -> None:
    """Reject JSON objects that name a key twice (JSON parsers silently keep the last copy)."""
    def no_duplicates(pairs):
        keys = [k for k, _ in pairs]
        check_header(keys)
        return dict(pairs)

    for n, line in enumerate(text.splitlines()[:lines]):
        if line.strip():
            try:
                json.loads(line, object_pairs_hook=no_duplicates)
            except ValueError:
                if n == 0:
                    raise FileRejected("unreadable_header", "the first JSON line is not an object") from None


def gunzip(data: bytes, limit: int) -> bytes:
    """Decompress gzip data (every member), refusing more than ``limit`` bytes of output.

    A small compressed object can expand a thousandfold (a gzip bomb): the output is produced in
    bounded steps and the object rejected as soon as it passes the limit, before memory runs out.
    """
    out, size = [], 0
    while data:
        inflater = zlib.decompressobj(16 + zlib.MAX_WBITS)
        chunk = inflater.decompress(data, limit + 1 - size)
        while True:
            out.append(chunk)
            size += len(chunk)
            if size > limit:
                raise FileRejected("too_large", f"decompresses to more than {limit:,} bytes (the limit, "
                                                "PIPELINE_MAX_DECOMPRESSED_MB); a gzip bomb or an export to split")
            if not inflater.unconsumed_tail:
                break
            chunk = inflater.decompress(inflater.unconsumed_tail, limit + 1 - size)
        tail = inflater.flush()
        out.append(tail)
        size += len(tail)
        if not inflater.eof:
            raise FileRejected("corrupt_gzip", "the gzip stream ends before its end marker (truncated upload?)")
        data = inflater.unused_data.lstrip(b"\x00")
    return b"".join(out)


DEFAULT_MAX_DECOMPRESSED = 1024 << 20


def parse_raw(key: str, data: bytes, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> pd.DataFrame:
    """Parse one delivered object into a frame of strings, exactly as delivered.

    CSV, JSON lines or Parquet, optionally gzip-compressed, with or without a UTF-8 byte-order
    mark, detected from the content (see :func:`detect_format`). Raises :class:`FileRejected` for
    anything that makes the whole file unusable: unreadable or repeated column names, missing
    contract columns, no rows. Extra columns are allowed and dropped (their names are kept in
    ``frame.attrs["extra_columns"]`` and recorded in the ledger).
    """
    name = key.rsplit("/", 1)[-1].lower()
    if data[:2] == GZIP_MAGIC:
        try:
            data = gunzip(data, max_decompressed)
        except (OSError, EOFError, zlib.error) as exc:
            raise FileRejected("corrupt_gzip", str(exc)) from exc
    elif name.endswith(".gz"):
        raise FileRejected("corrupt_gzip", "named .gz but the content is not gzip data")
    name = name.removesuffix(".gz")
    if not data.removeprefix(UTF8_BOM).strip():
        raise FileRejected("empty_file", "the object holds no rows")
    fmt = detect_format(name, data)
    try:
        if fmt == "parquet":
            import pyarrow.parquet as pq

            check_header(pq.ParquetFile(io.BytesIO(data)).schema_arrow.names)
            frame = _as_strings(pd.read_parquet(io.BytesIO(data)))
        else:
            try:
                text = data.decode("utf-8-sig")
            except UnicodeDecodeError as exc:
                raise FileRejected("not_utf8", f"byte {exc.start} is not valid UTF-8") from exc
            if fmt == "jsonl":
                _jsonl_keys(text)
                frame = _as_strings(pd.read_json(io.StringIO(text), lines=True, dtype=False))
            else:
                check_header(_csv_header(text))
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
    out = frame[RAW_COLUMNS].astype(object).where(frame[RAW_COLUMNS].notna(), None)
    out.attrs["extra_columns"] = [str(c) for c in frame.columns if c not in RAW_COLUMNS]
    return out


LEDGER_COLUMNS = ["key", "sha256", "status", "rows_delivered", "rows_silver", "rows_quarantined",
                  "broken_rules", "detail", "run_id", "ingested_at", "silver_version", "size", "tag"]


def read_ledger(lake: lk.Lake) -> list[dict]:
    """Every ledger entry (one per ingested object: key + content), oldest first.

    ``broken_rules`` comes back as a dict. A storage error raises: an unreadable ledger is never
    taken for an empty one (which would re-ingest the whole raw history).
    """
    from jobs import tables

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

    from jobs import tables

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
    from jobs import tables

    found = tables.read(lake, layout.LEDGER, columns=["key"],
                        filters=[("key", "=", key), ("sha256", "=", digest)])
    return not found.empty


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


def pending_objects(lake: lk.Lake, date: str) -> list[lk.ObjectInfo]:
    """Raw objects delivered for ``date`` or earlier that the ledger has not seen.

    Decided from the listing alone: an object whose key, size and version tag (S3 ETag, file
    mtime) match a ledger entry was ingested and is never downloaded again, so a run that finds
    nothing new costs one listing and one ledger read, however many objects were ever delivered.
    """
    known = {(e["key"], e.get("size"), e.get("tag")) for e in read_ledger(lake)}
    pending = []
    for info in lake.list_objects(layout.RAW_TRANSACTIONS):
        d = key_date(info.key)
        if d is not None and d > date:
            continue
        if (info.key, info.size, info.tag) not in known:
            pending.append(info)
    return pending


def ingest(lake: lk.Lake, date: str, run_id: str, claim_ttl_hours: float = 24.0,
           max_object_bytes: int = 256 << 20, max_decompressed_bytes: int = DEFAULT_MAX_DECOMPRESSED) -> dict:
    """Stage every pending raw object as a bronze batch; quarantine unusable files whole.

    Each object is claimed first: one claimed by another, still running ingestion is skipped;
    after claiming, the ledger is read again, so an object another run finished meanwhile is
    skipped too. An object larger than ``max_object_bytes`` (from the listing) is rejected whole
    without being loaded: it is hashed as a stream and stays in raw, with its reason in quarantine.
    """
    batch_key = layout.bronze_batch(run_id)
    pending = pending_objects(lake, date)
    log.info("%d new object(s) in %s up to %s", len(pending), lake.uri_of(layout.RAW_TRANSACTIONS), date)
    manifest = {"run_id": run_id, "date": date, "objects": []}
    held_elsewhere = []
    with lake.publish(batch_key) as folder:
        for n, info in enumerate(pending):
            key = info.key
            oversized = info.size > max_object_bytes
            data = b"" if oversized else lake.read_bytes(key)
            digest = lake.stream_sha256(key) if oversized else sha256(data)
            holder = claim(lake, key, digest, run_id, claim_ttl_hours)
            if holder is not None:
                log.info("skipping %s: run %s is ingesting it", lake.uri_of(key), holder)
                held_elsewhere.append({"key": key, "run_id": holder})
                continue
            if in_ledger(lake, key, digest):
                log.info("skipping %s: its content is already in the ledger (another run ingested it meanwhile, "
                         "or it was rewritten unchanged)", lake.uri_of(key))
                continue
            entry = {"key": key, "sha256": digest, "bytes": info.size, "size": info.size, "tag": info.tag,
                     "delivery_date": key_date(key) or date}
            try:
                if oversized:
                    raise FileRejected("too_large", f"{info.size:,} bytes > {max_object_bytes:,} (the limit, "
                                                    "PIPELINE_MAX_OBJECT_MB); split the export, or raise the limit")
                frame = parse_raw(key, data, max_decompressed_bytes)
            except FileRejected as exc:
                qkey = layout.quarantined_file(run_id, key.rsplit("/", 1)[-1])
                if oversized:  # not copied: it stays in raw, never modified
                    quarantine = lake.uri_of(key)
                else:
                    lake.write_bytes(qkey, data)
                    quarantine = lake.uri_of(qkey)
                lake.write_json(qkey + ".reason.json", {"source": lake.uri_of(key), "sha256": digest,
                                                         "rule": exc.rule, "detail": exc.detail,
                                                         "kept_at": quarantine})
                entry.update(status="rejected_file", rule=exc.rule, detail=exc.detail,
                             rows_delivered=None if oversized else _count_lines(data, max_decompressed_bytes),
                             quarantine=quarantine)
                log.warning("rejected %s: %s", lake.uri_of(key), exc)
            else:
                extra = frame.attrs.get("extra_columns", [])
                frame["_source_key"] = key
                frame["_source_sha256"] = digest
                frame["_source_row"] = range(len(frame))
                part = f"part-{n:05d}.parquet"
                frame.to_parquet(folder / part, index=False)
                entry.update(status="staged", rows_delivered=len(frame), bronze_part=part, extra_columns=extra)
                log.info("staged %s: %d rows%s", lake.uri_of(key), len(frame),
                         f" (extra columns ignored: {extra})" if extra else "")
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


def _count_lines(data: bytes, max_decompressed: int = DEFAULT_MAX_DECOMPRESSED) -> int | None:
    """Best-effort row count of an unusable file (data lines after a header), for the ledger."""
    try:
        if data[:2] == GZIP_MAGIC:
            data = gunzip(data, max_decompressed)
    except Exception:
        return None
    lines = [ln for ln in data.splitlines() if ln.strip()]
    return max(len(lines) - 1, 0)
