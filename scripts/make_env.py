#!/usr/bin/env python3
"""The compose stack's secrets: generate a local ``.env``, or check the ones a container was given.

    python3 scripts/make_env.py              # `make env`: write .env from .env.example, secrets generated
    python3 scripts/make_env.py --check      # in the stack's `config-check` service: refuse weak secrets

Writing keeps every value an existing ``.env`` already has (so a re-run only fills in what is new)
and creates the file readable by its owner only. Checking reads the environment and fails, naming
each variable, when a secret is empty, a placeholder or too short. Standard library only: it runs
before any virtual environment exists, and in the job image.
"""

from __future__ import annotations

import argparse
import base64
import os
import re
import secrets
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# Every secret of docker-compose.yaml; each one is `${NAME:?...}` there, so compose refuses to start without it.
SECRETS = (
    "POSTGRES_PASSWORD",
    "MINIO_ROOT_PASSWORD",
    "MINIO_JOBS_PASSWORD",
    "MINIO_SENSOR_PASSWORD",
    "MINIO_MLFLOW_PASSWORD",
    "MINIO_DELIVERY_PASSWORD",
    "MINIO_SCORING_PASSWORD",
    "AIRFLOW_FERNET_KEY",
    "AIRFLOW_JWT_SECRET",
    "AIRFLOW_API_SECRET_KEY",
    "AIRFLOW_ADMIN_PASSWORD",
    "MLFLOW_FLASK_SECRET_KEY",
    "MLFLOW_ADMIN_PASSWORD",
    "MLFLOW_PIPELINE_PASSWORD",
    "MLFLOW_PROMOTER_PASSWORD",
    # The gate's Ed25519 key pair (jobs/storage/verdict.py): the private half reaches the evaluate job only.
    "GATE_SIGNING_KEY",
    "GATE_PUBLIC_KEY",
    # The online store and the scoring service's first clients (services/scoring/keys.py).
    "REDIS_PASSWORD",
    "SCORING_API_KEY",
    "SCORING_DEPLOY_KEY",
    "SCORING_METRICS_KEY",
)
MIN_LENGTH = 16
PLACEHOLDER = re.compile(r"change.?me|replace|generate|example|secret$|password$|^admin$", re.IGNORECASE)
# Values end up inside connection URIs: letters, digits, '-' and '_' only (token_urlsafe's alphabet).
URI_SAFE = re.compile(r"^[A-Za-z0-9_-]+$")


def generate(name: str, values: dict[str, str]) -> str:
    if name == "AIRFLOW_FERNET_KEY":  # Fernet: 32 random bytes, url-safe base64 (with its '=' padding)
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode()
    if name == "GATE_SIGNING_KEY":  # any 32 random bytes are an Ed25519 private key
        return base64.urlsafe_b64encode(secrets.token_bytes(32)).decode().rstrip("=")
    if name == "GATE_PUBLIC_KEY":
        return gate_public_key(values["GATE_SIGNING_KEY"])
    return secrets.token_urlsafe(32)


def gate_public_key(private: str) -> str:
    """The public half of the gate's private key (url-safe base64, no padding), as jobs/storage/verdict.py reads it."""
    try:
        from cryptography.hazmat.primitives import serialization
        from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
    except ImportError:
        raise SystemExit("make env: the gate's key pair needs the 'cryptography' package: run `make setup` first, "
                         "then `.venv/bin/python scripts/make_env.py`") from None
    raw = base64.urlsafe_b64decode(private + "=" * (-len(private) % 4))
    public = Ed25519PrivateKey.from_private_bytes(raw).public_key().public_bytes(
        serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.urlsafe_b64encode(public).decode().rstrip("=")


def problems(environ: dict[str, str]) -> list[str]:
    found = []
    for name in SECRETS:
        value = environ.get(name, "")
        if not value:
            found.append(f"{name} is empty")
        elif PLACEHOLDER.search(value):
            found.append(f"{name} is a placeholder ({value!r})")
        elif len(value) < MIN_LENGTH:
            found.append(f"{name} has {len(value)} characters; at least {MIN_LENGTH}")
        elif name == "AIRFLOW_FERNET_KEY":
            try:
                if len(base64.urlsafe_b64decode(value.encode())) != 32:
                    found.append(f"{name} is not 32 bytes of url-safe base64 (a Fernet key)")
            except ValueError:
                found.append(f"{name} is not url-safe base64 (a Fernet key)")
        elif not URI_SAFE.match(value):
            found.append(f"{name} holds characters other than letters, digits, '-' and '_' (it goes into URIs)")
    return found


def read_env(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.lstrip().startswith("#"):
            key, _, value = line.partition("=")
            values[key.strip()] = value.strip()
    return values


def write(target: Path, example: Path) -> list[str]:
    """Write ``target`` from ``example``: existing values kept, empty secrets generated. Returns the new names."""
    existing = read_env(target) if target.exists() else {}
    generated, lines, values = [], [], {}
    for line in example.read_text().splitlines():
        key, sep, value = line.partition("=")
        key = key.strip()
        if not sep or line.lstrip().startswith("#"):
            lines.append(line)
            continue
        if key in existing:
            value = existing[key]
        elif key in SECRETS and not value:
            value = generate(key, {**existing, **values})
            generated.append(key)
        values[key] = value
        lines.append(f"{key}={value}")
    tmp = target.with_name(target.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write("\n".join(lines) + "\n")
    os.replace(tmp, target)  # all or nothing
    return generated


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="check the secrets in the environment")
    parser.add_argument("--env-file", type=Path, default=ROOT / ".env")
    parser.add_argument("--example", type=Path, default=ROOT / ".env.example")
    args = parser.parse_args()
    if args.check:
        found = problems(dict(os.environ))
        for problem in found:
            print(f"config-check: {problem}", file=sys.stderr)
        if found:
            print("config-check: refusing to start the stack; generate the secrets with `make env` "
                  "(python3 scripts/make_env.py), or set strong ones in .env", file=sys.stderr)
            return 1
        print(f"config-check: {len(SECRETS)} secrets present and strong")
        return 0
    generated = write(args.env_file, args.example)
    weak = problems({**read_env(args.env_file)})
    print(f"{args.env_file}: {len(generated)} secrets generated ({', '.join(generated) or 'none new'}), "
          "file mode 0600")
    for problem in weak:
        print(f"  still weak: {problem} (edit it in {args.env_file.name}, or remove the line and re-run)")
    return 1 if weak else 0


if __name__ == "__main__":
    sys.exit(main())
