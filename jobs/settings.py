"""One home for configuration: every knob is read from the environment (prefix ``PIPELINE_``).

Defaults give the embedded, single-machine setup; the docker-compose stack and production
override them through environment variables only.
"""

from __future__ import annotations

from functools import lru_cache
from pathlib import Path

from pydantic import Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

PROJECT_ROOT = Path(__file__).resolve().parent.parent


class Settings(BaseSettings):
    """Pipeline settings. Each field can be set as ``PIPELINE_<FIELD_NAME>`` in the environment."""

    model_config = SettingsConfigDict(env_prefix="PIPELINE_", extra="ignore")

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

    # --- MLflow identities: a tracking server with authentication (jobs/mlflow_auth.py) --------------
    # Every job signs in as MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD (MLflow's own variables).
    # The promote and rollback jobs, which move aliases, sign in as this identity instead; the runners
    # give PIPELINE_PROMOTION_* to those two jobs only.
    promotion_mlflow_username: str = Field(
        default="", description="MLflow user of the promote and rollback jobs; empty: the jobs' own identity.")
    promotion_mlflow_password: SecretStr = SecretStr("")
    # The gate signs its verdict (jobs/verdict.py): the runners give the private key to the evaluate
    # job only; promotion, scoring and drift verify with the public key. Both empty (the embedded
    # default): a key pair generated once under <state_dir>/keys/.
    gate_signing_key: SecretStr = Field(default=SecretStr(""), description="Ed25519 private key (base64, 32 "
                                        "bytes) the evaluate job signs gate verdicts with; the evaluate job only.")
    gate_public_key: str = Field(default="", description="Ed25519 public key (base64) that promotion, scoring "
                                 "and drift check gate verdicts with; empty: the state folder's key pair.")

    # --- Airflow side of the lake ---------------------------------------------------------
    aws_conn_id: str = Field(default="lake_s3", description="Airflow connection the S3 sensor uses.")
    sensor_deferrable: bool = Field(default=False, description="Defer the raw-zone sensor to the triggerer.")
    lake_events_queue: str = Field(
        default="", description="SQS queue URL receiving the bucket's S3 event notifications for raw/ "
                                "(enables the event-driven AssetWatcher on top of the schedule)."
    )
    lake_events_poll_seconds: int = 30

    # --- Spark --------------------------------------------------------------------------
    spark_master: str = Field(
        default="local[*]", description="Spark master URL: local[*] or a cluster (spark://, k8s://)."
    )
    spark_driver_memory: str = "1g"
    spark_staging_dir: Path | None = Field(
        default=None,
        description="Where Spark reads staged input and writes output before it is published (default: the "
                    "system temp folder). On a cluster, a folder every executor sees at the same path (NFS, EFS).",
    )

    # --- validation ---------------------------------------------------------------------
    # A delivery with more bad rows than this share is rejected whole: it points to a broken
    # upstream export rather than a few bad records.
    max_bad_row_share: float = 0.05
    # A claim on a raw object whose run never finished may be taken over after this long. It must
    # outlive the longest life of an ingestion run (ingest + validate, each 2 h x 3 tries with
    # back-off: about 13 h); tests/dags check it against the DAG's timeouts and retries.
    claim_ttl_hours: float = 24.0
    # Late deliveries are normal: a row may be up to this many days older than its date= partition.
    max_delivery_lag_days: int = 7
    # ...and at most this far past the end of its partition's day (clocks of card terminals drift).
    clock_skew_minutes: int = 15

    # Objects above these sizes are rejected whole (reason too_large) instead of exhausting memory:
    # the delivered size (from the listing, before any download) and the size after gunzip.
    max_object_mb: int = 256
    max_decompressed_mb: int = 1024
    # A raw object the store refuses to read (AccessDenied by a key policy, archived) is tried in
    # this many ingestion runs, the others ingested meanwhile, then recorded as rejected with the
    # store's answer (and people are told): one unreadable object never blocks the other days.
    max_read_attempts: int = Field(default=3, ge=1)
    # Rows parsed and validated at a time: memory is bounded by this, whatever an object's size.
    # Larger batches cost fewer Great Expectations runs (each has a fixed cost, Data Docs included,
    # of about 0.3 s): at 1M rows, 250k batches check 170k rows/s in 1.0 GiB, 125k batches 128k
    # rows/s in 0.7 GiB (README, Performance).
    batch_rows: int = Field(default=125_000, ge=10)

    # --- storage ----------------------------------------------------------------------
    # Retries of one S3 request inside delta-rs (object_store) before the job fails (and Airflow retries).
    storage_max_retries: int = 3
    storage_retry_timeout_s: int = 30
    # Files no table version newer than this references are deleted by the vacuum (time travel horizon).
    vacuum_retention_hours: int = 168

    # --- model --------------------------------------------------------------------------
    model_name: str = "fraud-detector"
    experiment_name: str = "fraud-detection"
    champion_alias: str = "champion"
    previous_champion_alias: str = "previous-champion"
    # Emergency only: let scoring and the drift monitor use a champion whose version never passed
    # its gate (an alias moved by hand). Every use is logged as an override.
    allow_ungated_champion: bool = False
    train_window_days: int = 30  # history a model is fitted on
    holdout_days: int = 5  # most recent days, never seen in fitting: the time-based holdout
    seed: int = 42
    device: str = Field(default="auto", description="auto (CUDA when present, else CPU), cpu, cuda or cuda:N.")
    code_version: str = Field(
        default="", description="A release name or git sha recorded with every model (images set it); the "
                                "recorded version always ends with a fingerprint of the code itself."
    )
    # Set by the Airflow task that runs the job (pipeline.operators): the real run id and the
    # task instance's URL, recorded on MLflow runs and model versions so each links back.
    airflow_run_id: str = ""
    airflow_task_url: str = ""
    # Where a person opens the Airflow UI (`make up`'s default): the run summary's links start here.
    airflow_ui_url: str = "http://127.0.0.1:8080"
    max_epochs: int = 30
    early_stopping_patience: int = 4
    batch_size: int = 512
    learning_rate: float = 2e-3
    # Negative downsampling: keep every fraud and this share of the other fitting rows (1.0 = all).
    # Validation and holdout rows are never sampled; bench/training.py measures the PR-AUC cost.
    negative_sample_rate: float = Field(default=1.0, gt=0.0, le=1.0)

    # --- gate ---------------------------------------------------------------------------
    # Floors a first model must clear: below these a fraud model is worse than useless noise.
    min_pr_auc: float = 0.30
    min_roc_auc: float = 0.80
    # A challenger may be at most this much worse (PR-AUC) than the champion and still win,
    # so that retraining on fresh data is not blocked by noise.
    non_inferiority_margin: float = 0.01
    # The challenger may also not fall more than the margin below the best of the last K champions
    # (on the same holdout): no slow ratchet down through a chain of "almost as good" promotions.
    recent_champions: int = Field(default=3, ge=0)
    onnx_parity_tolerance: float = 1e-4
    bootstrap_resamples: int = 300  # paired resamples for the challenger-vs-champion interval
    # Batch scoring must keep up with a day of transactions on one CPU core.
    latency_budget_ms: float = 50.0
    # The operating point (jobs.calibration): the threshold is chosen on validation rows for this
    # precision; on the holdout, the gate requires at least these precision and recall at it:
    # floors (over 10x the ~2 % fraud base rate), since a holdout that drifted away from the
    # validation rows legitimately costs precision (0.34 measured on the e2e's drifted day).
    decision_precision_target: float = Field(default=0.9, gt=0.0, lt=1.0)
    min_threshold_precision: float = 0.25
    min_threshold_recall: float = 0.2

    # --- drift --------------------------------------------------------------------------
    # Share of monitored columns that must drift before the data set counts as drifted.
    drift_share_threshold: float = 0.3
    # A champion whose PR-AUC on recent labelled data is this much below its holdout PR-AUC counts as drifted.
    max_pr_auc_drop: float = 0.10
    # Against retraining storms: no new request within the cooldown, and at most N per window.
    retrain_cooldown_days: int = 3
    max_retrains_per_window: int = 2
    retrain_window_days: int = 14

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
