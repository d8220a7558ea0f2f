"""Calendar arithmetic of the partnership's definitions, which count in months and ages."""

from __future__ import annotations

from datetime import date


def add_months(day: date, months: int) -> date:
    """``day`` moved by whole months, clamped to the month's end (31 March - 1 = 29 February)."""
    index = day.year * 12 + day.month - 1 + months
    year, month = divmod(index, 12)
    month += 1
    next_month = date(year + (month == 12), month % 12 + 1, 1)
    last_day = (next_month - date(year, month, 1)).days
    return date(year, month, min(day.day, last_day))


def age_on(born: date, day: date) -> int:
    """Whole years from ``born`` to ``day`` (a 29 February birthday falls on 1 March)."""
    return day.year - born.year - ((day.month, day.day) < (born.month, born.day))
