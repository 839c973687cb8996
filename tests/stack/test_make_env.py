"""`make env` (scripts/make_env.py): the compose stack's secrets generated, kept and checked."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "make_env.py"


def run(*args, env=None):
    return subprocess.run([sys.executable, str(SCRIPT), *args], capture_output=True, text=True, timeout=60,
                          env={"PATH": os.environ["PATH"], **(env or {})})


def read(path: Path) -> dict[str, str]:
    lines = path.read_text().splitlines()
    return dict(line.split("=", 1) for line in lines if "=" in line and not line.startswith("#"))


def secrets() -> tuple[str, ...]:
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_env", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.SECRETS


def test_generates_every_secret_owner_only_and_keeps_them(tmp_path):
    target = tmp_path / ".env"
    out = run("--env-file", str(target))
    assert out.returncode == 0, out.stdout + out.stderr
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    first = read(target)
    assert all(len(first[name]) >= 32 for name in secrets())
    assert len({first[name] for name in secrets()}) == len(secrets()), "each secret is its own"
    assert first["POSTGRES_USER"] == "pipeline" and first["PIPELINE_JOB_GPUS"] == "false"  # the rest as the example
    # A second run keeps what is there (a running stack's passwords must not change under it).
    assert run("--env-file", str(target)).returncode == 0
    assert read(target) == first
    # The stack's own check accepts them.
    check = run("--check", env={k: v for k, v in first.items()})
    assert check.returncode == 0 and f"{len(secrets())} secrets present and strong" in check.stdout


def test_the_check_refuses_empty_placeholder_short_and_bad_values(tmp_path):
    target = tmp_path / ".env"
    assert run("--env-file", str(target)).returncode == 0
    env = read(target)
    env.update(POSTGRES_PASSWORD="change-me", MINIO_JOBS_PASSWORD="", MLFLOW_ADMIN_PASSWORD="short1",
               AIRFLOW_FERNET_KEY="not-a-fernet-key-at-all-xxxxxxxxxxx", MLFLOW_PROMOTER_PASSWORD="a@b:c/d" * 4)
    out = run("--check", env=env)
    assert out.returncode == 1
    for expected in ("POSTGRES_PASSWORD is a placeholder ('change-me')", "MINIO_JOBS_PASSWORD is empty",
                     "MLFLOW_ADMIN_PASSWORD has 6 characters; at least 16",
                     "AIRFLOW_FERNET_KEY is not url-safe base64 (a Fernet key)",
                     "MLFLOW_PROMOTER_PASSWORD holds characters other than letters, digits",
                     "refusing to start the stack; generate the secrets with `make env`"):
        assert expected in out.stderr, expected


def test_the_generated_fernet_key_is_one_airflow_accepts(tmp_path):
    target = tmp_path / ".env"
    assert run("--env-file", str(target)).returncode == 0
    from cryptography.fernet import Fernet

    Fernet(read(target)["AIRFLOW_FERNET_KEY"].encode())  # raises on a malformed key


def test_make_has_an_env_target():
    makefile = (ROOT / "Makefile").read_text()
    assert "\nenv:\n" in makefile and "scripts/make_env.py" in makefile


def test_the_gate_key_pair_signs_and_verifies_and_a_job_without_the_private_half_cannot_sign(tmp_path):
    from jobs.settings import Settings
    from jobs.shared.result import JobError
    from jobs.storage.verdict import VerdictUnsigned, sign, verify

    target = tmp_path / ".env"
    assert run("--env-file", str(target)).returncode == 0
    env = read(target)
    tags = {"gate_passed": "true", "gate_champion_version": "3", "gate_verdict": "PASS", "onnx_sha256": "ab" * 32}
    evaluator = Settings(state_dir=tmp_path, gate_signing_key=env["GATE_SIGNING_KEY"],
                         gate_public_key=env["GATE_PUBLIC_KEY"])
    scorer = Settings(state_dir=tmp_path, gate_public_key=env["GATE_PUBLIC_KEY"])
    signed = {**tags, "gate_signature": sign(evaluator, "4", tags)}
    verify(scorer, "4", signed)
    import pytest

    with pytest.raises(VerdictUnsigned):
        verify(scorer, "5", signed)  # the same tags copied onto another version
    with pytest.raises(JobError, match="only the evaluate job holds"):
        sign(scorer, "4", tags)
