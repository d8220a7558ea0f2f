"""Whether the audit log is being sealed and checkpointed: no sealed log, no Level 2 or 3 data.

An event that is committed but never chained or covered by a signed checkpoint can still be
deleted by whoever controls the database without any partner noticing. So a server process that
runs the sealer also watches it: when the oldest event not yet sealed is older than the policy
window (`audit_stall_window_seconds`), or the newest checkpoint is older than the checkpoint
cadence plus that window, the sealer is stalled, and

- Level 2 and 3 reads answer 503 `AUDIT_UNAVAILABLE`, before any data leaves (the gate runs
  where their audit events are written, so no path around it exists);
- Level 1 reads (aggregated and suppressed: no person can be singled out) keep being served,
  each still audited: a stalled sealer delays their sealing, it does not lose their events;
- `/readyz` answers 503 naming what is behind, so a load balancer or an operator sees why.

The state is read from the database (what every process shares, so a stalled process holding
the chain lock is seen by all), at most once per `ttl_seconds` per process: two indexed lookups.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session, sessionmaker

from services.audit.catalogue import Outcome
from services.audit.models import AuditChainLink, AuditCheckpoint, AuditEvent
from services.audit.service import AuditRecord
from services.kit.clock import utcnow
from services.kit.errors import AuditUnavailable

# The lowest level whose reads need a sealed log: Level 2 (pseudonymised rows) and up.
GATED_LEVEL = 2


def unsealed_age_seconds(session: Session, *, now: datetime) -> float:
    """How long the oldest committed event not yet chained has waited (0: all are sealed)."""
    oldest = _oldest_unsealed(session, now)
    return 0.0 if oldest is None else max(0.0, (now - oldest).total_seconds())


def _oldest_unsealed(session: Session, now: datetime) -> datetime | None:
    sealed_up_to = session.execute(select(func.max(AuditChainLink.event_seq))).scalar_one()
    oldest = session.execute(
        select(func.min(AuditEvent.occurred_at)).where(AuditEvent.seq > (sealed_up_to or 0))
    ).scalar_one()
    if oldest is not None and oldest.tzinfo is None:  # SQLite's min() bypasses the column type
        oldest = datetime.fromisoformat(str(oldest)).replace(tzinfo=now.tzinfo)
    return oldest


def stall_problem(
    session: Session, *, window_seconds: float, cadence_seconds: float, now: datetime
) -> str | None:
    """What is behind, in one sentence, or None when the sealer keeps up."""
    oldest = _oldest_unsealed(session, now)
    window = timedelta(seconds=window_seconds)
    if oldest is not None and now - oldest > window:
        return (
            f"audit events committed {int((now - oldest).total_seconds())} s ago are not "
            f"sealed yet (policy window {window_seconds:g} s): the audit sealer is stalled"
        )
    last = session.execute(
        select(AuditCheckpoint.issued_at).order_by(AuditCheckpoint.seq.desc()).limit(1)
    ).scalar_one_or_none()
    if last is not None and now - last > timedelta(seconds=cadence_seconds) + window:
        return (
            f"the last signed audit checkpoint is {int((now - last).total_seconds())} s old "
            f"(cadence {cadence_seconds:g} s, policy window {window_seconds:g} s): the "
            "checkpoint writer is stalled"
        )
    return None


class SealerWatch:
    """The process's view of whether the sealer keeps up, refreshed at most every `ttl_seconds`."""

    def __init__(
        self,
        sessions: sessionmaker[Session],
        *,
        window_seconds: float,
        cadence_seconds: float,
        ttl_seconds: float = 1.0,
        clock: Callable[[], datetime] = utcnow,
    ) -> None:
        self._sessions = sessions
        self._window = window_seconds
        self._cadence = cadence_seconds
        self._ttl = ttl_seconds
        self._clock = clock
        self._lock = threading.Lock()
        self._checked_at = -float("inf")
        self._problem: str | None = None

    def problem(self) -> str | None:
        """Why Level 2 and 3 reads are refused now, or None."""
        with self._lock:
            if time.monotonic() - self._checked_at < self._ttl:
                return self._problem
            with self._sessions() as session:
                self._problem = stall_problem(
                    session,
                    window_seconds=self._window,
                    cadence_seconds=self._cadence,
                    now=self._clock(),
                )
            self._checked_at = time.monotonic()
            return self._problem

    def lag_seconds(self) -> float:
        """The sealer's lag now (a query of its own, for a metrics scrape)."""
        with self._sessions() as session:
            return unsealed_age_seconds(session, now=self._clock())

    def check(self, rec: AuditRecord) -> None:
        """The gate, called where a read's event is written: a served Level 2 or 3 read is
        refused (503, nothing returned) while the sealer is stalled. A database that cannot
        answer is itself an audit failure."""
        if rec.level is None or rec.level < GATED_LEVEL or rec.outcome != Outcome.SUCCESS:
            return
        try:
            problem = self.problem()
        except Exception as exc:
            raise AuditUnavailable() from exc
        if problem is not None:
            raise AuditUnavailable(
                "The audit trail is not being sealed (see /readyz); nothing was returned"
            )
