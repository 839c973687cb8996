"""MLflow plumbing: tracking setup, the registered ONNX model and its bundle of artifacts."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from jobs.settings import Settings

log = logging.getLogger(__name__)

BUNDLE_DIR = "bundle"  # run artifacts that travel with a model version
ONNX_SHA_TAG = "onnx_sha256"


def mlflow_client(settings: Settings):
    """An MLflow client on the configured store, with the project's experiment created."""
    os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")
    os.environ.setdefault("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", "false")
    import mlflow
    from mlflow import MlflowClient

    if settings.resolved_tracking_uri.startswith("sqlite:///"):
        Path(settings.resolved_tracking_uri.removeprefix("sqlite:///")).parent.mkdir(parents=True, exist_ok=True)
    mlflow.set_tracking_uri(settings.resolved_tracking_uri)
    mlflow.set_registry_uri(settings.resolved_tracking_uri)
    client = MlflowClient()
    if client.get_experiment_by_name(settings.experiment_name) is None:
        # A tracking server decides where artifacts go; a database store would put them in ./mlruns
        # of whatever folder the job runs in, so it gets the state folder's artifact root.
        remote = settings.resolved_tracking_uri.startswith(("http://", "https://", "databricks"))
        artifact_location = None if remote else settings.mlflow_artifact_root
        client.create_experiment(settings.experiment_name, artifact_location=artifact_location)
    mlflow.set_experiment(settings.experiment_name)
    return client


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def alias_version(client, settings: Settings, alias: str) -> str | None:
    """The version number an alias points to, or None."""
    from mlflow.exceptions import MlflowException

    try:
        return str(client.get_model_version_by_alias(settings.model_name, alias).version)
    except MlflowException:
        return None


@dataclass
class ModelBundle:
    """A registered version ready to score: ONNX session + its preprocessing."""

    version: str
    run_id: str
    session: object
    preprocessing: object
    onnx_path: Path
    providers: list[str]

    def predict(self, frame):
        """Fraud probability for each row of a gold features frame."""
        numeric, categorical = self.preprocessing.encode(frame)
        return self.session.run(None, {"numeric": numeric, "categorical": categorical})[0]


def load_bundle(client, settings: Settings, version: str, providers: list[str] | None = None) -> ModelBundle:
    """Download a model version, check its ONNX hash against the registry, open an ORT session.

    Raises a clear error when the artifact's hash differs from the one recorded at training.
    """
    import mlflow
    import onnxruntime as ort

    from jobs.model import Preprocessing
    from jobs.result import JobError

    mv = client.get_model_version(settings.model_name, version)
    dest = Path(tempfile.mkdtemp(prefix=f"model-v{version}-"))
    local = Path(
        mlflow.artifacts.download_artifacts(artifact_uri=f"models:/{settings.model_name}/{version}", dst_path=str(dest))
    )
    onnx_path = next(local.rglob("*.onnx"))
    expected = mv.tags.get(ONNX_SHA_TAG)
    actual = file_sha256(onnx_path)
    if expected != actual:
        raise JobError(
            f"ONNX artifact of {settings.model_name} v{version} has sha256 {actual}, but the registry "
            f"recorded {expected}: refusing to score with a tampered or corrupt model"
        )
    pre_file = mlflow.artifacts.download_artifacts(
        run_id=mv.run_id, artifact_path=f"{BUNDLE_DIR}/preprocessing.json", dst_path=str(dest)
    )
    pre = Preprocessing(**json.loads(Path(pre_file).read_text()))
    wanted = providers or onnx_providers()
    session = ort.InferenceSession(str(onnx_path), providers=wanted)
    used = session.get_providers()
    log.info("model v%s loaded; onnxruntime providers in use: %s", version, used)
    return ModelBundle(version=str(version), run_id=mv.run_id, session=session, preprocessing=pre,
                       onnx_path=onnx_path, providers=used)


def cuda_driver_present() -> bool:
    """Whether an NVIDIA driver is loadable (the CUDA provider is worth trying)."""
    import ctypes

    try:
        ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return True


def onnx_providers() -> list[str]:
    """CUDA first when this build has it and a driver is present, CPU always as the fallback."""
    import onnxruntime as ort

    available = ort.get_available_providers()
    wanted = ["CPUExecutionProvider"]
    if "CUDAExecutionProvider" in available and cuda_driver_present():
        wanted.insert(0, "CUDAExecutionProvider")
    return wanted


def read_gold(lake, dates: list[str], version: int | None = None):
    """Gold feature rows for the given dates (missing dates are skipped), with a ``date`` column.

    ``version``: a version of the gold table (time travel); default the latest.
    """
    from jobs import layout, tables

    frame = tables.read(lake, layout.GOLD_FEATURES, dates=dates, version=version)
    return frame if frame.empty else frame.sort_values(["timestamp", "transaction_id"], ignore_index=True)
