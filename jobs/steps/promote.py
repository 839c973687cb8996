"""Promotion: move the ``champion`` alias to a version that passed its gate; rollback restores."""

from __future__ import annotations

import functools
import logging

from jobs.ml import modelcard
from jobs.settings import Settings
from jobs.shared import links
from jobs.shared.names import DECISIONS, GATE_CHAMPION_TAG, GATE_PASSED_TAG, PROMOTED_AT_TAG, PROMOTED_BY_RUN_TAG
from jobs.shared.result import JobError
from jobs.storage import verdict
from jobs.storage.registry import alias_version, mlflow_client, use_promotion_identity

log = logging.getLogger(__name__)



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
    if mv.tags.get(GATE_PASSED_TAG) != "true":
        raise JobError(
            f"{settings.model_name} v{model_version} did not pass its gate "
            f"({mv.tags.get('gate_verdict', 'never evaluated')}): not promoting"
        )
    verdict.verify(settings, model_version, mv.tags)  # written by the gate, not by any other identity
    current = alias_version(client, settings, settings.champion_alias)
    compared_with = mv.tags.get(GATE_CHAMPION_TAG) or None
    if current != str(model_version) and current != compared_with:
        raise JobError(
            f"the champion is v{current} but v{model_version} was gated against "
            f"{('v' + compared_with) if compared_with else 'no champion'}: re-evaluate before promoting"
        )
    if current == str(model_version):
        _end_trial(client, settings, str(model_version))  # a try that died after the alias moved
        previous = alias_version(client, settings, settings.previous_champion_alias)
        if _promotion_unrecorded(mv):  # an earlier try moved the alias, then died before the record
            log.warning("v%s is the champion but its promotion was never recorded (a crash after the alias "
                        "moved): completing the record", model_version)
            _record_promotion(client, settings, mv, previous)
            return {"champion_version": current, "previous_champion_version": previous, "changed": False,
                    "record_completed": True}
        log.info("v%s is already the champion", model_version)
        return {"champion_version": current, "previous_champion_version": previous, "changed": False}
    if current is not None:
        client.set_registered_model_alias(settings.model_name, settings.previous_champion_alias, current)
    client.set_registered_model_alias(settings.model_name, settings.champion_alias, str(model_version))
    _record_promotion(client, settings, mv, current)
    _end_trial(client, settings, str(model_version))
    log.info("promoted %s v%s to @%s (previous: %s)", settings.model_name, model_version,
             settings.champion_alias, current)
    return {"champion_version": str(model_version), "previous_champion_version": current, "changed": True}




def _end_trial(client, settings: Settings, version: str) -> None:
    """A promoted challenger's live trial is over: its ``challenger`` alias goes (services stop shadowing)."""
    if alias_version(client, settings, settings.challenger_alias) == version:
        client.delete_registered_model_alias(settings.model_name, settings.challenger_alias)
        log.info("v%s leaves @%s: it is the champion now", version, settings.challenger_alias)


def _promotion_unrecorded(mv) -> bool:
    """Whether the champion ``mv`` lacks the record of the promotion that made it champion.

    ``promoted_at`` is written last: missing, or older than the version's last replacement by a
    rollback (and no rollback restored it since), the alias moved without its record.
    """
    promoted = mv.tags.get(PROMOTED_AT_TAG)
    if promoted is None:
        return True
    replaced, restored = mv.tags.get("rolled_back_at", ""), mv.tags.get("rollback_at", "")
    return replaced > promoted and replaced > restored


def _record_promotion(client, settings: Settings, mv, replaced: str | None) -> None:
    """The decision line, then the promotion tags; ``promoted_at`` last: it marks the record complete."""
    from datetime import UTC, datetime

    version = str(mv.version)
    was = f"v{replaced}" if replaced else "none"
    modelcard.add_decision(client, settings.model_name, version,
                           f"promoted to @{settings.champion_alias} (replacing {was}; "
                           f"gate: {mv.tags.get('gate_verdict', '?')}); Airflow run "
                           f"{settings.airflow_run_id or 'none (CLI)'}")
    if settings.airflow_run_id:
        client.set_model_version_tag(settings.model_name, version, PROMOTED_BY_RUN_TAG, settings.airflow_run_id)
    # The promotion history the gate reads (the best of the last K champions, jobs.steps.evaluate).
    client.set_model_version_tag(settings.model_name, version, PROMOTED_AT_TAG,
                                 datetime.now(UTC).isoformat(timespec="seconds"))


@_linked
def champion(settings: Settings, lake=None, pin_run: str = "") -> dict:
    """The versions holding ``champion`` and ``previous-champion`` right now.

    With ``pin_run`` (an Airflow run that is about to act on the champion, a rollback), the first
    answer is pinned in the lake for that run with a create-only write: every later try of the
    run, or the run cleared and re-run after it acted, reads the same pinned versions, never the
    champion its own action left behind.
    """
    import json

    from jobs.shared import layout

    client = mlflow_client(settings)
    now = {"champion_version": alias_version(client, settings, settings.champion_alias),
           "previous_champion_version": alias_version(client, settings, settings.previous_champion_alias)}
    if not pin_run:
        return now
    key = layout.champion_pin(pin_run)
    if lake.create_only(key, json.dumps(now).encode()):
        log.info("pinned for run %s: champion v%s, previous champion v%s", pin_run, now["champion_version"],
                 now["previous_champion_version"])
        return {**now, "pinned": True}
    pinned = lake.read_json(key)
    if pinned != now:
        log.info("run %s pinned champion v%s (previous v%s) when it first ran; the registry says v%s now",
                 pin_run, pinned["champion_version"], pinned["previous_champion_version"], now["champion_version"])
    return {**pinned, "pinned": True}


@_linked
def rollback(settings: Settings, expected: str | None = None, reason: str = "", actor: str = "",
             restore: str | None = None, lake=None) -> dict:
    """Point ``champion`` back at ``previous-champion`` (and vice versa), if it still is ``expected``.

    ``expected``: the champion the person decided to replace. When the champion is no longer
    that version (a promotion or another rollback moved it, or this very rollback already ran and
    its task is being retried), nothing changes: the alias swap is a toggle, and doing it twice
    would undo it. ``restore``: the version the rollback means to bring back (pinned with
    ``expected``); when the champion already is it, an earlier try swapped and the record is
    completed if it was cut short. The reason, who asked and the Airflow run are recorded as tags
    on both versions (``rollback_*`` on the restored one, ``rolled_back_*`` on the replaced one)
    and in the log. Without ``expected`` (a shell), the current champion is taken as expected.
    With ``lake``, the result names the dates the replaced version scored (``rescore_start`` ..
    ``rescore_end``), for the DAG to re-score with the restored champion.
    """
    from datetime import UTC, datetime

    use_promotion_identity(settings)
    client = mlflow_client(settings)
    previous = alias_version(client, settings, settings.previous_champion_alias)
    current = alias_version(client, settings, settings.champion_alias)
    expected = str(expected) if expected else current
    why = reason.strip() or "no reason given"
    record = {"reason": why, "by": actor or "unknown", "at": datetime.now(UTC).isoformat(timespec="seconds"),
              "airflow_run_id": settings.airflow_run_id, "airflow_task_url": settings.airflow_task_url}
    if current != expected:
        if restore and current == str(restore) and expected is not None:
            done = _rollback_recorded(client, settings, str(restore), expected)
            if not done:  # this rollback swapped, then died before its record: complete it, swap nothing
                log.warning("@%s is already v%s, restored by this rollback whose record was cut short: completing "
                            "the record (aliases and tags), swapping nothing", settings.champion_alias, current)
                if previous != expected:
                    client.set_registered_model_alias(settings.model_name, settings.previous_champion_alias, expected)
                _record_rollback(client, settings, str(restore), expected, record)
            return {"champion_version": current, "previous_champion_version": expected, "changed": False,
                    "record_completed": not done, "expected_version": expected,
                    **_rescore(lake, expected), "note": f"v{current} was already restored by this rollback"}
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
    _record_rollback(client, settings, previous, current, record)
    log.info("rolled back @%s from v%s to v%s by %s: %s", settings.champion_alias, current, previous,
             actor or "unknown", why)
    return {"champion_version": previous, "previous_champion_version": current, "changed": True,
            "expected_version": expected, "reason": why, "by": actor or "unknown", **_rescore(lake, current)}


def _rollback_recorded(client, settings: Settings, restored: str, replaced: str) -> bool:
    """Whether this rollback's record is complete: its run id is the last tag written on both versions."""
    marker = settings.airflow_run_id
    tags = client.get_model_version(settings.model_name, restored).tags
    other = client.get_model_version(settings.model_name, replaced).tags
    if not marker:
        return "rollback_at" in tags and "rolled_back_at" in other
    return tags.get("rollback_airflow_run_id") == marker and other.get("rolled_back_airflow_run_id") == marker


def _record_rollback(client, settings: Settings, restored: str, replaced: str | None, record: dict) -> None:
    """Decision lines, then tags on both versions; the run's id last (it marks the record complete)."""
    who, why = record["by"], record["reason"]
    modelcard.add_decision(client, settings.model_name, restored, f"restored as @{settings.champion_alias} by a "
                           f"rollback from v{replaced} by {who}: {why}")
    if replaced is not None:
        modelcard.add_decision(client, settings.model_name, replaced, f"rolled back to v{restored} by {who}: {why}")
    for key in [k for k in record if k != "airflow_run_id"] + ["airflow_run_id"]:
        if record[key]:
            client.set_model_version_tag(settings.model_name, restored, f"rollback_{key}", record[key])
            if replaced is not None:
                client.set_model_version_tag(settings.model_name, replaced, f"rolled_back_{key}", record[key])


def _rescore(lake, replaced: str | None) -> dict:
    """The first and last date the replaced version scored (its predictions are stale once it is out)."""
    if lake is None or replaced is None:
        return {}
    from jobs.shared import layout
    from jobs.storage import tables

    scored = tables.read(lake, layout.PREDICTIONS, columns=["date", "model_version"])
    dates = sorted(set(scored.loc[scored["model_version"].astype(str) == str(replaced), "date"]))
    if dates:
        log.info("v%s scored %d date(s) (%s .. %s): they are to be scored again with the restored champion",
                 replaced, len(dates), dates[0], dates[-1])
    return {"rescore_start": dates[0], "rescore_end": dates[-1], "rescore_dates": len(dates)} if dates else {
        "rescore_dates": 0}




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
