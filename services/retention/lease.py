"""A job one process runs at a time across every replica: a row in `job_leases`.

Taking the lease inserts the row (a lapsed one is removed first); a second process's insert
fails on the primary key and it leaves the work to the first. The holder extends the lease
while it works; a holder that dies leaves a lease that lapses after `seconds`. A row rather
than a PostgreSQL advisory lock, so that it holds on both databases and survives no
connection: a retention run lasts longer than any transaction should.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

from sqlalchemy import delete, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.kit.clock import utcnow
from services.kit.ids import new_id
from services.kit.uow import transaction
from services.retention.models import JobLease


class Lease:
    def __init__(self, sessions: sessionmaker[Session], name: str, seconds: float) -> None:
        self._sessions = sessions
        self.name = name
        self.seconds = seconds
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{new_id()[:8]}"

    def take(self) -> bool:
        now = utcnow()
        try:
            with transaction(self._sessions) as session:
                session.execute(
                    delete(JobLease).where(JobLease.name == self.name, JobLease.expires_at < now)
                )
                session.add(
                    JobLease(
                        name=self.name,
                        holder=self.holder,
                        acquired_at=now,
                        expires_at=now + timedelta(seconds=self.seconds),
                    )
                )
        except IntegrityError:
            return False
        return True

    def extend(self) -> None:
        with transaction(self._sessions) as session:
            session.execute(
                update(JobLease)
                .where(JobLease.name == self.name, JobLease.holder == self.holder)
                .values(expires_at=utcnow() + timedelta(seconds=self.seconds))
            )

    def release(self) -> None:
        with transaction(self._sessions) as session:
            session.execute(
                delete(JobLease).where(JobLease.name == self.name, JobLease.holder == self.holder)
            )


@contextmanager
def held(sessions: sessionmaker[Session], name: str, seconds: float) -> Iterator[Lease | None]:
    """The lease while the block runs, or None when another process holds it."""
    lease = Lease(sessions, name, seconds)
    if not lease.take():
        yield None
        return
    try:
        yield lease
    finally:
        lease.release()
