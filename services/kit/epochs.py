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
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from sqlalchemy import BigInteger, Engine, String, select
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base

PRINCIPALS = "principals"
DATASETS = "datasets"

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class CacheEpoch(Base):
    __tablename__ = "cache_epochs"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)


@dataclass(frozen=True)
class Epochs:
    principals: int
    datasets: int


class EpochReader:
    def __init__(self, engine: Engine) -> None:
        self._engine = engine
        self._statement = select(CacheEpoch.name, CacheEpoch.value)

    def read(self) -> Epochs:
        with self._engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
            values: dict[str, int] = {name: value for name, value in conn.execute(self._statement)}
        return Epochs(values.get(PRINCIPALS, 0), values.get(DATASETS, 0))


class EpochCache(Generic[K, V]):
    """Values by key, each valid while its epoch is the current one. Bounded; thread-safe."""

    def __init__(self, max_entries: int = 4096) -> None:
        self._entries: dict[K, tuple[int, V]] = {}
        self._lock = threading.Lock()
        self._max = max_entries

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
