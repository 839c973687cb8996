"""One home for configuration: every knob is read from the environment (prefix ``PIPELINE_``).

Defaults give the embedded, single-machine setup; the docker-compose stack and production
override them through environment variables only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

from jobs.shared.names import MODEL_NAME

PROJECT_ROOT = Path(__file__).resolve().parent.parent


def in_groups(*groups: str) -> dict:
    """Field metadata: the step groups a setting belongs to (see :meth:`Settings.group`)."""
    return {"groups": list(groups)}


class Settings(BaseSettings):
    """Pipeline settings. Each field can be set as ``PIPELINE_<FIELD_NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", extra="ignore", use_attribute_docstrings=True)

    # --- where things live -------------------------------------------------------------
    state_dir: Path = Field(
        default=PROJECT_ROOT / ".state",
        description="Local state folder (lake, Airflow home, MLflow store, run summary).",
    )
    lake_uri: str = Field(
        default="",
        description="Lake root URI; empty means file://<state_dir>/lake.",
    )
    mlflow_tracking_uri: str = Field(
        default="",
        description="MLflow tracking URI; empty means sqlite:///<state_dir>/mlflow/mlflow.db.",
    )
    expectations_dir: Path = Field(default=PROJECT_ROOT / "expectations")
    """Folder of the reviewed data contracts (Great Expectations suites as JSON)."""

    # --- MLflow identities: a tracking server with authentication (services/mlflow_auth.py) --------------
    # Every job signs in as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's own variables).
    # The promote and rollback jobs, which move aliases, sign in as this identity instead; the runners
    # give PIPELINE_PROMOTION_* to those two jobs only.
    promotion_mlflow_username: str = Field(
        default="", description="MLflow user of the promote and rollback jobs; empty: the jobs' own identity.")
    promotion_mlflow_password: SecretStr = SecretStr("")
    """Password of the promotion identity (promote and rollback jobs only)."""
    # The gate signs its verdict (jobs/storage/verdict.py): the runners give the private key to the evaluate
    # job only; promotion, scoring and drift verify with the public key. Both empty (the embedded
    # default): a key pair generated once under <state_dir>/keys/.
    gate_signing_key: SecretStr = Field(default=SecretStr(""), description="Ed25519 private key (base64, 32 "
                                        "bytes) the evaluate job signs gate verdicts with; the evaluate job only.")
    gate_public_key: str = Field(default="", description="Ed25519 public key (base64) that promotion, scoring "
                                 "and drift check gate verdicts with; empty: the state folder's key pair.")

    # --- Spark --------------------------------------------------------------------------
    spark_master: str = Field(
        default="local[*]", description="Spark master URL: local[*] or a cluster (spark://, k8s://)."
    )
    spark_driver_memory: str = "1g"
    """Memory of the Spark driver (the local[*] executors share it)."""
    spark_staging_dir: Path | None = Field(
        default=None,
        description="Where Spark reads staged input and writes output before it is published (default: the "
                    "system temp folder). On a cluster, a folder every executor sees at the same path (NFS, EFS).",
    )

    # --- validation ---------------------------------------------------------------------
    max_bad_row_share: float = 0.05
    """A delivery with more bad rows than this share is rejected whole: it points to a broken upstream export rather
    than a few bad records.
    """
    claim_ttl_hours: float = 24.0
    """A claim on a raw object whose run never finished may be taken over after this long. It must outlive the longest
    life of an ingestion run (ingest + validate, each 2 h x 3 tries with back-off: about 13 h); tests/dags check it
    against the DAG's timeouts and retries.
    """
    max_delivery_lag_days: int = 7
    """Late deliveries are normal: a row may be up to this many days older than its date= partition."""
    clock_skew_minutes: int = 15
    """A row may be at most this far past the end of its partition's day (clocks of card terminals drift)."""

    max_object_mb: int = 256
    """An object delivered larger than this (from the listing, before any download) is rejected whole (too_large)
    instead of exhausting memory.
    """
    max_decompressed_mb: int = 1024
    """An object larger than this after gunzip is rejected whole (too_large), before it fills the disk."""
    max_read_attempts: int = Field(default=3, ge=1)
    """A raw object the store refuses to read (AccessDenied by a key policy, archived) is tried in this many ingestion
    runs, the others ingested meanwhile, then recorded as rejected with the store's answer (and people are told):
    one unreadable object never blocks the other days.
    """
    batch_rows: int = Field(default=125_000, ge=10)
    """Rows parsed and validated at a time: memory is bounded by this, whatever an object's size. Larger batches cost
    fewer Great Expectations runs (each has a fixed cost, Data Docs included, of about 0.3 s): at 1M rows, 250k
    batches check 170k rows/s in 1.0 GiB, 125k batches 128k rows/s in 0.7 GiB (docs/performance.md).
    """

    # --- storage ----------------------------------------------------------------------
    storage_max_retries: int = 3
    """Retries of one S3 request inside delta-rs (object_store) before the job fails (and Airflow retries)."""
    storage_retry_timeout_s: int = 30
    """How long delta-rs keeps retrying one S3 request before it gives up."""
    vacuum_retention_hours: int = 168
    """Files no table version newer than this references are deleted by the vacuum (time travel horizon)."""

    # --- model --------------------------------------------------------------------------
    model_name: str = MODEL_NAME
    """The registered model in MLflow."""
    experiment_name: str = "fraud-detection"
    """The MLflow experiment training, evaluation and drift runs are logged to."""
    champion_alias: str = "champion"
    """The registry alias scoring and drift use: the model in production."""
    previous_champion_alias: str = "previous-champion"
    """The alias promotion moves the old champion to; rollback restores it."""
    allow_ungated_champion: bool = False
    """Emergency only: let scoring and the drift monitor use a champion whose version never passed its gate (an alias
    moved by hand). Every use is logged as an override.
    """
    train_window_days: int = Field(default=30, json_schema_extra=in_groups("training"))
    """History a model is fitted on."""
    holdout_days: int = Field(default=5, json_schema_extra=in_groups("training"))
    """Most recent days, never seen in fitting: the time-based holdout."""
    seed: int = Field(default=42, json_schema_extra=in_groups("training", "gate", "drift"))
    """Seed of every random choice (split, sampling, initialisation, bootstrap): a re-run gives the same model."""
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.",
                        json_schema_extra=in_groups("training"))
    code_version: str = Field(
        default="", description="A release name or git sha recorded with every model (images set it); the "
                                "recorded version always ends with a fingerprint of the code itself."
    )
    airflow_run_id: str = ""
    """Set by the Airflow task that runs the job (pipeline.execution.operators): the real run id and the task
    instance's URL, recorded on MLflow runs and model versions so each links back.
    """
    airflow_task_url: str = ""
    """Set by the Airflow task that runs the job: the task instance's URL, recorded with the run id."""
    airflow_dag_id: str = ""
    """Set by the Airflow task that runs the job: its DAG (with the run id and task id, the key of its checkpoint)."""
    airflow_task_id: str = ""
    """Set by the Airflow task that runs the job: its task id (and map index when mapped), never the try number."""
    cost_usd_per_vcpu_hour: float = 0.031611
    """The run summary's cost estimate: the price of one vCPU-hour (default: a general-purpose cloud VM's list price
    per vCPU, GCP N2 on demand in us-central1; set your own). See docs/performance.md, *What a run costs*."""
    cost_usd_per_gib_hour: float = 0.004237
    """The run summary's cost estimate: the price of one GiB of memory for an hour (the same VM's memory price)."""
    cost_usd_per_gpu_hour: float = 3.0
    """The run summary's cost estimate: the price of one GPU-hour (an order of magnitude for a data-centre GPU on
    demand; set your own)."""
    checkpoint_minutes: float = Field(default=5.0, gt=0)
    """Training saves a checkpoint to the lake at every epoch's end and at least this often within an epoch; a
    retry of the task (a preempted spot node, a killed process) resumes from it. See docs/operations.md.
    """
    airflow_ui_url: str = "http://127.0.0.1:8080"
    """Where a person opens the Airflow UI (`make up`'s default): the run summary's links start here."""
    max_epochs: int = Field(default=30, json_schema_extra=in_groups("training"))
    """Most passes over the fitting rows; early stopping usually ends sooner."""
    early_stopping_patience: int = Field(default=4, json_schema_extra=in_groups("training"))
    """Epochs without a better validation PR-AUC before training stops (the best epoch is kept)."""
    batch_size: int = Field(default=512, json_schema_extra=in_groups("training"))
    """Rows per optimiser step."""
    learning_rate: float = Field(default=2e-3, json_schema_extra=in_groups("training"))
    """Adam's learning rate."""
    negative_sample_rate: float = Field(default=1.0, gt=0.0, le=1.0, json_schema_extra=in_groups("training"))
    """Negative downsampling: keep every fraud and this share of the other fitting rows (1.0 = all). Validation and
    holdout rows are never sampled; bench/training.py measures the PR-AUC cost.
    """

    # --- gate ---------------------------------------------------------------------------
    min_pr_auc: float = Field(default=0.30, json_schema_extra=in_groups("gate"))
    """PR-AUC floor a model must clear on the holdout: below it a fraud model is worse than useless noise."""
    min_roc_auc: float = Field(default=0.80, json_schema_extra=in_groups("gate"))
    """ROC-AUC floor a model must clear on the holdout."""
    non_inferiority_margin: float = Field(default=0.01, json_schema_extra=in_groups("gate"))
    """A challenger may be at most this much worse (PR-AUC) than the champion and still win, so that retraining on
    fresh data is not blocked by noise.
    """
    recent_champions: int = Field(default=3, ge=0, json_schema_extra=in_groups("gate"))
    """The challenger may also not fall more than the margin below the best of the last K champions (on the same
    holdout): no slow ratchet down through a chain of "almost as good" promotions.
    """
    onnx_parity_tolerance: float = Field(default=1e-4, json_schema_extra=in_groups("gate"))
    """Largest |ONNX - PyTorch| score difference on the holdout the gate accepts."""
    bootstrap_resamples: int = Field(default=300, json_schema_extra=in_groups("gate"))
    """Paired resamples for the challenger-vs-champion interval."""
    latency_budget_ms: float = Field(default=50.0, json_schema_extra=in_groups("gate"))
    """Batch scoring must keep up with a day of transactions on one CPU core."""
    decision_precision_target: float = Field(default=0.9, gt=0.0, lt=1.0, json_schema_extra=in_groups("training"))
    """The operating point (jobs.ml.calibration): the threshold is chosen on validation rows for this precision; on the
    holdout, the gate requires at least these precision and recall at it: floors (over 10x the ~2 % fraud base
    rate), since a holdout that drifted away from the validation rows legitimately costs precision (0.34 measured on
    the e2e's drifted day).
    """
    min_threshold_precision: float = Field(default=0.25, json_schema_extra=in_groups("gate"))
    """Precision floor at the operating threshold on the holdout."""
    min_threshold_recall: float = Field(default=0.2, json_schema_extra=in_groups("gate"))
    """Recall floor at the operating threshold on the holdout."""

    # --- live evaluation: shadow, canary, guardrails (jobs/steps/live.py) ------------------
    live_evaluation: Literal["off", "shadow", "canary"] = Field(default="off", json_schema_extra=in_groups("live"))
    """What a challenger that passed its offline gate does next. ``off``: it is promoted at once (or after the
    approval). ``shadow``: it takes the ``challenger`` alias, every service scores it beside the champion and
    answers with the champion's decision; the watch_challenger DAG promotes it or takes it off traffic on the
    live evidence. ``canary``: as shadow, and a sticky share of cards (``canary_share``) gets its decision.
    """
    challenger_alias: str = "challenger"
    """The registry alias of the version on live trial (shadow or canary)."""
    shadow_share: float = Field(default=1.0, gt=0.0, le=1.0, json_schema_extra=in_groups("live"))
    """Share of transactions (by transaction id, so a retry is the same) the challenger scores in its shadow."""
    canary_share: float = Field(default=0.05, gt=0.0, le=1.0, json_schema_extra=in_groups("live"))
    """In canary mode, the share of cards (sticky: by card id) served by the challenger's decision; 0.5 is an A/B."""
    guardrail_bake_minutes: float = Field(default=240.0, ge=0.0, json_schema_extra=in_groups("live"))
    """How long a challenger is watched on live traffic before it may be promoted (a nightly peak and a quiet
    hour both fall in four hours)."""
    guardrail_max_wait_hours: float = Field(default=48.0, gt=0.0, json_schema_extra=in_groups("live"))
    """If the bake period ended without ``guardrail_min_requests``, the watch goes on up to this; then the
    challenger leaves traffic unpromoted (not enough evidence)."""
    guardrail_check_minutes: float = Field(default=5.0, gt=0.0, json_schema_extra=in_groups("live"))
    """How often the guardrails are checked while baking: the longest a tripped guardrail waits for its rollback."""
    guardrail_min_requests: int = Field(default=2000, ge=1, json_schema_extra=in_groups("live"))
    """Transactions the challenger must have scored before it may be promoted: at 2,000, a 1 % error ceiling and a
    0.1 PSI are each told apart from noise (docs/serving.md)."""
    guardrail_trip_requests: int = Field(default=200, ge=1, json_schema_extra=in_groups("live"))
    """Transactions before a guardrail may trip: fewer are noise; a broken challenger shows within them."""
    guardrail_max_error_rate: float = Field(default=0.01, ge=0.0, le=1.0, json_schema_extra=in_groups("live"))
    """Largest share of the challenger's scorings that may fail."""
    guardrail_max_p99_ms: float = Field(default=10.0, gt=0.0, json_schema_extra=in_groups("live"))
    """Largest p99 of the challenger's model time per request (the champion's is well under 1 ms)."""
    guardrail_max_flag_rate_ratio: float = Field(default=2.0, gt=1.0, json_schema_extra=in_groups("live"))
    """The challenger may flag at most this many times more, or this many times fewer, transactions than the
    champion on the same requests."""
    guardrail_max_psi: float = Field(default=0.25, gt=0.0, json_schema_extra=in_groups("live"))
    """Largest population stability index of the challenger's scores against the champion's on the same requests
    (0.1 moderate, 0.25 a major shift, as credit scoring reads it)."""
    guardrail_min_agreement: float = Field(default=0.95, ge=0.0, le=1.0, json_schema_extra=in_groups("live"))
    """Smallest share of requests on which challenger and champion take the same decision."""
    challenger_fault: str = ""
    """A drill (services/scoring): inject a fault into the challenger's path of every service, to prove the
    guardrails trip: ``latency=<ms>`` or ``errors=<share>``. Empty in production."""

    # --- drift --------------------------------------------------------------------------
    drift_share_threshold: float = Field(default=0.3, json_schema_extra=in_groups("drift"))
    """Share of monitored columns that must drift before the data set counts as drifted."""
    drift_sample_rows: int = Field(default=200_000, ge=1000, json_schema_extra=in_groups("drift"))
    """Rows of the checked window the drift check compares: all of them when the window holds no more,
    else a seeded uniform sample of this many, read in record batches (memory and time bounded at any
    volume). The report states the sample and what it can detect (``sample`` in the drift JSON)."""
    max_pr_auc_drop: float = Field(default=0.10, json_schema_extra=in_groups("drift"))
    """A champion whose PR-AUC on recent labelled data is this much below its holdout PR-AUC counts as drifted."""
    served_label_days: int = Field(default=7, ge=1, json_schema_extra=in_groups("drift"))
    """Days of transactions, ending at the checked day, whose late labels (chargebacks) are joined to the decisions
    the scoring services served: precision, recall and PR-AUC of what was actually served, per day and version."""
    served_min_pr_auc: float = Field(default=0.30, json_schema_extra=in_groups("drift"))
    """Floor of the PR-AUC of what the champion served over ``served_label_days`` (on 30 labelled frauds at least):
    below it, retraining is asked, as for drift (cooldown and limits included)."""
    retrain_cooldown_days: int = Field(default=3, json_schema_extra=in_groups("drift"))
    """Against retraining storms: no new request within the cooldown, and at most N per window."""
    max_retrains_per_window: int = Field(default=2, json_schema_extra=in_groups("drift"))
    """At most this many retraining requests within retrain_window_days."""
    retrain_window_days: int = Field(default=14, json_schema_extra=in_groups("drift"))
    """The window max_retrains_per_window counts in."""

    # --- real-time scoring (services/scoring) ---------------------------------------------
    serving_host: str = "127.0.0.1"
    """Address the scoring service listens on (loopback unless said otherwise)."""
    serving_port: int = Field(default=8000, ge=1, le=65535)
    """Port of the scoring service."""
    serving_max_batch: int = Field(default=100, ge=1)
    """Most transactions one scoring request may carry (more: 422)."""
    serving_max_body_kb: int = Field(default=256, ge=1)
    """Largest request body the scoring service reads (larger: 413)."""
    serving_rate_limit: str = "2000/second"
    """Requests one client may make (a ``limits`` rate string: N/second, N/minute); more: 429 with Retry-After."""
    serving_refresh_seconds: float = Field(default=10.0, gt=0)
    """How often a running service asks the registry whether the champion moved (then loads, verifies, swaps)."""
    serving_state_dir: Path | None = None
    """Where a scoring service keeps its API keys, its registration and its SQLite store; empty: ``<state>/serving``."""
    serving_store_url: SecretStr = SecretStr("")
    """The online feature store: empty for SQLite in the state folder (one process), or a Redis URL
    (``redis://[:password@]host:6379/0``, ``rediss://`` for TLS) that every replica shares."""
    serving_decisions: bool = True
    """Write every first answer to the lake's decisions log (Delta ``decisions``: versions, scores, latency)."""
    serving_decisions_buffer_rows: int = Field(default=1000, ge=1)
    """Decisions a service buffers before it writes them (a crash loses at most these)."""
    serving_decisions_flush_seconds: float = Field(default=5.0, gt=0)
    """Longest a decision waits in the buffer before it is written."""
    serving_url: str = ""
    """Where the deploy_model DAG reaches the running scoring services (comma-separated base URLs);
    empty: the services running on this machine that registered in ``<state>/serving/endpoints``."""
    serving_deploy_key: SecretStr = SecretStr("")
    """The pipeline's API key to the scoring services (role ``deploy``); empty: ``<state>/serving/deploy-key``."""
    serving_deploy_timeout_seconds: float = Field(default=120.0, gt=0)
    """How long a deployment waits for a service to serve the new champion before it fails."""

    def group(self, name: str) -> dict:
        """The settings of one step's group (``training``, ``gate``, ``drift``), name -> value.

        What the step's result depends on, so its skip record holds exactly these: a setting joins
        a group where it is declared, never in a list kept by hand elsewhere.
        """
        fields = type(self).model_fields.items()
        return {k: getattr(self, k) for k, f in fields if name in (f.json_schema_extra or {}).get("groups", ())}

    @property
    def resolved_code_version(self) -> str:
        """What skip records and models record as the code: the setting (if any) and the source's fingerprint.

        Derived from the code itself, so changed code never matches a record of the old code and
        never skips, whatever the setting says.
        """
        fingerprint = f"src-{source_fingerprint(self.expectations_dir)}"
        return f"{self.code_version}+{fingerprint}" if self.code_version else fingerprint

    @property
    def resolved_lake_uri(self) -> str:
        """Lake root as a URI; defaults to a folder inside the state directory."""
        if self.lake_uri:
            return self.lake_uri.rstrip("/")
        return (self.state_dir.resolve() / "lake").as_uri()

    @property
    def resolved_tracking_uri(self) -> str:
        """MLflow tracking URI; defaults to a SQLite store inside the state directory."""
        if self.mlflow_tracking_uri:
            return self.mlflow_tracking_uri
        return f"sqlite:///{(self.state_dir.resolve() / 'mlflow' / 'mlflow.db')}"

    @property
    def serving_dir(self) -> Path:
        """The scoring service's files: API keys, its registration, the SQLite online store."""
        return (self.serving_state_dir or self.state_dir / "serving").resolve()

    @property
    def mlflow_artifact_root(self) -> str:
        """Where MLflow artifacts go for experiments this project creates."""
        return (self.state_dir.resolve() / "mlflow" / "artifacts").as_uri()


@lru_cache(maxsize=4)
def source_fingerprint(expectations_dir: Path) -> str:
    """SHA-256 (12 hex digits) of the job package's Python sources and the data contracts, by path."""
    import hashlib

    package = Path(__file__).resolve().parent
    digest = hashlib.sha256()
    for path in sorted(package.rglob("*.py")) + sorted(Path(expectations_dir).glob("*.json")):
        digest.update(path.name.encode() if path.suffix == ".json" else path.relative_to(package).as_posix().encode())
        digest.update(b"\0")
        digest.update(path.read_bytes())
        digest.update(b"\0")
    return digest.hexdigest()[:12]


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    """Settings for this process (read once from the environment)."""
    return Settings()
