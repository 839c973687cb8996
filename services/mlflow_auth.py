"""MLflow behind authentication, with promotion kept to its own identity.

``mlflow server --app-name fraud-auth`` runs MLflow's own basic-auth app (users, passwords,
per-experiment and per-model permissions, admin users) with one rule added, which MLflow's
permissions cannot express: **moving or deleting a registered model alias** (``champion``,
``previous-champion``) is for the promotion identities and admins only. MLflow grants alias changes
with the same EDIT permission that creating model versions needs, so without this rule the
training identity, which must register versions, could also crown them.

The identities (``python -m jobs mlflow-access``, run once per deployment by an admin, idempotent):

- ``pipeline`` (``MLFLOW_TRACKING_USERNAME`` of every job): logs runs, registers versions, writes
  version tags; EDIT on the registered model; refused on aliases.
- ``promoter`` (``PIPELINE_PROMOTION_MLFLOW_USERNAME``, given by the runners to the promote and
  rollback jobs only): EDIT on the registered model, allowed on aliases.
- everyone authenticated: ``default_permission`` (READ in the compose stack); nobody anonymous.
"""

from __future__ import annotations

import logging
import os

log = logging.getLogger(__name__)

APP_NAME = "fraud-auth"  # the mlflow.app entry point (pyproject.toml)
PROMOTERS_ENV = "MLFLOW_PROMOTION_USERS"  # server side: who may change aliases, comma-separated
DEFAULT_PROMOTERS = "promoter"
ALIAS_PATHS = frozenset({
    "/api/2.0/mlflow/registered-models/alias",
    "/ajax-api/2.0/mlflow/registered-models/alias",
})


def promoters() -> set[str]:
    return {u.strip() for u in os.environ.get(PROMOTERS_ENV, DEFAULT_PROMOTERS).split(",") if u.strip()}


def _aliases_for_promoters_only():
    """Flask before-request hook, after MLflow's own (which has authenticated the user by then)."""
    from flask import jsonify, request

    if request.path not in ALIAS_PATHS or request.method not in ("POST", "PATCH", "DELETE"):
        return None
    username = request.authorization.username if request.authorization else None
    if username in promoters():
        return None
    from mlflow.server.auth import store

    if username and store.get_user(username).is_admin:
        return None
    log.warning("alias change refused for %r (promotion identities: %s)", username, ", ".join(sorted(promoters())))
    response = jsonify(error_code="PERMISSION_DENIED",
                       message=f"User '{username}' may not change model aliases: promotion is for "
                               f"{', '.join(sorted(promoters()))} (and admins) only.")
    response.status_code = 403
    return response


def create_app(app=None):
    """MLflow's basic-auth app plus the alias rule (the ``fraud-auth`` app of ``mlflow server``)."""
    from mlflow.server import app as mlflow_app
    from mlflow.server.auth import create_app as basic_auth

    flask_app = app if app is not None else mlflow_app
    served = basic_auth(flask_app)  # registers MLflow's authentication and permission checks first
    flask_app.before_request(_aliases_for_promoters_only)
    return served


def setup_access(tracking_uri: str, model_name: str, pipeline_user: str, pipeline_password: str,
                 promoter_user: str, promoter_password: str) -> dict:
    """Create (or re-password) the two identities and grant them the registered model. Idempotent.

    Runs as an admin: ``MLFLOW_TRACKING_USERNAME`` / ``MLFLOW_TRACKING_PASSWORD`` in the environment.
    """
    from mlflow.exceptions import MlflowException
    from mlflow.server import get_app_client

    from jobs.shared.result import JobError

    client = get_app_client(APP_NAME, tracking_uri=tracking_uri)
    admin = os.environ.get("MLFLOW_TRACKING_USERNAME", "")
    try:
        client.get_user(admin)
    except MlflowException as exc:
        raise JobError(f"MLflow at {tracking_uri} refused {admin or 'an anonymous user'} ({exc.error_code}): "
                       "mlflow-access runs as an admin (MLFLOW_TRACKING_USERNAME / MLFLOW_TRACKING_PASSWORD) of a "
                       f"server started with --app-name {APP_NAME}") from None
    done = {}
    for username, password in ((pipeline_user, pipeline_password), (promoter_user, promoter_password)):
        if not password:
            raise JobError(f"no password for the MLflow user {username!r} (MLFLOW_PIPELINE_PASSWORD, "
                           "MLFLOW_PROMOTER_PASSWORD)")
        try:
            if not client.get_user(admin).is_admin:
                raise JobError(f"MLflow user {admin} is not an admin: mlflow-access creates users as an admin")
            client.create_user(username, password)
            done[username] = "created"
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            client.update_user_password(username, password)  # the environment's password wins (rotation)
            done[username] = "password updated"
        try:
            client.grant_user_permission(username, "registered_model", model_name, "EDIT")
        except MlflowException as exc:
            if exc.error_code != "RESOURCE_ALREADY_EXISTS":
                raise
            # Granted before, maybe at another level: make it EDIT again.
            client.revoke_user_permission(username, "registered_model", model_name)
            client.grant_user_permission(username, "registered_model", model_name, "EDIT")
    log.info("MLflow identities on %s: %s; both EDIT on registered model %s", tracking_uri, done, model_name)
    return {"users": done, "model": model_name, "promoters": sorted({promoter_user})}
