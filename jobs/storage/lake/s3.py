"""``s3://bucket/prefix``: boto3 with the standard credential chain and ``AWS_ENDPOINT_URL`` for
S3-compatible servers. S3 has no rename: a partition is published by uploading its files under a
fresh version prefix, then replacing one small ``_partition.json`` (one atomic PUT) that lists them."""


from __future__ import annotations

import logging
import uuid
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

from jobs.devkit import faults
from jobs.storage.lake.base import (
    ABSENT_CODES,
    MANIFEST,
    Lake,
    LakeError,
    ObjectInfo,
    ObjectMissing,
    StorageUnavailable,
    is_hidden,
    storage_failure,
)

log = logging.getLogger(__name__)


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
            if code in ABSENT_CODES or (status == 404 and code not in ("NoSuchBucket",)):
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
            elif not is_hidden(k):
                keys.add(k)
        return sorted(keys)

    def list_objects(self, prefix: str) -> list[ObjectInfo]:
        return sorted((ObjectInfo(o["Key"], int(o["Size"]), str(o["ETag"]).strip('"'))
                       for o in self._listing(prefix) if not is_hidden(o["Key"])), key=lambda o: o.key)

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

    def table_filesystem(self, name: str):
        """Arrow's S3 client with delta-rs's credentials, endpoint, region and retries (``table_location``)."""
        import pyarrow.fs as pafs

        from jobs.settings import get_settings

        _, options = self.table_location(name)
        endpoint = options.get("AWS_ENDPOINT_URL")
        s3 = pafs.S3FileSystem(
            access_key=options.get("AWS_ACCESS_KEY_ID"), secret_key=options.get("AWS_SECRET_ACCESS_KEY"),
            session_token=options.get("AWS_SESSION_TOKEN"), region=options["AWS_REGION"],
            endpoint_override=endpoint, scheme="http" if (endpoint or "").startswith("http://") else "https",
            retry_strategy=pafs.AwsStandardS3RetryStrategy(max_attempts=get_settings().storage_max_retries + 1))
        return pafs.SubTreeFileSystem(f"{self.bucket}/{self._key(name)}", s3)

    def _log_entries(self, name: str) -> list[str]:
        return self._objects(f"{name}/_delta_log")
