"""The guardrails' arithmetic on decisions rows: each guardrail trips on its own fault, and the trial's
state follows the baking period, the request counts and the longest wait."""

import numpy as np
import pandas as pd
import pytest

from jobs.settings import Settings
from jobs.steps.live import assess, psi

SETTINGS = Settings(guardrail_bake_minutes=60, guardrail_min_requests=1000, guardrail_trip_requests=200,
                    guardrail_max_wait_hours=2)


def rows(n: int, seed: int = 0, **change) -> pd.DataFrame:
    """n decisions where challenger and champion agree closely (a sound challenger)."""
    rng = np.random.default_rng(seed)
    champion = rng.beta(0.3, 8, n)
    challenger = np.clip(champion + rng.normal(0, 0.002, n), 0, 1)
    frame = pd.DataFrame({
        "champion_probability": champion, "champion_flagged": champion >= 0.3, "champion_latency_ms": 0.2,
        "challenger_probability": challenger, "challenger_flagged": challenger >= 0.3,
        "challenger_latency_ms": rng.uniform(0.1, 0.4, n), "challenger_error": None, "served_by": "champion"})
    for column, value in change.items():
        frame[column] = value(frame) if callable(value) else value
    return frame


def test_a_sound_challenger_passes_after_the_baking_period_only():
    assert assess(rows(1500), SETTINGS, elapsed_minutes=61)["state"] == "passed"
    baking = assess(rows(1500), SETTINGS, elapsed_minutes=30)
    assert baking["state"] == "baking" and all(c["passed"] for c in baking["checks"])
    assert assess(rows(500), SETTINGS, elapsed_minutes=61)["state"] == "baking"  # too few requests yet


@pytest.mark.parametrize("guardrail, change", [
    ("error rate", {"challenger_error": lambda f: np.where(np.arange(len(f)) % 20 == 0, "RuntimeError: x", None),
                    "challenger_probability": lambda f: np.where(np.arange(len(f)) % 20 == 0, np.nan,
                                                                 f["challenger_probability"])}),
    ("p99 model time (ms)", {"challenger_latency_ms": lambda f: np.where(np.arange(len(f)) % 50 == 0, 40.0, 0.3)}),
    ("flag-rate ratio (challenger / champion)", {"challenger_flagged": lambda f: f["challenger_probability"] >= 0.05}),
    ("PSI of the scores", {"challenger_probability": lambda f: f["challenger_probability"] * 0.2}),
])
def test_each_guardrail_trips_on_its_own_fault(guardrail, change):
    result = assess(rows(400, **change), SETTINGS, elapsed_minutes=5)
    assert result["state"] == "tripped", result
    assert [c["name"] for c in result["checks"] if not c["passed"]][0] == guardrail
    assert result["reason"].startswith(f"guardrail tripped: {guardrail}")


def test_disagreement_trips():
    frame = rows(400, challenger_flagged=lambda f: ~f["champion_flagged"] & (np.arange(len(f)) % 10 == 0))
    failed = [c["name"] for c in assess(frame, SETTINGS, 5)["checks"] if not c["passed"]]
    assert "agreement of the decisions" in failed


def test_a_fault_on_too_few_requests_waits_and_too_few_by_the_longest_wait_is_insufficient():
    broken = {"challenger_latency_ms": 99.0}
    assert assess(rows(150, **broken), SETTINGS, 5)["state"] == "baking"  # 150 < 200: noise yet
    assert assess(rows(250, **broken), SETTINGS, 5)["state"] == "tripped"
    late = assess(rows(500), SETTINGS, elapsed_minutes=121)
    assert late["state"] == "insufficient" and "not enough evidence" in late["reason"]
    empty = assess(rows(0), SETTINGS, elapsed_minutes=1)
    assert empty["state"] == "baking" and empty["requests"] == 0


def test_psi_reads_as_the_field_reads_it():
    rng = np.random.default_rng(1)
    a = rng.beta(0.3, 8, 20_000)
    assert psi(a, rng.beta(0.3, 8, 20_000)) < 0.01  # the same distribution
    assert 0.1 < psi(a, a * 0.5) < 0.25  # scores halved: a shift to look at
    assert psi(a, a * 0.2) > 0.25  # a fifth: a different model
    assert psi(np.zeros(100), np.zeros(100)) < 1e-6  # a constant reference does not divide by zero
    assert psi(a, np.full(len(a), 0.02)) > 1  # a model that says the base rate to everyone
