"""Deploy the champion to the running scoring services (the ``deploy_model`` DAG).

For each service (``PIPELINE_SERVING_URL``, or on the embedded default the services that registered
themselves in ``<state>/serving/endpoints/``): ask it to load the champion now (``POST /v1/champion``:
it loads beside the old bundle, verifies, swaps), wait until it serves that version, then check it
with a known transaction (``POST /v1/check``): its answer must equal this job's own score of the same
features with the same verified bundle. Records where the version serves (tags on the model version)
and links each service's health and metrics. No service configured or registered: nothing to tell
(a service started later loads the champion as it starts), said in the log and the result.
"""

from __future__ import annotations

import json
import logging
import os
import time
from datetime import UTC, datetime
from pathlib import Path

from jobs.ml.features_online import CHECK_TRANSACTION, features
from jobs.settings import Settings
from jobs.shared import links
from jobs.shared.names import SERVING_AT_TAG, SERVING_SERVICES_TAG
from jobs.shared.result import JobError, MissingInput
from jobs.storage.registry import gated_challenger, gated_champion, load_bundle, mlflow_client

log = logging.getLogger(__name__)

TOLERANCE = 1e-6  # the service's score of the check transaction against this job's


def registered_services(folder: Path) -> list[str]:
    """Base URLs of the services on this machine that registered in ``folder`` and still run."""
    urls = []
    for entry in sorted(folder.glob("*.json")):
        try:
            found = json.loads(entry.read_text())
            os.kill(int(found["pid"]), 0)
        except (OSError, ValueError, KeyError):
            log.info("dropping the registration %s: its process is gone", entry.name)
            entry.unlink(missing_ok=True)
            continue
        urls.append(found["url"])
    return urls


def deploy_key(settings: Settings) -> str:
    key = settings.serving_deploy_key.get_secret_value()
    path = settings.serving_dir / "deploy-key"
    if not key and path.exists():
        key = path.read_text().strip()
    if not key:
        raise JobError(f"no deploy key: set PIPELINE_SERVING_DEPLOY_KEY (a key with role 'deploy': python -m "
                       f"services.scoring keys create pipeline --role deploy) or start a service that writes {path}")
    return key


def deploy(settings: Settings) -> dict:
    import httpx

    client = mlflow_client(settings)
    version = gated_champion(client, settings)  # an ungated champion is never deployed
    if version is None:
        raise MissingInput(f"no @{settings.champion_alias} for {settings.model_name}: promote a model first")
    urls = [u.strip().rstrip("/") for u in settings.serving_url.split(",") if u.strip()]
    if not settings.serving_url:
        urls = registered_services(settings.serving_dir / "endpoints")
    if not urls:
        log.info("no scoring service configured (PIPELINE_SERVING_URL) or running here: nothing to tell; a service "
                 "started later loads v%s as it starts", version)
        return {"model_version": str(version), "services": [], "deployed": False}
    expected = _check_score(client, settings, str(version))
    trial = gated_challenger(client, settings)  # the challenger on live trial, if any: loaded and checked too
    trial_expected = _check_score(client, settings, str(trial)) if trial is not None else None
    auth = {"Authorization": f"Bearer {deploy_key(settings)}"}
    services = []
    with httpx.Client(timeout=settings.serving_deploy_timeout_seconds, headers=auth) as http:
        for url in urls:
            services.append(_deploy_to(http, url, str(version), expected, settings.serving_deploy_timeout_seconds,
                                       trial, trial_expected))
    where = ",".join(s["url"] for s in services)
    client.set_model_version_tag(settings.model_name, str(version), SERVING_SERVICES_TAG, where)
    client.set_model_version_tag(settings.model_name, str(version), SERVING_AT_TAG, datetime.now(UTC).isoformat())
    links_ = {links.SERVICE_HEALTH: f"{urls[0]}/readyz", links.SERVICE_METRICS: f"{urls[0]}/metrics",
              links.MODEL_VERSION: links.model_version(settings.model_name, version)}
    return {"model_version": str(version), "challenger_version": trial, "services": services, "deployed": True,
            "check_probability": expected, "links": links_}


def _check_score(client, settings: Settings, version: str) -> float:
    """This job's own score of the check transaction with the verified bundle of ``version``."""
    bundle = load_bundle(client, settings, version)  # hashes verified, as the services do
    return float(bundle.predict_rows([features(CHECK_TRANSACTION, [])])[0])


def _deploy_to(http, url: str, version: str, expected: float, timeout: float, trial: str | None = None,
               trial_expected: float | None = None) -> dict:
    """Tell one service to load the champion (and the challenger on trial, or none), wait until it serves
    them, and check each with the known transaction."""
    import httpx

    deadline = time.monotonic() + timeout
    try:
        while True:
            answer = http.post(f"{url}/v1/champion")
            if answer.status_code in (401, 403):
                raise JobError(f"{url} refused the deploy key ({answer.status_code}: {answer.json()['detail']})")
            answer.raise_for_status()
            serving = answer.json()
            if serving["model_version"] == version and serving.get("challenger_version") == trial:
                break
            if time.monotonic() > deadline:
                raise JobError(f"{url} still serves v{serving['model_version']} (challenger "
                               f"{serving.get('challenger_version')}) after {timeout:.0f} s, not v{version} "
                               f"(challenger {trial}): {serving.get('error') or serving.get('challenger_error') or ''}")
            time.sleep(1)
        checks = [("champion", version, expected)] + ([("challenger", trial, trial_expected)] if trial else [])
        answers = []
        for role, want_version, want in checks:
            check = http.post(f"{url}/v1/check", params={"model": role}, json=CHECK_TRANSACTION)
            check.raise_for_status()
            answers.append((role, want_version, want, check.json()))
    except httpx.HTTPError as exc:
        raise JobError(f"scoring service {url} did not take v{version}: {type(exc).__name__}: {exc}") from exc
    for role, want_version, want, checked in answers:
        if checked["model_version"] != want_version or abs(checked["fraud_probability"] - want) > TOLERANCE:
            raise JobError(f"{url} answered the check transaction as {role} with v{checked['model_version']} "
                           f"p={checked['fraud_probability']:.9f}; the verified bundle v{want_version} gives "
                           f"{want:.9f}")
    log.info("%s serves v%s (check transaction p=%.6f)%s", url, version, expected,
             f", challenger v{trial} on live trial" if trial else "")
    return {"url": url, "model_version": version, "check_probability": answers[0][3]["fraud_probability"],
            "challenger_version": trial}
