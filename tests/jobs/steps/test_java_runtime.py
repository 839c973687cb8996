"""A host without Java 17+ gets a clear, non-retried job error, not Spark's gateway traceback."""

import logging
import os
import subprocess
import sys

import pytest
from pipeline.execution.runners import JobFailed, JobSpec, get_runner

DAY = "2026-03-02"


@pytest.fixture
def silver_day(state_dir):
    """One validated day in silver, so that the features job really reaches Spark."""
    for args in (["generate", "--date", DAY, "--rows-per-day", "40"],
                 ["ingest", "--date", DAY, "--run-id", "r1"],
                 ["validate", "--date", DAY, "--run-id", "r1"]):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
    return state_dir


def features_with(java_home, monkeypatch):
    monkeypatch.setenv("JAVA_HOME", str(java_home))
    with pytest.raises(JobFailed) as err:
        get_runner("local").run(JobSpec("features", ["--date", DAY, "--run-id", "r1"]), logging.getLogger("test"))
    return err.value


def test_no_java_fails_at_once_with_what_to_install(silver_day, tmp_path, monkeypatch):
    missing = tmp_path / "no-jdk"
    failed = features_with(missing, monkeypatch)
    assert failed.exit_code == 5 and not failed.retryable
    message = str(failed)
    assert f"Spark needs Java 17+, and no java was found on JAVA_HOME={missing}" in message
    assert "apt-get install openjdk-17-jre-headless" in message
    assert "Traceback" not in message and "Py4J" not in message


def test_an_old_java_is_named_with_its_version(silver_day, tmp_path, monkeypatch):
    old = tmp_path / "jdk8"
    (old / "bin").mkdir(parents=True)
    java = old / "bin" / "java"
    java.write_text('#!/bin/sh\necho \'java version "1.8.0_401"\' >&2\n')
    java.chmod(0o755)
    failed = features_with(old, monkeypatch)
    assert failed.exit_code == 5 and not failed.retryable
    assert f'{java} (from JAVA_HOME={old}) is java version "1.8.0_401"' in str(failed)


def test_the_cli_exits_5_without_a_traceback(silver_day, tmp_path):
    env = {**os.environ, "JAVA_HOME": str(tmp_path / "none")}
    out = subprocess.run([sys.executable, "-m", "jobs", "features", "--date", DAY, "--run-id", "r1"],
                         capture_output=True, text=True, env=env)
    assert out.returncode == 5
    assert "Spark needs Java 17+" in out.stderr and "Traceback" not in out.stderr
