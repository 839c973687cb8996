"""Promotion: move the ``champion`` alias to a version that passed its gate; rollback restores."""

from __future__ import annotations

import logging

from jobs.registry import alias_version, mlflow_client
from jobs.result import JobError
from jobs.settings import Settings

log = logging.getLogger(__name__)


def promote(settings: Settings, model_version: str) -> dict:
    """Make ``model_version`` the champion; the old champion becomes ``previous-champion``.

    Refuses a version whose gate did not pass (the tag written by evaluation), so a promotion
    can never bypass the gate, whoever calls it. Compare-and-set: the gate compared the version
    with a given champion (tag ``gate_champion_version``); if the champion moved since, the
    comparison is stale and the promotion is refused. With the ``model_promotion`` pool of one
    slot around this step, two promotions can neither interleave nor overwrite each other.
    """
    client = mlflow_client(settings)
    mv = client.get_model_version(settings.model_name, model_version)
    if mv.tags.get("gate_passed") != "true":
        raise JobError(
            f"{settings.model_name} v{model_version} did not pass its gate "
            f"({mv.tags.get('gate_verdict', 'never evaluated')}): not promoting"
        )
    current = alias_version(client, settings, settings.champion_alias)
    compared_with = mv.tags.get("gate_champion_version") or None
    if current != str(model_version) and current != compared_with:
        raise JobError(
            f"the champion is v{current} but v{model_version} was gated against "
            f"{('v' + compared_with) if compared_with else 'no champion'}: re-evaluate before promoting"
        )
    if current == str(model_version):
        log.info("v%s is already the champion", model_version)
        return {"champion_version": current, "previous_champion_version": alias_version(
            client, settings, settings.previous_champion_alias), "changed": False}
    if current is not None:
        client.set_registered_model_alias(settings.model_name, settings.previous_champion_alias, current)
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, str(model_version))
    log.info("promoted %s v%s to @%s (previous: %s)", settings.model_name, model_version,
             settings.champion_alias, current)
    return {"champion_version": str(model_version), "previous_champion_version": current, "changed": True}


def rollback(settings: Settings) -> dict:
    """Point ``champion`` back at ``previous-champion`` (and vice versa)."""
    client = mlflow_client(settings)
    previous = alias_version(client, settings, settings.previous_champion_alias)
    current = alias_version(client, settings, settings.champion_alias)
    if previous is None:
        raise JobError(f"{settings.model_name} has no @{settings.previous_champion_alias}: nothing to roll back to")
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, previous)
    if current is not None:
        client.set_registered_model_alias(settings.model_name, settings.previous_champion_alias, current)
    log.info("rolled back @%s from v%s to v%s", settings.champion_alias, current, previous)
    return {"champion_version": previous, "previous_champion_version": current, "changed": True}
