"""The pipeline's state for a date, as a person reads it and as ``run-summary.json``."""

from __future__ import annotations

import json
import sys

from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.storage import lake as lk
from jobs.storage.ledger import read_ledger
from jobs.storage.registry import alias_version, mlflow_client


def _rows(lake: lk.Lake, table: str) -> int:
    from jobs.storage import tables

    return tables.count(lake, table)


def _latest(lake: lk.Lake, prefix: str, suffix: str) -> dict | None:
    keys = [k for k in lake.list(prefix) if k.endswith(suffix)]
    if not keys:
        return None
    keys.sort(key=lambda k: int(k.rsplit("/v", 1)[-1].split(".")[0]) if "/v" in k else 0)
    return {"key": keys[-1], **lake.read_json(keys[-1])}


def build_summary(lake: lk.Lake, date: str, settings: Settings) -> dict:
    """Collect counts, model identity, gate decision and drift result; write run-summary.json."""
    ledger = read_ledger(lake)
    client = mlflow_client(settings)
    champion = alias_version(client, settings, settings.champion_alias)
    champion_run = client.get_model_version(settings.model_name, champion).run_id if champion else None
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    latest = max((int(v.version) for v in versions), default=None)
    from jobs.storage import tables

    gate = _latest(lake, layout.gate_reports(date), ".json")
    drift_key = layout.drift_report(date, "json")
    drift = lake.read_json(drift_key) if lake.exists(drift_key) else None
    summary = {
        "date": date,
        "lake": lake.uri,
        "ingestion": {
            "objects_in_ledger": len(ledger),
            "rows_delivered": sum(e.get("rows_delivered") or 0 for e in ledger),
            "rows_silver": sum(e.get("rows_silver") or 0 for e in ledger),
            "rows_quarantined": sum(e.get("rows_quarantined") or 0 for e in ledger),
            "objects_rejected": [e["key"] for e in ledger if e.get("status") != "ingested"],
        },
        "silver_rows": _rows(lake, layout.SILVER_TRANSACTIONS),
        "feature_rows": _rows(lake, layout.GOLD_FEATURES),
        "feature_dates": len(tables.partitions(lake, layout.GOLD_FEATURES)),
        "table_versions": {name: tables.version(lake, name) for name in
                           (layout.SILVER_TRANSACTIONS, layout.GOLD_FEATURES, layout.PREDICTIONS, layout.LEDGER)},
        "prediction_rows": _rows(lake, layout.PREDICTIONS),
        "model": {
            "name": settings.model_name,
            "champion_version": champion,
            "champion_mlflow_run_id": champion_run,
            "latest_version": str(latest) if latest is not None else None,
            "tracking_uri": settings.resolved_tracking_uri,
        },
        "gate": None if gate is None else {
            "model_version": gate["challenger_version"], "passed": gate["passed"], "verdict": gate["verdict"],
            "metrics": gate["challenger_metrics"], "champion_metrics": gate["champion_metrics"],
            "report": lake.uri_of(gate["key"].removesuffix(".json") + ".md"),
        },
        "drift": None if drift is None else {
            "drifted": drift["drifted"], "drift_share": drift["drift_share"],
            "drifted_columns": drift["drifted_columns"], "report": lake.uri_of(layout.drift_report(date, "html")),
        },
        "cost": cost_of_date(lake, date, settings, client),
        "reports": lake.uri_of(layout.REPORTS),
        # Paths under the Airflow UI (the report view of the project's plugin): `make up` serves them.
        "links": {"Reports": links.index(),
                  **({links.MLFLOW_RUN: links.mlflow_run(champion_run),
                      links.MODEL_VERSION: links.model_version(settings.model_name, champion)} if champion else {}),
                  **({links.GATE_REPORT: links.report(gate["key"].removesuffix(".json") + ".html")} if gate else {}),
                  **({links.DRIFT_REPORT: links.report(layout.drift_report(date, "html")),
                      links.DRIFT_TREND: links.drift_trend()} if drift else {})},
        "airflow_ui_url": settings.airflow_ui_url,
    }
    out = settings.state_dir / "run-summary.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(summary, indent=2))
    sys.stdout.write(render(summary) + f"\nSummary written to {out}\n")
    return {"summary_file": str(out), "champion_version": champion}


COST_EXPERIMENT = "fraud-pipeline-cost"
COST_METRICS = ("wall_s", "cpu_s", "peak_rss_mb", "rows", "gpu_s", "saved_cpu_s", "cpu_s_per_million_rows")


def cost_of_date(lake: lk.Lake, date: str, settings: Settings, client) -> dict:
    """What the jobs of ``date`` cost, per step and in all, and the cloud estimate of it (docs/performance.md);
    logged as one MLflow metric series per step (experiment ``fraud-pipeline-cost``, one point per date)."""
    from jobs.storage import costs

    steps = costs.by_step(costs.of_date(lake, date))
    total = {k: round(sum(s[k] for s in steps.values()), 3) for k in ("wall_s", "cpu_s", "gpu_s", "saved_cpu_s")}
    total["peak_rss_mb"] = max((s["peak_rss_mb"] for s in steps.values()), default=0.0)
    total["estimate_usd"] = round(estimate_usd(total["cpu_s"], total["peak_rss_mb"], total["gpu_s"], settings), 5)
    total["saved_usd"] = round(estimate_usd(total["saved_cpu_s"], 0.0, 0.0, settings), 5)
    if steps:
        _log_series(client, date, steps)
    return {"steps": steps, "total": total, "rates": {"usd_per_vcpu_hour": settings.cost_usd_per_vcpu_hour,
                                                      "usd_per_gib_hour": settings.cost_usd_per_gib_hour,
                                                      "usd_per_gpu_hour": settings.cost_usd_per_gpu_hour}}


def estimate_usd(cpu_s: float, peak_mb: float, gpu_s: float, settings: Settings) -> float:
    """cost = CPU s / 3600 x $/vCPU-h + peak GiB x CPU s / 3600 x $/GiB-h + GPU s / 3600 x $/GPU-h.

    Memory is charged for as long as the CPU work ran (a node sized to the peak, busy for the CPU
    seconds): an upper bound for a job that peaks briefly, exact for one that holds its peak.
    """
    hours = cpu_s / 3600
    return (hours * settings.cost_usd_per_vcpu_hour + peak_mb / 1024 * hours * settings.cost_usd_per_gib_hour
            + gpu_s / 3600 * settings.cost_usd_per_gpu_hour)


def _log_series(client, date: str, steps: dict[str, dict]) -> None:
    """One MLflow run per step (``cost: <step>``), one point per date (the date's day number as the metric
    step); a date already logged is not logged again (a summary run twice adds nothing)."""
    from datetime import date as Date
    from datetime import datetime

    from mlflow.entities import Metric

    experiment = client.get_experiment_by_name(COST_EXPERIMENT)
    experiment_id = experiment.experiment_id if experiment else client.create_experiment(COST_EXPERIMENT)
    day = Date.fromisoformat(date).toordinal() - Date(1970, 1, 1).toordinal()
    stamp = int(datetime.fromisoformat(date).timestamp() * 1000)
    for step, figures in steps.items():
        found = client.search_runs([experiment_id], f"tags.step = '{step}'", max_results=1)
        run_id = found[0].info.run_id if found else client.create_run(
            experiment_id, run_name=f"cost: {step}", tags={"step": step}).info.run_id
        if any(m.step == day for m in client.get_metric_history(run_id, "cpu_s")):
            continue
        client.log_batch(run_id, metrics=[Metric(k, float(figures[k]), stamp, day) for k in COST_METRICS
                                          if figures.get(k) is not None])


def render(s: dict) -> str:
    """The summary as a short, readable block of text."""
    i, m, g, d = s["ingestion"], s["model"], s["gate"], s["drift"]
    lines = [
        f"Pipeline summary for {s['date']}  (lake: {s['lake']})",
        f"  ingestion   {i['rows_delivered']:>8} rows delivered in {i['objects_in_ledger']} objects: "
        f"{i['rows_silver']} landed in silver, {i['rows_quarantined']} quarantined"
        + (f"; rejected objects: {len(i['objects_rejected'])}" if i["objects_rejected"] else ""),
        *[f"              rejected: {key}" for key in i["objects_rejected"][:10]],
        f"  features    {s['feature_rows']:>8} rows over {s['feature_dates']} dates (gold/features)",
        f"  model       {m['name']} champion v{m['champion_version']} "
        f"(MLflow run {m['champion_mlflow_run_id']}); latest version v{m['latest_version']}",
    ]
    if g:
        mt = g["metrics"]
        lines.append(f"  gate        v{g['model_version']}: {'PASS' if g['passed'] else 'FAIL'} - {g['verdict']}")
        lines.append(f"              PR-AUC {mt['pr_auc']:.4f}  ROC-AUC {mt['roc_auc']:.4f}  Brier {mt['brier']:.4f}  "
                     f"recall@90%precision {mt['recall_at_precision_90']:.3f}")
        lines.append(f"              report {g['report']}")
    lines.append(f"  scoring     {s['prediction_rows']:>8} predictions (predictions/)")
    if d:
        lines.append(f"  drift       {'DRIFT' if d['drifted'] else 'no drift'}: share {d['drift_share']:.2f}; "
                     f"drifted columns: {', '.join(d['drifted_columns']) or 'none'}")
        lines.append(f"              report {d['report']}")
    c = s.get("cost") or {}
    if c.get("steps"):
        lines.append("  cost        step              jobs  wall s   CPU s  peak MB       rows  CPU s/M rows  "
                     "saved CPU s")
        for step, f in sorted(c["steps"].items()):
            per_m = f"{f['cpu_s_per_million_rows']:.1f}" if f["cpu_s_per_million_rows"] is not None else "-"
            lines.append(f"              {step:<16} {f['jobs']:>4} {f['wall_s']:>7.1f} {f['cpu_s']:>7.1f} "
                         f"{f['peak_rss_mb']:>8.0f} {f['rows']:>10} {per_m:>13} {f['saved_cpu_s']:>12.1f}")
        t = c["total"]
        lines.append(f"              all: {t['cpu_s']:.0f} CPU s, peak {t['peak_rss_mb']:.0f} MB: about "
                     f"${t['estimate_usd']:.4f} at the configured rates (docs/performance.md); skips saved "
                     f"{t['saved_cpu_s']:.0f} CPU s (${t['saved_usd']:.4f})")
    lines.append(f"  MLflow      {m['tracking_uri']}")
    lines.append("  links       (served by the Airflow UI: `make up`, sign in, then open)")
    lines += links.render(s["links"], s["airflow_ui_url"], indent=14)
    return "\n".join(lines)

