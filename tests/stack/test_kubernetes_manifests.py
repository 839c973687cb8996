"""Static checks of the Kubernetes deployment files (no cluster needed).

The Helm values must only set pipeline variables the code reads, select the kubernetes runner,
and name Secrets, namespace and service account that the manifests define; the Role must grant
what the KubernetesPodOperator does (create/watch pods, logs, exec into the XCom sidecar).
"""

from pathlib import Path

import yaml
from pipeline.runners import RunnerSettings
from test_images import parse

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DAG_VARIABLES = {"PIPELINE_TRAIN_PROCESSES", "PIPELINE_PROMOTION_APPROVAL"}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def values_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in yaml.safe_load((K8S / "airflow-values.yaml").read_text())["env"]}


def known_pipeline_variables() -> set[str]:
    fields = set(Settings.model_fields) | set(RunnerSettings.model_fields)
    return {f"PIPELINE_{name.upper()}" for name in fields} | DAG_VARIABLES


def test_values_select_the_kubernetes_runner_and_executor():
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    env = values_env()
    assert values["executor"] == "KubernetesExecutor"
    assert env["PIPELINE_JOB_RUNNER"] == "kubernetes"
    assert env["PIPELINE_LAKE_URI"].startswith("s3://") and env["PIPELINE_MLFLOW_TRACKING_URI"].startswith("http")
    assert values["postgresql"]["enabled"] is False  # an external PostgreSQL holds the metadata


def test_every_pipeline_variable_is_read_by_the_code():
    unknown = {k for k in values_env() if k.startswith("PIPELINE_")} - known_pipeline_variables()
    assert not unknown, f"set in airflow-values.yaml but read by nothing: {unknown}"


def test_no_credentials_in_the_values():
    for key, value in values_env().items():
        if key != "PIPELINE_K8S_ENV_SECRETS":  # names the Secrets, holds none
            assert not any(word in key for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")), key
        assert "@" not in value, f"{key} looks like a URI with credentials"


def test_values_name_what_the_manifests_define():
    env = values_env()
    rbac = documents("pipeline-rbac.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rbac}
    assert ("Namespace", env["PIPELINE_K8S_NAMESPACE"]) in kinds
    assert ("ServiceAccount", env["PIPELINE_K8S_SERVICE_ACCOUNT"]) in kinds
    secrets = {d["metadata"]["name"] for d in documents("secrets.example.yaml") if d["kind"] == "Secret"}
    assert set(env["PIPELINE_K8S_ENV_SECRETS"].split(",")) == secrets
    assert all(d["metadata"].get("namespace", d["metadata"]["name"]) == env["PIPELINE_K8S_NAMESPACE"]
               for d in rbac)


def test_example_secrets_hold_no_real_value():
    for secret in documents("secrets.example.yaml"):
        assert set(secret["stringData"].values()) == {"replace-me"}


def test_role_grants_what_the_pod_operator_does():
    (role,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "Role"]
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    needed = {("pods", v) for v in ("create", "get", "list", "watch", "delete", "patch")}
    needed |= {("pods/log", "get"), ("pods/exec", "create"), ("events", "list")}
    assert needed <= granted, needed - granted
    (binding,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]


def test_the_chart_runs_the_airflow_target_of_the_job_image():
    """The chart's pods bring their own command line: the image it runs must not force `python -m jobs`."""
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["images"]["airflow"]["repository"].endswith("/fraud-pipeline-airflow")
    _, stages = parse(ROOT / "jobs" / "Dockerfile")
    (airflow,) = [s for s in stages if s.name == "airflow"]
    assert airflow.all("ENTRYPOINT")[-1] == "[]"
    assert stages[-1].all("ENTRYPOINT")[-1] == '["python", "-m", "jobs"]', "the default target stays the job image"
