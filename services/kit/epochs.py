"""Cache epochs: what lets each process keep principals and dataset versions in memory safely.

The database bumps a counter in the same transaction as any change to principals (clients and
their roles) or to dataset versions (see migration 0003: triggers, so no code path can forget).
A request reads the counters in one autocommit query and reuses what this process already
looked up while they are unchanged; a change is therefore seen by the very next request in every
process, as if nothing were cached.

Always read the epoch *before* the data it guards: data read afterwards is at least as new as
the epoch it is stored under, never older.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import Engine, select

from services.kit.background import PeriodicThread
from services.kit.models import CacheEpoch

PRINCIPALS = "principals"
DATASETS = "datasets"

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

    def _refresh(self) -> None:
        started = time.monotonic()
        # Stamped with the time the query started: the reading is at least that fresh.
        self._latest = (self.read(), started)

    def _forget(self, _exc: BaseException) -> None:
        # Requests fall back to reading the epochs themselves (and fail if they cannot).
        self._latest = None


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
