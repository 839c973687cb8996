"""Every job task of every DAG, rendered under each runner: the container or pod it would start.

No Docker engine or cluster is needed: the Docker operator's fields and the pod the Kubernetes
operator would submit (``build_pod_request_obj``) are checked, after the same preparation a run does.
"""

from pathlib import Path

import pytest
from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.providers.docker.operators.docker import DockerOperator
from kubernetes.client import ApiClient
from pipeline.execution.operators import JobTask, LocalJobOperator, job_task
from pipeline.execution.runners import forwarded_env

ROOT = Path(__file__).resolve().parents[2]
DATE = "2026-06-20"
RUN_ID = "scheduled__2026-06-20T03:00:00+00:00"
WORKER_ENV = {
    "PIPELINE_LAKE_URI": "s3://lake/",
    "PIPELINE_MLFLOW_TRACKING_URI": "http://mlflow:5000",
    "PIPELINE_STATE_DIR": "/data/state",
    "AWS_ENDPOINT_URL": "http://minio:9000",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_ACCESS_KEY_ID": "key-id",
    "AWS_SECRET_ACCESS_KEY": "secret-value",
    "AIRFLOW_CONN_LAKE_S3": "aws://key-id:secret-value@/?endpoint_url=http%3A%2F%2Fminio%3A9000",
    "PIPELINE_JOB_RUNNER": "docker",
    "PIPELINE_DOCKER_URL": "tcp://docker-proxy:2375",
    "HOME": "/home/airflow",
}
SECRETS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AIRFLOW_CONN_LAKE_S3"}


# The volume types the `restricted` Pod Security Standard allows
# (https://kubernetes.io/docs/concepts/security/pod-security-standards/).
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def restricted_violations(pod: dict) -> list[str]:
    """Where a pod (API JSON) breaks the `restricted` Pod Security Standard, the baseline's rules included."""
    spec, found = pod["spec"], []
    pod_ctx = spec.get("securityContext") or {}
    for key in ("hostNetwork", "hostPID", "hostIPC"):
        if spec.get(key):
            found.append(f"spec.{key}")
    for volume in spec.get("volumes") or []:
        kinds = set(volume) - {"name"}
        if not kinds <= RESTRICTED_VOLUMES:
            found.append(f"volume {volume['name']}: {kinds - RESTRICTED_VOLUMES}")
    if pod_ctx.get("sysctls"):
        found.append("pod sysctls")
    for container in [*(spec.get("initContainers") or []), *spec["containers"]]:
        name, ctx = container["name"], container.get("securityContext") or {}

        def either(key, ctx=ctx):
            return ctx.get(key, pod_ctx.get(key))

        if ctx.get("privileged"):
            found.append(f"{name}: privileged")
        if ctx.get("allowPrivilegeEscalation") is not False:
            found.append(f"{name}: allowPrivilegeEscalation must be false")
        caps = ctx.get("capabilities") or {}
        if "ALL" not in (caps.get("drop") or []):
            found.append(f"{name}: capabilities must drop ALL")
        if set(caps.get("add") or []) - {"NET_BIND_SERVICE"}:
            found.append(f"{name}: capabilities added {caps['add']}")
        if either("runAsNonRoot") is not True:
            found.append(f"{name}: runAsNonRoot must be true")
        if either("runAsUser") == 0:
            found.append(f"{name}: runAsUser 0")
        if ((either("seccompProfile") or {}).get("type")) not in ("RuntimeDefault", "Localhost"):
            found.append(f"{name}: seccompProfile must be RuntimeDefault or Localhost")
        if any(p.get("hostPort") for p in container.get("ports") or []):
            found.append(f"{name}: hostPort")
        if ctx.get("procMount") not in (None, "Default"):
            found.append(f"{name}: procMount")
    return found


def job_tasks(monkeypatch, runner: str, **env):
    from airflow.dag_processing.dagbag import DagBag

    monkeypatch.setenv("PIPELINE_JOB_RUNNER", runner)
    for key, value in env.items():
        monkeypatch.setenv(key, value)
    bag = DagBag(dag_folder=str(ROOT / "dags"))
    assert bag.import_errors == {}
    tasks = [t for dag in bag.dags.values() for t in dag.tasks if isinstance(t, JobTask)]
    for task in tasks:  # what rendering does with a task's XComArgs: the upstream task's values
        task.job_arguments = [rendered(a) for a in task.job_arguments]
        task.date = rendered(task.date)
    assert {t.step for t in tasks} >= {"ingest", "validate", "features", "train", "evaluate", "promote", "score",
                                       "drift", "rollback"}
    return tasks


def rendered(value):
    """An XComArg as Airflow renders it before the task runs: the value upstream pushed (here, a stand-in)."""
    from airflow.sdk import XComArg

    if isinstance(value, XComArg):
        return f"<{value.operator.task_id}.{value.key}>"
    return value


def expected_command(task) -> list[str]:
    """``python -m jobs <step> --date <date> ...`` (or the same under torchrun), as the local runner runs it."""
    command = task.build_spec(context()).command
    jobs_at = command.index("jobs")
    assert command[:3] == ["python", "-m", "jobs" if jobs_at == 2 else "torch.distributed.run"]
    assert command[jobs_at + 1] == task.step
    assert ("--date" in command) == task.pass_date
    return command


def context() -> dict:
    from types import SimpleNamespace

    ti = SimpleNamespace(log_url=f"http://localhost:8080/dags/d/runs/{RUN_ID}/tasks/TASK?try_number=1",
                         dag_id="d", task_id="TASK", map_index=-1, try_number=2)
    return {"params": {"date": DATE, "force": False}, "run_id": RUN_ID, "ti": ti}


def test_forwarded_env_keeps_credentials_apart():
    plain, secret = forwarded_env({**WORKER_ENV, "PIPELINE_MLFLOW_TRACKING_URI": "postgresql://u:pw@db/mlflow",
                                   # who is told, and the SMTP server: the worker's alone
                                   "PIPELINE_NOTIFY_EMAIL": "risk@example.com",
                                   "AIRFLOW_CONN_SMTP_DEFAULT": "smtp://u:pw@smtp.example.com:587"})
    assert set(secret) == SECRETS | {"PIPELINE_MLFLOW_TRACKING_URI"}
    assert plain == {"PIPELINE_LAKE_URI": "s3://lake/", "PIPELINE_STATE_DIR": "/data/state",
                     "AWS_ENDPOINT_URL": "http://minio:9000", "AWS_DEFAULT_REGION": "us-east-1"}


def test_local_is_the_default_runner(monkeypatch):
    monkeypatch.delenv("PIPELINE_JOB_RUNNER", raising=False)
    assert type(job_task(step="score")) is LocalJobOperator
    monkeypatch.setenv("PIPELINE_JOB_RUNNER", "mainframe")
    with pytest.raises(ValueError, match="not a known runner"):
        job_task(step="score")


@pytest.mark.parametrize("gpus", [True, False])
def test_docker_runner_renders_every_job(monkeypatch, gpus):
    tasks = job_tasks(monkeypatch, "docker", PIPELINE_JOB_GPUS=str(gpus).lower(),
                      PIPELINE_DOCKER_URL="tcp://docker-proxy:2375", PIPELINE_DOCKER_NETWORK="fraud-pipeline",
                      PIPELINE_DOCKER_MOUNTS="fraud-pipeline-state:/data/state")
    for task in tasks:
        assert isinstance(task, DockerOperator), task.task_id
        task.prepare(context(), WORKER_ENV)
        wants_gpu = task.job_resources.gpu > 0 and gpus
        assert task.image == ("fraud-pipeline-jobs-gpu:latest" if wants_gpu else "fraud-pipeline-jobs:latest")
        assert [*task.entrypoint, *task.command] == expected_command(task)
        assert task.environment["PIPELINE_LAKE_URI"] == "s3://lake/"
        assert task.environment["PIPELINE_MLFLOW_TRACKING_URI"] == "http://mlflow:5000"
        # The real run id and the task instance's URL, for MLflow tags that link back to Airflow.
        assert task.environment["PIPELINE_AIRFLOW_RUN_ID"] == RUN_ID
        assert task.environment["PIPELINE_AIRFLOW_TASK_URL"] == context()["ti"].log_url
        # What every try of the task shares (a training checkpoint's key): never the try number.
        assert (task.environment["PIPELINE_AIRFLOW_DAG_ID"], task.environment["PIPELINE_AIRFLOW_TASK_ID"]) == (
            "d", "TASK")
        assert not SECRETS & set(task.environment), "credentials must not be plain (rendered) environment"
        assert set(task._private_environment) == SECRETS
        assert "PIPELINE_DOCKER_URL" not in task.environment and "HOME" not in task.environment
        assert task.docker_url == "tcp://docker-proxy:2375" and task.network_mode == "fraud-pipeline"
        assert [(m["Source"], m["Target"], m["Type"]) for m in task.mounts] == [
            ("fraud-pipeline-state", "/data/state", "volume")]
        assert task.mem_limit == f"{task.job_resources.memory_gb:g}g" and task.cpus == task.job_resources.cpu
        assert task.mount_tmp_dir is False and task.auto_remove == "force"
        if wants_gpu:
            (request,) = task.device_requests
            assert request["Count"] == task.job_resources.gpu and request["Capabilities"] == [["gpu"]]
            assert task.shm_size >= 1024**3
        else:
            assert not task.device_requests
    assert any(t.step == "train" and t.job_resources.gpu for t in tasks)


@pytest.mark.parametrize("processes", ["1", "2"])
def test_kubernetes_runner_renders_every_pod(monkeypatch, processes):
    tasks = job_tasks(monkeypatch, "kubernetes", PIPELINE_TRAIN_PROCESSES=processes,
                      PIPELINE_K8S_NAMESPACE="ml", PIPELINE_K8S_SERVICE_ACCOUNT="pipeline-jobs",
                      PIPELINE_K8S_ENV_SECRETS="lake-credentials,mlflow-credentials")
    for task in tasks:
        assert isinstance(task, KubernetesPodOperator), task.task_id
        task.prepare(context(), WORKER_ENV)
        pod = task.build_pod_request_obj(dry_run=True)
        (container,) = [c for c in pod.spec.containers if c.name == "base"]
        assert [*container.command, *container.args] == expected_command(task)
        assert pod.metadata.namespace == "ml" and pod.spec.service_account_name == "pipeline-jobs"
        env = {e.name: e.value for e in container.env}
        assert env["PIPELINE_LAKE_URI"] == "s3://lake/" and env["PIPELINE_STATE_DIR"] == "/data/state"
        assert env["PIPELINE_JOB_RESULT_FILE"] == "/airflow/xcom/return.json"
        assert not SECRETS & set(env), "credentials come from Secrets, never from the pod spec"
        assert [s.secret_ref.name for s in container.env_from] == ["lake-credentials", "mlflow-credentials"]
        assert any(c.name == "airflow-xcom-sidecar" for c in pod.spec.containers)  # returns the result file
        as_json = ApiClient().sanitize_for_serialization(pod)
        assert restricted_violations(as_json) == [], task.task_id
        assert pod.spec.security_context.run_as_user == 50000 and pod.spec.automount_service_account_token is False
        for each in pod.spec.containers:  # the job and the sidecar
            assert each.security_context.read_only_root_filesystem is True, each.name
        writable = {m.mount_path for m in container.volume_mounts}
        assert {"/tmp", "/data/state", "/airflow/xcom"} <= writable
        assert env["HOME"] == env["TMPDIR"] == "/tmp"
        resources = task.job_resources
        assert container.resources.requests == {"cpu": f"{resources.cpu:g}", "memory": f"{resources.memory_gb:g}Gi"}
        assert container.resources.limits["memory"] == f"{resources.memory_gb:g}Gi"
        if task.step == "train":  # on spot nodes when there are any (the default: prefer), on-demand else
            assert [(t.key, t.operator, t.value, t.effect) for t in pod.spec.tolerations] == [
                *([("nvidia.com/gpu", "Exists", None, "NoSchedule")] if resources.gpu else []),
                ("cloud.google.com/gke-spot", "Equal", "true", "NoSchedule"),
                ("kubernetes.azure.com/scalesetpriority", "Equal", "spot", "NoSchedule")]
            preferred = pod.spec.affinity.node_affinity.preferred_during_scheduling_ignored_during_execution
            assert {(e.key, e.values[0]) for term in preferred for e in term.preference.match_expressions} == {
                ("cloud.google.com/gke-spot", "true"), ("kubernetes.azure.com/scalesetpriority", "spot"),
                ("eks.amazonaws.com/capacityType", "SPOT"), ("karpenter.sh/capacity-type", "spot")}
            assert pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution is None
            assert pod.spec.termination_grace_period_seconds == 60  # time to checkpoint on the preemption notice
        else:  # nothing else is preemptible: a promotion or an ingest cut short is retried, not resumed
            assert not pod.spec.affinity and not (pod.spec.tolerations or [])
        if resources.gpu:
            assert task.step == "train"
            assert container.image == "fraud-pipeline-jobs-gpu:latest"
            assert container.resources.limits["nvidia.com/gpu"] == processes
            assert pod.spec.node_selector == {"nvidia.com/gpu.present": "true"}
            launcher = ["python", "-m", "torch.distributed.run"] if processes == "2" else ["python", "-m", "jobs"]
            assert container.command + container.args[:len(launcher) - 1] == launcher
        else:
            assert container.image == "fraud-pipeline-jobs:latest"
            assert "nvidia.com/gpu" not in container.resources.limits and not pod.spec.node_selector


@pytest.mark.parametrize("runner", ["docker", "kubernetes"])
def test_dag_files_stay_light_under_the_container_runners(runner):
    """The providers' operators load at parse time; the heavy libraries still must not."""
    import json
    import os
    import subprocess
    import sys

    from heavy import HEAVY

    code = (
        "import importlib.util, json, pathlib, sys\n"
        f"sys.path.insert(0, {str(ROOT / 'plugins')!r})\n"
        f"for i, path in enumerate(sorted(pathlib.Path({str(ROOT / 'dags')!r}).glob('*.py'))):\n"
        "    spec = importlib.util.spec_from_file_location(f'dag_{i}', path)\n"
        "    spec.loader.exec_module(importlib.util.module_from_spec(spec))\n"
        f"print(json.dumps([m for m in {HEAVY!r} if m in sys.modules]))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env={**os.environ, "PIPELINE_JOB_RUNNER": runner})
    assert json.loads(out.stdout.strip().splitlines()[-1]) == []


def test_the_restricted_check_catches_what_it_must():
    """The checker above, on a pod that breaks each rule once (so a passing pod means something)."""
    bad = {"spec": {
        "hostNetwork": True,
        "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
        "securityContext": {},
        "containers": [{"name": "job", "securityContext": {"privileged": True, "capabilities": {"add": ["SYS_ADMIN"]},
                                                          "runAsUser": 0},
                        "ports": [{"containerPort": 80, "hostPort": 80}]}],
    }}
    found = "\n".join(restricted_violations(bad))
    for rule in ("spec.hostNetwork", "volume root", "privileged", "allowPrivilegeEscalation", "drop ALL",
                 "capabilities added", "runAsNonRoot", "runAsUser 0", "seccompProfile", "hostPort"):
        assert rule in found, rule


class _Event:
    def __init__(self):
        self.extra, self.partitions = None, []

    def add_partitions(self, keys):
        self.partitions += list(keys)


class _Ti:
    def __init__(self):
        self.pushed = {}

    def xcom_push(self, key, value):
        self.pushed[key] = value


def test_work_found_done_is_skipped_unless_it_is_this_runs_own_then_downstream_is_told():
    from airflow.sdk import Asset
    from airflow.sdk.exceptions import AirflowSkipException

    asset = Asset("gold_features_test", uri="file:///lake/gold/features")
    task = LocalJobOperator(task_id="features", step="features", outlets=[asset])
    found = {"dates": [DATE], "rows": 10, "skipped": True, "skip_reason": "unchanged", "unchanged_since": "other-run"}
    events, ti = {asset: _Event()}, _Ti()
    with pytest.raises(AirflowSkipException):  # another run did it: nothing changed, nothing to tell
        task.publish(found, {"run_id": RUN_ID, "outlet_events": events, "ti": ti})
    assert events[asset].partitions == [] and ti.pushed["return_value"] == found
    own = {**found, "unchanged_since": RUN_ID}  # an earlier try of this run did it, or the task was cleared
    assert task.publish(own, {"run_id": RUN_ID, "outlet_events": events, "ti": ti}) == own
    assert events[asset].partitions == [DATE] and events[asset].extra["step"] == "features"


def test_the_gate_signing_key_reaches_the_evaluate_job_only():
    worker = {**WORKER_ENV, "PIPELINE_GATE_SIGNING_KEY": "a2V5", "PIPELINE_GATE_PUBLIC_KEY": "cHVi"}
    for step in ("ingest", "validate", "features", "train", "promote", "score", "drift"):
        plain, secret = forwarded_env(worker, step=step)
        assert "PIPELINE_GATE_SIGNING_KEY" not in {**plain, **secret}, step
        assert plain["PIPELINE_GATE_PUBLIC_KEY"] == "cHVi"
    plain, secret = forwarded_env(worker, step="evaluate")
    assert secret["PIPELINE_GATE_SIGNING_KEY"] == "a2V5"


@pytest.mark.parametrize(("variable", "value", "only"), [
    ("PIPELINE_SERVING_DEPLOY_KEY", "deploy-key", "deploy"),
    ("PIPELINE_SERVING_STORE_URL", "redis://:secret@redis:6379/0", "online"),
])
def test_the_serving_credentials_reach_their_job_only(variable, value, only):
    worker = {**WORKER_ENV, variable: value}
    for step in ("ingest", "validate", "features", "train", "evaluate", "promote", "score", "drift", "online",
                 "deploy"):
        plain, secret = forwarded_env(worker, step=step)
        if step == only:
            assert secret[variable] == value and variable not in plain
        else:
            assert variable not in {**plain, **secret}, step


@pytest.mark.parametrize("mode", ["off", "allow", "require"])
def test_spot_training_is_a_setting(monkeypatch, mode):
    """off: train runs on on-demand nodes only; allow: it tolerates spot taints; require: spot nodes only."""
    (train,) = [t for t in job_tasks(monkeypatch, "kubernetes", PIPELINE_K8S_SPOT=mode, PIPELINE_JOB_GPUS="false")
                if t.step == "train"]
    pod = train.build_pod_request_obj(dry_run=True)
    tolerated = {t.key for t in pod.spec.tolerations or []}
    spot_taints = {"cloud.google.com/gke-spot", "kubernetes.azure.com/scalesetpriority"}
    assert tolerated == (set() if mode == "off" else spot_taints)
    if mode == "require":
        terms = pod.spec.affinity.node_affinity.required_during_scheduling_ignored_during_execution.node_selector_terms
        assert len(terms) == 4  # ORed: any one spot label
    else:
        assert not pod.spec.affinity
