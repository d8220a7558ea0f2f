"""Who owns a transaction, and why.

A use case owns its transaction, not the route that calls it and not the helpers it calls: the
platform's first rule is *audit before data* (security-tests T25). The audit event of a read,
an upload or an administrative change commits in the same transaction as the state change it
describes, and that transaction commits before anything is returned to the caller. If the event
cannot be committed, the caller gets `AuditUnavailable` (503) and nothing else. So the commit
belongs to the one function that knows both the work and its event: the use case.

Two helpers, and no other place commits:

- `audited(sessions)`: work, audit event(s), commit. The body does the work on `uow.session`
  (flushing when it needs ids or wants a constraint to fail inside the work) and registers its
  event(s) with `uow.audit(write)`. When the body ends normally the events are written and the
  transaction commits; an exception in the body rolls everything back and propagates as it is.
  A failure while writing the events or committing is the audit failing: it becomes
  `AuditUnavailable`, in `audit_guard`, the one place that mapping lives. A denial is the same
  shape with no work: an `audited` block holding only the denial event, then the refusal is
  raised outside it.
- `transaction(sessions)`: bookkeeping that is not a use case and has no event of its own:
  upload retry leases (an `Idempotency-Key` is claimed and its lease extended in short
  transactions of their own, so that a second request sees the claim while the first is still
  streaming its body; the upload's own event commits later, with the version, in `audited`),
  the sealer's chain links and checkpoints (they describe audit events already committed),
  and the cache-epoch bumps.

Reads held on the event loop (products on PostgreSQL) write their events through the async
writer and the group committer instead of a session; they map failures through the same
`audit_guard`. `services/kit` never imports the audit package: the caller passes the write.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from sqlalchemy.orm import Session, sessionmaker

from services.kit.errors import AuditUnavailable, TogetherError

log = logging.getLogger(__name__)

AuditWrite = Callable[[Session], object]


class UnitOfWork:
    """The session of one use case and the audit events it will commit with."""

    def __init__(self, session: Session) -> None:
        self.session = session
        self._events: list[AuditWrite] = []

    def audit(self, write: AuditWrite) -> None:
        """Write this event when the work is done, in the same transaction, before the commit."""
        self._events.append(write)


@contextmanager
def audit_guard(what: str) -> Iterator[None]:
    """The one place where an audit write that failed becomes `AuditUnavailable` (503).

    A domain error raised inside (already a `TogetherError`) passes through unchanged.
    """
    try:
        yield
    except TogetherError:
        raise
    except Exception as exc:
        log.error("audit write failed; %s is refused", what, exc_info=exc)
        raise AuditUnavailable() from exc


@contextmanager
def audited(sessions: sessionmaker[Session], what: str = "the request") -> Iterator[UnitOfWork]:
    """Run one use case: the work in the block, then its audit events, then the commit."""
    session = sessions()
    uow = UnitOfWork(session)
    try:
        try:
            yield uow
        except BaseException:
            session.rollback()
            raise
        if not uow._events:
            session.rollback()
            raise RuntimeError(f"{what}: a use case must record an audit event before it commits")
        try:
            with audit_guard(what):
                for write in uow._events:
                    write(session)
                session.commit()
        except BaseException:
            session.rollback()
            raise
    finally:
        session.close()


@contextmanager
def transaction(sessions: sessionmaker[Session]) -> Iterator[Session]:
    """Bookkeeping with no audit event of its own: committed when the block ends normally."""
    session = sessions()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
