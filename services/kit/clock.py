"""The one place that reads the time, so tests and audit records agree on UTC."""

from __future__ import annotations

from datetime import UTC, date, datetime
from zoneinfo import ZoneInfo


def utcnow() -> datetime:
    return datetime.now(UTC)


LONDON = ZoneInfo("Europe/London")


def london_today() -> date:
    """Today's date where the partnership works (quotas and "today" defaults follow it)."""
    return utcnow().astimezone(LONDON).date()
