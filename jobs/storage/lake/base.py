"""The lake's interface: relative keys under a root URI, atomic publishing, and the errors every
backend raises (a storage failure is told apart from a missing object)."""


from __future__ import annotations

import io
import json
import logging
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from jobs.shared.result import JobError

log = logging.getLogger(__name__)

MANIFEST = "_partition.json"  # S3 folders: the list of files that make the current version
# Only these S3 error codes mean "the object is not there"; every other error is a failure.
ABSENT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


class LakeError(JobError):
    """A lake operation failed (unsupported scheme, unreadable table, storage error)."""


class ObjectMissing(LakeError):
    """The object does not exist (S3 404 / NoSuchKey, or no such file)."""


class StorageUnavailable(LakeError):
    """The storage answered with an error other than "not found" (5xx, AccessDenied, reset).

    Never read as "absent": the job fails and its task is retried.
    """


# Answers a retry of the same request cannot change: a person (or a policy change) must act first.
DENIED_CODES = frozenset({"AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "AllAccessDisabled",
                          "AccountProblem", "InvalidObjectState", "ExpiredToken", "InvalidToken"})
_KNOWN_CODES = sorted(DENIED_CODES) + ["SlowDown", "InternalError", "ServiceUnavailable", "RequestTimeout",
                                       "PreconditionFailed", "NoSuchBucket"]
_S3_CODE = re.compile(r"<Code>([A-Za-z]+)</Code>|\b(" + "|".join(_KNOWN_CODES) + r")\b")
_HTTP_STATUS = re.compile(r"(?:status(?: code)?\b[^0-9]{0,40}?|HTTP )([1-5]\d\d)\b", re.IGNORECASE)
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def storage_failure(message: str, status: int | None = None, code: str | None = None) -> tuple[str, str]:
    """``(what the store answered, what to do)`` for a storage error's full message.

    The HTTP status and the S3 error code are found in the whole message (delta-rs puts them
    below its first line); a denied or archived object is not worth a blind retry.
    """
    message = _ANSI.sub("", message)
    if code is None and (m := _S3_CODE.search(message)):
        code = m.group(1) or m.group(2)
    if status is None and (m := _HTTP_STATUS.search(message)):
        status = int(m.group(1))
    answered = " ".join(p for p in (f"HTTP {status}" if status else "", code or "") if p)
    if code == "InvalidObjectState":
        return answered, "the object is archived (restore it first, then clear the task)"
    if status == 403 or code in DENIED_CODES:
        return answered, ("access denied: this identity's policy does not allow it; a retry cannot help until the "
                          "permission is granted (then clear the task)")
    return answered, "retry the task"


def is_hidden(key: str) -> bool:
    """Staging folders, temporary files and S3 version folders are not objects of the lake."""
    parts = key.split("/")
    return any(p == "_staging" or p.startswith("_v-") or p.startswith(".") for p in parts)


@dataclass(frozen=True)
class ObjectInfo:
    """One object as a listing describes it."""

    key: str
    size: int
    tag: str


class Lake:
    """Storage for one lake root URI (see the module docstring)."""

    uri: str

    # --- to implement per backend -------------------------------------------------------
    def exists(self, key: str) -> bool:
        raise NotImplementedError

    def list(self, prefix: str) -> list[str]:
        """All object keys under a prefix (recursively), sorted; staging and versions excluded."""
        raise NotImplementedError

    def list_partitions(self, zone: str) -> list[str]:
        """Dates of the ``date=YYYY-MM-DD`` partitions of a zone, sorted."""
        raise NotImplementedError

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        """Objects under a prefix with what the listing says of them (size, version tag), sorted by key.

        The version tag is the S3 ETag, or the modification time in nanoseconds on a folder: it
        changes when the object is rewritten, so key + size + tag tell a new object from a known
        one without downloading it.
        """
        raise NotImplementedError

    def read_bytes(self, key: str) -> bytes:
        raise NotImplementedError

    def write_bytes(self, key: str, data: bytes) -> str:
        """Write one object atomically; returns its URI."""
        raise NotImplementedError

    def create_only(self, key: str, data: bytes) -> bool:
        """Write ``key`` only if it does not exist yet (atomic); False when it already existed."""
        raise NotImplementedError

    def partition_files(self, key: str) -> list[str]:
        """Keys of the files that make up the current version of a partition (or one file)."""
        raise NotImplementedError

    def replace_if_unchanged(self, key: str, expected: bytes, data: bytes) -> bool:
        """Compare-and-set: replace ``key`` with ``data`` only if it still holds ``expected``."""
        raise NotImplementedError

    def table_location(self, name: str) -> tuple[str, dict[str, str]]:
        """URI and delta-rs storage options of the Delta table ``name`` (see ``jobs.storage.tables``)."""
        raise NotImplementedError

    def table_filesystem(self, name: str):
        """A native pyarrow filesystem rooted at the Delta table ``name``, through which its Parquet files are read.

        Native (C++), not the filesystem delta-rs writes in Python: Arrow's I/O threads calling
        into Python abort the process at exit (see ``jobs.storage.tables.dataset``).
        """
        raise NotImplementedError

    def has_table(self, name: str) -> bool:
        """Whether a Delta log exists under ``name`` (a failed listing raises, never says no)."""
        return bool(self._log_entries(name))

    def _log_entries(self, name: str) -> list[str]:
        raise NotImplementedError

    def publish_folder(self, folder: Path, key: str) -> str:
        """Atomically make the finished local ``folder`` the content of partition ``key``."""
        raise NotImplementedError

    def remove(self, key: str) -> None:
        raise NotImplementedError

    # --- shared -------------------------------------------------------------------------
    def uri_of(self, key: str) -> str:
        """Full URI of a key, as used in Asset names and reports."""
        return f"{self.uri}/{key}"

    def partition_file(self, key: str, name: str) -> str:
        """The key of file ``name`` in the current version of partition ``key``."""
        for k in self.partition_files(key):
            if k == f"{key}/{name}" or k.endswith(f"/{name}") and k.startswith(f"{key}/_v-"):
                return k
        raise LakeError(f"{self.uri_of(key)}/{name} does not exist")

    def open_stream(self, key: str):
        """A binary file-like object streaming the object's bytes (close it when done)."""
        raise NotImplementedError

    def stream_sha256(self, key: str, chunk: int = 8 << 20) -> str:
        """SHA-256 of an object, streamed in chunks (memory stays flat for any size)."""
        return self._hash_stream(key, None, chunk)

    def download(self, key: str, dest: Path, chunk: int = 8 << 20) -> str:
        """Copy an object to a local file as a stream (memory stays flat); returns its SHA-256.

        What is hashed is exactly what was written to ``dest``: parse that file, not the object
        again (it could have been replaced in between).
        """
        with open(dest, "wb") as out:
            return self._hash_stream(key, out, chunk)

    def _hash_stream(self, key: str, out, chunk: int) -> str:
        import hashlib

        h = hashlib.sha256()
        with self._reading(key) as stream:
            for block in iter(lambda: stream.read(chunk), b""):
                h.update(block)
                if out is not None:
                    out.write(block)
        return h.hexdigest()

    @contextmanager
    def _reading(self, key: str):
        stream = self.open_stream(key)
        try:
            yield stream
        finally:
            stream.close()

    def upload_file(self, key: str, path: Path) -> str:
        """Write a local file to ``key`` whole (readers see the old object or the new one)."""
        raise NotImplementedError

    def read_json(self, key: str):
        return json.loads(self.read_bytes(key))

    def write_json(self, key: str, payload) -> str:
        return self.write_bytes(key, json.dumps(payload, indent=2, sort_keys=True, default=str).encode())

    def append_line(self, key: str, line: str) -> None:
        """Append one line to a log-like object (the ledger)."""
        old = self.read_bytes(key) if self.exists(key) else b""
        self.write_bytes(key, old + line.rstrip("\n").encode() + b"\n")

    def read_parquet(self, key: str, columns: list[str] | None = None):
        """One Parquet object (or the Parquet files of a published folder) as a pandas DataFrame.

        A missing object is an error: tables (silver, gold, ...) are read through ``jobs.storage.tables``.
        """
        import pandas as pd

        files = [k for k in self.partition_files(key) if k.endswith(".parquet")]
        if not files:
            raise ObjectMissing(f"{self.uri_of(key)} holds no Parquet data")
        frames = [pd.read_parquet(io.BytesIO(self.read_bytes(k)), columns=columns) for k in files]
        return pd.concat(frames, ignore_index=True) if len(frames) > 1 else frames[0]

    @contextmanager
    def publish(self, key: str) -> Iterator[Path]:
        """Build a partition in a local staging folder, then publish it whole.

        Readers see the old partition or the new one, never a half-written one; a job killed
        inside the block publishes nothing.
        """
        staging = Path(tempfile.mkdtemp(prefix="lake-publish-"))
        try:
            yield staging
            self.publish_folder(staging, key)
        finally:
            shutil.rmtree(staging, ignore_errors=True)

    @contextmanager
    def local_files(self, uris: list[str], staging_dir: Path | None = None) -> Iterator[list[str]]:
        """Local paths of the given lake file URIs, for engines that read paths (Spark).

        ``staging_dir``: where copies are staged (a shared filesystem when Spark runs on a cluster).
        """
        tmp = Path(tempfile.mkdtemp(prefix="lake-read-", dir=staging_dir))
        try:
            paths = []
            for i, uri in enumerate(uris):
                target = tmp / f"part-{i:05d}.parquet"
                self.download(self.key_of(uri), target)
                paths.append(str(target))
            yield paths
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def key_of(self, uri: str) -> str:
        """The key of a full URI under this lake (the inverse of :meth:`uri_of`)."""
        if not uri.startswith(self.uri + "/"):
            raise LakeError(f"{uri} is not under the lake {self.uri}")
        return uri[len(self.uri) + 1 :]
