"""A real Airflow (``airflow standalone``: API server, scheduler, dag-processor, triggerer) for e2e tests."""

from __future__ import annotations

import json
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextmanager
def airflow_standalone(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Start Airflow on the state folder of ``env`` (scripts/env.sh), on a free port; stop it after.

    The process gets an ``api_url`` attribute (the API server's base URL).
    """
    with _airflow(env, log_path, "standalone") as proc:
        yield proc


@contextmanager
def airflow_api_server(env: dict[str, str], log_path: Path) -> Iterator[subprocess.Popen]:
    """Only Airflow's API server (UI, REST API, plugins) on the state of ``env``, on a free port:
    for tests of what a person sees, with no scheduler starting runs meanwhile."""
    with _airflow(env, log_path, "api-server") as proc:
        yield proc


@contextmanager
def _airflow(env: dict[str, str], log_path: Path, command: str) -> Iterator[subprocess.Popen]:
    """``airflow <command>`` on a free port, its output in ``log_path``; stopped (process group) after."""
    port = free_port()
    env = {**env, "AIRFLOW__API__PORT": str(port),
           "AIRFLOW__CORE__EXECUTION_API_SERVER_URL": f"http://127.0.0.1:{port}/execution/"}
    with open(log_path, "w") as log:
        proc = subprocess.Popen(["bash", "-c", f"source scripts/env.sh && exec airflow {command}"], cwd=ROOT,
                                env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    proc.api_url = f"http://127.0.0.1:{port}"
    try:
        yield proc
    finally:
        _stop(proc)


@contextmanager
def mlflow_ui(state_dir: str | Path, log_path: Path, args: tuple[str, ...] = (),
              env: dict[str, str] | None = None) -> Iterator[str]:
    """The MLflow UI over the local registry of a state folder (as `make up` starts it); yields its URL.

    ``args`` and ``env`` add to the server's command line and environment (``--app-name``, say).
    """
    port = free_port()
    state = Path(state_dir)
    with open(log_path, "w") as log:
        proc = subprocess.Popen(
            [str(Path(sys.executable).parent / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
             "--workers", "1",
             "--backend-store-uri", f"sqlite:///{state}/mlflow/mlflow.db",
             "--default-artifact-root", f"file://{state}/mlflow/artifacts", *args],
            env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false", "MLFLOW_DISABLE_TELEMETRY": "true",
                 **(env or {})},
            stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                urllib.request.urlopen(f"{url}/health", timeout=2)
                break
            except OSError:
                time.sleep(1)
        else:
            raise AssertionError(f"the MLflow UI did not start: {log_path.read_text()[-2000:]}")
        yield url
    finally:
        _stop(proc)


def _stop(proc: subprocess.Popen) -> None:
    try:
        os.killpg(proc.pid, signal.SIGINT)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def poll_db(db: Path, proc: subprocess.Popen, query: Callable[[sqlite3.Connection], object],
            done: Callable[[object], bool], timeout: float, every: float = 2) -> object:
    """Run ``query`` on Airflow's SQLite database until ``done(result)``, Airflow exits or time runs out."""
    deadline = time.monotonic() + timeout
    result = None
    while time.monotonic() < deadline and proc.poll() is None:
        time.sleep(every)
        try:
            with sqlite3.connect(db) as conn:
                result = query(conn)
        except sqlite3.OperationalError:
            continue  # database still being created, or locked for a moment
        if done(result):
            break
    return result


def wait_for_api(proc: subprocess.Popen, timeout: float = 180) -> None:
    """Wait until the API server answers: tasks started before it does fail to start (and wait for a retry)."""
    import urllib.request

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            urllib.request.urlopen(f"{proc.api_url}/api/v2/monitor/health", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise AssertionError(f"the Airflow API server at {proc.api_url} did not answer within {timeout:.0f} s")


class Api:
    """The Airflow REST API with the token of the standalone admin (SimpleAuthManager)."""

    def __init__(self, base: str, home: Path):
        self.base = base
        password = json.loads((home / "simple_auth_manager_passwords.json.generated").read_text())["admin"]
        self.token = self.call("POST", "/auth/token", {"username": "admin", "password": password},
                               auth=False)["access_token"]

    def call(self, method: str, path: str, body: dict | None = None, auth: bool = True) -> dict:
        request = urllib.request.Request(self.base + path, method=method,
                                         data=None if body is None else json.dumps(body).encode())
        request.add_header("Content-Type", "application/json")
        if auth:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=30) as response:
                return json.loads(response.read() or b"{}")
        except urllib.error.HTTPError as exc:
            raise AssertionError(f"{method} {path}: {exc.code} {exc.read()[:2000]!r}") from None


def rest_api(proc: subprocess.Popen, home: Path, timeout: float = 90) -> Api:
    """The REST API as the standalone admin, once the API server wrote the admin's password."""
    deadline = time.monotonic() + timeout
    while not (home / "simple_auth_manager_passwords.json.generated").exists() and time.monotonic() < deadline:
        time.sleep(1)
    return Api(proc.api_url, home)
