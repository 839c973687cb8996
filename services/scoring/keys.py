"""API keys of the scoring service's clients: stored hashed, one per client, revocable, each with a role.

The keys file (``<state>/serving/keys.json``, owner-only) holds the SHA-256 of each key, never the
key. Each client has one role, and a role opens only its endpoints (:data:`ROLES`): a terminal's key
scores, the pipeline's deploys, Prometheus's reads metrics. ``python -m services.scoring`` creates
the first keys when there are none and writes each once, owner-only, saying where:
``<state>/serving/api-key`` (client ``default``, role ``score``) and ``<state>/serving/deploy-key``
(client ``pipeline``, role ``deploy``, what the ``deploy_model`` DAG sends).
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path

ROLES = {
    "score": {"score"},  # POST /v1/score
    "deploy": {"deploy", "metrics"},  # POST /v1/champion, POST /v1/check, GET /metrics
    "metrics": {"metrics"},  # GET /metrics (a Prometheus scraper)
}
FIRST_KEYS = {"api-key": ("default", "score"), "deploy-key": ("pipeline", "deploy")}


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The clients and the hashes of their keys (``keys.json`` in ``folder``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.file = self.folder / "keys.json"
        self._cached: tuple[tuple, dict] | None = None

    def _read(self) -> dict:
        """The keys file, read again only when it changed (a revocation applies on the next request)."""
        try:
            stat = self.file.stat()
        except FileNotFoundError:
            return {"clients": {}}
        seen = (stat.st_mtime_ns, stat.st_size, stat.st_ino)
        if self._cached is None or self._cached[0] != seen:
            self._cached = (seen, json.loads(self.file.read_text()))
        return self._cached[1]

    def _write(self, data: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.chmod(0o600)
        os.replace(tmp, self.file)

    def create(self, client: str, role: str = "score") -> str:
        """A new key for ``client`` with ``role`` (replacing its old one); only its hash is kept."""
        key = secrets.token_urlsafe(32)
        self.set(client, key, role)
        return key

    def set(self, client: str, key: str, role: str = "score") -> None:
        """Give ``client`` this ``key`` (one generated elsewhere: ``make env`` for the stack, a Secret on
        Kubernetes), replacing its old one; only its hash is kept."""
        if role not in ROLES:
            raise ValueError(f"unknown role {role!r}: one of {sorted(ROLES)}")
        if len(key) < 32:
            raise ValueError(f"the key of {client!r} is {len(key)} characters: at least 32")
        data = json.loads(json.dumps(self._read()))
        data["clients"][client] = {"sha256": _digest(key), "revoked": False, "role": role}
        self._write(data)

    def revoke(self, client: str) -> None:
        data = json.loads(json.dumps(self._read()))
        data["clients"][client]["revoked"] = True
        self._write(data)

    def first_keys(self) -> list[Path]:
        """With no client yet: create the first clients' keys (:data:`FIRST_KEYS`), each written to
        its file (owner-only); the files written (none when clients exist)."""
        if self._read()["clients"]:
            return []
        written = []
        for name, (client, role) in FIRST_KEYS.items():
            key = self.create(client, role)
            path = self.folder / name
            path.write_text(key + "\n")
            path.chmod(0o600)
            written.append(path)
        return written

    def client_of(self, key: str) -> tuple[str | None, bool, str]:
        """(client, revoked, role) for a presented key; (None, False, "") for a key nobody holds."""
        wanted = _digest(key)
        for client, entry in self._read()["clients"].items():
            if hmac.compare_digest(entry["sha256"], wanted):
                return client, bool(entry.get("revoked")), entry.get("role", "score")
        return None, False, ""
