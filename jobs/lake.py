"""The lake: one small storage interface over a root URI, with atomic publishing.

Zones (relative keys under the root):
``raw/`` as delivered (never modified), ``bronze/`` typed batches, ``silver/`` validated rows,
``quarantine/`` rejected rows and files with reasons, ``gold/features/``, ``predictions/``,
``reports/`` and ``_ledger/`` (what was ingested).

Only ``file://`` is implemented so far; every job and sensor goes through :class:`Lake`, so an
``s3://`` backend plugs in here without touching callers.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from jobs.result import JobError

RAW_TRANSACTIONS = "raw/transactions"
BRONZE_BATCHES = "bronze/batches"
SILVER_TRANSACTIONS = "silver/transactions"
QUARANTINE = "quarantine"
GOLD_FEATURES = "gold/features"
PREDICTIONS = "predictions"
REPORTS = "reports"
LEDGER = "_ledger/ingested.jsonl"


def date_partition(zone: str, date: str) -> str:
    """Key of one date partition of a zone, e.g. ``silver/transactions/date=2026-11-21``."""
    return f"{zone}/date={date}"


class LakeError(JobError):
    """A lake operation failed (missing object, unsupported scheme)."""


class Lake:
    """Storage for one lake root URI."""

    def __init__(self, uri: str):
        parsed = urlparse(uri)
        if parsed.scheme != "file":
            raise LakeError(
                f"lake URI {uri!r}: scheme {parsed.scheme!r} is not supported yet "
                "(only file:// is implemented)"
            )
        self.uri = uri.rstrip("/")
        self.root = Path(parsed.path)

    # --- paths --------------------------------------------------------------------------
    def path(self, key: str) -> Path:
        """Local filesystem path of a key (file:// lakes)."""
        return self.root / key

    def uri_of(self, key: str) -> str:
        """Full URI of a key, as used in Asset names and reports."""
        return f"{self.uri}/{key}"

    # --- reading ------------------------------------------------------------------------
    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> list[str]:
        """All object keys under a prefix (recursively), sorted; staging folders excluded."""
        base = self.path(prefix)
        if not base.exists():
            return []
        keys = []
        for p in base.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and "/_staging/" not in f"/{rel}" and not p.name.startswith("."):
                keys.append(rel)
        return sorted(keys)

    def list_partitions(self, zone: str) -> list[str]:
        """Dates of the ``date=YYYY-MM-DD`` partitions of a zone, sorted."""
        base = self.path(zone)
        if not base.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.glob("date=*") if p.is_dir())

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except FileNotFoundError as exc:
            raise LakeError(f"{self.uri_of(key)} does not exist") from exc

    def read_json(self, key: str):
        return json.loads(self.read_bytes(key))

    # --- writing (always atomic) --------------------------------------------------------
    def write_bytes(self, key: str, data: bytes) -> str:
        """Write one object atomically (temporary file + rename); returns its URI."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, target)
        return self.uri_of(key)

    def write_json(self, key: str, payload) -> str:
        return self.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def append_line(self, key: str, line: str) -> None:
        """Append one line to a log-like object (the ledger)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    @contextmanager
    def publish(self, key: str) -> Iterator[Path]:
        """Build a partition in a staging folder, then swap it in whole.

        Readers see the old partition or the new one, never a half-written one; a job killed
        inside the block leaves only an orphan staging folder, which the next run ignores.
        """
        staging = self.staging_dir(key)
        try:
            yield staging
            self.swap_in(staging, key)
        finally:
            if staging.exists():
                shutil.rmtree(staging, ignore_errors=True)
            _remove_if_empty(staging.parent)

    def staging_dir(self, key: str) -> Path:
        """A fresh, empty staging folder next to ``key`` (invisible to :meth:`list`)."""
        final = self.path(key)
        staging = final.parent / "_staging" / f"{final.name}.{uuid.uuid4().hex}"
        staging.mkdir(parents=True)
        return staging

    def swap_in(self, folder: Path, key: str) -> str:
        """Atomically replace the partition at ``key`` with the finished ``folder``."""
        final = self.path(key)
        final.parent.mkdir(parents=True, exist_ok=True)
        trash = None
        if final.exists():
            trash = final.parent / "_staging" / f"{final.name}.{uuid.uuid4().hex}.old"
            trash.parent.mkdir(parents=True, exist_ok=True)
            os.replace(final, trash)
        os.replace(folder, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
            _remove_if_empty(trash.parent)
        return self.uri_of(key)

    def discard(self, staging: Path) -> None:
        """Remove a staging folder (and its ``_staging`` parent once empty)."""
        shutil.rmtree(staging, ignore_errors=True)
        _remove_if_empty(staging.parent)

    def remove(self, key: str) -> None:
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def get_lake(uri: str | None = None) -> Lake:
    """The configured lake (``PIPELINE_LAKE_URI``), or the one at ``uri``."""
    if uri is None:
        from jobs.settings import get_settings

        uri = get_settings().resolved_lake_uri
    return Lake(uri)
