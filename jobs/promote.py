"""Promotion: move the ``champion`` alias to a version that passed its gate; rollback restores."""

from __future__ import annotations

import functools
import logging

from jobs import links, modelcard
from jobs.registry import alias_version, mlflow_client, use_promotion_identity
from jobs.result import JobError
from jobs.settings import Settings

log = logging.getLogger(__name__)

PROMOTED_AT_TAG = "promoted_at"


def _linked(step):
    """Adds the link to the model version the step leaves as champion (or decided on) to its result."""
    @functools.wraps(step)
    def wrapper(settings: Settings, *args, **kwargs) -> dict:
        result = step(settings, *args, **kwargs)
        version = result.get("model_version") or result.get("champion_version")
        if version:
            result["links"] = {links.MODEL_VERSION: links.model_version(settings.model_name, version)}
        return result
    return wrapper


@_linked
def promote(settings: Settings, model_version: str) -> dict:
    """Make ``model_version`` the champion; the old champion becomes ``previous-champion``.

    Refuses a version whose gate did not pass (the tag written by evaluation), so a promotion
    can never bypass the gate, whoever calls it. Compare-and-set: the gate compared the version
    with a given champion (tag ``gate_champion_version``); if the champion moved since, the
    comparison is stale and the promotion is refused. With the ``model_promotion`` pool of one
    slot around this step, two promotions can neither interleave nor overwrite each other.
    Signs in as the promotion identity when one is configured (only it may move aliases).
    """
    use_promotion_identity(settings)
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
    from datetime import UTC, datetime

    # The promotion history the gate reads (the best of the last K champions, jobs.evaluate).
    client.set_model_version_tag(settings.model_name, str(model_version), PROMOTED_AT_TAG,
                                 datetime.now(UTC).isoformat(timespec="seconds"))
    replaced = f"v{current}" if current else "none"
    modelcard.add_decision(client, settings.model_name, str(model_version),
                           f"promoted to @{settings.champion_alias} (replacing {replaced}; gate: "
                           f"{mv.tags.get('gate_verdict', '?')}); Airflow run "
                           f"{settings.airflow_run_id or 'none (CLI)'}")
    log.info("promoted %s v%s to @%s (previous: %s)", settings.model_name, model_version,
             settings.champion_alias, current)
    return {"champion_version": str(model_version), "previous_champion_version": current, "changed": True}


@_linked
def champion(settings: Settings) -> dict:
    """The versions holding ``champion`` and ``previous-champion`` right now."""
    client = mlflow_client(settings)
    return {"champion_version": alias_version(client, settings, settings.champion_alias),
            "previous_champion_version": alias_version(client, settings, settings.previous_champion_alias)}


@_linked
def rollback(settings: Settings, expected: str | None = None, reason: str = "", actor: str = "") -> dict:
    """Point ``champion`` back at ``previous-champion`` (and vice versa), if it still is ``expected``.

    ``expected``: the champion the person decided to replace. When the champion is no longer
    that version (a promotion or another rollback moved it, or this very rollback already ran and
    its task is being retried), nothing changes: the alias swap is a toggle, and doing it twice
    would undo it. The reason, who asked and the Airflow run are recorded as tags on both
    versions (``rollback_*`` on the restored one, ``rolled_back_*`` on the replaced one) and in the
    log. Without ``expected`` (a shell), the current champion is taken as expected.
    """
    from datetime import UTC, datetime

    use_promotion_identity(settings)
    client = mlflow_client(settings)
    previous = alias_version(client, settings, settings.previous_champion_alias)
    current = alias_version(client, settings, settings.champion_alias)
    expected = str(expected) if expected else current
    why = reason.strip() or "no reason given"
    if current != expected:
        log.warning("not rolling back: @%s is v%s, not the expected v%s (it moved since the decision, or this "
                    "rollback already ran); nothing changed. Reason given: %s", settings.champion_alias, current,
                    expected, why)
        return {"champion_version": current, "previous_champion_version": previous, "changed": False,
                "expected_version": expected, "note": f"champion is v{current}, not the expected v{expected}: "
                                                      "nothing changed"}
    if previous is None:
        raise JobError(f"{settings.model_name} has no @{settings.previous_champion_alias}: nothing to roll back to")
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, previous)
    if current is not None:
        client.set_registered_model_alias(settings.model_name, settings.previous_champion_alias, current)
    when = datetime.now(UTC).isoformat(timespec="seconds")
    record = {"reason": why, "by": actor or "unknown", "at": when, "airflow_run_id": settings.airflow_run_id,
              "airflow_task_url": settings.airflow_task_url}
    for key, value in record.items():
        if value:
            client.set_model_version_tag(settings.model_name, previous, f"rollback_{key}", value)
            if current is not None:
                client.set_model_version_tag(settings.model_name, current, f"rolled_back_{key}", value)
    modelcard.add_decision(client, settings.model_name, previous, f"restored as @{settings.champion_alias} by a "
                           f"rollback from v{current} by {actor or 'unknown'}: {why}")
    if current is not None:
        modelcard.add_decision(client, settings.model_name, current, f"rolled back to v{previous} by "
                               f"{actor or 'unknown'}: {why}")
    log.info("rolled back @%s from v%s to v%s by %s: %s", settings.champion_alias, current, previous,
             actor or "unknown", why)
    return {"champion_version": previous, "previous_champion_version": current, "changed": True,
            "expected_version": expected, "reason": why, "by": actor or "unknown"}


DECISIONS = {"promote": "Promote", "keep": "Keep the champion", "rollback": "Roll back the champion"}


@_linked
def record_decision(settings: Settings, model_version: str, decision: str, by: str, reason: str) -> dict:
    """Record a person's decision on a gated challenger (who, why, when, the Airflow run) in MLflow.

    Tags on the challenger's version: ``decision``, ``decided_by``, ``decision_reason``,
    ``decided_at`` and the Airflow run id and task URL. ``decision`` is one of ``DECISIONS``'
    keys or labels (as the approval form shows them).
    """
    from datetime import UTC, datetime

    labels = {v.lower(): k for k, v in DECISIONS.items()}
    key = decision if decision in DECISIONS else labels.get(decision.strip().lower())
    if key is None:
        raise JobError(f"unknown decision {decision!r}: one of {', '.join(DECISIONS.values())}")
    client = mlflow_client(settings)
    record = {"decision": key, "decided_by": by or "unknown", "decision_reason": reason.strip() or "no reason given",
              "decided_at": datetime.now(UTC).isoformat(timespec="seconds"),
              "decision_airflow_run_id": settings.airflow_run_id,
              "decision_airflow_task_url": settings.airflow_task_url}
    for tag, value in record.items():
        if value:
            client.set_model_version_tag(settings.model_name, str(model_version), tag, value)
    modelcard.add_decision(client, settings.model_name, str(model_version),
                           f"{DECISIONS[key]}: decided by {record['decided_by']} in the approval form: "
                           f"{record['decision_reason']}")
    log.info("%s v%s: %s decided by %s: %s", settings.model_name, model_version, DECISIONS[key], record["decided_by"],
             record["decision_reason"])
    return {"model_version": str(model_version), **record}
