"""The lake: one storage interface over a root URI, with atomic publishing.

Zones (relative keys under the root):
``raw/`` as delivered (never modified), ``bronze/`` typed batches, ``silver/`` validated rows,
``quarantine/`` rejected rows and files with reasons, ``gold/features/``, ``predictions/``,
``reports/`` and ``_ledger/`` (what was ingested).

Two backends behind one interface, so every job and sensor takes the same code path:

- ``file:///path`` (:class:`LocalLake`): a folder. A partition is published by building it in a
  ``_staging/`` folder and renaming it into place.
- ``s3://bucket/prefix`` (:class:`S3Lake`): boto3 with the standard credential chain
  (``AWS_ACCESS_KEY_ID``/``AWS_SECRET_ACCESS_KEY``, instance roles, ...) and ``AWS_ENDPOINT_URL``
  for S3-compatible servers (MinIO). S3 has no rename, so a partition is published by uploading
  its files under a fresh version prefix and then replacing one small ``_partition.json`` object
  (a single PUT, atomic) that lists them; readers only read what the manifest lists.
"""

from __future__ import annotations

import io
import json
import logging
import os
import re
import shutil
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlparse

from jobs import faults
from jobs.result import JobError

log = logging.getLogger(__name__)

MANIFEST = "_partition.json"  # S3 folders: the list of files that make the current version
# Only these S3 error codes mean "the object is not there"; every other error is a failure.
_ABSENT_CODES = frozenset({"NoSuchKey", "404", "NotFound"})


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


def _hidden(key: str) -> bool:
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
        """URI and delta-rs storage options of the Delta table ``name`` (see ``jobs.tables``)."""
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

        A missing object is an error: tables (silver, gold, ...) are read through ``jobs.tables``.
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


class LocalLake(Lake):
    """A lake in a local folder (``file://``)."""

    def __init__(self, uri: str):
        self.uri = uri.rstrip("/")
        self.root = Path(urlparse(uri).path)

    def path(self, key: str) -> Path:
        """Local filesystem path of a key."""
        return self.root / key

    def exists(self, key: str) -> bool:
        return self.path(key).exists()

    def list(self, prefix: str) -> list[str]:
        base = self.path(prefix)
        if not base.exists():
            return []
        keys = []
        for p in base.rglob("*"):
            rel = p.relative_to(self.root).as_posix()
            if p.is_file() and not _hidden(rel):
                keys.append(rel)
        return sorted(keys)

    def list_partitions(self, zone: str) -> list[str]:
        base = self.path(zone)
        if not base.exists():
            return []
        return sorted(p.name.split("=", 1)[1] for p in base.glob("date=*") if p.is_dir())

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        out = []
        for key in self.list(prefix):
            try:
                st = self.path(key).stat()
            except FileNotFoundError:
                continue  # removed since it was listed
            out.append(ObjectInfo(key, st.st_size, f"mtime-{st.st_mtime_ns}"))
        return out

    def read_bytes(self, key: str) -> bytes:
        try:
            return self.path(key).read_bytes()
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectMissing(f"{self.uri_of(key)} does not exist") from exc

    def open_stream(self, key: str):
        try:
            return open(self.path(key), "rb")
        except (FileNotFoundError, IsADirectoryError) as exc:
            raise ObjectMissing(f"{self.uri_of(key)} does not exist") from exc

    def write_bytes(self, key: str, data: bytes) -> str:
        return self._replace(key, lambda tmp: tmp.write_bytes(data))

    def upload_file(self, key: str, path: Path) -> str:
        return self._replace(key, lambda tmp: shutil.copyfile(path, tmp))

    def _replace(self, key: str, fill) -> str:
        """Fill a temporary file beside the target, then rename it over the target (atomic)."""
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        fill(tmp)
        os.replace(tmp, target)
        faults.wrote(f"put {key}")
        return self.uri_of(key)

    def replace_if_unchanged(self, key: str, expected: bytes, data: bytes) -> bool:
        import fcntl

        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target.parent / ".cas.lock", "a") as lock:  # one compare-and-set at a time per folder
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                if not target.exists() or target.read_bytes() != expected:
                    return False
                self.write_bytes(key, data)
                return True
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def table_location(self, name: str) -> tuple[str, dict[str, str]]:
        return str(self.path(name)), {}

    def _log_entries(self, name: str) -> list[str]:
        log_dir = self.path(name) / "_delta_log"
        return sorted(p.name for p in log_dir.iterdir()) if log_dir.is_dir() else []

    def create_only(self, key: str, data: bytes) -> bool:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
        tmp.write_bytes(data)
        try:
            os.link(tmp, target)  # fails if the target exists: the content appears whole or not at all
        except FileExistsError:
            return False
        finally:
            tmp.unlink()
        faults.wrote(f"create {key}")
        return True

    def append_line(self, key: str, line: str) -> None:
        target = self.path(key)
        target.parent.mkdir(parents=True, exist_ok=True)
        with open(target, "a", encoding="utf-8") as fh:
            fh.write(line.rstrip("\n") + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        faults.wrote(f"append {key}")

    def partition_files(self, key: str) -> list[str]:
        p = self.path(key)
        if p.is_file():
            return [key]
        return self.list(key)

    def publish_folder(self, folder: Path, key: str) -> str:
        final = self.path(key)
        staging_root = final.parent / "_staging"
        staging_root.mkdir(parents=True, exist_ok=True)
        _sweep_orphans(staging_root)
        incoming = staging_root / f"{final.name}.{uuid.uuid4().hex}"
        shutil.copytree(folder, incoming)  # same filesystem as the target: the renames are atomic
        trash = None
        if final.exists():
            if exchange_paths(incoming, final):  # one atomic step: readers see old, then new
                trash = incoming
            else:  # no renameat2: two renames, with a moment in which the partition is absent
                trash = staging_root / f"{final.name}.{uuid.uuid4().hex}.old"
                os.replace(final, trash)
                os.replace(incoming, final)
        else:
            os.replace(incoming, final)
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
        _remove_if_empty(staging_root)
        faults.wrote(f"publish {key}")
        return self.uri_of(key)

    @contextmanager
    def local_files(self, uris: list[str], staging_dir: Path | None = None) -> Iterator[list[str]]:
        yield [urlparse(u).path if u.startswith("file://") else u for u in uris]  # already local files

    def remove(self, key: str) -> None:
        p = self.path(key)
        if p.is_dir():
            shutil.rmtree(p)
        elif p.exists():
            p.unlink()


def exchange_paths(a: Path, b: Path) -> bool:
    """Swap two paths atomically (Linux ``renameat2(RENAME_EXCHANGE)``); False where unsupported."""
    import ctypes
    import errno

    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (OSError, AttributeError):
        return False
    at_fdcwd, rename_exchange = -100, 2
    if renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.ENOSYS, errno.EINVAL, errno.EOPNOTSUPP):  # old kernel or a filesystem without it
        return False
    raise OSError(code, os.strerror(code), f"{a} <-> {b}")


ORPHAN_AGE_S = 6 * 3600  # far longer than any copy into _staging takes


def _sweep_orphans(staging_root: Path) -> None:
    """Remove what publishes killed mid-way left in ``_staging/`` (invisible to readers, never resumed)."""
    import time

    for entry in staging_root.iterdir():
        try:
            if time.time() - entry.stat().st_mtime > ORPHAN_AGE_S:
                if entry.is_dir():
                    shutil.rmtree(entry, ignore_errors=True)
                else:
                    entry.unlink(missing_ok=True)
                log.warning("removed %s, left by a publish that did not finish", entry)
        except FileNotFoundError:
            continue  # another publish swept it


class S3Lake(Lake):
    """A lake under an S3 prefix (``s3://bucket/prefix``), any S3-compatible server.

    Error semantics: only 404 / NoSuchKey means "absent"; any other error (5xx, SlowDown,
    AccessDenied, a reset connection) raises :class:`StorageUnavailable` naming the object, so a
    failed read can never be mistaken for an empty partition or an unseen object.
    """

    def __init__(self, uri: str, client=None):
        parsed = urlparse(uri)
        self.uri = uri.rstrip("/")
        self.bucket = parsed.netloc
        self.prefix = parsed.path.strip("/")
        if client is None:
            import boto3

            client = boto3.client("s3")  # AWS_ENDPOINT_URL and credentials from the environment
        self.s3 = client

    def _key(self, key: str) -> str:
        return f"{self.prefix}/{key}" if self.prefix else key

    def _rel(self, full: str) -> str:
        return full[len(self.prefix) + 1 :] if self.prefix else full

    @contextmanager
    def _call(self, action: str, key: str):
        """Turn a boto3 failure into ObjectMissing (404 only) or StorageUnavailable (everything else)."""
        from botocore.exceptions import BotoCoreError, ClientError

        try:
            yield
        except ClientError as exc:
            code = str(exc.response.get("Error", {}).get("Code", ""))
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode")
            if code in _ABSENT_CODES or (status == 404 and code not in ("NoSuchBucket",)):
                raise ObjectMissing(f"{self.uri_of(key)} does not exist") from exc
            answered, advice = storage_failure(str(exc), status, code or None)
            raise StorageUnavailable(
                f"S3 {action} of {self.uri_of(key)} failed: {answered or code or status} "
                f"({exc.response.get('Error', {}).get('Message', '')}); not treated as absent, {advice}"
            ) from exc
        except BotoCoreError as exc:  # connection reset, timeout, incomplete read
            raise StorageUnavailable(
                f"S3 {action} of {self.uri_of(key)} failed: {type(exc).__name__}: {exc}; retry the task") from exc

    def _listing(self, prefix: str) -> list[dict]:
        """Every object under a prefix as S3 lists it (key relative to the lake, size, ETag)."""
        full = self._key(prefix).rstrip("/") + "/"
        entries = []
        with self._call("LIST", prefix):
            for page in self.s3.get_paginator("list_objects_v2").paginate(Bucket=self.bucket, Prefix=full):
                entries.extend({**o, "Key": self._rel(o["Key"])} for o in page.get("Contents", []))
        return entries

    def _objects(self, prefix: str) -> list[str]:
        return [o["Key"] for o in self._listing(prefix)]

    def exists(self, key: str) -> bool:
        try:
            with self._call("HEAD", key):
                self.s3.head_object(Bucket=self.bucket, Key=self._key(key))
            return True
        except ObjectMissing:
            return bool(self._objects(key)[:1])  # a "folder": some object lies under it

    def list(self, prefix: str) -> list[str]:
        keys = set()
        for k in self._objects(prefix):
            if k.endswith("/" + MANIFEST):
                keys.update(self.partition_files(k.rsplit("/", 1)[0]))
            elif not _hidden(k):
                keys.add(k)
        return sorted(keys)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return sorted((ObjectInfo(o["Key"], int(o["Size"]), str(o["ETag"]).strip('"'))
                       for o in self._listing(prefix) if not _hidden(o["Key"])), key=lambda o: o.key)

    def list_partitions(self, zone: str) -> list[str]:
        dates = set()
        for k in self._objects(zone):
            segment = k[len(zone) + 1 :].split("/", 1)[0]
            if segment.startswith("date=") and k.endswith("/" + MANIFEST):
                dates.add(segment.split("=", 1)[1])
        return sorted(dates)

    def read_bytes(self, key: str) -> bytes:
        with self._call("GET", key):
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"].read()

    def open_stream(self, key: str):
        with self._call("GET", key):
            return self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]

    def write_bytes(self, key: str, data: bytes) -> str:
        with self._call("PUT", key):
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data)  # a PUT is atomic
        faults.wrote(f"put {key}")
        return self.uri_of(key)

    @contextmanager
    def _reading(self, key: str):
        with self._call("GET", key):  # a reset mid-body is a storage failure too, not a short object
            body = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))["Body"]
            try:
                yield body
            finally:
                body.close()

    def upload_file(self, key: str, path: Path) -> str:
        with self._call("PUT", key):  # multipart above the threshold: the object appears when complete
            self.s3.upload_file(str(path), self.bucket, self._key(key))
        faults.wrote(f"put {key}")
        return self.uri_of(key)

    def append_line(self, key: str, line: str, attempts: int = 20) -> None:
        """Append by compare-and-swap: the PUT succeeds only if nobody wrote the object since it was read."""
        import random
        import time

        data = line.rstrip("\n").encode() + b"\n"
        for attempt in range(attempts):
            try:
                with self._call("GET", key):
                    got = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))
                    old, condition = got["Body"].read(), {"IfMatch": got["ETag"]}
            except ObjectMissing:
                old, condition = b"", {"IfNoneMatch": "*"}
            if self._conditional_put(key, old + data, condition):
                faults.wrote(f"append {key}")
                return
            time.sleep(random.uniform(0, 0.05 * 2 ** min(attempt, 5)))  # someone else appended: retry
        raise LakeError(f"could not append to {self.uri_of(key)}: {attempts} concurrent-write conflicts in a row")

    def _conditional_put(self, key: str, data: bytes, condition: dict) -> bool:
        """A PUT with If-Match / If-None-Match; False when the condition failed (someone else wrote)."""
        from botocore.exceptions import ClientError

        try:
            self.s3.put_object(Bucket=self.bucket, Key=self._key(key), Body=data, **condition)
            return True
        except ClientError as exc:
            if exc.response["Error"]["Code"] in ("PreconditionFailed", "ConditionalRequestConflict"):
                return False
            with self._call("conditional PUT", key):
                raise

    def create_only(self, key: str, data: bytes) -> bool:
        if not self._conditional_put(key, data, {"IfNoneMatch": "*"}):
            return False
        faults.wrote(f"create {key}")
        return True

    def replace_if_unchanged(self, key: str, expected: bytes, data: bytes) -> bool:
        try:
            with self._call("GET", key):
                got = self.s3.get_object(Bucket=self.bucket, Key=self._key(key))
                current = got["Body"].read()
        except ObjectMissing:
            return False
        if current != expected or not self._conditional_put(key, data, {"IfMatch": got["ETag"]}):
            return False
        faults.wrote(f"replace {key}")
        return True

    def partition_files(self, key: str) -> list[str]:
        manifest = f"{key}/{MANIFEST}"
        try:
            listed = self.read_json(manifest)
        except ObjectMissing:
            return [key] if self.exists(key) and not self._objects(key) else []
        return [f"{key}/{listed['version']}/{name}" for name in listed["files"]]

    def publish_folder(self, folder: Path, key: str) -> str:
        version = f"_v-{uuid.uuid4().hex}"
        files = sorted(p.relative_to(folder).as_posix() for p in folder.rglob("*") if p.is_file())
        for name in files:
            with self._call("PUT", f"{key}/{version}/{name}"):
                self.s3.upload_file(str(folder / name), self.bucket, self._key(f"{key}/{version}/{name}"))
        previous = set(k.split("/")[len(key.split("/"))] for k in self._objects(key)) - {MANIFEST}
        self.write_json(f"{key}/{MANIFEST}", {"version": version, "files": files})
        for old in previous:  # older versions: no manifest points at them any more
            if old.startswith("_v-") and old != version:
                for k in self._objects(f"{key}/{old}"):
                    with self._call("DELETE", k):
                        self.s3.delete_object(Bucket=self.bucket, Key=self._key(k))
        return self.uri_of(key)

    def remove(self, key: str) -> None:
        for k in self._objects(key) or [key]:
            with self._call("DELETE", k):
                self.s3.delete_object(Bucket=self.bucket, Key=self._key(k))

    def table_location(self, name: str) -> tuple[str, dict[str, str]]:
        from jobs.settings import get_settings

        settings = get_settings()
        endpoint = self.s3.meta.endpoint_url
        options = {
            # Commits are create-if-absent PUTs (If-None-Match); AWS S3, MinIO and R2 support them.
            "conditional_put": "etag",
            "AWS_REGION": self.s3.meta.region_name or "us-east-1",
            "max_retries": str(settings.storage_max_retries),
            "retry_timeout": f"{settings.storage_retry_timeout_s}s",
        }
        credentials = self.s3._request_signer._credentials  # boto3's own chain: env, profile, role
        if credentials is not None:
            frozen = credentials.get_frozen_credentials()
            options.update(AWS_ACCESS_KEY_ID=frozen.access_key, AWS_SECRET_ACCESS_KEY=frozen.secret_key)
            if frozen.token:
                options["AWS_SESSION_TOKEN"] = frozen.token
        if endpoint and "amazonaws.com" not in endpoint:  # MinIO, a local server: the endpoint boto3 uses
            options["AWS_ENDPOINT_URL"] = endpoint
            options["AWS_ALLOW_HTTP"] = "true" if endpoint.startswith("http://") else "false"
        return f"s3://{self.bucket}/{self._key(name)}", options

    def _log_entries(self, name: str) -> list[str]:
        return self._objects(f"{name}/_delta_log")


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass


def open_lake(uri: str) -> Lake:
    """The backend for a lake URI."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalLake(uri)
    if scheme == "s3":
        return S3Lake(uri)
    raise LakeError(f"lake URI {uri!r}: scheme {scheme!r} is not supported (use file:// or s3://)")


def get_lake(uri: str | None = None) -> Lake:
    """The configured lake (``PIPELINE_LAKE_URI``), or the one at ``uri``."""
    if uri is None:
        from jobs.settings import get_settings

        uri = get_settings().resolved_lake_uri
    return open_lake(uri)
