"""Live trials: a challenger that passed its offline gate earns production on live traffic.

- :func:`stage` (``python -m jobs challenger``): the gated version takes the ``challenger`` alias,
  with the terms every scoring service reads from its tags (shadow or canary, the shares) and the
  time its trial starts. A challenger it replaces is retired, saying so.
- :func:`guardrails` (``python -m jobs guardrails``): the live evidence so far, from the lake's
  decisions log (challenger against champion on the same requests): error rate, p99 model time,
  flag-rate ratio, PSI of the scores, agreement of the decisions. ``baking`` (look again in
  ``recheck_after_seconds``: the task defers meanwhile), ``tripped`` (a guardrail failed on enough
  requests), ``passed`` (the baking period is over with enough requests and every guardrail held),
  ``insufficient`` (too few requests by the longest wait) or ``gone`` (the challenger alias moved).
  A final state writes the live section of the version's gate report.
- :func:`retire` (``python -m jobs retire``): the challenger leaves traffic (its alias removed, if
  it still is the version), the reason recorded on it and on the champion.

Promotion on live evidence is :func:`jobs.steps.promote.promote`, which also ends the trial.
"""

from __future__ import annotations

import json
import logging
import math
import re
from dataclasses import asdict, dataclass
from datetime import UTC, datetime

from jobs.settings import Settings
from jobs.shared import layout, links
from jobs.shared.names import (
    GATE_PASSED_TAG,
    GATE_REPORT_TAG,
    LIVE_CANARY_SHARE_TAG,
    LIVE_CHALLENGER_TAG,
    LIVE_MODE_TAG,
    LIVE_REPORT_TAG,
    LIVE_SHADOW_SHARE_TAG,
    LIVE_SINCE_TAG,
    LIVE_VERDICT_TAG,
)
from jobs.shared.result import JobError
from jobs.storage import tables, verdict
from jobs.storage.lake import Lake
from jobs.storage.registry import alias_version, mlflow_client, use_promotion_identity

log = logging.getLogger(__name__)

EVIDENCE_COLUMNS = ["scored_at", "date", "champion_probability", "champion_flagged", "champion_latency_ms",
                    "challenger_version", "challenger_probability", "challenger_flagged", "challenger_latency_ms",
                    "challenger_error", "served_by"]


def _now() -> datetime:
    return datetime.now(UTC)


def stage(settings: Settings, model_version: str) -> dict:
    """Give the gated ``model_version`` the ``challenger`` alias and its trial's terms (idempotent: a
    version already on trial keeps its start)."""
    if settings.live_evaluation == "off":
        raise JobError("PIPELINE_LIVE_EVALUATION is off: a gated challenger is promoted directly, never staged")
    use_promotion_identity(settings)
    client = mlflow_client(settings)
    mv = client.get_model_version(settings.model_name, model_version)
    if mv.tags.get(GATE_PASSED_TAG) != "true":
        raise JobError(f"{settings.model_name} v{model_version} did not pass its gate: not putting it on live traffic")
    verdict.verify(settings, model_version, mv.tags)
    current = alias_version(client, settings, settings.challenger_alias)
    champion = alias_version(client, settings, settings.champion_alias)
    if champion == str(model_version):
        raise JobError(f"v{model_version} already is the champion: nothing to try")
    since = mv.tags.get(LIVE_SINCE_TAG) if current == str(model_version) else None
    if current is not None and current != str(model_version):
        _record(client, settings, current, f"retired: replaced on live trial by v{model_version}")
    terms = {LIVE_MODE_TAG: settings.live_evaluation, LIVE_SHADOW_SHARE_TAG: str(settings.shadow_share),
             LIVE_CANARY_SHARE_TAG: str(settings.canary_share if settings.live_evaluation == "canary" else 0.0)}
    for tag, value in terms.items():
        client.set_model_version_tag(settings.model_name, model_version, tag, value)
    if since is None:
        since = _now().isoformat()  # to the microsecond: an earlier trial of the same version may end this second
        client.set_model_version_tag(settings.model_name, model_version, LIVE_SINCE_TAG, since)
        if LIVE_VERDICT_TAG in mv.tags:  # an earlier trial's outcome
            client.delete_model_version_tag(settings.model_name, model_version, LIVE_VERDICT_TAG)
    client.set_registered_model_alias(settings.model_name, settings.challenger_alias, str(model_version))
    log.info("v%s is @%s since %s: %s beside champion v%s", model_version, settings.challenger_alias, since,
             settings.live_evaluation, champion)
    return {"model_version": str(model_version), "champion_version": champion, "mode": settings.live_evaluation,
            "live_since": since, "replaced_challenger": current if current != str(model_version) else None,
            "links": {links.MODEL_VERSION: links.model_version(settings.model_name, model_version)}}


@dataclass
class Check:
    name: str
    value: float | None
    limit: str
    passed: bool


# Risk bands of the fraud probability, as a fraud team reads scores: under 1 % (nothing to do), 1-2 %, 2-5 %,
# 5-10 %, 10-20 %, 20-50 %, over 50 %. Quantile bins of the champion's scores would weigh the order of the
# near-zero bulk, which no decision uses: a sound retrain measured a PSI of 0.41 there, 0.0x on these bands.
RISK_BANDS = (0.01, 0.02, 0.05, 0.1, 0.2, 0.5)


def psi(expected, actual, edges=RISK_BANDS) -> float:
    """Population stability index of ``actual`` against ``expected`` over the bands cut at ``edges``."""
    import numpy as np

    expected, actual = np.asarray(expected, float), np.asarray(actual, float)
    cuts = np.concatenate([[-np.inf], np.asarray(edges, float), [np.inf]])
    e = np.histogram(expected, cuts)[0] / max(len(expected), 1)
    a = np.histogram(actual, cuts)[0] / max(len(actual), 1)
    e, a = np.clip(e, 1e-4, None), np.clip(a, 1e-4, None)
    return float(np.sum((a - e) * np.log(a / e)))


def assess(frame, settings: Settings, elapsed_minutes: float) -> dict:
    """The state of a trial from its evidence (the decisions rows the challenger scored)."""
    import numpy as np

    n = len(frame)
    failed = frame["challenger_error"].notna() if n else frame.get("challenger_error")
    scored = frame[~failed] if n else frame
    checks: list[Check] = []
    if n:
        errors = float(failed.mean())
        checks.append(Check("error rate", errors, f"<= {settings.guardrail_max_error_rate}",
                            errors <= settings.guardrail_max_error_rate))
        p99 = float(np.percentile(frame["challenger_latency_ms"].astype(float), 99))
        checks.append(Check("p99 model time (ms)", p99, f"<= {settings.guardrail_max_p99_ms}",
                            p99 <= settings.guardrail_max_p99_ms))
    if len(scored):
        ours, theirs = scored["champion_flagged"].astype(bool), scored["challenger_flagged"].astype(bool)
        ratio = (theirs.sum() + 1) / (ours.sum() + 1)  # smoothed: a rate of zero is not an infinite change
        worst = max(ratio, 1 / ratio)
        most = settings.guardrail_max_flag_rate_ratio
        checks.append(Check("flag-rate ratio (challenger / champion)", float(ratio), f"within 1/{most} .. {most}",
                            worst <= most))
        shift = psi(scored["champion_probability"], scored["challenger_probability"])
        checks.append(Check("PSI of the scores", shift, f"<= {settings.guardrail_max_psi}",
                            shift <= settings.guardrail_max_psi))
        agree = float((ours == theirs).mean())
        checks.append(Check("agreement of the decisions", agree, f">= {settings.guardrail_min_agreement}",
                            agree >= settings.guardrail_min_agreement))
    tripped = [c for c in checks if not c.passed]
    if n >= settings.guardrail_trip_requests and tripped:
        state = "tripped"
    elif elapsed_minutes >= settings.guardrail_bake_minutes and n >= settings.guardrail_min_requests:
        state = "passed"
    elif elapsed_minutes >= settings.guardrail_max_wait_hours * 60:
        state = "insufficient"
    else:
        state = "baking"
    reason = {
        "tripped": "guardrail tripped: " + "; ".join(f"{c.name} {_shown(c.value)} (limit {c.limit})" for c in tripped)
                   + f" on {n} requests",
        "passed": f"every guardrail held on {n} requests over {elapsed_minutes:.0f} min",
        "insufficient": f"only {n} requests (of {settings.guardrail_min_requests}) by the longest wait of "
                        f"{settings.guardrail_max_wait_hours:g} h: not enough evidence to promote",
        "baking": f"baking: {n} requests, {elapsed_minutes:.1f} of {settings.guardrail_bake_minutes:g} min"
                  if elapsed_minutes < settings.guardrail_bake_minutes else
                  f"baked, waiting for requests: {n} of {settings.guardrail_min_requests}",
    }[state]
    return {"state": state, "requests": n, "served_by_challenger": int((frame["served_by"] == "challenger").sum())
            if n else 0, "elapsed_minutes": round(elapsed_minutes, 2), "checks": [asdict(c) for c in checks],
            "reason": reason}


def _shown(value: float | None) -> str:
    return "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.4g}"


def evidence(lake: Lake, model_version: str, since: datetime):
    """The decisions the challenger ``model_version`` took part in since its trial started."""
    import pandas as pd

    days = [d for d in tables.partitions(lake, layout.DECISIONS) if d >= since.date().isoformat()]
    frame = tables.select(lake, layout.DECISIONS, EVIDENCE_COLUMNS, days,
                          equals={"challenger_version": str(model_version)}).to_pandas()
    if not len(frame):
        return pd.DataFrame(columns=EVIDENCE_COLUMNS)
    return frame[pd.to_datetime(frame["scored_at"], utc=True) >= since].reset_index(drop=True)


def guardrails(settings: Settings, lake: Lake, run_id: str = "", model_version: str | None = None) -> dict:
    """Where the challenger's trial stands (see the module doc). With ``run_id``, the version watched is
    pinned at the run's first try, so a retry or a rerun watches the same one."""
    client = mlflow_client(settings)
    current = alias_version(client, settings, settings.challenger_alias)
    version = model_version or current
    if run_id:
        key = layout.challenger_pin(run_id)
        if version is not None and lake.create_only(key, json.dumps({"model_version": version}).encode()):
            log.info("run %s watches challenger v%s", run_id, version)
        elif lake.exists(key):
            version = lake.read_json(key)["model_version"]
    if version is None or current != str(version):
        why = f"@{settings.challenger_alias} is {('v' + current) if current else 'not set'}"
        log.info("nothing to watch: %s", why)
        return {"state": "gone", "model_version": version, "reason": why, "requests": 0}
    mv = client.get_model_version(settings.model_name, version)
    since = datetime.fromisoformat(mv.tags[LIVE_SINCE_TAG])
    frame = evidence(lake, version, since)
    elapsed = (_now() - since).total_seconds() / 60
    result = assess(frame, settings, elapsed)
    champion = alias_version(client, settings, settings.champion_alias)
    result.update(model_version=str(version), champion_version=champion, mode=mv.tags.get(LIVE_MODE_TAG),
                  live_since=since.isoformat())
    log.info("challenger v%s against champion v%s: %s", version, champion, result["reason"])
    for c in result["checks"]:
        log.info("  %-42s %10s  limit %-18s %s", c["name"], _shown(c["value"]), c["limit"],
                 "ok" if c["passed"] else "TRIPPED")
    if result["state"] == "baking":
        bake_left = settings.guardrail_bake_minutes - elapsed
        wait = settings.guardrail_check_minutes if bake_left <= 0 else min(settings.guardrail_check_minutes, bake_left)
        result["recheck_after_seconds"] = max(1, math.ceil(wait * 60))
    else:
        result["report"] = _publish(lake, settings, client, mv, result)
        result["links"] = {links.GATE_REPORT: links.report(result["report"])}
    return result


def challenger_report(lake: Lake, mv) -> str | None:
    """The gate report (Markdown key in the lake) of a version, from its tag."""
    uri = mv.tags.get(GATE_REPORT_TAG)
    if not uri:
        return None
    found = re.search(r"date=(\d{4}-\d{2}-\d{2})", uri)
    return layout.gate_report(found.group(1), str(mv.version), "md") if found else None


def live_markdown(result: dict) -> str:
    lines = [f"\n## Live trial ({result['mode']}) against champion v{result['champion_version']}\n",
             f"**{result['state'].upper()}**: {result['reason']}\n",
             f"Since {result['live_since']}; {result['requests']} requests scored beside the champion, "
             f"{result['served_by_challenger']} answered with the challenger's decision.\n",
             "| guardrail | value | limit | |", "|---|---|---|---|"]
    lines += [f"| {c['name']} | {_shown(c['value'])} | {c['limit']} | {'ok' if c['passed'] else 'TRIPPED'} |"
              for c in result["checks"]]
    return "\n".join(lines) + "\n"


def _publish(lake: Lake, settings: Settings, client, mv, result: dict) -> str:
    """The live section added to the version's gate report (JSON, Markdown, HTML); its HTML key."""
    from jobs.ml.gate import render_html

    md_key = challenger_report(lake, mv)
    if md_key is None:  # no gate report on record (a version gated elsewhere): the section alone
        md_key = f"{layout.REPORTS}/live/v{mv.version}.md"
    base = md_key[: -len(".md")]
    section = live_markdown(result)
    markdown = lake.read_bytes(md_key).decode() if lake.exists(md_key) else f"# Gate report v{mv.version}\n"
    markdown = markdown.split("\n## Live trial (")[0].rstrip("\n") + "\n" + section
    lake.write_bytes(md_key, markdown.encode())
    payload = lake.read_json(base + ".json") if lake.exists(base + ".json") else {}
    payload["live"] = {k: v for k, v in result.items() if k not in ("links", "report")}
    lake.write_json(base + ".json", payload)
    html_key = base + ".html"
    page = lake.read_bytes(html_key).decode() if lake.exists(html_key) else None
    rendered = render_html(f"Live trial v{mv.version}", section)
    body = rendered.split("<body>\n", 1)[1].rsplit("\n</body>", 1)[0]
    marker = "<!-- live trial -->"
    if page and "</body>" in page:
        page = page.split(marker)[0].replace("</body></html>", "").rstrip() + f"\n{marker}\n{body}\n</body></html>\n"
    else:
        page = rendered
    lake.write_bytes(html_key, page.encode())
    client.set_model_version_tag(settings.model_name, str(mv.version), LIVE_REPORT_TAG, lake.uri_of(md_key))
    return html_key


def _record(client, settings: Settings, version: str, line: str, tag: str = LIVE_VERDICT_TAG) -> None:
    """The outcome as a tag (``live_verdict`` on the challenger, ``live_challenger`` on the champion) and a
    line in the version's decisions."""
    from jobs.ml import modelcard

    client.set_model_version_tag(settings.model_name, str(version), tag, line[:5000])
    modelcard.add_decision(client, settings.model_name, str(version), f"{line}; Airflow run "
                           f"{settings.airflow_run_id or 'none (CLI)'}")


def retire(settings: Settings, model_version: str, reason: str) -> dict:
    """Take ``model_version`` off live traffic (its ``challenger`` alias removed if it still holds it),
    the reason on it and on the champion. Idempotent: a retry finds the alias gone and records once."""
    use_promotion_identity(settings)
    client = mlflow_client(settings)
    current = alias_version(client, settings, settings.challenger_alias)
    champion = alias_version(client, settings, settings.champion_alias)
    why = reason.strip() or "no reason given"
    if current == str(model_version):
        client.delete_registered_model_alias(settings.model_name, settings.challenger_alias)
        log.info("v%s is off live traffic: %s", model_version, why)
    else:
        log.info("v%s no longer holds @%s (%s): nothing to take off traffic", model_version,
                 settings.challenger_alias, f"v{current}" if current else "no challenger")
    mv = client.get_model_version(settings.model_name, str(model_version))
    line = f"taken off live traffic: {why}"
    if mv.tags.get(LIVE_VERDICT_TAG) != line:
        _record(client, settings, model_version, line)
        if champion:
            _record(client, settings, champion, f"stays champion: challenger v{model_version} {line}",
                    LIVE_CHALLENGER_TAG)
    return {"model_version": str(model_version), "champion_version": champion, "reason": why,
            "changed": current == str(model_version),
            "links": {links.MODEL_VERSION: links.model_version(settings.model_name, model_version)}}
