"""MLflow behind authentication, promotion by its own identity (services/mlflow_auth.py), for real.

A real ``mlflow server --app-name fraud-auth`` (MLflow's basic-auth app plus the alias rule) runs
on loopback; ``python -m jobs mlflow-access`` creates the two identities as an admin; the jobs then
run through the local runner as they would in the compose stack: every job signs in as
``pipeline``, and the runner gives the promotion identity (``PIPELINE_PROMOTION_*``) to the
promote job only, which is the one identity that may move the champion alias.
"""

from __future__ import annotations

import base64
import json
import logging
import os
import subprocess
import sys
import urllib.error
import urllib.request

import pytest
from pipeline.execution.runners import JobFailed, JobSpec, forwarded_env, get_runner
from standalone import mlflow_ui

END = "2026-05-10"
ADMIN = ("admin", "admin-password-for-tests")
PIPELINE = ("pipeline", "pipeline-password-for-tests")
PROMOTER = ("promoter", "promoter-password-for-tests")


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """The authenticated tracking server, its identities created; yields (url, state folder)."""
    state = tmp_path_factory.mktemp("mlflow-auth")
    (state / "mlflow").mkdir()
    ini = state / "auth.ini"
    ini.write_text("[mlflow]\ndefault_permission = READ\n"
                   f"database_uri = sqlite:///{state}/mlflow/auth.db\nadmin_username = {ADMIN[0]}\n"
                   "auth_cache_ttl_seconds = 30\n")
    env = {"MLFLOW_AUTH_CONFIG_PATH": str(ini), "MLFLOW_AUTH_ADMIN_PASSWORD": ADMIN[1],
           "MLFLOW_FLASK_SERVER_SECRET_KEY": "a-static-secret-for-tests"}
    with mlflow_ui(state, state / "mlflow-server.log", ("--app-name", "fraud-auth"), env) as url:
        yield url, state


def call(url: str, path: str, user: tuple[str, str] | None = None, body: dict | None = None,
         method: str | None = None) -> int:
    request = urllib.request.Request(url + path, data=json.dumps(body).encode() if body else None,
                                     method=method, headers={"Content-Type": "application/json"})
    if user:
        request.add_header("Authorization", "Basic " + base64.b64encode(":".join(user).encode()).decode())
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status
    except urllib.error.HTTPError as exc:
        return exc.code


def jobs_env(url: str, state, **extra) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PIPELINE_", "MLFLOW_TRACKING_"))}
    env.update(PIPELINE_STATE_DIR=str(state), PIPELINE_MLFLOW_TRACKING_URI=url, MLFLOW_DISABLE_TELEMETRY="true",
               TQDM_DISABLE="1", **extra)
    return env


def test_nobody_anonymous_and_no_wrong_password(server):
    url, _ = server
    search = "/api/2.0/mlflow/experiments/search?max_results=1"
    assert call(url, search) == 401
    assert call(url, search, ("admin", "not-the-password")) == 401
    assert call(url, search, ADMIN) == 200


def test_mlflow_access_creates_the_identities_idempotently(server):
    url, state = server
    env = jobs_env(url, state, MLFLOW_TRACKING_USERNAME=ADMIN[0], MLFLOW_TRACKING_PASSWORD=ADMIN[1],
                   MLFLOW_PIPELINE_PASSWORD=PIPELINE[1], MLFLOW_PROMOTER_PASSWORD=PROMOTER[1])
    for attempt in ("created", "password updated"):
        out = subprocess.run([sys.executable, "-m", "jobs", "mlflow-access"], env=env, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
        assert f'"pipeline": "{attempt}"' in out.stdout and f'"promoter": "{attempt}"' in out.stdout
        assert PIPELINE[1] not in out.stdout + out.stderr and PROMOTER[1] not in out.stdout + out.stderr
    # A non-admin cannot do it.
    env.update(MLFLOW_TRACKING_USERNAME=PIPELINE[0], MLFLOW_TRACKING_PASSWORD=PIPELINE[1])
    out = subprocess.run([sys.executable, "-m", "jobs", "mlflow-access"], env=env, capture_output=True, text=True)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "mlflow-access runs as an admin" in out.stderr or "is not an admin" in out.stderr, out.stderr[-1000:]


def test_only_the_promotion_identity_moves_the_champion(server, monkeypatch):
    url, state = server
    base = jobs_env(url, state, MLFLOW_TRACKING_USERNAME=PIPELINE[0], MLFLOW_TRACKING_PASSWORD=PIPELINE[1],
                    PIPELINE_HOLDOUT_DAYS="4", PIPELINE_MAX_EPOCHS="12", PIPELINE_BOOTSTRAP_RESAMPLES="200")
    for args in (["generate", "--date", END, "--days", "12", "--rows-per-day", "700"],
                 ["ingest", "--date", END, "--run-id", "r1"], ["validate", "--date", END, "--run-id", "r1"],
                 ["features", "--start", "2026-04-29", "--date", END]):
        out = subprocess.run([sys.executable, "-m", "jobs", *args], env=base, capture_output=True, text=True)
        assert out.returncode == 0, out.stderr[-2000:]
    # The worker's environment, as in the compose stack: both identities; the runner decides who gets which.
    for key in [k for k in os.environ if k.startswith(("PIPELINE_", "MLFLOW_TRACKING_"))]:
        monkeypatch.delenv(key)
    for key, value in {**base, "PIPELINE_PROMOTION_MLFLOW_USERNAME": PROMOTER[0],
                       "PIPELINE_PROMOTION_MLFLOW_PASSWORD": PROMOTER[1]}.items():
        monkeypatch.setenv(key, value)
    runner, log = get_runner("local"), logging.getLogger("test")
    version = runner.run(JobSpec("train", ["--date", END]), log)["model_version"]
    assert runner.run(JobSpec("evaluate", ["--date", END, "--model-version", version]), log)["passed"]

    # Without the promotion identity, the jobs' own is refused by the server.
    monkeypatch.delenv("PIPELINE_PROMOTION_MLFLOW_USERNAME")
    with pytest.raises(JobFailed) as refused:
        runner.run(JobSpec("promote", ["--model-version", version]), log)
    assert "may not change model aliases: promotion is for promoter (and admins) only" in str(refused.value)

    monkeypatch.setenv("PIPELINE_PROMOTION_MLFLOW_USERNAME", PROMOTER[0])
    promoted = runner.run(JobSpec("promote", ["--model-version", version]), log)
    assert promoted["champion_version"] == version
    alias = "/api/2.0/mlflow/registered-models/alias?name=fraud-detector&alias=champion"
    assert call(url, alias, PIPELINE) == 200  # everyone reads
    # The jobs' identity still cannot move or delete it, even though it created the model (MANAGE).
    assert call(url, "/api/2.0/mlflow/registered-models/alias", PIPELINE, method="POST",
                body={"name": "fraud-detector", "alias": "champion", "version": version}) == 403
    assert call(url, "/api/2.0/mlflow/registered-models/alias", PIPELINE, method="DELETE",
                body={"name": "fraud-detector", "alias": "champion"}) == 403
    assert call(url, alias, PIPELINE) == 200  # still there
    # Scoring, as the jobs' identity, uses the champion the promoter set.
    assert runner.run(JobSpec("score", ["--date", END]), log)["model_version"] == version


def test_the_promotion_identity_reaches_promote_and_rollback_only():
    worker = {"PIPELINE_LAKE_URI": "s3://lake/", "MLFLOW_TRACKING_USERNAME": "pipeline",
              "MLFLOW_TRACKING_PASSWORD": "p1", "PIPELINE_PROMOTION_MLFLOW_USERNAME": "promoter",
              "PIPELINE_PROMOTION_MLFLOW_PASSWORD": "p2"}
    for step in ("ingest", "validate", "features", "train", "evaluate", "score", "drift", "decision", None):
        plain, secret = forwarded_env(worker, step=step)
        assert not any(k.startswith("PIPELINE_PROMOTION_") for k in {**plain, **secret}), step
        assert secret["MLFLOW_TRACKING_PASSWORD"] == "p1"
    for step in ("promote", "rollback"):
        plain, secret = forwarded_env(worker, step=step)
        assert plain["PIPELINE_PROMOTION_MLFLOW_USERNAME"] == "promoter"
        assert secret["PIPELINE_PROMOTION_MLFLOW_PASSWORD"] == "p2"  # a secret: private environment only
