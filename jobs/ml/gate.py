"""The promotion gate: explicit checks, each with its value, threshold and verdict."""

from __future__ import annotations

from dataclasses import asdict, dataclass


@dataclass(frozen=True)
class Thresholds:
    """What a challenger must clear (the ``gate`` settings group, ``PIPELINE_MIN_PR_AUC`` ...)."""

    min_pr_auc: float
    min_roc_auc: float
    non_inferiority_margin: float
    onnx_parity_tolerance: float
    latency_budget_ms: float
    min_threshold_precision: float = 0.0
    min_threshold_recall: float = 0.0

    @classmethod
    def of(cls, values: dict) -> Thresholds:
        """The thresholds among ``values`` (e.g. ``settings.group("gate")``, which holds more)."""
        return cls(**{name: values[name] for name in cls.__dataclass_fields__ if name in values})


@dataclass
class Check:
    name: str
    value: float | None
    threshold: float | None
    comparison: str  # how value is compared with threshold, for the report
    passed: bool
    note: str = ""


@dataclass
class GateReport:
    passed: bool
    verdict: str
    checks: list[Check]
    challenger_version: str
    champion_version: str | None

    def to_dict(self) -> dict:
        return asdict(self)

    def to_markdown(self) -> str:
        lines = [
            f"# Gate report: challenger v{self.challenger_version} "
            f"vs champion {('v' + self.champion_version) if self.champion_version else '(none)'}",
            "",
            f"**Verdict: {'PASS' if self.passed else 'FAIL'}** — {self.verdict}",
            "",
            "| check | value | threshold | result | note |",
            "| --- | --- | --- | --- | --- |",
        ]
        for c in self.checks:
            value = "n/a" if c.value is None else f"{c.value:.4g}"
            thr = "n/a" if c.threshold is None else f"{c.comparison} {c.threshold:.4g}"
            lines.append(f"| {c.name} | {value} | {thr} | {'pass' if c.passed else 'FAIL'} | {c.note} |")
        return "\n".join(lines) + "\n"


def decide(
    challenger: dict,
    champion: dict | None,
    *,
    challenger_version: str,
    champion_version: str | None,
    onnx_max_abs_diff: float,
    latency_ms: float,
    thresholds: Thresholds,
    comparison: dict | None = None,
    best_recent: tuple[str, float] | None = None,
    operating_point: dict | None = None,
) -> GateReport:
    """Gate a challenger: floors, ONNX parity, latency, and not worse than the champion.

    Against a champion, ``comparison`` is the paired bootstrap of the PR-AUC difference on the
    same holdout (``delta``, ``ci_low``, ``ci_high``): the challenger wins when even the low end
    of the 95 % interval is above ``-non_inferiority_margin``, so noise alone cannot promote a
    worse model. First-run policy: with no champion, the comparison is skipped (recorded as
    such) and the absolute floors alone decide.

    ``best_recent``: (version, PR-AUC on this holdout) of the best of the last K champions. The
    challenger may not fall more than the margin below it either, so a chain of promotions, each
    a little worse than the last within the margin, cannot ratchet the model down.

    ``operating_point``: the challenger's decision threshold with its precision and recall on the
    holdout (``jobs.ml.calibration.at_threshold``): the decisions scoring will write must hold up.
    """
    t = thresholds
    min_pr_auc, min_roc_auc, non_inferiority_margin = t.min_pr_auc, t.min_roc_auc, t.non_inferiority_margin
    onnx_parity_tolerance, latency_budget_ms = t.onnx_parity_tolerance, t.latency_budget_ms
    min_threshold_precision, min_threshold_recall = t.min_threshold_precision, t.min_threshold_recall
    checks = [
        Check("pr_auc_floor", challenger["pr_auc"], min_pr_auc, ">=", challenger["pr_auc"] >= min_pr_auc),
        Check("roc_auc_floor", challenger["roc_auc"], min_roc_auc, ">=", challenger["roc_auc"] >= min_roc_auc),
        Check("onnx_parity", onnx_max_abs_diff, onnx_parity_tolerance, "<=", onnx_max_abs_diff <= onnx_parity_tolerance,
              "max |onnx - torch| on the holdout"),
        Check("latency_ms_per_1k_rows", latency_ms, latency_budget_ms, "<=", latency_ms <= latency_budget_ms,
              "onnxruntime, median of repeated batches"),
    ]
    if champion is None:
        checks.append(Check("beats_champion", None, None, "", True, "first run: no champion yet, floors decide"))
    else:
        delta = challenger["pr_auc"] - champion["pr_auc"]
        if comparison is None:
            checks.append(Check("beats_champion", delta, -non_inferiority_margin, ">=",
                                delta >= -non_inferiority_margin,
                                f"PR-AUC challenger {challenger['pr_auc']:.4f} - champion {champion['pr_auc']:.4f}"))
        else:
            low = comparison["ci_low"]
            checks.append(Check("beats_champion", low, -non_inferiority_margin, ">=", low >= -non_inferiority_margin,
                                f"low end of the 95% CI of PR-AUC challenger - champion: delta "
                                f"{comparison['delta']:+.4f} [{low:+.4f}, {comparison['ci_high']:+.4f}], "
                                f"{comparison['resamples']} paired bootstrap resamples"))
    if operating_point is not None:
        at = operating_point["threshold"]
        checks.append(Check("threshold_precision", operating_point["precision"], min_threshold_precision, ">=",
                            operating_point["precision"] >= min_threshold_precision,
                            f"precision of the decisions at threshold {at:.4f} ({operating_point['flagged']} flagged)"))
        checks.append(Check("threshold_recall", operating_point["recall"], min_threshold_recall, ">=",
                            operating_point["recall"] >= min_threshold_recall,
                            f"share of the holdout's frauds flagged at threshold {at:.4f}"))
    if best_recent is not None:
        best_version, best_pr_auc = best_recent
        drop = challenger["pr_auc"] - best_pr_auc
        checks.append(Check("not_below_best_recent", drop, -non_inferiority_margin, ">=",
                            drop >= -non_inferiority_margin,
                            f"PR-AUC challenger {challenger['pr_auc']:.4f} - best recent champion "
                            f"v{best_version} {best_pr_auc:.4f}"))
    failed = [c.name for c in checks if not c.passed]
    if failed:
        verdict = f"keep the champion: failed {', '.join(failed)}"
    elif champion is None:
        verdict = f"promote: first model clears every floor (PR-AUC {challenger['pr_auc']:.4f})"
    else:
        verdict = (f"promote: PR-AUC {challenger['pr_auc']:.4f} vs champion {champion['pr_auc']:.4f} "
                   f"(margin {non_inferiority_margin})")
    return GateReport(not failed, verdict, checks, challenger_version, champion_version)


def render_slices(slices: dict[str, dict]) -> str:
    """Markdown table of per-slice PR-AUC for the challenger (and the champion when there is one)."""
    challenger, champion = slices["challenger"], slices.get("champion") or {}
    lines = ["", "## Slices (holdout)", "",
             "| slice | rows | fraud | challenger PR-AUC | champion PR-AUC |", "| --- | --- | --- | --- | --- |"]
    for name, m in challenger.items():
        def fmt(metrics):
            return f"{metrics['pr_auc']:.4f}" if metrics and "pr_auc" in metrics else "n/a"
        lines.append(f"| {name} | {m['rows']} | {m['positives']} | {fmt(m)} | {fmt(champion.get(name))} |")
    return "\n".join(lines) + "\n"


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2rem auto; max-width: 70rem; padding: 0 1rem; color: #1b1f24; }}
table {{ border-collapse: collapse; margin: 1rem 0; }}
th, td {{ border: 1px solid #d0d7de; padding: .3rem .6rem; text-align: left; }}
th {{ background: #f3f5f7; }}
</style></head>
<body>
{body}
</body></html>
"""


def render_html(title: str, markdown: str) -> str:
    """A report written in Markdown as a standalone HTML page (what a browser shows)."""
    from html import escape

    from markdown_it import MarkdownIt

    body = MarkdownIt("commonmark", {"html": False}).enable("table").render(markdown)
    return _PAGE.format(title=escape(title), body=body)
