"""Windows of days are values: parsed once, carried as start and end."""

from __future__ import annotations

from datetime import date

import pytest

from jobs.shared.dates import Window, date_range, parse_date, shifted


def test_a_window_ending_on_a_day_holds_that_many_days_oldest_first():
    window = Window.ending("2026-03-02", 3)
    assert (window.start, window.end) == (date(2026, 2, 28), date(2026, 3, 2))
    assert window.days() == ["2026-02-28", "2026-03-01", "2026-03-02"] and len(window) == 3
    assert Window.ending(date(2026, 3, 2), 1).days() == ["2026-03-02"]


def test_a_window_refuses_an_end_before_its_start_and_an_empty_length():
    with pytest.raises(ValueError, match="before start"):
        Window.of("2026-03-02", "2026-03-01")
    with pytest.raises(ValueError, match="at least one day"):
        Window.ending("2026-03-02", 0)


def test_a_bad_date_is_named():
    with pytest.raises(ValueError, match="not a date .*'2026-13-01'"):
        parse_date("2026-13-01")


def test_ranges_and_shifts_cross_months_and_leap_days():
    assert date_range("2028-02-28", "2028-03-01") == ["2028-02-28", "2028-02-29", "2028-03-01"]
    assert shifted("2028-03-01", -7) == "2028-02-23" and shifted("2026-12-31", 1) == "2027-01-01"
