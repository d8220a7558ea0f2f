"""Counters of failed and refused authentication, per key and fixed window, in the database.

In the database rather than in memory so that every replica sees the same counts: the token
endpoint's per-client and per-address limits and its lockout hold across processes, and the
aggregation of refused tokens (one audit event per kind, address and window; the rest counted)
is the same whichever replica answered.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import delete, func, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session

from services.identity.models import AuthCounter

CLIENT_FAILURE = "client_failure"
ADDRESS_FAILURE = "address_failure"
REJECTION = "rejection"
# Counter rows older than this are deleted once they are accounted for (summarised).
RETENTION = timedelta(days=2)


def window_start(now: datetime, seconds: int) -> datetime:
    """The start of the fixed window of `seconds` that `now` falls in."""
    epoch = int(now.timestamp())
    return datetime.fromtimestamp(epoch - epoch % seconds, tz=now.tzinfo)


def increment(session: Session, scope: str, key: str, window: datetime) -> int:
    """Add one to a window's counter (created at 1); returns the new count. One statement,
    so concurrent requests on any replica never lose a count."""
    key = key[:200]
    dialect = session.get_bind().dialect.name
    values = {"scope": scope, "key": key, "window_start": window, "count": 1, "summarised": False}
    index = ["scope", "key", "window_start"]
    if dialect == "postgresql":
        pg = postgresql.insert(AuthCounter).values(**values)
        statement = pg.on_conflict_do_update(
            index_elements=index, set_={"count": AuthCounter.count + 1}
        ).returning(AuthCounter.count)
    else:
        lite = sqlite.insert(AuthCounter).values(**values)
        statement = lite.on_conflict_do_update(
            index_elements=index, set_={"count": AuthCounter.count + 1}
        ).returning(AuthCounter.count)
    return int(session.execute(statement).scalar_one())


def count_in(session: Session, scope: str, key: str, window: datetime) -> int:
    found = session.execute(
        select(AuthCounter.count).where(
            AuthCounter.scope == scope,
            AuthCounter.key == key[:200],
            AuthCounter.window_start == window,
        )
    ).scalar_one_or_none()
    return int(found or 0)


@dataclass(frozen=True)
class Span:
    total: int
    latest_window: datetime | None


def count_since(session: Session, scope: str, key: str, since: datetime) -> Span:
    """The count over every window starting at or after `since`, and the latest such window."""
    total, latest = session.execute(
        select(
            func.coalesce(func.sum(AuthCounter.count), 0), func.max(AuthCounter.window_start)
        ).where(
            AuthCounter.scope == scope,
            AuthCounter.key == key[:200],
            AuthCounter.window_start >= since,
        )
    ).one()
    if isinstance(latest, str):  # SQLite's MAX() of a datetime column comes back as text
        latest = datetime.fromisoformat(latest)
    if latest is not None and latest.tzinfo is None:
        latest = latest.replace(tzinfo=since.tzinfo)
    return Span(int(total), latest)


def clear(session: Session, scope: str, key: str) -> int:
    """Delete a key's counters (an administrator lifting a lockout); returns how many rows."""
    result = session.execute(
        delete(AuthCounter).where(AuthCounter.scope == scope, AuthCounter.key == key[:200])
    )
    return int(getattr(result, "rowcount", 0) or 0)


@dataclass(frozen=True)
class Unsummarised:
    key: str
    window_start: datetime
    count: int


def take_unsummarised(
    session: Session, scope: str, before: datetime, limit: int = 200
) -> list[Unsummarised]:
    """Closed windows whose count has not been reported yet, marked reported as they are taken
    (in the caller's transaction, with the event that reports them)."""
    rows = session.execute(
        select(AuthCounter.key, AuthCounter.window_start, AuthCounter.count)
        .where(
            AuthCounter.scope == scope,
            AuthCounter.window_start < before,
            AuthCounter.summarised.is_(False),
        )
        .order_by(AuthCounter.window_start)
        .limit(limit)
    ).all()
    # By position: a row's `count` attribute is the tuple's method, not the column.
    taken = [Unsummarised(str(r[0]), r[1], int(r[2])) for r in rows]
    for row in taken:
        session.execute(
            update(AuthCounter)
            .where(
                AuthCounter.scope == scope,
                AuthCounter.key == row.key,
                AuthCounter.window_start == row.window_start,
            )
            .values(summarised=True)
        )
    return taken


def forget_old(session: Session, now: datetime) -> None:
    """Delete counters past retention: failure counters always, rejection counters once their
    count is in a summary event."""
    cutoff = now - RETENTION
    session.execute(
        delete(AuthCounter).where(
            AuthCounter.window_start < cutoff,
            (AuthCounter.scope != REJECTION) | AuthCounter.summarised.is_(True),
        )
    )
