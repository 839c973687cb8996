import numpy as np

from jobs.devkit.generate import DRIFT_CATEGORIES, generate_day, inject_bad_rows
from jobs.shared.schemas import RAW_COLUMNS


def test_same_seed_and_date_give_identical_data():
    a = generate_day("2026-03-01", 500, seed=3)
    b = generate_day("2026-03-01", 500, seed=3)
    assert a.equals(b)
    assert not a.equals(generate_day("2026-03-02", 500, seed=3))


def test_shape_fraud_rate_and_time_order():
    df = generate_day("2026-03-01", 5000, fraud_rate=0.02)
    assert list(df.columns) == RAW_COLUMNS
    assert len(df) == 5000 and df["transaction_id"].is_unique
    assert df["is_fraud"].sum() == 100
    assert df["timestamp"].is_monotonic_increasing
    assert df["timestamp"].str.startswith("2026-03-01").all()
    # Fraud spends more than the same population's legitimate spending.
    assert df.loc[df.is_fraud == 1, "amount"].median() > 2 * df.loc[df.is_fraud == 0, "amount"].median()


def test_drift_knob_shifts_amounts_and_adds_categories():
    base = generate_day("2026-03-01", 5000)
    drifted = generate_day("2026-03-01", 5000, drift=1.0)
    assert not base["merchant_category"].isin(DRIFT_CATEGORIES).any()
    assert drifted["merchant_category"].isin(DRIFT_CATEGORIES).mean() > 0.25
    assert np.log(drifted["amount"]).mean() > np.log(base["amount"]).mean() + 0.5


def test_inject_bad_rows_breaks_exactly_n_rows():
    df = generate_day("2026-03-01", 400)
    bad = inject_bad_rows(df, 8)
    changed = (bad.astype(str) != df.astype(str)).any(axis=1)
    assert changed.sum() == 8
    assert (bad["amount"] < 0).sum() == 2 and (bad["currency"] == "XXX").sum() == 2


def test_the_cli_spreads_a_day_over_the_card_population_it_is_given(state_dir):
    import pandas as pd
    from typer.testing import CliRunner

    from jobs.cli import app

    result = CliRunner().invoke(app, ["generate", "--date", "2026-03-01", "--rows-per-day", "2000", "--cards", "40"])
    assert result.exit_code == 0, result.output
    (written,) = list((state_dir / "lake" / "raw" / "transactions").rglob("*.csv"))
    cards = pd.read_csv(written)["card_id"]
    assert len(cards) == 2000 and 30 <= cards.nunique() <= 40
