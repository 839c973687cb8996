"""Static checks of the scoring service's Kubernetes objects (deploy/kubernetes/scoring.yaml), no
cluster needed: each object is read by the Kubernetes client's own models and must come back the
same (a misspelled or misplaced field does not), every pod meets the restricted Pod Security
Standard, and the pieces name each other (selectors, ports, probes, Secrets, the pipeline's URL)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from jobs.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "kubernetes"
MODELS = {("v1", "Namespace"): "V1Namespace", ("v1", "ServiceAccount"): "V1ServiceAccount",
          ("apps/v1", "Deployment"): "V1Deployment", ("v1", "Service"): "V1Service",
          ("autoscaling/v2", "HorizontalPodAutoscaler"): "V2HorizontalPodAutoscaler",
          ("policy/v1", "PodDisruptionBudget"): "V1PodDisruptionBudget",
          ("networking.k8s.io/v1", "Ingress"): "V1Ingress",
          ("apps/v1", "StatefulSet"): "V1StatefulSet", ("networking.k8s.io/v1", "NetworkPolicy"): "V1NetworkPolicy",
          ("v1", "Secret"): "V1Secret"}
RESTRICTED_VOLUMES = {"configMap", "csi", "downwardAPI", "emptyDir", "ephemeral", "persistentVolumeClaim", "projected",
                      "secret"}


def documents(name: str) -> list[dict]:
    return [d for d in yaml.safe_load_all((K8S / name).read_text()) if d]


def objects() -> dict[tuple[str, str], dict]:
    return {(d["kind"], d["metadata"]["name"]): d for d in documents("scoring.yaml")}


def pods() -> list[tuple[str, dict]]:
    return [(name, d["spec"]["template"]["spec"]) for (kind, name), d in objects().items()
            if kind in ("Deployment", "StatefulSet")]


@pytest.mark.parametrize("name", ["scoring.yaml", "scoring-secrets.example.yaml"])
def test_every_object_is_what_the_kubernetes_models_read(name):
    from kubernetes.client import ApiClient

    api = ApiClient()

    class Response:  # ApiClient.deserialize reads a response's body
        def __init__(self, doc):
            self.data = json.dumps(doc)

    for doc in documents(name):
        model = MODELS[(doc["apiVersion"], doc["kind"])]
        read = api.deserialize(Response(doc), model)
        again = api.sanitize_for_serialization(read)
        assert again == doc, f"{doc['kind']}/{doc['metadata']['name']}: fields the API would not read"


def test_the_namespace_enforces_the_restricted_standard_and_every_pod_meets_it():
    (namespace,) = [d for (kind, _), d in objects().items() if kind == "Namespace"]
    for mode in ("enforce", "warn", "audit"):
        assert namespace["metadata"]["labels"][f"pod-security.kubernetes.io/{mode}"] == "restricted"
    assert all(d["metadata"].get("namespace", namespace["metadata"]["name"]) == namespace["metadata"]["name"]
               for d in objects().values())
    for name, pod in pods():
        context = pod["securityContext"]
        assert context["runAsNonRoot"] is True and context["seccompProfile"]["type"] == "RuntimeDefault", name
        assert pod["automountServiceAccountToken"] is False, name
        assert not {"hostNetwork", "hostPID", "hostIPC"} & set(pod), name
        for volume in pod.get("volumes", []):
            assert set(volume) - {"name"} <= RESTRICTED_VOLUMES, (name, volume)
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["allowPrivilegeEscalation"] is False and sc["capabilities"]["drop"] == ["ALL"], name
            assert sc["readOnlyRootFilesystem"] is True and not sc.get("privileged"), name
            assert "limits" in container["resources"] and "requests" in container["resources"], name


def test_the_service_rolls_out_behind_its_readiness_and_the_pieces_name_each_other():
    found = objects()
    deployment = found[("Deployment", "scoring")]
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    (container,) = deployment["spec"]["template"]["spec"]["containers"]
    assert container["command"] == ["python", "-m", "services.scoring"]
    assert deployment["spec"]["strategy"]["rollingUpdate"]["maxUnavailable"] == 0
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    port = container["ports"][0]["containerPort"]
    assert port == Settings.model_fields["serving_port"].default
    known = {f"PIPELINE_{f.upper()}" for f in Settings.model_fields}
    assert {e["name"] for e in container["env"] if e["name"].startswith("PIPELINE_")} <= known
    for kind in ("Service", "PodDisruptionBudget"):
        spec = found[(kind, "scoring")]["spec"]
        selector = spec["selector"] if kind == "Service" else spec["selector"]["matchLabels"]
        assert selector.items() <= labels.items(), kind
    assert found[("Service", "scoring")]["spec"]["ports"][0]["port"] == port
    assert found[("HorizontalPodAutoscaler", "scoring")]["spec"]["scaleTargetRef"]["name"] == "scoring"
    assert found[("HorizontalPodAutoscaler", "scoring")]["spec"]["minReplicas"] >= 2  # the PDB can hold one
    (rule,) = found[("Ingress", "scoring")]["spec"]["rules"]
    assert [p["path"] for p in rule["http"]["paths"]] == ["/v1/score"]  # metrics and deploy stay inside
    assert found[("Ingress", "scoring")]["spec"]["tls"][0]["hosts"] == [rule["host"]]
    # The pipeline's deploy job reaches the Service by its cluster name.
    values = {e["name"]: e.get("value") for e in yaml.safe_load((K8S / "airflow-values.yaml").read_text())["env"]}
    assert values["PIPELINE_SERVING_URL"] == f"http://scoring.{deployment['metadata']['namespace']}.svc:{port}"
    assert container["image"] == values["PIPELINE_JOB_IMAGE"]


def test_every_secret_the_pods_read_is_in_the_example():
    defined = {(d["metadata"]["name"], key) for d in documents("scoring-secrets.example.yaml")
               for key in d["stringData"]}
    assert {v for d in documents("scoring-secrets.example.yaml") for v in d["stringData"].values()} == {"replace-me"}
    used = set()
    for _, pod in pods():
        for container in pod["containers"]:
            used |= {(e["valueFrom"]["secretKeyRef"]["name"], e["valueFrom"]["secretKeyRef"]["key"])
                     for e in container.get("env", []) if "valueFrom" in e}
            used |= {(s["secretRef"]["name"], key) for s in container.get("envFrom", [])
                     for (name, key) in defined if name == s["secretRef"]["name"]}
        for volume in pod.get("volumes", []):
            if "secret" in volume:
                used |= {(volume["secret"]["secretName"], item["key"]) for item in volume["secret"]["items"]}
    assert used <= defined, used - defined
    assert {name for name, _ in used} == {name for name, _ in defined} - {"scoring-metrics-key"}  # Prometheus's
