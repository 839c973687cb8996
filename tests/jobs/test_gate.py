from jobs.gate import decide

FLOORS = dict(min_pr_auc=0.3, min_roc_auc=0.8, non_inferiority_margin=0.01, onnx_parity_tolerance=1e-4,
              latency_budget_ms=50.0)


def gate(challenger, champion=None, parity=1e-7, latency=2.0):
    return decide(challenger, champion, challenger_version="2", champion_version="1" if champion else None,
                  onnx_max_abs_diff=parity, latency_ms=latency, **FLOORS)


def test_first_run_is_decided_by_the_floors():
    report = gate({"pr_auc": 0.6, "roc_auc": 0.95})
    assert report.passed and report.verdict.startswith("promote: first model")
    assert not gate({"pr_auc": 0.2, "roc_auc": 0.95}).passed


def test_worse_challenger_keeps_the_champion_and_names_the_check():
    report = gate({"pr_auc": 0.55, "roc_auc": 0.95}, {"pr_auc": 0.70, "roc_auc": 0.97})
    assert not report.passed
    assert report.verdict == "keep the champion: failed beats_champion"
    assert "| beats_champion | -0.15 | >= -0.01 | FAIL |" in report.to_markdown()


def test_equal_or_better_challenger_wins_within_the_margin():
    assert gate({"pr_auc": 0.695, "roc_auc": 0.95}, {"pr_auc": 0.70, "roc_auc": 0.97}).passed


def test_onnx_parity_and_latency_are_gated():
    report = gate({"pr_auc": 0.9, "roc_auc": 0.99}, parity=1e-3, latency=80)
    assert not report.passed
    assert report.verdict == "keep the champion: failed onnx_parity, latency_ms_per_1k_rows"
