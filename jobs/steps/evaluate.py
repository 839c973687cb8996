"""Evaluation: challenger and champion on the same frozen holdout, then the gate decides."""

from __future__ import annotations

import base64
import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pandas as pd

from jobs.ml import calibration, modelcard
from jobs.ml.gate import Thresholds, decide, render_html, render_slices
from jobs.ml.model import classification_metrics, paired_bootstrap, slice_metrics
from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.names import (
    GATE_CHAMPION_TAG,
    GATE_PASSED_TAG,
    GATE_REPORT_TAG,
    GATE_TAGS,
    GATE_VERDICT_TAG,
    HOLDOUT_DATES_TAG,
    HOLDOUT_METRIC_PREFIX,
    ONNX_PARITY,
    ONNX_SHA_TAG,
    PROMOTED_AT_TAG,
    SCORING_LATENCY,
    SIGNATURE_TAG,
)
from jobs.shared.result import JobError
from jobs.shared.schemas import FEATURE_COLUMNS, LABEL
from jobs.storage import lake as lk
from jobs.storage import unchanged, verdict
from jobs.storage.registry import alias_version, load_bundle, mlflow_client

log = logging.getLogger(__name__)

LATENCY_BATCH = 1000
LATENCY_REPEATS = 15
HOLDOUT_COLUMNS = [*FEATURE_COLUMNS, LABEL]  # what the models and the slices read of gold
SLICE_COLUMNS = ["channel", "log_amount", LABEL]  # what jobs.ml.model.slice_metrics groups by
HOLDOUT_BATCH_ROWS = 131_072


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




def recent_champions(client, settings: Settings, exclude: set) -> list:
    """The last ``recent_champions`` promoted versions other than ``exclude`` (the challenger; the
    champion is compared on its own), newest first."""
    if settings.recent_champions <= 0:
        return []
    versions = client.search_model_versions(f"name='{settings.model_name}'")
    promoted = sorted((mv for mv in versions if mv.tags.get(PROMOTED_AT_TAG)),
                      key=lambda mv: mv.tags[PROMOTED_AT_TAG], reverse=True)[:settings.recent_champions]
    return [mv for mv in promoted if str(mv.version) not in exclude]


def best_recent_champion(recent: list, holdout: HoldoutScores) -> tuple[str, float] | None:
    """(version, PR-AUC on the holdout) of the best of the ``recent`` champions, or None."""
    scored = []
    for mv in recent:
        pr_auc = classification_metrics(holdout.y, holdout.scores[str(mv.version)])["pr_auc"]
        log.info("recent champion v%s (promoted %s): PR-AUC %.4f on this holdout", mv.version,
                 mv.tags[PROMOTED_AT_TAG], pr_auc)
        scored.append((str(mv.version), pr_auc))
    return max(scored, key=lambda vp: vp[1], default=None)


@dataclass
class HoldoutScores:
    """Every model's probabilities on the holdout, read batch by batch: the labels, the scores per
    version, what the slices group by, and a batch of rows for the latency check."""

    y: np.ndarray
    scores: dict[str, np.ndarray]
    slices: pd.DataFrame  # channel, log_amount and the label of each row, in the order of ``y``
    sample: pd.DataFrame  # the first batch: the rows the latency check scores

    @property
    def rows(self) -> int:
        return len(self.y)


def score_holdout(lake: lk.Lake, holdout_dates: list[str], bundles: dict) -> HoldoutScores:
    """Score the holdout's gold rows with every bundle (version -> bundle) in one scan of record
    batches of the model's columns: memory holds a batch and the scores, not the holdout."""
    from jobs.storage import tables

    labels, parts, slices, sample = [], {v: [] for v in bundles}, [], None
    for batch in tables.batches(lake, layout.GOLD_FEATURES, HOLDOUT_COLUMNS, dates=holdout_dates,
                                batch_size=HOLDOUT_BATCH_ROWS):
        frame = batch.to_pandas()
        sample = frame if sample is None else sample
        labels.append(frame[LABEL].to_numpy())
        for version, bundle in bundles.items():
            parts[version].append(bundle.predict(frame))
        slices.append(frame[SLICE_COLUMNS].astype({"channel": "category"}))
    if sample is None:
        return HoldoutScores(np.array([], dtype="int64"), {v: np.array([]) for v in bundles},
                         pd.DataFrame(columns=SLICE_COLUMNS), pd.DataFrame(columns=HOLDOUT_COLUMNS))
    return HoldoutScores(np.concatenate(labels), {v: np.concatenate(p) for v, p in parts.items()},
                         pd.concat(slices, ignore_index=True).astype({"channel": str}), sample)


def evaluate(lake: lk.Lake, date: str, settings: Settings, model_version: str, force: bool = False) -> dict:
    """Score challenger (and champion) on the challenger's holdout, gate, and record the report.

    When the challenger, the champion (versions and ONNX hashes), the holdout's gold files, the
    gate's settings and the code version equal those of the last evaluation of this version, and
    its gate tags and report are still in place, the verdict is reused instead of recomputed (the
    log and the result say so, with ``reused``). The task still succeeds, so a promotion that
    failed after a good gate can be retried by clearing from here; ``force`` recomputes.
    """
    from jobs.storage import tables

    client = mlflow_client(settings)
    mv = client.get_model_version(settings.model_name, model_version)
    holdout_dates = mv.tags[HOLDOUT_DATES_TAG].split(",")
    champion_version = alias_version(client, settings, settings.champion_alias)
    champion_mv = (client.get_model_version(settings.model_name, champion_version)
                   if champion_version is not None and champion_version != str(model_version) else None)
    inputs = {"model_version": str(model_version), "onnx_sha256": mv.tags.get(ONNX_SHA_TAG, ""),
              "champion_version": champion_version,
              "champion_onnx_sha256": champion_mv.tags.get(ONNX_SHA_TAG, "") if champion_mv else None,
              "holdout": tables.snapshot_of(lake, layout.GOLD_FEATURES, holdout_dates),
              "code_version": settings.resolved_code_version,
              "gate": settings.group("gate"),
              # the promotion history behind the best-recent-champion check
              "promotions": sorted((str(v.version), v.tags[PROMOTED_AT_TAG]) for v in client.search_model_versions(
                  f"name='{settings.model_name}'") if v.tags.get(PROMOTED_AT_TAG))}
    key = f"v{model_version}"

    def outputs(result: dict | None) -> dict:  # the verdict as the registry and the lake hold it now
        tags = client.get_model_version(settings.model_name, model_version).tags
        return {"tags": {t: tags.get(t) for t in GATE_TAGS},
                "report": lake.exists(layout.gate_report(date, model_version, "html"))}

    def reused(done: dict) -> dict:
        reason = (f"evaluate {key}: unchanged since run {done.get('run_id') or '?'} ({done.get('at', '?')}): "
                  f"reusing its verdict ({done['result'].get('verdict')})")
        log.info("%s", reason)
        return {**done["result"], "reused": True, "reuse_reason": reason, "unchanged_since": done.get("run_id") or ""}

    def work() -> dict:
        return _gate(lake, date, settings, client, mv, str(model_version), holdout_dates,
                     champion_version if champion_mv is not None else None)

    result = unchanged.once(lake, "evaluate", key, inputs, work, force=force, outputs=outputs, on_skip=reused)
    # What a passed gate leads to now (the gate task branches on it): promotion, or a live trial first.
    return {**result, "live_evaluation": settings.live_evaluation}


def _gate(lake: lk.Lake, date: str, settings: Settings, client, mv, model_version: str, holdout_dates: list[str],
          champion_version: str | None) -> dict:
    """Score the holdout, decide, publish the gate report and model card, tag and sign the verdict."""
    challenger = load_bundle(client, settings, model_version)
    bundles = {model_version: challenger}
    if champion_version is not None:
        bundles[champion_version] = load_bundle(client, settings, champion_version)
    recent = recent_champions(client, settings, exclude={model_version, champion_version})
    for mv_ in recent:
        bundles.setdefault(str(mv_.version), load_bundle(client, settings, str(mv_.version)))
    holdout = score_holdout(lake, holdout_dates, bundles)
    if not holdout.rows or len(np.unique(holdout.y)) < 2:
        raise JobError(f"holdout {holdout_dates} has no rows or only one class in {lake.uri_of(layout.GOLD_FEATURES)}")
    scores = _holdout_scores(settings, holdout, challenger, model_version, champion_version)
    best_recent = best_recent_champion(recent, holdout)
    latency = scoring_latency_ms(challenger, holdout.sample)
    operating_point = ({"threshold": challenger.threshold,
                        **calibration.at_threshold(scores["y"], scores["challenger"], challenger.threshold)}
                       if challenger.decision else None)
    report = decide(
        scores["challenger_metrics"], scores["champion_metrics"], challenger_version=model_version,
        champion_version=champion_version, onnx_max_abs_diff=client.get_run(mv.run_id).data.metrics[ONNX_PARITY],
        latency_ms=latency, thresholds=Thresholds.of(settings.group("gate")), comparison=scores["comparison"],
        best_recent=best_recent, operating_point=operating_point,
    )
    html_key = _publish_report(lake, date, settings, client, mv, model_version, champion_version, report, scores,
                               operating_point, latency, holdout.rows, holdout_dates)
    report_uri = lake.uri_of(layout.gate_report(date, model_version, "md"))
    for tag, value in {GATE_PASSED_TAG: str(report.passed).lower(), GATE_VERDICT_TAG: report.verdict,
                       GATE_CHAMPION_TAG: champion_version or "", GATE_REPORT_TAG: report_uri}.items():
        client.set_model_version_tag(settings.model_name, model_version, tag, value)
    # Signed last, over the tags as the registry now holds them: only this job holds the key.
    written = client.get_model_version(settings.model_name, model_version).tags
    client.set_model_version_tag(settings.model_name, model_version, SIGNATURE_TAG,
                                 verdict.sign(settings, model_version, written))
    log.info("gate for v%s: %s", model_version, report.verdict)
    for c in report.checks:
        log.info("  %-24s %-10s %s %s -> %s", c.name, "n/a" if c.value is None else f"{c.value:.4g}",
                 c.comparison, "" if c.threshold is None else f"{c.threshold:.4g}", "pass" if c.passed else "FAIL")
    return {"passed": report.passed, "verdict": report.verdict, "model_version": model_version,
            "champion_version": champion_version, "challenger_metrics": scores["challenger_metrics"],
            "champion_metrics": scores["champion_metrics"], "comparison": scores["comparison"], "report": report_uri,
            "checks": {c.name: c.passed for c in report.checks},
            # What a person approving the promotion reads in the Airflow UI: every check, its value
            # and threshold, as a Markdown table.
            "gate_table": report.to_markdown(),
            "mlflow_run_id": mv.run_id,
            "links": {links.GATE_REPORT: links.report(html_key), links.MLFLOW_RUN: links.mlflow_run(mv.run_id),
                      links.MODEL_VERSION: links.model_version(settings.model_name, model_version)}}


def _holdout_scores(settings: Settings, holdout: HoldoutScores, bundle, model_version: str,
                    champion_version: str | None) -> dict:
    """Challenger (and champion) scores, metrics and slices on the holdout; the paired bootstrap between them."""
    y, challenger = holdout.y, holdout.scores[model_version]
    out = {"y": y, "bundle": bundle, "challenger": challenger, "champion": None,
           "challenger_metrics": classification_metrics(y, challenger), "champion_metrics": None,
           "comparison": None, "slices": {"challenger": slice_metrics(holdout.slices, challenger)}}
    if champion_version is not None:
        champion = holdout.scores[champion_version]
        comparison = paired_bootstrap(y, challenger, champion, settings.bootstrap_resamples, settings.seed)
        log.info("PR-AUC challenger - champion: %+.4f, 95%% CI [%+.4f, %+.4f]", comparison["delta"],
                 comparison["ci_low"], comparison["ci_high"])
        out.update(champion=champion, champion_metrics=classification_metrics(y, champion), comparison=comparison)
        out["slices"]["champion"] = slice_metrics(holdout.slices, champion)
    return out


def _publish_report(lake: lk.Lake, date: str, settings: Settings, client, mv, model_version: str,
                    champion_version: str | None, report, scores: dict, operating_point: dict | None, latency: float,
                    holdout_rows: int, holdout_dates: list[str]) -> str:
    """The gate report (JSON, Markdown, HTML with the card's plots) in the lake and MLflow, the version's card."""
    import mlflow

    y, challenger = scores["y"], scores["bundle"]
    payload = {**report.to_dict(), "challenger_metrics": scores["challenger_metrics"],
               "champion_metrics": scores["champion_metrics"], "comparison": scores["comparison"],
               "slices": scores["slices"], "holdout_dates": holdout_dates, "logical_date": date,
               "trigger": mv.tags.get("trigger", ""), "operating_point": operating_point,
               "decision": challenger.decision}
    interval = modelcard.bootstrap_interval(y, scores["challenger"], settings.bootstrap_resamples, settings.seed)
    payload["challenger_pr_auc_interval"] = list(interval)
    markdown = (report.to_markdown() + f"\nTrigger of the training run: **{payload['trigger'] or 'unknown'}**\n"
                + render_slices(scores["slices"]))
    html_key = layout.gate_report(date, model_version, "html")
    lake.write_json(layout.gate_report(date, model_version, "json"), payload)
    lake.write_bytes(layout.gate_report(date, model_version, "md"), markdown.encode())
    plots = modelcard.plots(y, scores["challenger"], scores["champion"], f"challenger v{model_version}",
                            f"champion v{champion_version}")
    with tempfile.TemporaryDirectory() as tmp:
        (Path(tmp) / "card").mkdir()
        for name, png in plots.items():
            lake.write_bytes(layout.gate_plot(date, model_version, name), png)  # beside the report
            (Path(tmp) / "card" / name).write_bytes(png)
        # Embedded in the page (the report view serves it sandboxed: it loads nothing from the server).
        figures = "\n## Plots (holdout)\n\n" + "\n\n".join(
            f"![{modelcard.PLOTS[name]}](data:image/png;base64,{base64.b64encode(png).decode()})"
            for name, png in plots.items()) + "\n"
        lake.write_bytes(html_key, render_html(f"Gate report v{model_version} ({date})", markdown + figures).encode())
        with mlflow.start_run(run_id=mv.run_id):
            mlflow.log_metrics({HOLDOUT_METRIC_PREFIX + k: v for k, v in scores["challenger_metrics"].items()})
            mlflow.log_metric(SCORING_LATENCY, latency)
            (Path(tmp) / "gate_report.md").write_text(markdown)
            mlflow.log_artifact(str(Path(tmp) / "gate_report.md"), artifact_path="gate")
            mlflow.log_dict(payload, "gate/gate_report.json")
            mlflow.log_artifacts(str(Path(tmp) / "card"), artifact_path="card")
    client.update_model_version(settings.model_name, model_version, description=modelcard.description(
        name=settings.model_name, version=model_version, tags=mv.tags, metrics=scores["challenger_metrics"],
        interval=interval, holdout_rows=holdout_rows, champion_version=champion_version,
        comparison=scores["comparison"], gate_markdown=report.to_markdown(), passed=report.passed,
        decision=challenger.decision, operating_point=operating_point, slices_markdown=render_slices(scores["slices"]),
        report_path=links.absolute(settings.airflow_ui_url, links.report(html_key))))
    return html_key
