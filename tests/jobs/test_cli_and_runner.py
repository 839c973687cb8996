"""The job CLI contract and the local runner that Airflow tasks use."""

import logging
import subprocess
import sys

import pytest
from pipeline.execution.runners import JobFailed, JobSpec, get_runner

from jobs.shared import layout
from jobs.storage import tables

STEPS = ["generate", "ingest", "validate", "features", "train", "evaluate", "promote", "score", "drift"]


def jobs_cli(*args, env=None):
    return subprocess.run([sys.executable, "-m", "jobs", *args], capture_output=True, text=True, env=env)


def test_help_lists_every_step():
    out = jobs_cli("--help")
    assert out.returncode == 0
    for step in STEPS:
        assert step in out.stdout


def test_bad_date_is_a_clear_error_not_a_traceback(state_dir):
    out = jobs_cli("ingest", "--date", "21/11/2026", "--run-id", "r")
    assert out.returncode == 1
    assert "ERROR: --date '21/11/2026' is not a YYYY-MM-DD date" in out.stderr
    assert "Traceback" not in out.stderr


def test_local_runner_returns_the_job_result(state_dir, lake):
    log = logging.getLogger("test")
    result = get_runner("local").run(JobSpec("generate", ["--date", "2026-02-03", "--rows-per-day", "50"]), log)
    assert result["rows"] == 50
    assert lake.list("raw/transactions") == ["raw/transactions/date=2026-02-03/transactions-2026-02-03.csv"]


def test_local_runner_fails_with_the_jobs_own_message(state_dir):
    with pytest.raises(JobFailed) as err:
        get_runner("local").run(JobSpec("score", ["--date", "2026-02-03"]), logging.getLogger("test"))
    # Missing input (exit 4) is not retried: an upstream step must run first.
    assert err.value.exit_code == 4 and not err.value.retryable
    assert "no @champion for fraud-detector: train and promote a model first" in str(err.value)


def test_local_runner_retries_other_job_errors(state_dir):
    with pytest.raises(JobFailed) as err:
        get_runner("local").run(JobSpec("score", ["--date", "2026-02-31"]), logging.getLogger("test"))
    assert err.value.exit_code == 1 and err.value.retryable
    assert "'2026-02-31' is not a YYYY-MM-DD date" in str(err.value)


def test_unknown_runner_is_refused():
    with pytest.raises(ValueError, match="not a known runner"):
        get_runner("mainframe")


def test_ledger_lists_what_was_ingested(state_dir):
    for args in (["generate", "--date", "2026-02-03", "--rows-per-day", "40"],
                 ["ingest", "--date", "2026-02-03", "--run-id", "r1"],
                 ["validate", "--date", "2026-02-03", "--run-id", "r1"]):
        assert jobs_cli(*args).returncode == 0
    out = jobs_cli("ledger")
    assert out.returncode == 0
    assert "r1 / raw/transactions/date=2026-02-03/transactions-2026-02-03.csv" in out.stdout
    assert '"rows_silver": 40' in out.stdout.splitlines()[-1]
    assert jobs_cli("ledger", "--status", "rejected_file").stdout.count("\n") == 2  # header + result line


def test_quarantine_report_and_replay_of_a_fixed_file(state_dir, lake, tmp_path):
    from jobs.devkit.generate import generate_day

    day = generate_day("2026-02-04", 30)
    bad = day.copy()
    bad["currency"] = "XXX"
    lake.write_bytes("raw/transactions/date=2026-02-04/t.csv", bad.to_csv(index=False).encode())
    assert jobs_cli("ingest", "--date", "2026-02-04", "--run-id", "r1").returncode == 0
    assert jobs_cli("validate", "--date", "2026-02-04", "--run-id", "r1").returncode == 3
    report = jobs_cli("quarantine")
    assert "[r1]      30  currency is one we settle in" in report.stdout
    fixed = tmp_path / "t.csv"
    fixed.write_text(day.to_csv(index=False))
    out = jobs_cli("replay", "--date", "2026-02-04", "--file", str(fixed))
    assert out.returncode == 0 and "t-replay-" in out.stdout
    assert jobs_cli("ingest", "--date", "2026-02-04", "--run-id", "r2").returncode == 0
    assert jobs_cli("validate", "--date", "2026-02-04", "--run-id", "r2").returncode == 0
    assert len(tables.read(lake, layout.SILVER_TRANSACTIONS, dates=["2026-02-04"])) == 30
    assert lake.exists("raw/transactions/date=2026-02-04/t.csv")  # the original delivery is kept
