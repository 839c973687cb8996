"""Installable anywhere: one distribution per package, onnxruntime's build by extra, the preflight, lint rules.

The preflight (scripts/preflight.sh) runs for real here, against fake Pythons, Javas and environments
in temporary folders, so each refusal and its fix line are what a user would see.
"""

from __future__ import annotations

import importlib.metadata as md
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PREFLIGHT = ROOT / "scripts" / "preflight.sh"
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def pins() -> dict[str, str]:
    lines = (ROOT / "requirements" / "constraints.txt").read_text().splitlines()
    return dict(line.lower().split("==", 1) for line in lines if "==" in line and not line.startswith("#"))


def requirement_names(requirements: list[str]) -> set[str]:
    return {re.split(r"[\[=<>!~; ]", r, maxsplit=1)[0].lower() for r in requirements}


def preflight(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(PREFLIGHT), *args], capture_output=True, text=True, cwd=ROOT,
                          env={**os.environ, **(env or {})}, timeout=120)


def fake_program(path: Path, script: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + script + "\n")
    path.chmod(0o755)
    return path


# --- one distribution per package ---------------------------------------------------------------


@pytest.mark.parametrize("package", ["pyspark", "onnxruntime", "torch"])
def test_this_environment_has_one_distribution_per_package(package):
    """pyspark-client (the apache-spark provider's) and onnxruntime-gpu each overwrite a package's files."""
    owners = sorted(set(md.packages_distributions().get(package, [])))
    assert len(owners) == 1, f"'{package}' is installed by {owners}"


def test_the_lock_has_no_second_pyspark():
    locked = pins()
    assert locked["pyspark"] == "4.3.0"
    assert "pyspark-client" not in locked and "pyspark-connect" not in locked
    assert "apache-airflow-providers-apache-spark" not in requirement_names(PYPROJECT["project"]["dependencies"])


def test_onnxruntime_comes_by_extra_cpu_or_gpu_never_both():
    project = PYPROJECT["project"]
    assert not {n for n in requirement_names(project["dependencies"]) if n.startswith("onnxruntime")}
    extras = project["optional-dependencies"]
    locked = pins()
    assert extras["cpu"] == [f"onnxruntime=={locked['onnxruntime']}"]
    assert extras["gpu"] == [f"onnxruntime-gpu=={locked['onnxruntime-gpu']}"]
    assert locked["onnxruntime"] == locked["onnxruntime-gpu"]
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^ORT_EXTRA \?= cpu$", makefile, re.M)
    assert '-e ".[dev,$(ORT_EXTRA)]"' in makefile
    cpu, gpu = (ROOT / "jobs" / "Dockerfile").read_text(), (ROOT / "jobs" / "Dockerfile.gpu").read_text()
    assert '".[cpu]"' in cpu and "gpu]" not in cpu
    assert '".[gpu]"' in gpu and '".[cpu]"' not in gpu


def test_a_cpu_host_loads_no_cuda_provider():
    """The CPU build lists no CUDA provider, so nothing tries (and fails) to load CUDA libraries."""
    out = subprocess.run([sys.executable, "-c", "import onnxruntime as o; print(o.get_available_providers())"],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "CPUExecutionProvider" in out.stdout and "CUDA" not in out.stdout
    assert "CUDA" not in out.stderr and "error" not in out.stderr.lower()


# --- the preflight --------------------------------------------------------------------------------


def test_make_runs_the_preflight_before_installing():
    makefile = (ROOT / "Makefile").read_text()
    assert re.search(r"^setup: preflight \$\(STAMP\)$", makefile, re.M)
    assert re.search(r"^\t@scripts/preflight\.sh --venv \$\(VENV\)$", makefile, re.M)


def test_preflight_passes_here():
    out = preflight(sys.executable)
    assert out.returncode == 0, out.stderr
    assert "ok      Python 3.11" in out.stdout and re.search(r"ok      Java (1[7-9]|[2-9]\d)", out.stdout)


def test_preflight_refuses_another_python_with_a_fix(tmp_path):
    python = fake_program(tmp_path / "python3", 'echo "3.12"')
    out = preflight(str(python))
    assert out.returncode == 1
    assert f"MISSING Python 3.11 ({python} is 3.12; the lock is for 3.11)" in out.stderr
    assert re.search(r"fix: (sudo apt-get install python3\.11 python3\.11-venv|brew install python@3\.11)", out.stderr)


def test_preflight_refuses_a_python_without_venv(tmp_path):
    # Answers the version query, fails the `import venv, ensurepip` one (Debian without python3.11-venv).
    python = fake_program(tmp_path / "python3.11", 'case "$2" in *ensurepip*) exit 1;; esac; echo "3.11"')
    out = preflight(str(python))
    assert out.returncode == 1 and f"MISSING the venv module with pip for {python}" in out.stderr


def test_preflight_refuses_a_missing_java_with_a_fix(tmp_path):
    out = preflight(sys.executable, env={"JAVA_HOME": str(tmp_path / "no-jdk")})
    assert out.returncode == 1
    assert f"MISSING Java 17+ for Spark (no java on JAVA_HOME={tmp_path / 'no-jdk'})" in out.stderr
    assert "fix: " in out.stderr and "openjdk" in out.stderr


def test_preflight_names_an_old_java(tmp_path):
    fake_program(tmp_path / "jdk11" / "bin" / "java", "echo 'openjdk version \"11.0.24\" 2024-07-16' >&2")
    out = preflight(sys.executable, env={"JAVA_HOME": str(tmp_path / "jdk11")})
    assert out.returncode == 1
    assert 'is: openjdk version "11.0.24" 2024-07-16)' in out.stderr


def test_preflight_requires_postgresql_and_redis_only_where_asked(tmp_path):
    """Without initdb or redis-server: a note for `make test`, an error where PIPELINE_REQUIRE_POSTGRES=1
    or PIPELINE_REQUIRE_REDIS=1 (CI)."""
    bin_dir = tmp_path / "bin"  # the preflight's tools, without initdb
    bin_dir.mkdir()
    for tool in ("sed", "head", "tail", "ls", "df", "awk", "uname", "dirname", "java"):
        real = shutil.which(tool)
        assert real, tool
        (bin_dir / tool).symlink_to(real)
    env = {k: v for k, v in os.environ.items()
           if k not in ("JAVA_HOME", "PIPELINE_REQUIRE_POSTGRES", "PIPELINE_REQUIRE_REDIS")}
    # Debian's /usr/lib/postgresql/<version>/bin is searched too: point that search at an empty folder.
    env.update(PATH=str(bin_dir), PREFLIGHT_TESTS="1", PREFLIGHT_POSTGRES_GLOB=str(tmp_path / "pg" / "*" / "initdb"))

    def run(**extra):
        return subprocess.run([shutil.which("bash"), str(PREFLIGHT), sys.executable], capture_output=True,
                              text=True, cwd=ROOT, env={**env, **extra}, timeout=120)

    relaxed = run()
    assert relaxed.returncode == 0, relaxed.stderr
    assert "note    no PostgreSQL server binaries: tests/e2e/test_postgres.py will skip" in relaxed.stdout
    strict = run(PIPELINE_REQUIRE_POSTGRES="1")
    assert strict.returncode == 1
    assert "MISSING PostgreSQL server binaries (initdb, pg_ctl), required here by PIPELINE_REQUIRE_POSTGRES=1" \
        in strict.stderr
    assert "note    no redis-server: the Redis online store tests will skip" in relaxed.stdout
    strict = run(PIPELINE_REQUIRE_REDIS="1")
    assert strict.returncode == 1 and "MISSING redis-server, required here by PIPELINE_REQUIRE_REDIS=1" in strict.stderr


def test_venv_check_passes_for_this_environment():
    out = preflight("--venv", sys.prefix)
    assert out.returncode == 0, out.stderr
    assert "ok      pyspark from pyspark 4.3.0" in out.stdout


def test_venv_check_catches_two_distributions_of_one_package(tmp_path):
    """A second wheel claiming `pyspark` (as pyspark-client does) is named, with the fix."""
    site = tmp_path / "site"
    info = site / "pyspark_client-4.2.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text("Metadata-Version: 2.1\nName: pyspark-client\nVersion: 4.2.0\n")
    (info / "top_level.txt").write_text("pyspark\n")
    (info / "RECORD").write_text("")
    fake_program(tmp_path / "venv" / "bin" / "python", f'PYTHONPATH="{site}" exec "{sys.executable}" "$@"')
    out = preflight("--venv", str(tmp_path / "venv"))
    assert out.returncode == 1
    assert "CONFLICT pyspark and pyspark-client both install the 'pyspark' package" in out.stderr
    assert "fix: rm -rf .venv && make setup" in out.stderr


# --- lint ----------------------------------------------------------------------------------------


def test_ruff_selects_the_airflow_rules():
    lint = PYPROJECT["tool"]["ruff"]["lint"]
    assert "AIR" in lint["select"]
