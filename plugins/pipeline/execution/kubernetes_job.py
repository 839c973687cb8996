"""``PIPELINE_JOB_RUNNER=kubernetes``: each job is a pod (cncf.kubernetes provider).

The pod runs ``python -m jobs <step> ...`` in the CPU image, or in the GPU image with
``nvidia.com/gpu`` limits, the GPU node selector and GPU tolerations when the job asks for GPUs
and ``PIPELINE_JOB_GPUS`` is true. The training pod may run on spot / preemptible nodes (its tolerations,
node affinity and grace period: :func:`spot_scheduling`): it checkpoints to the lake and its retry resumes.
CPU and memory become requests (memory also a limit). Plain
settings are passed as environment; credentials never are: they come from the Kubernetes Secrets
named in ``PIPELINE_K8S_ENV_SECRETS`` (``envFrom``). The job writes its result to
``/airflow/xcom/return.json``, which the provider's XCom sidecar returns. Failed pods are kept
for ``kubectl describe``/``logs``; succeeded pods are deleted.

Every pod passes the ``restricted`` Pod Security Standard that deploy/kubernetes/pipeline-rbac.yaml
enforces on the namespace: it runs as the image's non-root user with the runtime's default seccomp
profile, and each container (the job and the XCom sidecar) has no privilege escalation, no
capabilities and a read-only root filesystem; the job writes only to its ``emptyDir`` volumes,
``/tmp`` (also ``HOME``) and the state folder. No service account token is mounted: jobs do not
call the Kubernetes API.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

from airflow.providers.cncf.kubernetes.operators.pod import KubernetesPodOperator
from airflow.sdk.exceptions import AirflowException
from kubernetes.client import models as k8s

from jobs.shared.result import RESULT_FILE_ENV
from pipeline.execution.runners import DEPLOY_STEPS, GATE_STEPS, ONLINE_STEPS, PROMOTION_STEPS, Resources, forwarded_env
from pipeline.execution.task import JobTask
from pipeline.settings import AirflowSettings
from pipeline.web.links import JOB_LINKS

XCOM_RESULT_FILE = "/airflow/xcom/return.json"  # read by the provider's XCom sidecar
STATE_DIR = "/data/state"  # scratch space of a pod (the lake and MLflow are remote)
TMP_DIR = "/tmp"  # the only other writable place: Spark's, torch's and tempfile's scratch, and HOME


def _pairs(spec: str) -> dict[str, str]:
    return dict(item.split("=", 1) for item in filter(None, (p.strip() for p in spec.split(","))))


def env_secrets(settings: AirflowSettings, step: str) -> list[str]:
    """The Secrets a job's pod gets as environment: everyone's, for promote/rollback the promotion identity,
    for evaluate the gate's signing key, for deploy the scoring services' deploy key, for online the
    online store's URL."""
    names = settings.k8s_env_secrets.split(",")
    for steps, scoped in ((PROMOTION_STEPS, settings.k8s_promotion_env_secrets),
                          (GATE_STEPS, settings.k8s_gate_env_secrets),
                          (DEPLOY_STEPS, settings.k8s_deploy_env_secrets),
                          (ONLINE_STEPS, settings.k8s_online_env_secrets)):
        if step in steps:
            names += scoped.split(",")
    return [name.strip() for name in names if name.strip()]


def container_security(read_only_root: bool) -> k8s.V1SecurityContext:
    """What the ``restricted`` Pod Security Standard asks of every container, and a read-only root."""
    return k8s.V1SecurityContext(
        allow_privilege_escalation=False,
        capabilities=k8s.V1Capabilities(drop=["ALL"]),
        read_only_root_filesystem=read_only_root,
        run_as_non_root=True,
    )


def pod_security(settings: AirflowSettings) -> k8s.V1PodSecurityContext:
    return k8s.V1PodSecurityContext(
        run_as_non_root=True,
        run_as_user=settings.k8s_run_as_user,
        run_as_group=settings.k8s_run_as_group,
        seccomp_profile=k8s.V1SeccompProfile(type="RuntimeDefault"),
    )


def pod_resources(resources: Resources, gpu: bool) -> k8s.V1ResourceRequirements:
    memory = f"{resources.memory_gb:g}Gi"
    limits = {"memory": memory}
    if gpu:
        limits["nvidia.com/gpu"] = str(resources.gpu)
    return k8s.V1ResourceRequirements(requests={"cpu": f"{resources.cpu:g}", "memory": memory}, limits=limits)


def spot_scheduling(settings: AirflowSettings, step: str) -> dict:
    """Tolerations, node affinity and termination grace that let ``step``'s pod run on spot nodes
    (``PIPELINE_K8S_SPOT``; see docs/operations.md, "Spot training"); nothing for other steps."""
    steps = {s.strip() for s in settings.k8s_spot_steps.split(",")}
    if settings.k8s_spot == "off" or step not in steps:
        return {"tolerations": [], "affinity": None, "termination_grace_period": None}
    tolerations = [k8s.V1Toleration(key=key, operator="Equal", value=value, effect="NoSchedule")
                   for key, value in _pairs(settings.k8s_spot_tolerations).items()]
    terms = [k8s.V1NodeSelectorTerm(match_expressions=[k8s.V1NodeSelectorRequirement(key=key, operator="In",
                                                                                       values=[value])])
             for key, value in _pairs(settings.k8s_spot_node_labels).items()]
    affinity = None
    if settings.k8s_spot == "prefer" and terms:
        affinity = k8s.V1Affinity(node_affinity=k8s.V1NodeAffinity(
            preferred_during_scheduling_ignored_during_execution=[
                k8s.V1PreferredSchedulingTerm(weight=100, preference=term) for term in terms]))
    elif settings.k8s_spot == "require" and terms:  # the terms are ORed: any spot label will do
        affinity = k8s.V1Affinity(node_affinity=k8s.V1NodeAffinity(
            required_during_scheduling_ignored_during_execution=k8s.V1NodeSelector(node_selector_terms=terms)))
    return {"tolerations": tolerations, "affinity": affinity,
            "termination_grace_period": settings.k8s_spot_grace_seconds}


class KubernetesJobOperator(JobTask, KubernetesPodOperator):
    """A job in a Kubernetes pod; see the module docstring."""

    template_fields: Sequence[str] = (*KubernetesPodOperator.template_fields, *JobTask.job_template_fields)
    operator_extra_links = (*KubernetesPodOperator.operator_extra_links, *JOB_LINKS)
    ui_color = "#e0f0e0"

    def __init__(self, *, step: str, arguments: Sequence[str] = (), date: str | None = None,
                 pass_date: bool = True, pass_run_id: bool = False, job_resources: Resources = Resources(),
                 env: dict[str, str] | None = None, **kwargs):
        settings = AirflowSettings()
        gpu = settings.uses_gpu(job_resources)
        volumes = [k8s.V1Volume(name="state", empty_dir=k8s.V1EmptyDirVolumeSource()),
                   k8s.V1Volume(name="tmp", empty_dir=k8s.V1EmptyDirVolumeSource(size_limit=settings.k8s_tmp_size))]
        mounts = [k8s.V1VolumeMount(name="state", mount_path=STATE_DIR),
                  k8s.V1VolumeMount(name="tmp", mount_path=TMP_DIR)]
        if gpu or job_resources.processes > 1:  # torch data loading / NCCL need a real /dev/shm
            volumes.append(k8s.V1Volume(name="shm", empty_dir=k8s.V1EmptyDirVolumeSource(medium="Memory")))
            mounts.append(k8s.V1VolumeMount(name="shm", mount_path="/dev/shm"))
        kwargs.setdefault("image", settings.image(job_resources))
        spot = spot_scheduling(settings, step)
        gpu_tolerations = [k8s.V1Toleration(key=key.strip(), operator="Exists", effect="NoSchedule")
                           for key in settings.k8s_gpu_tolerations.split(",") if key.strip()] if gpu else []
        super().__init__(
            name=f"job-{step}",
            namespace=settings.k8s_namespace,
            service_account_name=settings.k8s_service_account or None,
            in_cluster=settings.k8s_in_cluster,
            config_file=settings.k8s_config_file or None,
            image_pull_policy=settings.k8s_image_pull_policy,
            container_resources=pod_resources(job_resources, gpu),
            node_selector=_pairs(settings.k8s_gpu_node_selector) if gpu else None,
            tolerations=[*gpu_tolerations, *spot["tolerations"]] or None,
            affinity=spot["affinity"],
            termination_grace_period=spot["termination_grace_period"],
            env_from=[k8s.V1EnvFromSource(secret_ref=k8s.V1SecretEnvSource(name=name.strip()))
                      for name in env_secrets(settings, step)],
            volumes=volumes,
            volume_mounts=mounts,
            labels={"app.kubernetes.io/part-of": "fraud-pipeline", "fraud-pipeline/step": step},
            security_context=pod_security(settings),
            container_security_context=container_security(settings.k8s_read_only_root),
            xcom_sidecar_container_security_context=container_security(True),
            automount_service_account_token=False,
            do_xcom_push=True,
            get_logs=True,
            on_finish_action="delete_succeeded_pod",
            termination_message_policy="FallbackToLogsOnError",  # the job's error text becomes the reason
            startup_timeout_seconds=900 if gpu else 300,  # GPU images are large to pull
            **kwargs,
        )
        self._init_job(step=step, arguments=arguments, date=date, pass_date=pass_date, pass_run_id=pass_run_id,
                       job_resources=job_resources, env=env)
        self._exit_code: int | None = None

    def prepare(self, context, environ=None) -> None:
        """Fill in the pod's command line and environment for this run (credentials excluded)."""
        spec = self.build_spec(context)
        self.cmds, self.arguments = spec.command[:1], spec.command[1:]
        plain, secret = forwarded_env(os.environ if environ is None else environ, spec.env, spec.step)
        plain.pop("PIPELINE_STATE_DIR", None)  # the worker's path means nothing in the pod
        if secret:
            self.log.info("not passed to the pod (provide them through PIPELINE_K8S_ENV_SECRETS): %s",
                          ", ".join(sorted(secret)))
        env = {**plain, "PIPELINE_STATE_DIR": STATE_DIR, RESULT_FILE_ENV: XCOM_RESULT_FILE, "PYTHONUNBUFFERED": "1",
               # The image's home is on the read-only root: caches and configs (matplotlib, torch) go to /tmp.
               "HOME": TMP_DIR, "TMPDIR": TMP_DIR}
        self.env_vars = [k8s.V1EnvVar(name=k, value=v) for k, v in sorted(env.items())]

    def execute(self, context):
        self.prepare(context)
        self.log.info("kubernetes runner: %s %s in %s/%s (resources %s)", " ".join(self.cmds),
                      " ".join(self.arguments), self.namespace, self.image, self.job_resources)
        try:
            result = super().execute(context)
        except AirflowException as exc:
            if self._exit_code is None:
                raise
            raise self.job_failed(self._exit_code, str(exc).split("\nremote_pod:")[0]) from None
        return self.publish(result or {}, context)

    def cleanup(self, pod, remote_pod, xcom_result=None, context=None):
        """Remember the job's exit code before the provider turns a failure into an exception."""
        for status in (getattr(getattr(remote_pod, "status", None), "container_statuses", None) or []):
            if status.name == self.base_container_name and status.state and status.state.terminated:
                self._exit_code = status.state.terminated.exit_code
        return super().cleanup(pod, remote_pod, xcom_result=xcom_result, context=context)
