"""Audit events of reads written from the event loop: no thread between a read and its event.

On PostgreSQL each server process keeps one asynchronous connection (psycopg) for the audit
events of reads. Reads that arrive while a batch is being written wait for the next batch; a
batch is one INSERT in autocommit (a single statement is atomic, and is its own commit), so
concurrent reads share one round trip and one WAL flush. The batch travels as one JSON array
(`json_populate_recordset`), so there is one statement text whatever the batch size: prepared
once per connection, with no placeholder parsing per batch. A read awaits its own batch's
commit before a byte of its answer is sent, exactly as with a transaction of its own. If the
batch fails, every read in it fails (503, no data) and the connection is opened afresh for
the next one.

Elsewhere (SQLite, or events with subjects) the thread-based group committer is used.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import orjson
import psycopg

from services.audit.models import AuditEvent
from services.audit.service import AuditRecord, RequestContext, _row
from services.kit import metrics

log = logging.getLogger(__name__)

# Every column but the generated seq; the JSON objects carry exactly these keys (see `_row`).
_COLUMNS = tuple(column.name for column in AuditEvent.__table__.columns if column.name != "seq")
_INSERT = (
    "INSERT INTO audit_events ("  # noqa: S608 (fixed column names)
    + ", ".join(f'"{name}"' for name in _COLUMNS)
    + ") SELECT "
    + ", ".join(f'r."{name}"' for name in _COLUMNS)
    + " FROM json_populate_recordset(NULL::audit_events, %s::json) AS r"
)


class AsyncAuditWriter:
    def __init__(self, conninfo: str) -> None:
        self._conninfo = conninfo
        self._pending: list[tuple[dict[str, Any], asyncio.Future[None]]] = []
        self._wakeup: asyncio.Event | None = None
        self._task: asyncio.Task[None] | None = None
        self._connection: psycopg.AsyncConnection[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._writing = False
        # The check an event passes first (services/audit/freshness.py): raises to refuse.
        self.gate: Callable[[AuditRecord], None] | None = None

    async def record(self, ctx: RequestContext, rec: AuditRecord) -> None:
        """Write one event; return once it is committed, raise if it could not be."""
        if self.gate is not None:
            self.gate(rec)
        row, subjects = _row(ctx, rec)
        if subjects:
            raise ValueError("events naming people are written with their subjects elsewhere")
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            # A new event loop (a test client, a restarted server): nothing of the old one
            # can be used from this one.
            self._loop, self._task, self._connection, self._pending = loop, None, None, []
        done: asyncio.Future[None] = loop.create_future()
        self._pending.append((row, done))
        if self._task is None or self._task.done():
            self._wakeup = asyncio.Event()
            self._task = loop.create_task(self._run())
        assert self._wakeup is not None
        self._wakeup.set()
        await done

    async def close(self, flush_seconds: float = 10.0) -> None:
        if self._loop is not asyncio.get_running_loop():
            return
        # Events still queued (a request cut off at the end of a graceful shutdown) are written
        # before the connection closes, for a bounded time: a lost event is a read unaccounted.
        deadline = self._loop.time() + flush_seconds
        while (self._pending or self._writing) and self._loop.time() < deadline:
            if self._task is None or self._task.done():
                break
            if self._wakeup is not None:
                self._wakeup.set()
            await asyncio.sleep(0.01)
        if self._task is not None:
            self._task.cancel()
        if self._connection is not None:
            await self._connection.close()
            self._connection = None

    async def _run(self) -> None:
        assert self._wakeup is not None
        while True:
            await self._wakeup.wait()
            self._wakeup.clear()
            batch, self._pending = self._pending, []
            if not batch:
                continue
            self._writing = True
            try:
                await self._write([parameters for parameters, _ in batch])
            except Exception as exc:
                log.error("writing %d audit events failed", len(batch), exc_info=exc)
                await self._discard_connection()
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
            else:
                for _, done in batch:
                    if not done.done():
                        done.set_result(None)
            finally:
                self._writing = False

    async def _write(self, rows: list[dict[str, Any]]) -> None:
        if self._connection is None or self._connection.closed:
            self._connection = await psycopg.AsyncConnection.connect(
                self._conninfo, autocommit=True
            )
        # orjson writes the timestamps as RFC 3339 with their offset, read back exactly.
        await self._connection.execute(_INSERT, (orjson.dumps(rows).decode(),), prepare=True)
        metrics.AUDIT_EVENTS.inc(len(rows))

    async def _discard_connection(self) -> None:
        connection, self._connection = self._connection, None
        if connection is not None:
            try:
                await connection.close()
            except Exception:
                log.debug("closing a failed audit connection", exc_info=True)
