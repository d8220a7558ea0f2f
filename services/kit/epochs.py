"""Cache epochs: what lets each process keep principals and dataset versions in memory safely.

The database bumps a counter in the same transaction as any change to principals (clients and
their roles) or to dataset versions (see migration 0003: triggers, so no code path can forget).
A request reads the counters in one autocommit query and reuses what this process already
looked up while they are unchanged; a change is therefore seen by the very next request in every
process, as if nothing were cached.

Always read the epoch *before* the data it guards: data read afterwards is at least as new as
the epoch it is stored under, never older.

A server process also watches the counters from a thread (``EpochReader.start``), so most
requests need no query at all; a reading is trusted for at most ``max_age`` (0.25 s). A change
committed by *this* process forgets the reading at once (``invalidate``, wired to the engine's
and the sessions' commits), so on the replica that made a change the next request reads the
counters afresh: a client disabled or a version uploaded here is seen here by the very next
request, and by every other process within ``max_age`` plus one query.
"""

from __future__ import annotations

import re
import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Engine, event, select
from sqlalchemy.orm import Session

from services.kit.background import PeriodicThread
from services.kit.models import CacheEpoch

PRINCIPALS = "principals"
DATASETS = "datasets"

# Writes to the tables whose triggers bump an epoch (migration 0003).
_GUARDED_WRITE = re.compile(
    r"^\s*(?:INSERT\s+INTO|UPDATE|DELETE\s+FROM)\s+[\"`]?"
    r"(?:clients|client_roles|datasets|dataset_versions|version_files)\b",
    re.IGNORECASE,
)

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


@dataclass(frozen=True)
class Epochs:
    principals: int
    datasets: int


class EpochReader:
    """Reads the epochs, and in a server process also watches them from a thread of its own.

    Watching (``start``) re-reads the counters every ``interval`` seconds, so a request can use
    the last reading (``recent``) without a query of its own, as long as that reading is younger
    than ``max_age``; otherwise it reads them itself. A change is therefore seen within
    ``max_age`` seconds (a quarter of a second by default) in every process.
    """

    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._statement = select(CacheEpoch.name, CacheEpoch.value)
        self._latest: tuple[Epochs, float] | None = None
        self._watcher: PeriodicThread | None = None
        self.max_age = 0.25
        # When the watcher last read the counters (monotonic), whether or not it was kept.
        self._last_read_at: float | None = None
        # Bumped by `invalidate`: a watcher reading begun before it is not kept.
        self._generation = 0
        self._lock = threading.Lock()
        event.listen(engine, "after_cursor_execute", self._on_execute)
        event.listen(engine, "commit", self._on_commit)

    def invalidate(self) -> None:
        """Forget the watcher's reading: the next request reads the counters itself."""
        with self._lock:
            self._generation += 1
            self._latest = None

    def _on_execute(self, _conn: object, _cursor: object, statement: str, *_args: object) -> None:
        if _GUARDED_WRITE.match(statement):
            _pending_readers().add(self)

    def _on_commit(self, _conn: object) -> None:
        # Before the database commits: a reading begun from now on is not kept.
        if self in _pending_readers():
            self.invalidate()

    def read(self) -> Epochs:
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            values: dict[str, int] = {name: value for name, value in conn.execute(self._statement)}
        return Epochs(values.get(PRINCIPALS, 0), values.get(DATASETS, 0))

    def recent(self) -> Epochs | None:
        """The watcher's last reading if it is younger than ``max_age``, else None."""
        latest = self._latest
        if latest is None or time.monotonic() - latest[1] > self.max_age:
            return None
        return latest[0]

    def start(self, interval: float = 0.05) -> None:
        # The first reading is taken at once: requests use it from the start.
        self._watcher = PeriodicThread(
            "cache-epochs",
            self._refresh,
            interval,
            run_at_start=True,
            on_error=self._forget,
        )
        self._watcher.start()

    def stop(self) -> None:
        if self._watcher is not None:
            self._watcher.stop(timeout=5)
            self._watcher = None
        self._latest = None
        self._last_read_at = None

    def age(self) -> float | None:
        """Seconds since the watcher last read the counters (None when not watching): what a
        cached principal or version may lag a change made elsewhere, short of one query."""
        last = self._last_read_at
        return None if self._watcher is None or last is None else time.monotonic() - last

    def _refresh(self) -> None:
        generation = self._generation
        started = time.monotonic()
        reading = self.read()
        self._last_read_at = started
        # Stamped with the time the query started: the reading is at least that fresh. Not
        # kept when a commit of this process invalidated the readings meanwhile.
        with self._lock:
            if generation == self._generation:
                self._latest = (reading, started)

    def _forget(self, _exc: BaseException) -> None:
        # Requests fall back to reading the epochs themselves (and fail if they cannot).
        self._latest = None


# The readers whose guarded tables this thread wrote to since its session last committed or
# rolled back (a session's statements and its commit run in one thread).
_writes = threading.local()


def _pending_readers() -> set[EpochReader]:
    pending: set[EpochReader] | None = getattr(_writes, "readers", None)
    if pending is None:
        pending = _writes.readers = set()
    return pending


@event.listens_for(Session, "after_commit")
def _after_session_commit(_session: Session) -> None:
    # After the database committed: forget again whatever a watcher read while the commit was
    # under way, so the change's own replica never trusts a reading older than the change.
    pending = _pending_readers()
    while pending:
        pending.pop().invalidate()


@event.listens_for(Session, "after_rollback")
def _after_session_rollback(_session: Session) -> None:
    _pending_readers().clear()


class EpochCache(Generic[K, V]):
    """Values by key, each valid while its epoch is the current one. Bounded; thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: dict[K, tuple[int, V]] = {}
        self._lock = threading.Lock()
        self._max = max_entries

    def peek(self, key: K, epoch: int) -> tuple[bool, V | None]:
        """(True, value) when a value for this key and epoch is held, else (False, None)."""
        with self._lock:
            found = self._entries.get(key)
        if found is not None and found[0] == epoch:
            return True, found[1]
        return False, None

    def get(self, key: K, epoch: int, load: Callable[[], V]) -> V:
        with self._lock:
            found = self._entries.get(key)
        if found is not None and found[0] == epoch:
            return found[1]
        value = load()
        with self._lock:
            if len(self._entries) >= self._max:
                self._entries.clear()
            self._entries[key] = (epoch, value)
        return value
