"""Shared fixtures: an isolated state folder (lake, MLflow, Airflow home) per test."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "plugins"))

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


@pytest.fixture
def lake(state_dir):
    from jobs.lake import get_lake

    return get_lake()
