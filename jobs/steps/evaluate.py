"""Evaluation: challenger and champion on the same frozen holdout, then the gate decides."""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from pathlib import Path

import numpy as np

from jobs.ml import calibration, modelcard
from jobs.ml.gate import decide, render_html, render_slices
from jobs.ml.model import classification_metrics, paired_bootstrap, slice_metrics
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.names import GATE_TAGS, ONNX_SHA_TAG, PROMOTED_AT_TAG, SIGNATURE_TAG
from jobs.shared.result import JobError
from jobs.shared.schemas import LABEL
from jobs.storage import lake as lk
from jobs.storage import unchanged, verdict
from jobs.storage.registry import alias_version, load_bundle, mlflow_client, read_gold

log = logging.getLogger(__name__)

LATENCY_BATCH = 1000
LATENCY_REPEATS = 15


def scoring_latency_ms(bundle, frame) -> float:
    """Median milliseconds to score a batch of 1,000 rows with onnxruntime."""
    batch = frame.sample(LATENCY_BATCH, replace=len(frame) < LATENCY_BATCH, random_state=0)
    bundle.predict(batch)  # warm-up
    times = []
    for _ in range(LATENCY_REPEATS):
        t0 = time.perf_counter()
        bundle.predict(batch)
        times.append((time.perf_counter() - t0) * 1000)
    return float(np.median(times))




def best_recent_champion(client, settings: Settings, holdout, y, exclude: set) -> tuple[str, float] | None:
    """(version, PR-AUC on ``holdout``) of the best of the last ``recent_champions`` promoted versions
    other than ``exclude`` (the challenger; the champion is compared on its own), or None."""
    if settings.recent_champions <= 0:
        return None
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    promoted = sorted((mv for mv in versions if mv.tags.get(PROMOTED_AT_TAG)),
                      key=lambda mv: mv.tags[PROMOTED_AT_TAG], reverse=True)[:settings.recent_champions]
    scored = []
    for mv in promoted:
        if str(mv.version) in exclude:
            continue
        pr_auc = classification_metrics(y, load_bundle(client, settings, str(mv.version)).predict(holdout))["pr_auc"]
        log.info("recent champion v%s (promoted %s): PR-AUC %.4f on this holdout", mv.version,
                 mv.tags[PROMOTED_AT_TAG], pr_auc)
        scored.append((str(mv.version), pr_auc))
    return max(scored, key=lambda vp: vp[1], default=None)


def evaluate(lake: lk.Lake, date: str, settings: Settings, model_version: str, force: bool = False) -> dict:
    """Score challenger (and champion) on the challenger's holdout, gate, and record the report.

    When the challenger, the champion (versions and ONNX hashes), the holdout's gold files, the
    gate's settings and the code version equal those of the last evaluation of this version, and
    its gate tags and report are still in place, the verdict is reused instead of recomputed (the
    log and the result say so, with ``reused``). The task still succeeds, so a promotion that
    failed after a good gate can be retried by clearing from here; ``force`` recomputes.
    """
    import mlflow

    from jobs.storage import tables

    client = mlflow_client(settings)
    mv = client.get_model_version(settings.model_name, model_version)
    holdout_dates = mv.tags["holdout_dates"].split(",")
    champion_version = alias_version(client, settings, settings.champion_alias)
    champion_mv = (client.get_model_version(settings.model_name, champion_version)
                   if champion_version is not None and champion_version != str(model_version) else None)
    inputs = {"model_version": str(model_version), "onnx_sha256": mv.tags.get(ONNX_SHA_TAG, ""),
              "champion_version": champion_version,
              "champion_onnx_sha256": champion_mv.tags.get(ONNX_SHA_TAG, "") if champion_mv else None,
              "holdout": tables.snapshot_of(lake, layout.GOLD_FEATURES, holdout_dates),
              "code_version": settings.resolved_code_version,
              "gate": {k: getattr(settings, k) for k in (
                  "min_pr_auc", "min_roc_auc", "non_inferiority_margin", "onnx_parity_tolerance",
                  "latency_budget_ms", "bootstrap_resamples", "seed", "recent_champions",
                  "min_threshold_precision", "min_threshold_recall")},
              # the promotion history behind the best-recent-champion check
              "promotions": sorted((str(v.version), v.tags[PROMOTED_AT_TAG]) for v in client.search_model_versions(
                  f"name='{settings.model_name}'") if v.tags.get(PROMOTED_AT_TAG))}
    key = f"v{model_version}"
    outputs = {"tags": {t: mv.tags.get(t) for t in GATE_TAGS},
               "report": lake.exists(layout.gate_report(date, model_version, "html"))}
    done = None if force else unchanged.previous(lake, "evaluate", key, inputs, outputs)
    if done is not None:
        reason = (f"evaluate {key}: unchanged since run {done.get('run_id') or '?'} ({done.get('at', '?')}): "
                  f"reusing its verdict ({done['result'].get('verdict')})")
        log.info("%s", reason)
        return {**done["result"], "reused": True, "reuse_reason": reason, "unchanged_since": done.get("run_id") or ""}
    holdout = read_gold(lake, holdout_dates)
    if holdout.empty or holdout[LABEL].nunique() < 2:
        raise JobError(f"holdout {holdout_dates} has no rows or only one class in {lake.uri_of(layout.GOLD_FEATURES)}")
    y = holdout[LABEL].to_numpy()
    challenger = load_bundle(client, settings, model_version)
    challenger_scores = challenger.predict(holdout)
    challenger_metrics = classification_metrics(y, challenger_scores)
    slices = {"challenger": slice_metrics(holdout, challenger_scores)}
    champion_metrics = comparison = champion_scores = None
    if champion_version is not None and champion_version != str(model_version):
        champion_scores = load_bundle(client, settings, champion_version).predict(holdout)
        champion_metrics = classification_metrics(y, champion_scores)
        slices["champion"] = slice_metrics(holdout, champion_scores)
        comparison = paired_bootstrap(y, challenger_scores, champion_scores, settings.bootstrap_resamples,
                                      settings.seed)
        log.info("PR-AUC challenger - champion: %+.4f, 95%% CI [%+.4f, %+.4f]", comparison["delta"],
                 comparison["ci_low"], comparison["ci_high"])
    elif champion_version == str(model_version):
        champion_version = None  # re-evaluating the champion itself: nothing to compare against
    best_recent = best_recent_champion(client, settings, holdout, y, exclude={str(model_version), champion_version})
    parity = client.get_run(mv.run_id).data.metrics["onnx_max_abs_diff"]
    latency = scoring_latency_ms(challenger, holdout)
    operating_point = ({"threshold": challenger.threshold,
                        **calibration.at_threshold(y, challenger_scores, challenger.threshold)}
                       if challenger.decision else None)
    report = decide(
        challenger_metrics, champion_metrics, challenger_version=str(model_version),
        champion_version=champion_version, onnx_max_abs_diff=parity, latency_ms=latency,
        min_pr_auc=settings.min_pr_auc, min_roc_auc=settings.min_roc_auc,
        non_inferiority_margin=settings.non_inferiority_margin,
        onnx_parity_tolerance=settings.onnx_parity_tolerance, latency_budget_ms=settings.latency_budget_ms,
        comparison=comparison, best_recent=best_recent, operating_point=operating_point,
        min_threshold_precision=settings.min_threshold_precision, min_threshold_recall=settings.min_threshold_recall,
    )
    payload = {**report.to_dict(), "challenger_metrics": challenger_metrics, "champion_metrics": champion_metrics,
               "comparison": comparison, "slices": slices, "holdout_dates": holdout_dates, "logical_date": date,
               "trigger": mv.tags.get("trigger", ""), "operating_point": operating_point,
               "decision": challenger.decision}
    interval = modelcard.bootstrap_interval(y, challenger_scores, settings.bootstrap_resamples, settings.seed)
    payload["challenger_pr_auc_interval"] = list(interval)
    markdown = (report.to_markdown() + f"\nTrigger of the training run: **{payload['trigger'] or 'unknown'}**\n"
                + render_slices(slices))
    html_key = layout.gate_report(date, model_version, "html")
    plots_key = html_key.removesuffix(".html")  # the card's plots, beside the report that embeds them
    lake.write_json(layout.gate_report(date, model_version, "json"), payload)
    lake.write_bytes(layout.gate_report(date, model_version, "md"), markdown.encode())
    written = modelcard.plots(y, challenger_scores, champion_scores, f"challenger v{model_version}",
                              f"champion v{champion_version}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "card").mkdir()
        for name, png in written.items():
            lake.write_bytes(f"{plots_key}/{name}", png)
            (Path(tmp) / "card" / name).write_bytes(png)
        # Embedded in the page (the report view serves it sandboxed: it loads nothing from the server).
        figures = "\n## Plots (holdout)\n\n" + "\n\n".join(
            f"![{modelcard.PLOTS[name]}](data:image/png;base64,{base64.b64encode(png).decode()})"
            for name, png in written.items()) + "\n"
        lake.write_bytes(html_key, render_html(f"Gate report v{model_version} ({date})", markdown + figures).encode())
        with mlflow.start_run(run_id=mv.run_id):
            mlflow.log_metrics({f"holdout_{k}": v for k, v in challenger_metrics.items()})
            mlflow.log_metric("scoring_latency_ms_per_1k", latency)
            (Path(tmp) / "gate_report.md").write_text(markdown)
            mlflow.log_artifact(str(Path(tmp) / "gate_report.md"), artifact_path="gate")
            mlflow.log_dict(payload, "gate/gate_report.json")
            mlflow.log_artifacts(str(Path(tmp) / "card"), artifact_path="card")
    client.update_model_version(settings.model_name, str(model_version), description=modelcard.description(
        name=settings.model_name, version=str(model_version), tags=mv.tags, metrics=challenger_metrics,
        interval=interval, holdout_rows=len(holdout), champion_version=champion_version, comparison=comparison,
        gate_markdown=report.to_markdown(), passed=report.passed,
        decision=challenger.decision, operating_point=operating_point, slices_markdown=render_slices(slices),
        report_path=links.absolute(settings.airflow_ui_url, links.report(html_key))))
    client.set_model_version_tag(settings.model_name, model_version, "gate_passed", str(report.passed).lower())
    client.set_model_version_tag(settings.model_name, model_version, "gate_verdict", report.verdict)
    client.set_model_version_tag(settings.model_name, model_version, "gate_champion_version", champion_version or "")
    report_uri = lake.uri_of(layout.gate_report(date, model_version, "md"))
    client.set_model_version_tag(settings.model_name, model_version, "gate_report", report_uri)
    # Signed last, over the tags as the registry now holds them: only this job holds the key.
    written = client.get_model_version(settings.model_name, model_version).tags
    client.set_model_version_tag(settings.model_name, model_version, SIGNATURE_TAG,
                                 verdict.sign(settings, model_version, written))
    log.info("gate for v%s: %s", model_version, report.verdict)
    for c in report.checks:
        log.info("  %-24s %-10s %s %s -> %s", c.name, "n/a" if c.value is None else f"{c.value:.4g}",
                 c.comparison, "" if c.threshold is None else f"{c.threshold:.4g}", "pass" if c.passed else "FAIL")
    result = {"passed": report.passed, "verdict": report.verdict, "model_version": str(model_version),
              "champion_version": champion_version, "challenger_metrics": challenger_metrics,
              "champion_metrics": champion_metrics, "comparison": comparison, "report": report_uri,
              "checks": {c.name: c.passed for c in report.checks},
              # What a person approving the promotion reads in the Airflow UI: every check, its value
              # and threshold, as a Markdown table.
              "gate_table": report.to_markdown(),
              "mlflow_run_id": mv.run_id,
              "links": {links.GATE_REPORT: links.report(html_key), links.MLFLOW_RUN: links.mlflow_run(mv.run_id),
                        links.MODEL_VERSION: links.model_version(settings.model_name, model_version)}}
    tags = client.get_model_version(settings.model_name, model_version).tags
    unchanged.remember(lake, "evaluate", key, inputs, result, "",
                       {"tags": {t: tags.get(t) for t in GATE_TAGS},
                        "report": lake.exists(layout.gate_report(date, model_version, "html"))})
    return result
