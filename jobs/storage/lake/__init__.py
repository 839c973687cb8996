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

from urllib.parse import urlparse

from jobs.storage.lake.base import (
    DENIED_CODES,
    MANIFEST,
    Lake,
    LakeError,
    ObjectInfo,
    ObjectMissing,
    StorageUnavailable,
    storage_failure,
)
from jobs.storage.lake.local import ORPHAN_AGE_S, LocalLake, exchange_paths
from jobs.storage.lake.s3 import S3Lake

__all__ = ["DENIED_CODES", "MANIFEST", "ORPHAN_AGE_S", "Lake", "LakeError", "LocalLake", "ObjectInfo",
           "ObjectMissing", "S3Lake", "StorageUnavailable", "configured_uri", "exchange_paths", "get_lake",
           "open_lake", "storage_failure"]


def open_lake(uri: str) -> Lake:
    """The backend for a lake URI."""
    scheme = urlparse(uri).scheme
    if scheme == "file":
        return LocalLake(uri)
    if scheme == "s3":
        return S3Lake(uri)
    raise LakeError(f"lake URI {uri!r}: scheme {scheme!r} is not supported (use file:// or s3://)")


def configured_uri() -> str:
    """The configured lake's root URI (``PIPELINE_LAKE_URI``, else the state folder's), without opening it."""
    from jobs.settings import get_settings

    return get_settings().resolved_lake_uri


def get_lake(uri: str | None = None) -> Lake:
    """The configured lake (``PIPELINE_LAKE_URI``), or the one at ``uri``."""
    if uri is None:
        from jobs.settings import get_settings

        uri = get_settings().resolved_lake_uri
    return open_lake(uri)
