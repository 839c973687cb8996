"""API keys of the scoring service's clients: stored hashed, one per client, revocable.

The keys file (``<state>/serving/keys.json``, owner-only) holds the SHA-256 of each key, never the
key. ``python -m services.scoring`` creates a first client's key when there is none and writes it
once to ``<state>/serving/api-key`` (owner-only), saying where.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import os
import secrets
from pathlib import Path


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeys:
    """The clients and the hashes of their keys (``keys.json`` in ``folder``)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.file = self.folder / "keys.json"

    def _read(self) -> dict:
        return json.loads(self.file.read_text()) if self.file.exists() else {"clients": {}}

    def _write(self, data: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.file.with_suffix(".tmp")
        tmp.write_text(json.dumps(data, indent=2, sort_keys=True))
        tmp.chmod(0o600)
        os.replace(tmp, self.file)

    def create(self, client: str) -> str:
        """A new key for ``client`` (replacing its old one); only its hash is kept."""
        key = secrets.token_urlsafe(32)
        data = self._read()
        data["clients"][client] = {"sha256": _digest(key), "revoked": False}
        self._write(data)
        return key

    def revoke(self, client: str) -> None:
        data = self._read()
        data["clients"][client]["revoked"] = True
        self._write(data)

    def first_key(self) -> Path | None:
        """With no client yet: create ``default``'s key, write it to ``api-key`` (owner-only) and
        return that file; else None."""
        if self._read()["clients"]:
            return None
        key = self.create("default")
        path = self.folder / "api-key"
        path.write_text(key + "\n")
        path.chmod(0o600)
        return path

    def client_of(self, key: str) -> tuple[str | None, bool]:
        """(client, revoked) for a presented key; (None, False) for a key nobody holds."""
        wanted = _digest(key)
        for client, entry in self._read()["clients"].items():
            if hmac.compare_digest(entry["sha256"], wanted):
                return client, bool(entry.get("revoked"))
        return None, False
