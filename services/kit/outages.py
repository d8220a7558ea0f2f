"""Which failures are outages of something the platform depends on, not faults of the request.

A database that cannot be reached (stopped, restarting, out of connections, locked) or a full
disk is answered 503 with Retry-After: the request may succeed later unchanged, and the answer
must say so rather than 500. The gateway may not import SQLAlchemy, so the classification lives
here, beside the engine it describes.
"""

from __future__ import annotations

import errno
import sqlite3
from enum import StrEnum

import psycopg
from sqlalchemy import exc as sa_exc


class Outage(StrEnum):
    DATABASE = "database"
    STORAGE_FULL = "storage_full"


_FULL = frozenset({errno.ENOSPC, errno.EDQUOT})

# The cause chain is followed this far: services may wrap what they catch.
_MAX_DEPTH = 8


def _direct(exc: BaseException) -> Outage | None:
    if isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated:
        return Outage.DATABASE
    if isinstance(
        exc,
        sa_exc.OperationalError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError
        | sqlite3.OperationalError
        | psycopg.OperationalError,
    ):
        return Outage.DATABASE
    if isinstance(exc, OSError) and exc.errno in _FULL:
        return Outage.STORAGE_FULL
    return None


def classify(exc: BaseException) -> Outage | None:
    """The outage this exception (or one it was raised from) reports, if any."""
    seen: set[int] = set()
    current: BaseException | None = exc
    for _ in range(_MAX_DEPTH):
        if current is None or id(current) in seen:
            return None
        seen.add(id(current))
        found = _direct(current)
        if found is not None:
            return found
        current = current.__cause__ or current.__context__
    return None
