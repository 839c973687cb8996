"""Static checks of the Kubernetes deployment files (no cluster needed).

The Helm values must only set pipeline variables the code reads, select the kubernetes runner,
and name Secrets, namespace and service account that the manifests define; the Role must grant
what the KubernetesPodOperator does and no more; the namespace enforces the `restricted` Pod Security
Standard; and the admission policies' CEL expressions are evaluated (cel-python) on the pods the
kubernetes runner renders, and on pods and execs they must refuse.
"""

import re
from pathlib import Path

import yaml
from pipeline.settings import AirflowSettings
from test_images import parse

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
DAG_VARIABLES = {"PIPELINE_TRAIN_PROCESSES", "PIPELINE_PROMOTION_APPROVAL"}
SECRET_LISTS = ("PIPELINE_K8S_ENV_SECRETS", "PIPELINE_K8S_PROMOTION_ENV_SECRETS", "PIPELINE_K8S_GATE_ENV_SECRETS",
                "PIPELINE_K8S_DEPLOY_ENV_SECRETS", "PIPELINE_K8S_ONLINE_ENV_SECRETS")


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def values_env() -> dict[str, str]:
    return {e["name"]: e["value"] for e in yaml.safe_load((K8S / "airflow-values.yaml").read_text())["env"]}


def known_pipeline_variables() -> set[str]:
    fields = set(Settings.model_fields) | set(AirflowSettings.model_fields)
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
        if key not in SECRET_LISTS:  # names Secrets, holds none
            assert not any(word in key for word in ("SECRET", "PASSWORD", "ACCESS_KEY", "TOKEN")), key
        assert "@" not in value, f"{key} looks like a URI with credentials"


def test_values_name_what_the_manifests_define():
    env = values_env()
    rbac = documents("pipeline-rbac.yaml")
    kinds = {(d["kind"], d["metadata"]["name"]) for d in rbac}
    assert ("Namespace", env["PIPELINE_K8S_NAMESPACE"]) in kinds
    assert ("ServiceAccount", env["PIPELINE_K8S_SERVICE_ACCOUNT"]) in kinds
    secrets = {d["metadata"]["name"] for d in documents("secrets.example.yaml") if d["kind"] == "Secret"}
    named = {name for key in SECRET_LISTS for name in env[key].split(",")}
    assert named == secrets
    cluster_scoped = ("ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding")  # bound to the namespace
    assert all(d["metadata"].get("namespace", d["metadata"]["name"]) == env["PIPELINE_K8S_NAMESPACE"]
               for d in rbac if d["kind"] not in cluster_scoped)


def test_example_secrets_hold_no_real_value():
    for secret in documents("secrets.example.yaml"):
        assert set(secret["stringData"].values()) == {"replace-me"}


def test_role_grants_what_the_pod_operator_does_and_no_more():
    """The provider's calls: create/read/list(find)/patch(label)/delete pods, read logs, exec, list+watch events."""
    (role,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "Role"]
    assert all(rule["apiGroups"] == [""] for rule in role["rules"])
    granted = {(res, verb) for rule in role["rules"] for res in rule["resources"] for verb in rule["verbs"]}
    needed = {("pods", v) for v in ("create", "get", "list", "patch", "delete")}
    needed |= {("pods/log", "get"), ("pods/exec", "create"), ("pods/exec", "get"), ("events", "list"),
               ("events", "watch")}
    assert granted == needed, granted ^ needed
    (binding,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "RoleBinding"]
    assert binding["roleRef"]["name"] == role["metadata"]["name"]
    assert not [d for d in documents("pipeline-rbac.yaml") if d["kind"] in ("ClusterRole", "ClusterRoleBinding")]


def test_the_namespace_enforces_the_restricted_pod_security_standard():
    (namespace,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "Namespace"]
    labels = namespace["metadata"]["labels"]
    for mode in ("enforce", "warn", "audit"):
        assert labels[f"pod-security.kubernetes.io/{mode}"] == "restricted"


def test_job_pods_have_no_api_token_and_the_chart_pods_drop_privileges():
    (account,) = [d for d in documents("pipeline-rbac.yaml") if d["kind"] == "ServiceAccount"]
    assert account["automountServiceAccountToken"] is False
    contexts = yaml.safe_load((K8S / "airflow-values.yaml").read_text())["securityContexts"]
    assert contexts["pod"]["runAsNonRoot"] is True and contexts["pod"]["seccompProfile"]["type"] == "RuntimeDefault"
    assert contexts["containers"]["allowPrivilegeEscalation"] is False
    assert contexts["containers"]["capabilities"]["drop"] == ["ALL"]


# --- the admission policies, evaluated ---------------------------------------------------------------

WORKER = "system:serviceaccount:airflow:airflow-worker"


def policies() -> dict[str, dict]:
    docs = documents("pipeline-rbac.yaml")
    found = {d["metadata"]["name"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicy"}
    bound = {d["spec"]["policyName"]: d for d in docs if d["kind"] == "ValidatingAdmissionPolicyBinding"}
    assert set(found) == set(bound), "every policy is bound"
    for binding in bound.values():
        assert binding["spec"]["validationActions"] == ["Deny"]
        assert binding["spec"]["matchResources"]["namespaceSelector"]["matchLabels"] == {
            "kubernetes.io/metadata.name": values_env()["PIPELINE_K8S_NAMESPACE"]}
    return found


def admit(policy: dict, obj: dict, old: dict | None = None, user: str = WORKER) -> list[str]:
    """The messages of the validations that refuse ``obj`` (empty: admitted), as the API server evaluates them."""
    import celpy

    env = celpy.Environment()
    activation = {"object": celpy.json_to_cel(obj), "request": celpy.json_to_cel({"userInfo": {"username": user}})}
    if old is not None:
        activation["oldObject"] = celpy.json_to_cel(old)
    for condition in policy["spec"].get("matchConditions", []):
        if not env.program(env.compile(condition["expression"])).evaluate(activation):
            return []  # not matched: the policy does not apply
    refused = []
    for check in policy["spec"]["validations"]:
        if not env.program(env.compile(check["expression"])).evaluate(activation):
            refused.append(check["message"])
    return refused


def rendered_pod(monkeypatch, step: str = "train") -> dict:
    """The pod the kubernetes runner submits for ``step``, with the Helm values' settings, as API JSON."""
    from types import SimpleNamespace

    from kubernetes.client import ApiClient
    from pipeline.execution.kubernetes_job import KubernetesJobOperator
    from pipeline.execution.runners import Resources

    for key, value in values_env().items():
        if key.startswith("PIPELINE_"):
            monkeypatch.setenv(key, value)
    task = KubernetesJobOperator(task_id=step, step=step, job_resources=Resources(gpu=1 if step == "train" else 0))
    ti = SimpleNamespace(log_url="http://localhost:8080/dags/d/runs/r/tasks/t?try_number=1")
    task.prepare({"params": {"date": "2026-06-20", "force": False}, "run_id": "r", "ti": ti},
                 {"PIPELINE_LAKE_URI": "s3://lake/"})
    return ApiClient().sanitize_for_serialization(task.build_pod_request_obj(dry_run=True))


def test_the_rendered_job_pods_are_admitted(monkeypatch):
    create = policies()["fraud-pipeline-job-pods"]
    for step in ("train", "score", "promote"):
        pod = rendered_pod(monkeypatch, step)
        assert admit(create, pod) == [], step
        assert {c["name"] for c in pod["spec"]["containers"]} == {"base", "airflow-xcom-sidecar"}
        (job,) = [c for c in pod["spec"]["containers"] if c["name"] == "base"]
        secrets = [source["secretRef"]["name"] for source in job["envFrom"]]
        promotion = ["mlflow-promotion-credentials"] if step == "promote" else []
        assert secrets == ["lake-credentials", "mlflow-credentials", *promotion], step


def test_other_pods_from_the_workers_are_refused(monkeypatch):
    import copy

    create = policies()["fraud-pipeline-job-pods"]
    pod = rendered_pod(monkeypatch)

    def refused(change) -> list[str]:
        other = copy.deepcopy(pod)
        change(other)
        return admit(create, other)

    assert refused(lambda p: p["spec"]["containers"][0].update(image="docker.io/library/ubuntu:24.04")) == [
        "job pods run the job images (and the XCom sidecar) only"]
    assert refused(lambda p: p["spec"]["containers"][1].update(image="ghcr.io/attacker/alpine:3")) == [
        "job pods run the job images (and the XCom sidecar) only"]
    assert refused(lambda p: p["spec"].update(serviceAccountName="default")) == [
        "job pods run as the pipeline-jobs service account"]
    assert refused(lambda p: p["spec"].pop("automountServiceAccountToken")) == [
        "job pods get no service account token"]
    assert refused(lambda p: p["metadata"]["labels"].pop("app.kubernetes.io/part-of")) == [
        "job pods carry the label app.kubernetes.io/part-of=fraud-pipeline"]
    assert refused(lambda p: p["spec"].update(initContainers=[{"name": "x", "image": "busybox"}])) == [
        "job pods have no init or ephemeral containers"]
    # Another identity is not this policy's concern (RBAC and Pod Security still apply to it).
    other = copy.deepcopy(pod)
    other["spec"]["serviceAccountName"] = "default"
    assert admit(create, other, user="system:serviceaccount:kube-system:replicaset-controller") == []


def test_updates_keep_the_images_and_exec_reaches_the_sidecar_only(monkeypatch):
    import copy

    found = policies()
    pod = rendered_pod(monkeypatch)
    labelled = copy.deepcopy(pod)
    labelled["metadata"]["labels"]["already_checked"] = "True"  # what the provider patches
    assert admit(found["fraud-pipeline-job-pod-updates"], labelled, old=pod) == []
    swapped = copy.deepcopy(pod)
    swapped["spec"]["containers"][0]["image"] = "registry.example.com/fraud-pipeline-jobs:evil"
    assert admit(found["fraud-pipeline-job-pod-updates"], swapped, old=pod) == [
        "the launcher labels its pods; it never changes what they run"]
    exec_policy = found["fraud-pipeline-exec-sidecar-only"]
    # PodExecOptions, as the provider sends them to read the result and to stop the sidecar.
    assert admit(exec_policy, {"container": "airflow-xcom-sidecar", "command": ["/bin/sh", "-c", "cat"]}) == []
    assert admit(exec_policy, {"container": "base", "command": ["/bin/sh"]}) == [
        "the launcher execs into the XCom sidecar only"]
    assert admit(exec_policy, {"command": ["/bin/sh"]}) == ["the launcher execs into the XCom sidecar only"]


def test_policy_images_match_the_values_images():
    images = {values_env()["PIPELINE_JOB_IMAGE"], values_env()["PIPELINE_JOB_IMAGE_GPU"]}
    allowed = next(v["expression"] for v in policies()["fraud-pipeline-job-pods"]["spec"]["validations"]
                   if "startsWith" in v["expression"])
    prefixes = [p for p in re.findall(r"startsWith\('([^']+)'\)", allowed) if p != "alpine:"]
    assert sorted(image.rsplit(":", 1)[0] + ":" for image in images) == sorted(prefixes)


def test_the_chart_runs_the_airflow_target_of_the_job_image():
    """The chart's pods bring their own command line: the image it runs must not force `python -m jobs`."""
    values = yaml.safe_load((K8S / "airflow-values.yaml").read_text())
    assert values["images"]["airflow"]["repository"].endswith("/fraud-pipeline-airflow")
    _, stages = parse(ROOT / "jobs" / "Dockerfile")
    (airflow,) = [s for s in stages if s.name == "airflow"]
    assert airflow.all("ENTRYPOINT")[-1] == "[]"
    assert stages[-1].all("ENTRYPOINT")[-1] == '["python", "-m", "jobs"]', "the default target stays the job image"
