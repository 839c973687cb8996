"""Shared fixtures: an isolated state folder (lake, MLflow, Airflow home) per test."""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))
sys.path.insert(0, str(ROOT / "tests"))  # shared test helpers (faultproxy)

# Airflow reads its configuration at import: point it at a throwaway home before any test imports it.
_AIRFLOW_HOME = Path(os.environ.get("PYTEST_AIRFLOW_HOME", "/tmp/pytest-airflow-home-" + str(os.getpid())))
os.environ.setdefault("AIRFLOW_HOME", str(_AIRFLOW_HOME))
os.environ.setdefault("AIRFLOW__CORE__DAGS_FOLDER", str(ROOT / "dags"))
os.environ.setdefault("AIRFLOW__CORE__PLUGINS_FOLDER", str(ROOT / "plugins"))
os.environ.setdefault("AIRFLOW__CORE__LOAD_EXAMPLES", "False")
os.environ.setdefault("AIRFLOW__DATABASE__SQL_ALCHEMY_CONN", f"sqlite:///{_AIRFLOW_HOME}/airflow.db")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
os.environ.setdefault("TQDM_DISABLE", "1")
# py4j logs from a destructor at interpreter exit, after pytest closed the streams.
logging.getLogger("py4j").setLevel(logging.WARNING)


# The validate step runs its contract in a child forked from the job's process (jobs/steps/validate.py
# _in_child), which imports Great Expectations there: about 5 s a run. A job runs once per process;
# tests run validate in-process hundreds of times, so the test process imports it once and every
# forked child starts with it (Great Expectations starts no thread at import: safe to fork).
import great_expectations  # noqa: E402, F401

# MLflow's set_tracking_uri / set_registry_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI
# "so that subprocesses inherit them": a job run in-process by one test would otherwise point the
# registry of every later test's clients and subprocesses at its own, deleted, store.
_MLFLOW_PROCESS_ENV = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI", "MLFLOW_TRACKING_USERNAME",
                       "MLFLOW_TRACKING_PASSWORD")


@pytest.fixture(autouse=True)
def _mlflow_environment_stays_the_tests():
    saved = {key: os.environ.get(key) for key in _MLFLOW_PROCESS_ENV}
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture
def state_dir(tmp_path, monkeypatch) -> Path:
    """A fresh PIPELINE_STATE_DIR, with settings re-read from the environment."""
    from jobs.settings import get_settings

    state = tmp_path / "state"
    state.mkdir()
    monkeypatch.setenv("PIPELINE_STATE_DIR", str(state))
    monkeypatch.delenv("PIPELINE_LAKE_URI", raising=False)
    monkeypatch.delenv("PIPELINE_MLFLOW_TRACKING_URI", raising=False)
    get_settings.cache_clear()
    yield state
    get_settings.cache_clear()


@pytest.fixture(scope="session")
def s3_endpoint():
    """A local S3-compatible server (moto's server mode) over real HTTP on 127.0.0.1."""
    import socket
    import subprocess
    import time
    import urllib.request

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    server = Path(sys.executable).parent / "moto_server"
    proc = subprocess.Popen([str(server), "-H", "127.0.0.1", "-p", str(port)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(100):
        try:
            urllib.request.urlopen(url, timeout=1)
            break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise RuntimeError("moto_server did not start")
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_env(s3_endpoint, monkeypatch):
    """AWS settings pointing boto3 at the local S3 server, and a fresh bucket."""
    import uuid

    import boto3

    monkeypatch.setenv("AWS_ENDPOINT_URL", s3_endpoint)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3").create_bucket(Bucket=bucket)
    return bucket


@pytest.fixture(params=["file", "s3"])
def lake(request, state_dir, monkeypatch):
    """The same tests against a local-folder lake and an S3 lake (moto server over HTTP)."""
    from jobs.settings import get_settings
    from jobs.storage.lake import get_lake

    if request.param == "s3":
        bucket = request.getfixturevalue("s3_env")
        monkeypatch.setenv("PIPELINE_LAKE_URI", f"s3://{bucket}/lake")
        get_settings.cache_clear()
    return get_lake()


@pytest.fixture
def faulty_s3(s3_endpoint, state_dir, monkeypatch):
    """An S3 lake reached through a fault-injecting proxy (tests/faultproxy.py) in front of moto.

    Yields ``(lake, proxy)``; ``proxy.fail(method, path_regex, 503 | 500 | 403 | "reset")`` makes
    matching requests fail over real HTTP. Client retries are kept short so faults surface fast.
    """
    import uuid

    import boto3
    from faultproxy import FaultProxy

    from jobs.settings import get_settings
    from jobs.storage.lake import get_lake

    for key, value in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                       "AWS_DEFAULT_REGION": "us-east-1", "AWS_MAX_ATTEMPTS": "2", "AWS_RETRY_MODE": "standard",
                       "PIPELINE_STORAGE_MAX_RETRIES": "1", "PIPELINE_STORAGE_RETRY_TIMEOUT_S": "5"}.items():
        monkeypatch.setenv(key, value)
    bucket = f"lake-{uuid.uuid4().hex[:12]}"
    boto3.client("s3", endpoint_url=s3_endpoint).create_bucket(Bucket=bucket)
    with FaultProxy(s3_endpoint) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        monkeypatch.setenv("PIPELINE_LAKE_URI", f"s3://{bucket}/lake")
        get_settings.cache_clear()
        yield get_lake(), proxy
    get_settings.cache_clear()
