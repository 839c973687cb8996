"""Skip unchanged work: a step whose inputs equal those of its last success does nothing.

A step describes its inputs (Delta file lists of the partitions it reads, the model version,
the code version, its parameters) and, after it succeeded, its outputs (the file lists it
published). ``previous`` answers the last success when the inputs are the same *and* the outputs
it recorded are still what the lake holds (a partition rebuilt or removed since is never taken
for done), so the step can return ``skipped(...)`` instead of redoing the work. ``--force``
(``force`` in the DAG's trigger form) re-runs anyway.

Records live in the lake (``layout.step_record``), one JSON object per step and partition,
written whole after the step's own commit: a crash between the two only costs a re-run.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Iterable
from datetime import UTC, datetime

from jobs.shared import layout
from jobs.storage import lake as lk

log = logging.getLogger(__name__)


def fingerprint(inputs: dict) -> str:
    return hashlib.sha256(json.dumps(inputs, sort_keys=True, default=str).encode()).hexdigest()[:16]


def previous(lake: lk.Lake, step: str, key: str, inputs: dict, outputs: dict | None = None) -> dict | None:
    """The record of the last success of ``step`` for ``key`` if nothing changed since, else None.

    ``outputs``: what the lake holds now for the step's outputs (compared with what it published).
    """
    where = layout.step_record(step, key)
    if not lake.exists(where):
        return None
    record = lake.read_json(where)
    if record.get("fingerprint") != fingerprint(inputs):
        log.info("%s %s: inputs changed since run %s: running", step, key, record.get("run_id") or "?")
        return None
    if outputs is not None and fingerprint(outputs) != record.get("outputs"):
        log.info("%s %s: its outputs changed since run %s: running", step, key, record.get("run_id") or "?")
        return None
    return record


def skipped(record: dict, step: str, key: str) -> dict:
    """The result of a skipped step: the last success's result, marked and explained."""
    reason = f"{step} {key}: unchanged since run {record.get('run_id') or '?'} ({record.get('at', '?')}): skipped"
    log.info("%s", reason)
    return {**record.get("result", {}), "skipped": True, "skip_reason": reason,
            "unchanged_since": record.get("run_id") or "", **({"saved": record["cost"]} if record.get("cost") else {})}


def remember(lake: lk.Lake, step: str, key: str, inputs: dict, result: dict, run_id: str,
             outputs: dict | None = None) -> None:
    """Record a success: its inputs, its outputs as the lake holds them now, its result.

    ``run_id`` names the run in later skip messages: the real Airflow run id when an Airflow task
    started the job (findable in the UI), else the id the job was given.
    """
    from jobs.settings import get_settings
    from jobs.shared import cost

    run_id = get_settings().airflow_run_id or run_id
    lake.write_json(layout.step_record(step, key), {
        "step": step, "key": key, "fingerprint": fingerprint(inputs), "inputs": inputs,
        "outputs": None if outputs is None else fingerprint(outputs), "run_id": run_id,
        "at": datetime.now(UTC).isoformat(timespec="seconds"), "result": result,
        "cost": cost.so_far(),  # what the work cost: a later skip of it saves that much
    })


def once(lake: lk.Lake, step: str, key: str, inputs: dict, work: Callable[[], dict], *, force: bool = False,
         outputs: Callable[[dict | None], dict] | None = None, run_id: str | Callable[[dict], str] = "",
         still_valid: Callable[[dict], bool] | None = None, on_skip: Callable[[dict], dict] | None = None,
         parts: Callable[[dict], Iterable[tuple[str, dict, dict, dict | None]]] = lambda result: (),
         record: bool = True) -> dict:
    """Skip-or-run-and-remember: the one way a step skips work whose inputs did not change.

    ``work()`` does the step and returns its result. ``outputs(result)`` is what the lake holds now
    for the step's outputs (``None`` before the work: a record stands only while they are what it
    published; the result after it, to record what was published). ``still_valid(result)`` may
    refuse a record whose result names something gone (a deleted model version); ``on_skip`` turns
    a standing record into the step's result (default: :func:`skipped`). ``run_id`` names this run
    in later skip messages (a callable of the result when only the work knows it). ``parts(result)``
    gives ``(key, inputs, result, outputs)`` of the smaller units a range also made (the days of a
    range build), so that a later run of one of them finds it done too. ``record=False`` decides
    like the others but records nothing (the other processes of one distributed training).
    """
    done = None if force else previous(lake, step, key, inputs, outputs(None) if outputs else None)
    if done is not None and (still_valid is None or still_valid(done.get("result", {}))):
        return on_skip(done) if on_skip else skipped(done, step, key)
    result = work()
    if not record:
        return result
    name = run_id(result) if callable(run_id) else run_id
    remember(lake, step, key, inputs, result, name, outputs(result) if outputs else None)
    for part_key, part_inputs, part_result, part_outputs in parts(result):
        remember(lake, step, part_key, part_inputs, part_result, name, part_outputs)
    return result
