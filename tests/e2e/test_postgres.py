"""The PostgreSQL path: Airflow's metadata database and MLflow's backend store on a real PostgreSQL.

A throwaway cluster (``initdb`` + ``pg_ctl``) runs in a temporary folder for this module only;
Airflow is migrated onto it and DAGs run through it with ``airflow dags test``; MLflow's
tracking and model registry live in a second database of the same cluster. No mocks.

Cluster set-up:

- ``initdb`` refuses to run as root, so as root the cluster runs as the ``postgres`` system user
  (or ``nobody`` when there is none) through ``runuser``; otherwise as the current user.
- The server listens on 127.0.0.1 at a free port, with its unix socket inside the temporary
  folder (nothing shared with a system cluster). Local socket connections are trusted (only the
  owner of the folder can reach them); TCP connections need a password: the superuser
  ``pipeline`` gets a random one from ``initdb --pwfile`` and ``scram-sha-256`` is required on
  127.0.0.1. Airflow, MLflow and the jobs connect over TCP with that password in their URLs,
  as they would to a managed PostgreSQL, so credentials travel through every layer for real.
- ``fsync`` is off: the data is thrown away with the folder.

Without PostgreSQL binaries the module is skipped, unless ``PIPELINE_REQUIRE_POSTGRES=1`` (CI
sets it), where their absence is a failure: the proof cannot silently vanish.
"""

from __future__ import annotations

import glob
import json
import os
import pwd
import secrets
import shlex
import shutil
import socket
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
DAY = "2026-05-04"
ROWS = 300
MODEL = "fraud-detector"  # jobs.settings: model_name
EXPERIMENT = "fraud-detection"  # jobs.settings: experiment_name
SUPERUSER = "pipeline"

pytestmark = pytest.mark.e2e


def _postgres_binaries() -> tuple[str, str] | None:
    """``initdb`` and ``pg_ctl``: from PATH, else the newest /usr/lib/postgresql/<version>/bin."""
    initdb, pg_ctl = shutil.which("initdb"), shutil.which("pg_ctl")
    if initdb and pg_ctl:
        return initdb, pg_ctl

    def version(folder: str) -> float:
        try:
            return float(Path(folder).parent.name)
        except ValueError:
            return 0.0

    for folder in sorted(glob.glob("/usr/lib/postgresql/*/bin"), key=version, reverse=True):
        initdb, pg_ctl = os.path.join(folder, "initdb"), os.path.join(folder, "pg_ctl")
        if os.access(initdb, os.X_OK) and os.access(pg_ctl, os.X_OK):
            return initdb, pg_ctl
    return None


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_user() -> tuple[list[str], pwd.struct_passwd | None]:
    """The command prefix that runs PostgreSQL's tools, and the system user it switches to (as root)."""
    if os.geteuid() != 0:
        return [], None
    for name in ("postgres", "nobody"):
        try:
            user = pwd.getpwnam(name)
        except KeyError:
            continue
        if shutil.which("runuser"):
            return ["runuser", "-u", name, "--"], user
        if shutil.which("setpriv"):
            return ["setpriv", f"--reuid={user.pw_uid}", f"--regid={user.pw_gid}", "--clear-groups"], user
    pytest.fail("running as root, but there is no postgres/nobody user or no runuser/setpriv to drop to it")


@dataclass
class Postgres:
    port: int
    password: str

    def url(self, database: str) -> str:
        return f"postgresql+psycopg2://{SUPERUSER}:{self.password}@127.0.0.1:{self.port}/{database}"

    def connect(self, database: str):
        import psycopg2

        return psycopg2.connect(host="127.0.0.1", port=self.port, user=SUPERUSER, password=self.password,
                                dbname=database)

    def query(self, database: str, sql: str, params: tuple = ()) -> list[tuple]:
        conn = self.connect(database)
        try:
            with conn.cursor() as cur:
                cur.execute(sql, params)
                return cur.fetchall()
        finally:
            conn.close()

    def tables(self, database: str) -> set[str]:
        return {t for (t,) in self.query(
            database, "select table_name from information_schema.tables where table_schema = 'public'")}


@pytest.fixture(scope="module")
def postgres():
    """A PostgreSQL cluster of our own with the databases ``airflow`` and ``mlflow``; stopped at the end."""
    binaries = _postgres_binaries()
    if binaries is None:
        reason = "PostgreSQL binaries (initdb, pg_ctl) not found on PATH or in /usr/lib/postgresql/*/bin"
        if os.environ.get("PIPELINE_REQUIRE_POSTGRES") == "1":
            pytest.fail(f"{reason}, and PIPELINE_REQUIRE_POSTGRES=1 requires them")
        pytest.skip(reason)
    initdb, pg_ctl = binaries
    prefix, user = _cluster_user()
    # Not under pytest's tmp_path: its parents are private to the current user, and the cluster's
    # user must be able to reach the folder.
    base = Path(tempfile.mkdtemp(prefix="pipeline-pg-"))
    data, sockets, log = base / "data", base / "sock", base / "server.log"
    sockets.mkdir()
    password = secrets.token_hex(16)
    pwfile = base / "pwfile"
    pwfile.write_text(password + "\n")
    if user is not None:
        for path in (base, sockets, pwfile):
            os.chown(path, user.pw_uid, user.pw_gid)
    env = {**os.environ, "LC_ALL": "C", "LANG": "C"}

    def pg(*args: str, check: bool = True) -> subprocess.CompletedProcess:
        out = subprocess.run([*prefix, *args], cwd=base, env=env, capture_output=True, text=True, timeout=120)
        if check and out.returncode != 0:
            server_log = log.read_text()[-3000:] if log.exists() else ""
            raise AssertionError(f"{' '.join(args)} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}\n"
                                 f"{server_log}")
        return out

    port = _free_port()
    started = False
    try:
        pg(initdb, "-D", str(data), "-U", SUPERUSER, f"--pwfile={pwfile}", "--auth-local=trust",
           "--auth-host=scram-sha-256", "--encoding=UTF8", "--locale=C", "--no-sync")
        options = (f"-c listen_addresses=127.0.0.1 -p {port} -k {sockets} "
                   "-c fsync=off -c synchronous_commit=off -c full_page_writes=off")
        started = True
        pg(pg_ctl, "-D", str(data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        server = Postgres(port=port, password=password)
        conn = server.connect("postgres")
        conn.autocommit = True
        with conn.cursor() as cur:
            cur.execute("create database airflow")
            cur.execute("create database mlflow")
        conn.close()
        yield server
    finally:
        if started:
            pg(pg_ctl, "-D", str(data), "-m", "fast", "-w", "-t", "60", "stop", check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="module")
def env(postgres, tmp_path_factory):
    """The environment of the embedded default, with both databases on PostgreSQL; Airflow migrated."""
    state = tmp_path_factory.mktemp("pg-state")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("AIRFLOW", "PIPELINE_"))}
    env.update(PIPELINE_STATE_DIR=str(state), PATH=f"{Path(sys.executable).parent}:{env['PATH']}",
               AIRFLOW__DATABASE__SQL_ALCHEMY_CONN=postgres.url("airflow"),
               PIPELINE_MLFLOW_TRACKING_URI=postgres.url("mlflow"))
    sh(env, "airflow_init")
    return env


def sh(env, command: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run a command in the project's environment; scripts/env.sh sets SQLite, so PostgreSQL is set after it."""
    conn = shlex.quote(env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"])
    script = f"source scripts/env.sh && export AIRFLOW__DATABASE__SQL_ALCHEMY_CONN={conn} && {command}"
    out = subprocess.run(["bash", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and out.returncode != 0:
        raise AssertionError(f"{command} failed ({out.returncode}):\n{out.stdout[-4000:]}\n{out.stderr[-4000:]}")
    return out


def sqlite_files(folder: Path) -> list[Path]:
    """Every SQLite database file under a folder, whatever its name (by the file header)."""
    found = []
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as fh:
                if fh.read(16) == b"SQLite format 3\x00":
                    found.append(path)
    return found


def runs(postgres, dag_id: str) -> list[tuple[str, str]]:
    return postgres.query("airflow", "select run_id, state from dag_run where dag_id = %s", (dag_id,))


def task_states(postgres, dag_id: str) -> dict[str, str]:
    return dict(postgres.query("airflow", "select task_id, state from task_instance where dag_id = %s", (dag_id,)))


def asset_extras(postgres, asset_name: str) -> list[dict]:
    rows = postgres.query("airflow", "select e.extra from asset_event e join asset a on a.id = e.asset_id "
                                     "where a.name = %s order by e.id", (asset_name,))
    return [extra if isinstance(extra, dict) else json.loads(extra) for (extra,) in rows]


def test_airflow_metadata_is_migrated_onto_postgres(postgres, env):
    tables = postgres.tables("airflow")
    assert {"alembic_version", "dag_run", "task_instance", "asset_event", "slot_pool"} <= tables
    ((revision,),) = postgres.query("airflow", "select version_num from alembic_version")
    assert revision
    pools = dict(postgres.query("airflow", "select pool, slots from slot_pool"))
    assert pools.get("model_promotion") == 1
    assert sqlite_files(Path(env["PIPELINE_STATE_DIR"]) / "airflow") == []


def test_ingestion_runs_through_airflow_on_postgres(postgres, env):
    sh(env, f"python -m jobs generate --date {DAY} --days 1 --rows-per-day {ROWS}")
    out = sh(env, f"airflow dags test ingest_transactions {DAY}")
    assert [state for _, state in runs(postgres, "ingest_transactions")] == ["success"], out.stdout[-3000:]
    assert task_states(postgres, "ingest_transactions") == {
        "wait_for_raw": "success", "ingest": "success", "validate": "success", "announce_silver": "success",
        "stop_on_rejections": "success"}
    (event,) = asset_extras(postgres, "silver_transactions")
    assert event["rows_silver"] == ROWS
    keys = postgres.query("airflow", "select e.partition_key from asset_event e join asset a on a.id = e.asset_id "
                                     "where a.name = 'silver_transactions'")
    assert keys == [(DAY,)]  # the date that landed, as the event's partition key
    from deltalake import DeltaTable

    silver = DeltaTable(str(Path(env["PIPELINE_STATE_DIR"]) / "lake" / "silver" / "transactions"))
    assert len(silver.to_pandas(filters=[("date", "=", DAY)])) == ROWS


def test_rollback_moves_mlflow_aliases_stored_in_postgres(postgres, env):
    from mlflow import MlflowClient

    state = Path(env["PIPELINE_STATE_DIR"])
    uri = env["PIPELINE_MLFLOW_TRACKING_URI"]
    client = MlflowClient(tracking_uri=uri, registry_uri=uri)
    # Artifacts in the state folder, as jobs.storage.registry does for its default store (never the cwd).
    experiment_id = client.create_experiment(EXPERIMENT, artifact_location=(state / "mlflow-artifacts").as_uri())
    run = client.create_run(experiment_id, run_name="postgres-proof")
    client.log_text(run.info.run_id, "flavors: {}\n", "model/MLmodel")
    client.log_metric(run.info.run_id, "pr_auc", 0.5)
    client.set_terminated(run.info.run_id)
    client.create_registered_model(MODEL)
    source = f"{run.info.artifact_uri}/model"
    v1 = client.create_model_version(MODEL, source, run_id=run.info.run_id)
    v2 = client.create_model_version(MODEL, source, run_id=run.info.run_id)
    assert (str(v1.version), str(v2.version)) == ("1", "2")
    client.set_registered_model_alias(MODEL, "champion", "2")
    client.set_registered_model_alias(MODEL, "previous-champion", "1")

    conf = shlex.quote(json.dumps({"reason": "proof of the PostgreSQL path"}))
    out = sh(env, f"airflow dags test rollback_model -c {conf}")
    assert "rolled back @champion from v2 to v1" in out.stdout + out.stderr

    reader = MlflowClient(tracking_uri=uri, registry_uri=uri)
    assert str(reader.get_model_version_by_alias(MODEL, "champion").version) == "1"
    assert str(reader.get_model_version_by_alias(MODEL, "previous-champion").version) == "2"
    assert {"registered_models", "model_versions", "registered_model_aliases", "runs", "experiments",
            "alembic_version"} <= postgres.tables("mlflow")
    aliases = dict(postgres.query("mlflow", "select alias, version from registered_model_aliases where name = %s",
                                  (MODEL,)))
    assert aliases == {"champion": 1, "previous-champion": 2}

    assert [state for _, state in runs(postgres, "rollback_model")] == ["success"]
    # No day was scored by the replaced version here: nothing to re-score.
    assert task_states(postgres, "rollback_model") == {"current_champion": "success", "rollback": "success",
                                                       "stale_predictions": "skipped", "rescore": "skipped"}
    # The reason and the Airflow run are recorded on both versions (restored and replaced).
    restored, replaced = reader.get_model_version(MODEL, "1").tags, reader.get_model_version(MODEL, "2").tags
    assert restored["rollback_reason"] == replaced["rolled_back_reason"] == "proof of the PostgreSQL path"
    assert restored["rollback_airflow_run_id"] == runs(postgres, "rollback_model")[0][0]
    # A retry of the same rollback (expected champion v2, now v1) changes nothing: never a second swap.
    again = sh(env, "python -m jobs rollback --expected-version 2 --reason retry")
    assert '"changed": false' in again.stdout
    assert str(reader.get_model_version_by_alias(MODEL, "champion").version) == "1"
    (event,) = asset_extras(postgres, "champion_model")
    assert event["champion_version"] == "1" and event["previous_champion_version"] == "2"
    # Neither Airflow nor MLflow fell back to a SQLite file anywhere in the state folder.
    assert sqlite_files(state) == []
