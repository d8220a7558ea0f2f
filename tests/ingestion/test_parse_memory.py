"""The parse child's memory budget holds whichever allocator Arrow uses in the child."""

from __future__ import annotations

import multiprocessing
from multiprocessing.connection import Connection

import pyarrow as pa

from services.ingestion import worker

_BUDGET = 64 << 20


def _allocate(sizes: list[int], sender: Connection) -> None:
    worker._limit_memory(_BUDGET)
    outcomes: list[str] = []
    for size in sizes:
        try:
            buffer = pa.allocate_buffer(size)
            buffer.to_pybytes()[:1]  # touch it
            outcomes.append("ok")
            del buffer
        except MemoryError:
            outcomes.append("refused")
    sender.send((pa.default_memory_pool().backend_name, outcomes))
    sender.close()


def test_the_child_allocator_is_fresh_and_held_to_the_budget() -> None:
    context = multiprocessing.get_context("fork")
    receiver, sender = context.Pipe(duplex=False)
    process = context.Process(target=_allocate, args=([8 << 20, 8 << 20, 512 << 20], sender))
    process.start()
    sender.close()
    backend, outcomes = receiver.recv()
    process.join(30)
    assert process.exitcode == 0
    # Never the allocator the server had before the fork (its arenas are not counted).
    assert backend == "system" or backend != pa.default_memory_pool().backend_name
    assert outcomes == ["ok", "ok", "refused"]
