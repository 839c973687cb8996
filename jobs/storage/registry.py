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
from jobs.shared.names import BUNDLE_DIR, DECISION_SHA_TAG, GATE_PASSED_TAG, ONNX_SHA_TAG, PREPROCESSING_SHA_TAG
from jobs.shared.result import JobError

log = logging.getLogger(__name__)

LEGACY_THRESHOLD = 0.5  # versions trained before calibration (no bundle/decision.json) decide at 0.5


def use_promotion_identity(settings: Settings) -> str | None:
    """Sign this process in to MLflow as the promotion identity, when one is configured.

    MLflow's client reads MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD on every request, so
    the promote and rollback jobs (one process each) switch before their first call.
    """
    username = settings.promotion_mlflow_username
    if not username:
        return None
    os.environ["MLFLOW_TRACKING_USERNAME"] = username
    os.environ["MLFLOW_TRACKING_PASSWORD"] = settings.promotion_mlflow_password.get_secret_value()
    log.info("signed in to MLflow as the promotion identity %r", username)
    return username


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


class RegistryUnavailable(JobError):
    """The registry did not answer (network error, timeout, 5xx, refused credentials).

    Retryable (exit code 1), and never read as "there is no model": a gate or a scorer that took
    an outage for "no champion" would fail open.
    """


class UngatedChampion(JobError):
    """The champion alias points at a version that never passed its gate (moved by hand)."""

    exit_code = 4  # retrying cannot help: a person must promote, roll back or override


def _absent(exc) -> bool:
    """Whether an MLflow error means "the model or the alias does not exist" (and nothing else)."""
    code = getattr(exc, "error_code", "")
    text = str(exc)
    return code == "RESOURCE_DOES_NOT_EXIST" or (
        code == "INVALID_PARAMETER_VALUE" and "alias" in text and "not found" in text)


def registry_call(what: str, call):
    """Run one registry read; any failure but absence raises :class:`RegistryUnavailable`.

    Returns None when the model or alias does not exist.
    """
    from mlflow.exceptions import MlflowException

    try:
        return call()
    except MlflowException as exc:
        if _absent(exc):
            return None
        raise RegistryUnavailable(f"the model registry did not answer {what}: {exc}. Failing (the task "
                                  f"retries) rather than taking it for an absent model.") from exc
    except OSError as exc:  # requests' connection errors are OSErrors too
        raise RegistryUnavailable(f"the model registry could not be reached for {what}: {exc}") from exc


def alias_version(client, settings: Settings, alias: str) -> str | None:
    """The version number an alias points to; None only when the model or the alias does not exist.

    Every other registry error raises :class:`RegistryUnavailable` (retryable): fail closed.
    """
    mv = registry_call(f"{settings.model_name}@{alias}",
                       lambda: client.get_model_version_by_alias(settings.model_name, alias))
    return None if mv is None else str(mv.version)


def gated_champion(client, settings: Settings) -> str | None:
    """The champion's version, refused when that version never passed its gate.

    The alias can be moved by hand in the MLflow UI; scoring and drift trust the gate, not the
    alias. ``PIPELINE_ALLOW_UNGATED_CHAMPION=true`` overrides, loudly, for emergencies.
    """
    return gated_version(client, settings, settings.champion_alias, settings.allow_ungated_champion)


def gated_challenger(client, settings: Settings) -> str | None:
    """The version on live trial (``challenger``), refused, with no override, when it never passed its gate."""
    return gated_version(client, settings, settings.challenger_alias, False)


def gated_version(client, settings: Settings, alias: str, allow_ungated: bool) -> str | None:
    """The version ``alias`` points at, None when there is none; :class:`UngatedChampion` when that
    version's gate did not pass or its verdict is not the gate's (``allow_ungated``: logged, used)."""
    version = alias_version(client, settings, alias)
    if version is None:
        return None
    mv = registry_call(f"{settings.model_name} v{version}",
                       lambda: client.get_model_version(settings.model_name, version))
    if mv is None:
        return None
    from jobs.storage import verdict

    why = None
    if mv.tags.get(GATE_PASSED_TAG) != "true":
        why = (f"@{alias} points at {settings.model_name} v{version}, which "
               f"{'failed' if mv.tags.get('gate_passed') == 'false' else 'never passed'} its gate "
               f"({mv.tags.get('gate_verdict') or 'no gate verdict recorded'})")
    else:
        try:
            verdict.verify(settings, version, mv.tags)
        except verdict.VerdictUnsigned as exc:
            why = f"@{alias} points at a version whose verdict is not the gate's: {exc}"
    if why is not None:
        if not allow_ungated:
            fix = ("Promote a gated version (train_model), roll back (rollback_model), or set "
                   "PIPELINE_ALLOW_UNGATED_CHAMPION=true for an emergency."
                   if alias == settings.champion_alias else
                   f"Put a gated version on trial (python -m jobs challenger), or remove the @{alias} alias; "
                   "a challenger has no override.")
            raise UngatedChampion(f"{why}: refusing to use it. {fix}")
        log.warning("OVERRIDE (PIPELINE_ALLOW_UNGATED_CHAMPION=true): %s; using it anyway", why)
    return version


@dataclass
class ModelBundle:
    """A registered version ready to score: ONNX session + its preprocessing."""

    version: str
    run_id: str
    session: object
    preprocessing: object
    onnx_path: Path
    providers: list[str]
    decision: dict | None = None  # calibration + operating threshold (jobs.ml.calibration)

    def raw_scores(self, frame):
        """The network's scores (ONNX output) for each row of a gold features frame."""
        from jobs.ml.model import in_chunks

        numeric, categorical = self.preprocessing.encode(frame)
        return in_chunks(lambda n, c: self.session.run(None, {"numeric": n, "categorical": c})[0], numeric, categorical)

    def predict(self, frame):
        """Calibrated fraud probability for each row of a gold features frame."""
        return self._calibrated(self.raw_scores(frame))

    def predict_rows(self, rows: list[dict]):
        """:meth:`predict` for a few rows of feature values as dicts (a scoring request's), no DataFrame."""
        numeric, categorical = self.preprocessing.encode_rows(rows)
        return self._calibrated(self.session.run(None, {"numeric": numeric, "categorical": categorical})[0])

    def _calibrated(self, scores):
        from jobs.ml.calibration import apply

        if not self.decision:
            return scores
        return apply(self.decision["calibration"], scores).astype(scores.dtype)

    @property
    def threshold(self) -> float:
        """The operating threshold: a transaction with probability >= it is flagged."""
        return float(self.decision["threshold"]) if self.decision else LEGACY_THRESHOLD


@dataclass(frozen=True)
class BundleFiles:
    """A model version's bundle on local disk, every file checked against the hashes the registry
    recorded at training (:func:`fetch_bundle`); what :func:`open_bundle` turns into a scorer."""

    version: str
    run_id: str
    onnx_path: Path
    onnx_sha256: str
    preprocessing: dict
    decision: dict | None


def fetch_bundle(client, settings: Settings, version: str) -> BundleFiles:
    """Download a model version's bundle (ONNX, preprocessing, calibration and threshold) and check
    each file's hash against the registry: a clear error when one differs from training's."""
    import mlflow

    from jobs.shared.result import JobError

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
    expected_pre = mv.tags.get(PREPROCESSING_SHA_TAG)
    if expected_pre is not None and file_sha256(Path(pre_file)) != expected_pre:
        raise JobError(
            f"preprocessing.json of {settings.model_name} v{version} does not match the sha256 recorded at "
            f"training ({expected_pre}): refusing to score with a tampered or corrupt bundle"
        )
    decision = None
    expected_decision = mv.tags.get(DECISION_SHA_TAG)
    if expected_decision is not None:
        decision_file = Path(mlflow.artifacts.download_artifacts(
            run_id=mv.run_id, artifact_path=f"{BUNDLE_DIR}/decision.json", dst_path=str(dest)))
        if file_sha256(decision_file) != expected_decision:
            raise JobError(
                f"decision.json (calibration, threshold) of {settings.model_name} v{version} does not match the "
                f"sha256 recorded at training ({expected_decision}): refusing a tampered or corrupt bundle"
            )
        decision = json.loads(decision_file.read_text())
    else:
        log.warning("%s v%s has no calibration and threshold (trained before they existed): raw scores, "
                    "threshold %.2f", settings.model_name, version, LEGACY_THRESHOLD)
    return BundleFiles(version=str(version), run_id=mv.run_id, onnx_path=onnx_path, onnx_sha256=actual,
                       preprocessing=json.loads(Path(pre_file).read_text()), decision=decision)


def open_bundle(files: BundleFiles, providers: list[str] | None = None) -> ModelBundle:
    """An onnxruntime session on fetched files (the ONNX file's hash checked again: it may have
    crossed a process boundary as a path)."""
    import onnxruntime as ort

    from jobs.ml.model import Preprocessing
    from jobs.shared.result import JobError

    if file_sha256(files.onnx_path) != files.onnx_sha256:
        raise JobError(f"{files.onnx_path} changed after it was verified: refusing to score with it")
    wanted = providers or onnx_providers()
    session = ort.InferenceSession(str(files.onnx_path), providers=wanted)
    used = session.get_providers()
    log.info("model v%s loaded; onnxruntime providers in use: %s", files.version, used)
    return ModelBundle(version=files.version, run_id=files.run_id, session=session,
                       preprocessing=Preprocessing(**files.preprocessing), onnx_path=files.onnx_path, providers=used,
                       decision=files.decision)


def load_bundle(client, settings: Settings, version: str, providers: list[str] | None = None) -> ModelBundle:
    """Download a model version, check its hashes against the registry, open an ORT session
    (:func:`fetch_bundle`, then :func:`open_bundle`)."""
    return open_bundle(fetch_bundle(client, settings, version), providers)


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
    from jobs.shared import layout
    from jobs.storage import tables

    frame = tables.read(lake, layout.GOLD_FEATURES, dates=dates, version=version)
    return frame if frame.empty else frame.sort_values(["timestamp", "transaction_id"], ignore_index=True)
