"""Dates as values: a partition date is parsed once, at the edge, and a window of days travels as a
:class:`Window` (start and end), never as a joined string that the next module splits again."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, timedelta


def parse_date(text: str) -> date:
    """An ISO date (``YYYY-MM-DD``), or a ``ValueError`` that names what was given."""
    try:
        return date.fromisoformat(text)
    except (TypeError, ValueError):
        raise ValueError(f"not a date (YYYY-MM-DD): {text!r}") from None


def shifted(day: str, days: int) -> str:
    """The ISO date ``days`` after ``day`` (before it when negative)."""
    return (parse_date(day) + timedelta(days=days)).isoformat()


@dataclass(frozen=True, order=True)
class Window:
    """The inclusive days ``start``..``end``."""

    start: date
    end: date

    def __post_init__(self) -> None:
        if self.end < self.start:
            raise ValueError(f"end {self.end} is before start {self.start}")

    @classmethod
    def of(cls, start: str, end: str) -> Window:
        return cls(parse_date(start), parse_date(end))

    @classmethod
    def ending(cls, end: date | str, days: int) -> Window:
        """The ``days`` days that end on ``end`` (``days`` >= 1)."""
        last = parse_date(end) if isinstance(end, str) else end
        if days < 1:
            raise ValueError(f"a window holds at least one day, not {days}")
        return cls(last - timedelta(days=days - 1), last)

    def days(self) -> list[str]:
        """Every day of the window as an ISO date, oldest first."""
        return [(self.start + timedelta(days=i)).isoformat() for i in range((self.end - self.start).days + 1)]

    def __len__(self) -> int:
        return (self.end - self.start).days + 1


def date_range(start: str, end: str) -> list[str]:
    """Inclusive list of ISO dates ``start``..``end``."""
    return Window.of(start, end).days()
