"""``file:///path``: the lake as a folder. A partition is published by building it in a
``_staging/`` folder and swapping it into place in one atomic step."""


from __future__ import annotations

import logging
import os
import shutil
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from jobs.devkit import faults
from jobs.storage.lake.base import Lake, ObjectInfo, ObjectMissing, is_hidden

log = logging.getLogger(__name__)


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
            if p.is_file() and not is_hidden(rel):
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

    def table_filesystem(self, name: str):
        import pyarrow.fs as pafs

        return pafs.SubTreeFileSystem(str(self.path(name)), pafs.LocalFileSystem())

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


def _remove_if_empty(folder: Path) -> None:
    try:
        folder.rmdir()
    except OSError:
        pass
