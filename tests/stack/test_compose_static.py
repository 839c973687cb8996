"""Static checks of the docker-compose stack (no Docker engine needed).

The file must hang together: services, networks and volumes it names exist; every variable it
interpolates has a placeholder in .env.example and no secret is written inline; only 127.0.0.1 is
published; every long-running service has a healthcheck; every PIPELINE_* variable is one the code
reads; and the Docker runner's settings agree with the network, volume and images the file defines.
The job images themselves are checked by test_images.py.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import yaml
from pipeline.settings import AirflowSettings

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "docker-compose.yaml"
ENV_EXAMPLE = ROOT / ".env.example"
WORKER = "airflow-scheduler"  # LocalExecutor: the scheduler runs the tasks, so the Docker runner
SECRET_NAME = re.compile(r"PASSWORD|SECRET|TOKEN|FERNET|ACCESS_KEY|PRIVATE_KEY|CREDENTIAL|API_KEY|DEPLOY_KEY|"
                         r"METRICS_KEY|SIGNING_KEY")
REFERENCE = re.compile(r"\$\{[A-Z_][A-Z0-9_]*(:?-[^}]*)?\}")
REQUIRED = re.compile(r"\$\{([A-Z_][A-Z0-9_]*):\?[^}]*\}")  # ${NAME:?message}: compose refuses to start without it
# Interpolated by compose: $VAR or ${VAR...}, but not $$VAR (a literal dollar for the container's shell).
INTERPOLATED = re.compile(r"(?<!\$)(?:\$\$)*\$\{?([A-Za-z_][A-Za-z0-9_]*)")


@pytest.fixture(scope="module")
def compose():
    return yaml.safe_load(COMPOSE.read_text())


@pytest.fixture(scope="module")
def services(compose):
    return compose["services"]


def environment(service: dict) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {key: "" if value is None else str(value) for key, value in env.items()}


def example_variables() -> dict[str, str]:
    pairs = (line.split("=", 1) for line in ENV_EXAMPLE.read_text().splitlines()
             if "=" in line and not line.lstrip().startswith("#"))
    return {key.strip(): value.strip() for key, value in pairs}


def interpolated(text: str) -> str:
    """``text`` with every ${...} replaced by a plain value, as compose hands it to the container."""
    return re.sub(r"\$\{[^}]*\}", "value", text)


def strings(node):
    """Every string in a YAML tree (values and keys of mappings, items of lists)."""
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for key, value in node.items():
            yield str(key)
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def networks_of(service: dict) -> set[str]:
    nets = service.get("networks") or ["default"]
    return set(nets)


def volume_mounts(service: dict) -> list[tuple[str, str]]:
    mounts = []
    for volume in service.get("volumes", []):
        if isinstance(volume, dict):
            mounts.append((volume.get("source", ""), volume["target"]))
        else:
            source, target = volume.split(":")[:2]
            mounts.append((source, target))
    return mounts


def is_one_shot(name: str, services: dict) -> bool:
    """Runs to completion: restart "no", and either awaited by another service or build-only (a profile)."""
    if str(services[name].get("restart", "no")) != "no":
        return False
    awaited = any(
        isinstance(svc.get("depends_on"), dict)
        and (svc["depends_on"].get(name) or {}).get("condition") == "service_completed_successfully"
        for svc in services.values()
    )
    return awaited or bool(services[name].get("profiles"))


# --- the file hangs together ---------------------------------------------------------------------------


def test_services_depend_only_on_defined_services(services):
    for name, svc in services.items():
        for dep in svc.get("depends_on") or {}:
            assert dep in services, f"{name} depends on undefined {dep}"
            if not svc.get("profiles"):
                assert not services[dep].get("profiles"), f"{name} (always on) depends on {dep}, behind a profile"


def test_networks_and_named_volumes_are_declared(compose, services):
    declared_networks = set(compose.get("networks") or {}) | {"default"}
    declared_volumes = set(compose.get("volumes") or {})
    for name, svc in services.items():
        assert networks_of(svc) <= declared_networks, f"{name}: undeclared network"
        for source, _ in volume_mounts(svc):
            if source and not source.startswith((".", "/")):
                assert source in declared_volumes, f"{name} mounts undeclared volume {source}"


def test_bind_mounts_exist_in_the_repo(services):
    for name, svc in services.items():
        for source, _ in volume_mounts(svc):
            if source.startswith("."):
                assert (ROOT / source).exists(), f"{name} mounts missing {source}"


def test_every_variable_has_an_example_and_every_example_is_used():
    text = COMPOSE.read_text()
    example = example_variables()
    used = set(INTERPOLATED.findall(text))
    assert used <= set(example), f"not in .env.example: {sorted(used - set(example))}"
    assert set(example) <= used, f"in .env.example but unused: {sorted(set(example) - used)}"
    assert example.get("PIPELINE_JOB_GPUS") == "false", "the example stack runs without GPUs"


def test_no_secret_is_written_inline_and_every_secret_is_required(compose, services):
    for name, svc in services.items():
        for key, value in environment(svc).items():
            if SECRET_NAME.search(key) and not key.endswith("_ACCESS_KEY_ID"):  # a key id names a user
                assert REQUIRED.fullmatch(value), f"{name}: {key} must be ${{NAME:?...}} from .env, not {value!r}"
    for value in strings(compose):
        for password in re.findall(r"://[^/@:\s]+:([^@/\s]+)@", value):
            # A required variable, or the container's own variable ($$NAME: its shell expands it at start).
            assert REQUIRED.fullmatch(password) or re.fullmatch(r"\$\$[A-Z_][A-Z0-9_]*", password), \
                f"a password in {value!r} must be a required variable"


def test_the_secrets_are_the_generators_and_the_example_holds_none():
    """scripts/make_env.py generates and checks exactly the secrets the file requires; .env.example has no value."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_env", ROOT / "scripts" / "make_env.py")
    make_env = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(make_env)
    required = set(REQUIRED.findall(COMPOSE.read_text()))
    assert required == set(make_env.SECRETS)
    example = example_variables()
    for key in make_env.SECRETS:
        assert example[key] == "", f".env.example must leave {key} empty (generated by `make env`)"
    assert not [v for v in example.values() if re.search(r"change-me|generate|replace", v, re.I)]


def test_ports_bind_to_localhost_only(services):
    for name, svc in services.items():
        for port in svc.get("ports", []):
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name} exposes {port} beyond localhost"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name} exposes {port} beyond localhost"


def test_long_running_services_have_healthchecks(services):
    for name, svc in services.items():
        if is_one_shot(name, services):
            continue
        check = svc.get("healthcheck") or {}
        assert check.get("test") and not check.get("disable"), f"{name} runs for good but has no healthcheck"


def test_images_are_pinned(services):
    for name, svc in services.items():
        if "build" in svc:
            continue
        image = svc["image"]
        assert ":" in image.rsplit("/", 1)[-1] and not image.endswith(":latest"), f"{name}: pin {image} by tag"


# --- PIPELINE_* variables are ones the code reads -------------------------------------------------------


def test_pipeline_variables_are_settings_or_runner_variables(services):
    # The two settings objects, the jobs' and the Airflow side's, are everything that reads PIPELINE_*.
    known = {f"PIPELINE_{field.upper()}" for cls in (Settings, AirflowSettings) for field in cls.model_fields}
    for name, svc in services.items():
        unknown = {key for key in environment(svc) if key.startswith("PIPELINE_")} - known
        assert not unknown, f"{name} sets variables nothing reads (a typo?): {sorted(unknown)}"


def test_worker_gets_what_the_stack_must_provide(services):
    env = environment(services[WORKER])
    for key in ("PIPELINE_LAKE_URI", "PIPELINE_MLFLOW_TRACKING_URI", "PIPELINE_STATE_DIR", "PIPELINE_DOCKER_URL",
                "PIPELINE_DOCKER_NETWORK", "PIPELINE_DOCKER_MOUNTS", "PIPELINE_JOB_IMAGE", "PIPELINE_JOB_IMAGE_GPU",
                "AIRFLOW_CONN_LAKE_S3", "AWS_ENDPOINT_URL", "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"):
        assert env.get(key), f"{WORKER} lacks {key}"
    assert env["PIPELINE_JOB_RUNNER"] == "docker"
    assert env["PIPELINE_JOB_GPUS"] == "${PIPELINE_JOB_GPUS:-false}"
    assert env["PIPELINE_LAKE_URI"].startswith("s3://")
    assert env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"].startswith("postgresql")
    assert env["AIRFLOW__CORE__EXECUTOR"] == "LocalExecutor"


def test_airflow_services_share_one_configuration(services):
    airflow = {name: svc for name, svc in services.items() if name.startswith("airflow-")}
    assert {"airflow-init", "airflow-apiserver", "airflow-scheduler", "airflow-dag-processor",
            "airflow-triggerer"} <= set(airflow)
    scoped = ("PIPELINE_PROMOTION_MLFLOW_USERNAME", "PIPELINE_PROMOTION_MLFLOW_PASSWORD", "PIPELINE_GATE_SIGNING_KEY",
              "PIPELINE_SERVING_DEPLOY_KEY", "PIPELINE_SERVING_STORE_URL")
    worker = environment(airflow[WORKER])
    assert all(worker.get(k) for k in scoped), "the worker hands the step-scoped secrets to their jobs"
    reference = {k: v for k, v in worker.items() if k not in scoped}
    for name, svc in airflow.items():
        env = environment(svc)
        if name == "airflow-init":  # also creates the first Admin: its credentials go there only
            env = {k: v for k, v in env.items() if k not in ("AIRFLOW_ADMIN_USER", "AIRFLOW_ADMIN_PASSWORD")}
        if name != WORKER:  # the promoter's password and the gate's key: on the worker alone
            assert not set(scoped) & set(env), f"{name} holds a step-scoped secret"
            assert env == reference, f"{name} has another environment than {WORKER}"
        assert svc["image"] == reference["PIPELINE_JOB_IMAGE"], f"{name} must run the job image"


def test_urls_name_services_of_the_stack(services):
    """Every http://, tcp:// or postgresql:// URL in an environment or a command names a service."""
    for name, svc in services.items():
        texts = [*environment(svc).values(), *strings(svc.get("command") or []), *strings(svc.get("entrypoint") or [])]
        for text in map(interpolated, texts):
            for url in re.findall(r"(?:https?|tcp|postgresql[a-z0-9+]*)://[^\s&'\"]+", text):
                host = urlsplit(url).hostname
                assert host in services or host in {"localhost", "127.0.0.1"}, f"{name}: {url} names no service"
    env = environment(services[WORKER])
    proxy = urlsplit(env["PIPELINE_DOCKER_URL"]).hostname
    assert networks_of(services[WORKER]) & networks_of(services[proxy]), f"{WORKER} cannot reach {proxy}"


# --- the Docker runner's settings match the file ----------------------------------------------------------


def test_job_network_is_the_compose_network(compose, services):
    env = environment(services[WORKER])
    default = (compose.get("networks") or {}).get("default") or {}
    assert default.get("name") == env["PIPELINE_DOCKER_NETWORK"], "job containers would not reach minio/mlflow"
    for needed in ("minio", "mlflow"):
        assert "default" in networks_of(services[needed]), f"{needed} is not on the jobs' network"


def test_job_state_mount_is_the_state_volume(compose, services):
    env = environment(services[WORKER])
    volume_name, _, target = env["PIPELINE_DOCKER_MOUNTS"].partition(":")
    assert target == env["PIPELINE_STATE_DIR"], "jobs must see the state where PIPELINE_STATE_DIR says"
    keys = [key for key, spec in (compose.get("volumes") or {}).items() if (spec or {}).get("name") == volume_name]
    assert keys, f"no volume is named {volume_name} (give it an explicit name:)"
    for name, svc in services.items():
        if name.startswith("airflow-"):
            assert (keys[0], target) in volume_mounts(svc), f"{name} must mount {keys[0]} at {target}"


def test_job_images_are_built_by_the_file(services):
    env = environment(services[WORKER])
    built = {svc["image"]: svc["build"] for svc in services.values() if "build" in svc and "image" in svc}
    expected = {"PIPELINE_JOB_IMAGE": "jobs/Dockerfile", "PIPELINE_JOB_IMAGE_GPU": "jobs/Dockerfile.gpu"}
    for key, dockerfile in expected.items():
        assert env[key] in built, f"{key}={env[key]} is built by no service"
        assert built[env[key]]["dockerfile"] == dockerfile
    gpu = next(name for name, svc in services.items() if svc.get("image") == env["PIPELINE_JOB_IMAGE_GPU"])
    assert services[gpu].get("profiles") == ["gpu"], "the CUDA image is built on request: --profile gpu"


def test_docker_proxy_is_reached_by_the_worker_only(services):
    """Its allowlist and bind-mount filter are checked against a recorded run in test_docker_api.py."""
    env = environment(services[WORKER])
    proxy = services[urlsplit(env["PIPELINE_DOCKER_URL"]).hostname]
    assert proxy["image"].startswith("wollomatic/socket-proxy:")
    assert not proxy.get("ports"), "the Docker API must never be published"
    assert ("/var/run/docker.sock", "/var/run/docker.sock") in volume_mounts(proxy)
    assert "-proxyport=" + str(urlsplit(env["PIPELINE_DOCKER_URL"]).port) in proxy["command"]
    others = [name for name, svc in services.items() if networks_of(svc) & networks_of(proxy) and svc is not proxy]
    assert others == [WORKER], f"only the worker may reach the Docker API, not {others}"


# --- secure by default: auth managers, identities, storage policies ---------------------------------------


def test_airflow_signs_people_in_with_the_fab_auth_manager(services):
    env = environment(services[WORKER])
    assert env["AIRFLOW__CORE__AUTH_MANAGER"] == \
        "airflow.providers.fab.auth_manager.fab_auth_manager.FabAuthManager"
    init = " ".join(strings(services["airflow-init"]["command"]))
    assert "airflow users create --username \"$$AIRFLOW_ADMIN_USER\"" in init and "--role Admin" in init
    assert "airflow users reset-password" in init  # the password follows .env
    for key in ("AIRFLOW__CORE__FERNET_KEY", "AIRFLOW__API__SECRET_KEY", "AIRFLOW__API_AUTH__JWT_SECRET"):
        assert REQUIRED.fullmatch(env[key]), key
    from importlib.metadata import version

    assert version("apache-airflow-providers-fab")  # installed with the project, so in the image


def test_mlflow_requires_a_login_and_promotion_has_its_own_identity(services):
    mlflow = services["mlflow"]
    command = " ".join(strings(mlflow["command"]))
    assert "mlflow server --app-name fraud-auth" in command
    server_env = environment(mlflow)
    assert server_env["MLFLOW_AUTH_CONFIG_PATH"] == "/tmp/auth.ini"
    assert REQUIRED.fullmatch(server_env["MLFLOW_AUTH_ADMIN_PASSWORD"])
    assert REQUIRED.fullmatch(server_env["MLFLOW_FLASK_SERVER_SECRET_KEY"])
    worker = environment(services[WORKER])
    assert worker["MLFLOW_TRACKING_USERNAME"] == "pipeline"
    assert worker["PIPELINE_PROMOTION_MLFLOW_USERNAME"] == server_env["MLFLOW_PROMOTION_USERS"] == "promoter"
    assert worker["MLFLOW_TRACKING_PASSWORD"] != worker["PIPELINE_PROMOTION_MLFLOW_PASSWORD"]
    init = services["mlflow-init"]
    assert init["command"] == ["mlflow-access"] and environment(init)["MLFLOW_TRACKING_USERNAME"] == "admin"
    assert services[WORKER]["depends_on"]["mlflow-init"]["condition"] == "service_completed_successfully"


def test_mlflow_start_writes_its_auth_config_from_the_environment(services, tmp_path):
    """The server's shell command, run for real with `exec mlflow` swapped for a print: a valid config."""
    import configparser

    command = services["mlflow"]["command"][0].replace("$$", "$").replace("/tmp/auth.ini", str(tmp_path / "a.ini"))
    command = command.replace("exec mlflow server", "echo \"$MLFLOW_BACKEND_STORE_URI\" #")
    out = subprocess.run(["sh", "-c", command], capture_output=True, text=True, timeout=60,
                         env={"PATH": "/usr/bin:/bin", "POSTGRES_USER": "pipeline", "POSTGRES_PASSWORD": "pw123"})
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "postgresql+psycopg2://pipeline:pw123@postgres:5432/mlflow"
    ini = configparser.ConfigParser()
    ini.read(tmp_path / "a.ini")
    assert dict(ini["mlflow"]) == {"default_permission": "READ", "admin_username": "admin",
                                   "database_uri": "postgresql+psycopg2://pipeline:pw123@postgres:5432/mlflow_auth",
                                   "auth_cache_ttl_seconds": "60"}
    assert (tmp_path / "a.ini").stat().st_mode & 0o077 == 0, "the config holds a password: owner only"


def test_each_service_has_its_own_storage_identity(services):
    init_script = (ROOT / "docker" / "minio" / "init.sh").read_text()
    users = dict(re.findall(r"^user (\S+) \S+ (\S+)$", init_script, re.M))
    assert users == {"pipeline-jobs": "pipeline-jobs", "pipeline-sensor": "pipeline-sensor",
                     "mlflow": "mlflow-artifacts", "lake-delivery": "lake-delivery",
                     "scoring-decisions": "scoring-decisions"}
    for policy in users.values():
        assert (ROOT / "docker" / "minio" / "policies" / f"{policy}.json").exists()
    worker = environment(services[WORKER])
    assert worker["AWS_ACCESS_KEY_ID"] == "pipeline-jobs"
    assert urlsplit(interpolated(worker["AIRFLOW_CONN_LAKE_S3"])).username == "pipeline-sensor"
    assert environment(services["mlflow"])["AWS_ACCESS_KEY_ID"] == "mlflow"
    scoring = environment(services["scoring"])  # appends its decisions log, nothing else
    assert scoring["AWS_ACCESS_KEY_ID"] == "scoring-decisions" and "PIPELINE_SERVING_DECISIONS" not in scoring
    root_users = {name for name, svc in services.items() if "MINIO_ROOT_PASSWORD" in environment(svc)}
    assert root_users == {"minio", "minio-init", "config-check"}, "the root credentials stay with MinIO's set-up"
    assert "mc version enable local/lake" in init_script and "mc version enable local/mlflow" in init_script


def test_the_policies_keep_raw_as_delivered():
    import json

    policies = ROOT / "docker" / "minio" / "policies"

    def statements(name):
        return json.loads((policies / f"{name}.json").read_text())["Statement"]

    jobs = statements("pipeline-jobs")
    denied = {a for s in jobs if s["Effect"] == "Deny" and "arn:aws:s3:::lake/raw/*" in s["Resource"]
              for a in s["Action"]}
    assert {"s3:DeleteObject", "s3:PutObject", "s3:DeleteObjectVersion"} <= denied
    writable = {r for s in jobs if s["Effect"] == "Allow" and "s3:PutObject" in s["Action"] for r in s["Resource"]}
    assert not [r for r in writable if r.startswith("arn:aws:s3:::lake/raw") or r == "arn:aws:s3:::lake/*"]
    for name, zone in (("pipeline-sensor", "raw"), ("lake-delivery", "raw"), ("scoring-decisions", "decisions")):
        # listing is limited to one zone (moto cannot evaluate this)
        listing = [s for s in statements(name) if "s3:ListBucket" in s["Action"]]
        assert listing and all(s["Condition"]["StringLike"]["s3:prefix"] == [f"{zone}/", f"{zone}/*"]
                               for s in listing)
    for name in ("pipeline-sensor", "lake-delivery", "pipeline-jobs", "mlflow-artifacts", "scoring-decisions"):
        allowed = {a for s in statements(name) if s["Effect"] == "Allow" for a in s["Action"]}
        assert not allowed & {"s3:DeleteObjectVersion", "s3:PutBucketVersioning", "s3:DeleteBucket", "s3:*"}, name


def test_config_check_runs_first(services):
    check = services["config-check"]
    assert check["entrypoint"] == ["python", "/opt/check/make_env.py", "--check"]
    for name in ("postgres", "minio"):
        assert services[name]["depends_on"]["config-check"]["condition"] == "service_completed_successfully"


# --- the Compose CLI's own validation, where it exists ----------------------------------------------------


def compose_cli() -> list[str] | None:
    docker = shutil.which("docker")
    if docker:
        probe = subprocess.run([docker, "compose", "version"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0:
            return [docker, "compose"]
    standalone = shutil.which("docker-compose")  # Compose v2 as a standalone binary; v1 predates the spec
    if standalone:
        probe = subprocess.run([standalone, "version", "--short"], capture_output=True, text=True, timeout=60)
        if probe.returncode == 0 and probe.stdout.strip().lstrip("v").startswith("2."):
            return [standalone]
    return None


def test_compose_cli_accepts_the_file():
    cli = compose_cli()
    if cli is None:
        pytest.skip("no Docker Compose v2 CLI here (the docker client has no compose plugin): the file is "
                    "checked by the tests above only")
    result = subprocess.run(
        [*cli, "--env-file", str(ENV_EXAMPLE), "-f", str(COMPOSE), "--profile", "gpu", "config", "--quiet"],
        capture_output=True, text=True, timeout=120, cwd=ROOT,
    )
    assert result.returncode == 0, result.stderr
