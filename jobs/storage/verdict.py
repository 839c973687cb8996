"""The gate's verdict, signed: only the evaluate job can write one that promotion and scoring trust.

Every job signs in to MLflow as the same least-privileged pipeline identity, and a model version's
tags are editable by it; ingestion, which parses untrusted files, runs as that identity too. So a
``gate_passed=true`` tag proves nothing by itself. Evaluation signs a statement of its verdict
(model, version, pass or fail, the champion it compared with, the ONNX hash, the verdict text) with
an Ed25519 private key that the runners give to the evaluate job alone
(``PIPELINE_GATE_SIGNING_KEY``); promotion, scoring and the drift monitor verify it with the public
key (``PIPELINE_GATE_PUBLIC_KEY``). A tag set by anyone else, or copied from another version, does
not verify. On the embedded default (one user, one machine) the key pair is generated once into
the state folder (``keys/``, the private key owner-only).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
from pathlib import Path

from jobs.shared.names import GATE_VERDICT_TAG, SIGNATURE_TAG, SIGNED_TAGS
from jobs.shared.result import JobError

log = logging.getLogger(__name__)

_KEY_DIR = "keys"
_PRIVATE_FILE = "gate-ed25519.key"
_PUBLIC_FILE = "gate-ed25519.pub"


class VerdictUnsigned(JobError):
    """A version's gate tags are not signed by the gate (forged, copied, or written before signing)."""

    exit_code = 4  # retrying cannot help: a person must re-evaluate, roll back or override


def statement(model_name: str, version: str, tags: dict[str, str]) -> bytes:
    """The bytes the gate signs: the verdict's tags of one version, canonical JSON."""
    body = {"model": model_name, "version": str(version), **{t: tags.get(t, "") for t in SIGNED_TAGS}}
    body[GATE_VERDICT_TAG] = hashlib.sha256(body[GATE_VERDICT_TAG].encode()).hexdigest()
    return json.dumps(body, sort_keys=True, separators=(",", ":")).encode()


def _raw(b64: str, what: str) -> bytes:
    text = b64.strip().replace("-", "+").replace("_", "/")  # standard or url-safe, padded or not
    try:
        raw = base64.b64decode(text + "=" * (-len(text) % 4), validate=True)
    except ValueError as exc:
        raise JobError(f"{what} is not base64") from exc
    if len(raw) != 32:
        raise JobError(f"{what} must be 32 bytes (an Ed25519 key), base64; it has {len(raw)}")
    return raw


def generate_keypair() -> tuple[str, str]:
    """A new Ed25519 key pair as base64 ``(private, public)``: for ``make env`` and Kubernetes Secrets."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.Raw, serialization.PrivateFormat.Raw,
                                serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(private).decode(), base64.b64encode(public).decode()


def _embedded_keys(state_dir: Path, create: bool) -> tuple[str | None, str | None]:
    """The state folder's key pair (created once, owner-only, when ``create``)."""
    folder = Path(state_dir) / _KEY_DIR
    private, public = folder / _PRIVATE_FILE, folder / _PUBLIC_FILE
    if create and not public.exists():
        folder.mkdir(parents=True, exist_ok=True)
        priv_b64, pub_b64 = generate_keypair()
        fd = os.open(private, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(priv_b64 + "\n")
        public.write_text(pub_b64 + "\n")
        log.info("generated the gate's signing key pair in %s (embedded default)", folder)
    return (private.read_text().strip() if private.exists() else None,
            public.read_text().strip() if public.exists() else None)


def sign(settings, version: str, tags: dict[str, str]) -> str:
    """The signature (base64) of one version's verdict tags; only the evaluate job holds the key."""
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    private = settings.gate_signing_key.get_secret_value()
    if not private:
        if settings.gate_public_key:
            raise JobError("no PIPELINE_GATE_SIGNING_KEY: only the evaluate job holds the gate's signing key "
                           "(the runners give it to no other step)")
        private, _ = _embedded_keys(settings.state_dir, create=True)
    key = Ed25519PrivateKey.from_private_bytes(_raw(private, "PIPELINE_GATE_SIGNING_KEY"))
    return base64.b64encode(key.sign(statement(settings.model_name, version, tags))).decode()


def verify(settings, version: str, tags: dict[str, str]) -> None:
    """Raise :class:`VerdictUnsigned` unless the version's verdict tags carry the gate's signature."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

    public = settings.gate_public_key or _embedded_keys(settings.state_dir, create=False)[1]
    name = f"{settings.model_name} v{version}"
    if not public:
        raise VerdictUnsigned(f"{name}: no gate public key (PIPELINE_GATE_PUBLIC_KEY) to check its verdict with")
    signature = tags.get(SIGNATURE_TAG)
    if not signature:
        raise VerdictUnsigned(f"{name}: its gate verdict is not signed by the gate (tags set by hand, or written "
                              "before verdicts were signed): re-evaluate it")
    try:
        Ed25519PublicKey.from_public_bytes(_raw(public, "PIPELINE_GATE_PUBLIC_KEY")).verify(
            base64.b64decode(signature), statement(settings.model_name, version, tags))
    except (InvalidSignature, ValueError):
        raise VerdictUnsigned(f"{name}: its gate tags do not match the gate's signature (changed or copied after "
                              "the gate wrote them): refusing to trust them") from None
