"""Server-side sessions of the review pages.

The signed cookie (gateway/web/session.py) says who signed in; it is only honoured while the
session it names is open here. Signing out or disabling the account closes it, so a copy of the
cookie taken before is worthless afterwards, even though its signature is still good. The table
holds a SHA-256 of each session id, never the id itself.
"""

from __future__ import annotations

import hashlib
import secrets
from datetime import timedelta

from sqlalchemy import delete, select, update
from sqlalchemy.orm import Session

from services.identity.models import WebSession
from services.kit.clock import utcnow

# Sessions ended or expired longer ago than this are deleted when a new one opens.
_KEEP_ENDED = timedelta(days=1)


def _digest(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


def open_session(session: Session, username: str, lifetime_seconds: int) -> str:
    """A new session for the account; returns its id (for the cookie only)."""
    now = utcnow()
    session.execute(delete(WebSession).where(WebSession.expires_at < now - _KEEP_ENDED))
    session_id = secrets.token_urlsafe(32)
    session.add(
        WebSession(
            id=_digest(session_id),
            username=username,
            created_at=now,
            expires_at=now + timedelta(seconds=lifetime_seconds),
            revoked_at=None,
        )
    )
    session.flush()
    return session_id


def session_username(session: Session, session_id: object) -> str | None:
    """The account of an open session (not ended, not expired), else None."""
    if not isinstance(session_id, str) or not 20 <= len(session_id) <= 100:
        return None
    row = session.get(WebSession, _digest(session_id))
    if row is None or row.revoked_at is not None or row.expires_at <= utcnow():
        return None
    return row.username


def end_session(session: Session, session_id: object) -> None:
    if isinstance(session_id, str) and len(session_id) <= 100:
        session.execute(
            update(WebSession)
            .where(WebSession.id == _digest(session_id), WebSession.revoked_at.is_(None))
            .values(revoked_at=utcnow())
        )


def end_sessions_of(session: Session, username: str) -> int:
    """End every open session of an account (it was disabled); returns how many."""
    result = session.execute(
        update(WebSession)
        .where(WebSession.username == username, WebSession.revoked_at.is_(None))
        .values(revoked_at=utcnow())
    )
    return int(getattr(result, "rowcount", 0) or 0)


def open_sessions(session: Session, username: str) -> int:
    now = utcnow()
    return len(
        session.execute(
            select(WebSession.id).where(
                WebSession.username == username,
                WebSession.revoked_at.is_(None),
                WebSession.expires_at > now,
            )
        ).all()
    )
