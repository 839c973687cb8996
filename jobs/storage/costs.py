"""The cost of every job, kept in the lake for the run summary and the MLflow cost series.

One small JSON object per job task (``_ledger/costs/date=<date>/<step>-<task>.json``; the task is the
Airflow DAG, run and task, so a retry replaces its try before; outside Airflow each run is its own),
written by the ``step`` wrapper after the job's result (:mod:`jobs.shared.cost` measures it). A failed
write is logged and never fails the job: the cost is also in the job's result (its XCom).
"""

from __future__ import annotations

import logging
import uuid
from datetime import UTC, datetime

from jobs.shared import layout
from jobs.storage.lake import Lake

log = logging.getLogger(__name__)


def record(lake: Lake, step: str, date: str | None, cost: dict, dag_id: str = "", run_id: str = "",
           task_id: str = "") -> str | None:
    """Keep one job's cost; returns its key (None when the lake refused it)."""
    owner = layout.task_digest(dag_id, run_id, task_id) if run_id else f"manual-{uuid.uuid4().hex[:16]}"
    key = layout.cost_record(date, step, owner)
    try:
        lake.write_json(key, {"step": step, "date": date, "dag_id": dag_id, "run_id": run_id, "task_id": task_id,
                              "at": datetime.now(UTC).isoformat(timespec="seconds"), **cost})
    except Exception as exc:  # noqa: BLE001 - the job succeeded; its cost is also in its result
        log.warning("could not keep the cost record %s: %s", lake.uri_of(key), exc)
        return None
    return key


def of_date(lake: Lake, date: str) -> list[dict]:
    """Every job cost kept for ``date``."""
    return [lake.read_json(k) for k in lake.list(f"{layout.COSTS}/date={date}/") if k.endswith(".json")]


def by_step(records: list[dict]) -> dict[str, dict]:
    """Per step: jobs, wall and CPU seconds, the largest peak, rows, GPU seconds, what skips saved, and CPU
    seconds per million rows."""
    out: dict[str, dict] = {}
    for r in records:
        s = out.setdefault(r["step"], {"jobs": 0, "skipped": 0, "wall_s": 0.0, "cpu_s": 0.0, "peak_rss_mb": 0.0,
                                       "rows": 0, "gpu_s": 0.0, "saved_cpu_s": 0.0, "saved_wall_s": 0.0})
        s["jobs"] += 1
        s["skipped"] += bool(r.get("skipped"))
        for k in ("wall_s", "cpu_s", "gpu_s", "saved_cpu_s", "saved_wall_s"):
            s[k] = round(s[k] + float(r.get(k) or 0), 3)
        s["peak_rss_mb"] = max(s["peak_rss_mb"], float(r.get("peak_rss_mb") or 0))
        s["rows"] += 0 if r.get("skipped") else int(r.get("rows") or 0)
    for s in out.values():
        s["cpu_s_per_million_rows"] = round(s["cpu_s"] / s["rows"] * 1e6, 3) if s["rows"] else None
    return out
