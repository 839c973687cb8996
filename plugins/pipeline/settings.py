"""The Airflow side's one settings object (the jobs have theirs: ``jobs.settings``).

Read from ``PIPELINE_*`` in the environment of the scheduler, workers and API server; DAG files,
operators and the report view ask it, never ``os.environ``.
"""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.shared.names import MODEL_NAME


class AirflowSettings(BaseSettings):
    """The Airflow side's settings: where jobs run and where the UI sends a browser.

    Each field is ``PIPELINE_<FIELD>`` in the scheduler's, worker's and API server's environment.
    """

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", extra="ignore", use_attribute_docstrings=True)

    job_runner: str = "local"
    """Where each job runs: a subprocess on the worker (local), a Docker container or a Kubernetes pod."""
    job_image: str = "fraud-pipeline-jobs:latest"
    """CPU image (jobs/Dockerfile)"""
    job_image_gpu: str = "fraud-pipeline-jobs-gpu:latest"
    """CUDA image (jobs/Dockerfile.gpu)"""
    job_gpus: bool = True
    """False: jobs that ask for GPUs run the CPU image without GPUs (a laptop's docker-compose stack)."""
    # --- docker ---
    docker_url: str = "unix://var/run/docker.sock"
    """The Docker daemon the docker runner talks to (in compose: the socket proxy)."""
    docker_network: str = ""
    """E.g. the compose network, so jobs reach minio and mlflow by name."""
    docker_mounts: str = ""
    """"volume-or-/host/path:/container/path,..."."""
    # --- kubernetes ---
    k8s_namespace: str = "fraud-pipeline"
    """Namespace of the job pods."""
    k8s_service_account: str = ""
    """Service account of the job pods (deploy/kubernetes/pipeline-rbac.yaml); empty: the default."""
    k8s_in_cluster: bool = True
    """The scheduler runs inside the cluster (in-cluster config) rather than from a kubeconfig."""
    k8s_config_file: str = ""
    """Kubeconfig file when not in the cluster."""
    k8s_env_secrets: str = ""
    """Secrets whose keys become the pod's environment (envFrom), comma-separated."""
    k8s_promotion_env_secrets: str = ""
    """Secrets for the promote and rollback pods only: the promotion identity (PIPELINE_PROMOTION_*)."""
    k8s_gate_env_secrets: str = ""
    """Secrets for the evaluate pod only: the gate's signing key (PIPELINE_GATE_SIGNING_KEY)."""
    k8s_deploy_env_secrets: str = ""
    """Secrets for the deploy pod only: the scoring services' deploy key (PIPELINE_SERVING_DEPLOY_KEY)."""
    k8s_online_env_secrets: str = ""
    """Secrets for the online pod only: the online store's URL with its password (PIPELINE_SERVING_STORE_URL)."""
    k8s_gpu_node_selector: str = "nvidia.com/gpu.present=true"
    """"key=value,...", GPU jobs only."""
    k8s_gpu_tolerations: str = "nvidia.com/gpu"
    """Taint keys tolerated by GPU jobs (NoSchedule)"""
    k8s_spot: str = Field(default="prefer", pattern="^(off|allow|prefer|require)$")
    """Spot / preemptible nodes for the steps in PIPELINE_K8S_SPOT_STEPS: off; allow (tolerate the spot taints);
    prefer (also prefer spot nodes: cheaper when there are any, on-demand when not); require (only spot nodes)."""
    k8s_spot_steps: str = "train"
    """Steps whose pods may run on spot nodes: training saves a checkpoint to the lake and its retry resumes it."""
    k8s_spot_tolerations: str = "cloud.google.com/gke-spot=true,kubernetes.azure.com/scalesetpriority=spot"
    """"key=value,..." taints of spot nodes the spot steps tolerate (NoSchedule): GKE's and AKS's by default."""
    k8s_spot_node_labels: str = ("cloud.google.com/gke-spot=true,kubernetes.azure.com/scalesetpriority=spot,"
                                 "eks.amazonaws.com/capacityType=SPOT,karpenter.sh/capacity-type=spot")
    """"key=value,..." labels that mark a spot node (any one of them): GKE, AKS, EKS node groups, Karpenter."""
    k8s_spot_grace_seconds: int = 60
    """Termination grace of a spot pod: the job checkpoints on SIGTERM (a node's preemption notice) within it."""
    k8s_image_pull_policy: str = "IfNotPresent"
    """Image pull policy of the job pods."""
    k8s_run_as_user: int = 50000
    """The job images' user (jobs/Dockerfile: uid 50000, gid 0, as Airflow's images); pods run as it, never root."""
    k8s_run_as_group: int = 0
    """The job pods' group (gid 0, as Airflow's images)."""
    k8s_read_only_root: bool = True
    """Read-only root filesystem: jobs write only to /tmp and the state folder (emptyDir volumes)."""
    k8s_tmp_size: str = "8Gi"
    """The /tmp emptyDir's size limit (Spark's and torch's scratch)"""
    # --- links (the API server's report view, pipeline.web.reports) ---
    mlflow_ui_url: str = ""
    """The MLflow UI as a browser reaches it; empty: the tracking server when it is one (http[s]://), else the one
    `make up` starts.
    """
    mlflow_tracking_uri: str = ""
    """The jobs' tracking URI: when it is a server (http[s]://), the MLflow UI link goes there."""

    # --- the lake, as the Airflow side watches it ---
    aws_conn_id: str = "lake_s3"
    """Airflow connection the S3 sensor and the event watcher use."""
    sensor_deferrable: bool = False
    """Defer the raw-zone sensor to the triggerer."""
    lake_events_queue: str = ""
    """SQS queue URL receiving the bucket's S3 event notifications for raw/ (enables the event-driven AssetWatcher
    on top of the schedule)."""
    lake_events_poll_seconds: int = 30
    """How often the AssetWatcher polls the S3 events queue."""
    model_name: str = MODEL_NAME
    """The registered model whose champion the Asset ``champion_model`` stands for (the jobs read the same variable)."""
    # --- DAG options (read when the DAG files are parsed) ---
    train_processes: int = Field(default=1, ge=1)
    """Training processes per task (torchrun, one per GPU on a GPU node); 1: a plain process."""
    promotion_approval: bool = False
    """A person approves each promotion in the UI (Airflow's human-in-the-loop form) before the alias moves."""
    # --- notifications ---
    notify_email: str = ""
    """Comma-separated addresses told of a failed task, a refused gate, drift and a promotion; empty: nobody."""
    notify_from: str = "fraud-pipeline@localhost"
    """The sender of those mails."""
    predictions_deadline_minutes: int | None = None
    """Mail the recipients when a night's predictions are not in this many minutes after its run was queued."""

    @property
    def resolved_mlflow_ui_url(self) -> str:
        if self.mlflow_ui_url:
            return self.mlflow_ui_url.rstrip("/")
        if self.mlflow_tracking_uri.startswith(("http://", "https://")):
            return self.mlflow_tracking_uri.rstrip("/")
        return "http://127.0.0.1:5000"

    def image(self, resources) -> str:
        """The job image for a task's :class:`~pipeline.execution.runners.Resources`."""
        return self.job_image_gpu if self.uses_gpu(resources) else self.job_image

    def uses_gpu(self, resources) -> bool:
        return self.job_gpus and resources.gpu > 0
