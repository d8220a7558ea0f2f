"""The HTTP server: uvicorn with explicit limits on what one client may hold or send.

uvicorn alone reads a request head of any size, waits for it forever, lets a body trickle in for
as long as the client likes, and counts idle connections against its concurrency limit, so a few
hundred connections that never finish their headers answer every other client 503. The protocol
here closes those gaps, each with a setting (`TOGETHER_HTTP_*`):

- a request head (request line and headers) larger than `http_header_max_bytes` is answered 431
  and the connection closed, after reading at most one socket read beyond the limit;
- a head not complete `http_header_timeout_seconds` after the connection opened (or after the
  previous response) is answered 408 (or, if nothing was sent, the connection is closed);
- a body that makes less than `http_body_min_bytes_per_second` of progress (at least one byte)
  over a window of `http_body_timeout_seconds` is answered 408, while the application waits for it;
- only requests being answered count against `http_max_requests_in_flight` (503 beyond it), not
  open connections; when `http_max_connections` connections are open, the one that has waited
  longest for a request head is closed to make room, so slow clients cannot lock healthy ones out.

Every refusal made here is problem+json like the application's own, with a request id.

On SIGTERM (uvicorn's own shutdown, bounded here): the listening socket closes, idle connections
close, requests in flight (a read still streaming, an upload still arriving) run to their end for
at most `shutdown_grace_seconds`, then the application's shutdown stops the background threads
and writes any audit event still queued, and the process exits 0.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
import time
import uuid
from dataclasses import dataclass
from typing import Any

import uvicorn
from uvicorn._types import ASGIReceiveCallable, ASGISendCallable, Scope
from uvicorn.protocols.http.httptools_impl import STATUS_LINE, HttpToolsProtocol
from uvicorn.server import Server, ServerState
from uvicorn.supervisors import Multiprocess

from services.kit import logs, metrics
from services.kit.settings import Settings, get_settings

log = logging.getLogger("together.edge")

# How often a throttled refusal log line may repeat (a flood of refusals is one line a second).
_LOG_INTERVAL_SECONDS = 1.0


@dataclass(frozen=True)
class EdgeLimits:
    header_max_bytes: int
    header_timeout_seconds: float
    body_timeout_seconds: float
    body_min_bytes_per_second: int
    keep_alive_seconds: float
    max_connections: int
    max_requests_in_flight: int

    @classmethod
    def from_settings(cls, settings: Settings) -> EdgeLimits:
        return cls(
            header_max_bytes=settings.http_header_max_bytes,
            header_timeout_seconds=settings.http_header_timeout_seconds,
            body_timeout_seconds=settings.http_body_timeout_seconds,
            body_min_bytes_per_second=settings.http_body_min_bytes_per_second,
            keep_alive_seconds=settings.http_keep_alive_seconds,
            max_connections=settings.http_max_connections,
            max_requests_in_flight=settings.http_max_requests_in_flight,
        )


class _RefusalLog:
    """One JSON line per kind of refusal and second, with how many happened: an attacker's flood
    of slow connections must not become a flood of log lines."""

    def __init__(self) -> None:
        self._pending: dict[str, int] = {}
        self._last: dict[str, float] = {}

    def note(self, status: int, reason: str) -> None:
        key = f"{status} {reason}"
        self._pending[key] = self._pending.get(key, 0) + 1
        now = time.monotonic()
        if now - self._last.get(key, 0.0) < _LOG_INTERVAL_SECONDS:
            return
        self._last[key] = now
        count = self._pending.pop(key)
        event = {"event": "http.refused", "status": status, "reason": reason, "count": count}
        log.warning(json.dumps(event))


_refusals = _RefusalLog()


class _Refused(Exception):
    """Stops the parser once a request has been refused; the connection is already closing."""


def problem_bytes(status: int, code: str, detail: str, request_id: str) -> bytes:
    body = {
        "type": "about:blank",
        "status": status,
        "code": code,
        "title": detail,
        "detail": detail,
        "request_id": request_id,
    }
    return json.dumps(body).encode()


def _has_body(headers: list[tuple[bytes, bytes]]) -> bool:
    for name, value in headers:
        if name == b"transfer-encoding":
            return True
        if name == b"content-length":
            return value.strip() not in (b"0", b"")
    return False


class EdgeHttpProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol with the limits above. One instance per connection."""

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: ServerState,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = getattr(config, "edge_limits", None)
        self.limits: EdgeLimits = limits or EdgeLimits.from_settings(get_settings())
        self.opened_at = time.monotonic()
        self.head_pending = True  # waiting for (the rest of) a request head
        self._head_bytes = 0  # bytes received while the head was pending (an upper bound)
        self._head_size = 0  # the parsed head's size so far (exact)
        self._head_timer: asyncio.TimerHandle | None = None
        self._body_timer: asyncio.TimerHandle | None = None
        self._body_window_bytes = 0
        self._linger: asyncio.TimerHandle | None = None

    # Connection lifetime

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._arm_head_timer()
        if len(self.connections) > self.limits.max_connections:
            self._make_room()

    def connection_lost(self, exc: Exception | None) -> None:
        self._cancel_head_timer()
        self._cancel_body_timer()
        if self._linger is not None:
            self._linger.cancel()
            self._linger = None
        super().connection_lost(exc)

    def waiting_idle(self) -> bool:
        """No request being answered, none being received: only waiting for the next head."""
        return self.head_pending and (self.cycle is None or self.cycle.response_complete)

    def _make_room(self) -> None:
        waiting = [
            c
            for c in self.connections
            if isinstance(c, EdgeHttpProtocol) and c is not self and c.waiting_idle()
        ]
        if waiting:
            oldest = min(waiting, key=lambda c: c.opened_at)
            _refusals.note(503, "connection limit: the longest-waiting connection closed")
            oldest.transport.close()
            return
        _refusals.note(503, "connection limit: every connection busy")
        self._refuse(503, "SERVICE_UNAVAILABLE", "The server is busy; try again shortly")

    # Data and parser callbacks

    def data_received(self, data: bytes) -> None:
        if self.transport.is_closing():
            return
        if self.head_pending:
            self._head_bytes += len(data)
        super().data_received(data)
        if (
            self.head_pending
            and self._head_bytes > self.limits.header_max_bytes
            and not self.transport.is_closing()
        ):
            self._head_too_large()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._head_size = 0

    def on_url(self, url: bytes) -> None:
        self._head_size += len(url)
        super().on_url(url)

    def on_header(self, name: bytes, value: bytes) -> None:
        self._head_size += len(name) + len(value) + 4
        super().on_header(name, value)

    def on_headers_complete(self) -> None:
        self.head_pending = False
        self._head_bytes = 0
        self._cancel_head_timer()
        if self._head_size > self.limits.header_max_bytes:
            self._head_too_large()
            raise _Refused
        super().on_headers_complete()
        if _has_body(self.headers):
            self._body_window_bytes = 0
            self._arm_body_timer()

    def on_body(self, body: bytes) -> None:
        self._body_window_bytes += len(body)
        super().on_body(body)

    def on_message_complete(self) -> None:
        self._cancel_body_timer()
        self.head_pending = True
        self._head_bytes = 0
        if self._linger is not None:
            # The rest of a body answered before it was read has arrived: done with it.
            self._linger.cancel()
            self._linger = None
            self.transport.close()
            return
        super().on_message_complete()

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if self.transport.is_closing():
            return
        cycle = self.cycle
        if cycle is not None and cycle.more_body and not self.head_pending:
            # Answered before its body was read (413, 401, 403...): the rest is read and
            # discarded for at most one body window, so the client sees its answer rather than
            # a reset, then the connection closes however much is still coming.
            self._cancel_body_timer()
            self._linger = self.loop.call_later(
                self.limits.body_timeout_seconds, self.transport.close
            )
            return
        if not self.pipeline and self.head_pending:
            self._arm_head_timer()

    def _start_asgi_task(self, cycle: Any, app: Any) -> None:
        # Only requests being answered count: idle and slow connections never make healthy
        # requests wait or fail (uvicorn's own limit counts connections too).
        if len(self.tasks) >= self.limits.max_requests_in_flight:
            _refusals.note(503, "requests in flight limit")
            app = _overloaded
        super()._start_asgi_task(cycle, app)

    def send_400_response(self, msg: str) -> None:
        """A request h11/llhttp cannot parse (duplicate or negative Content-Length, bad chunking,
        bare CR...): problem+json like every other error, the parser's message not echoed."""
        if self.transport.is_closing():
            return
        _refusals.note(400, "malformed HTTP")
        self._refuse(400, "BAD_REQUEST", "The request is not valid HTTP/1.1")

    # Timers

    def _arm_head_timer(self) -> None:
        self._cancel_head_timer()
        self._head_timer = self.loop.call_later(
            self.limits.header_timeout_seconds, self._head_timed_out
        )

    def _cancel_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_timed_out(self) -> None:
        self._head_timer = None
        if self.transport.is_closing() or not self.head_pending:
            return
        if self._head_bytes == 0:
            self.transport.close()  # nothing started: an idle connection, closed quietly
            return
        _refusals.note(408, "request head not complete in time")
        self._refuse(408, "REQUEST_TIMEOUT", "The request head was not received in time")

    def _arm_body_timer(self) -> None:
        self._cancel_body_timer()
        self._body_timer = self.loop.call_later(self.limits.body_timeout_seconds, self._body_check)

    def _cancel_body_timer(self) -> None:
        if self._body_timer is not None:
            self._body_timer.cancel()
            self._body_timer = None

    def _body_check(self) -> None:
        self._body_timer = None
        if self.transport.is_closing() or self.head_pending:
            return
        received, self._body_window_bytes = self._body_window_bytes, 0
        # While reading is paused the application is behind, not the client.
        if self.flow.read_paused:
            self._arm_body_timer()
            return
        window = self.limits.body_timeout_seconds
        needed = max(1, int(self.limits.body_min_bytes_per_second * window))
        if received >= needed:
            self._arm_body_timer()
            return
        _refusals.note(408, "request body too slow")
        self._refuse(408, "REQUEST_TIMEOUT", "The request body was not received in time")

    # Refusals

    def _head_too_large(self) -> None:
        _refusals.note(431, "request head too large")
        detail = f"The request line and headers exceed {self.limits.header_max_bytes} bytes"
        self._refuse(431, "HEADERS_TOO_LARGE", detail)

    def _request_id(self) -> str:
        cycle = self.cycle
        if cycle is not None and not cycle.response_complete:
            state = cycle.scope.get("state") or {}
            supplied = state.get("request_id")
            if isinstance(supplied, str):
                return supplied
        return uuid.uuid4().hex

    def _refuse(self, status: int, code: str, detail: str) -> None:
        """Answer with a problem and close; a request the application is answering is cut off
        (it sees a disconnect, and what it sends after goes nowhere)."""
        cycle = self.cycle
        request_id = self._request_id()
        if cycle is not None and not cycle.response_complete:
            started = cycle.response_started
            cycle.disconnected = True
            cycle.message_event.set()
            if started:
                self.transport.close()
                return
        body = problem_bytes(status, code, detail, request_id)
        content = [STATUS_LINE[status]]
        for name, value in self.server_state.default_headers:
            content.extend([name, b": ", value, b"\r\n"])
        headers = [
            (b"content-type", b"application/problem+json"),
            (b"content-length", str(len(body)).encode()),
            (b"x-request-id", request_id.encode()),
            (b"cache-control", b"no-store"),
            (b"connection", b"close"),
        ]
        if status == 503:
            headers.append((b"retry-after", b"1"))
        for name, value in headers:
            content.extend([name, b": ", value, b"\r\n"])
        content.extend([b"\r\n", body])
        self.transport.write(b"".join(content))
        self.transport.close()


async def _overloaded(scope: Scope, receive: ASGIReceiveCallable, send: ASGISendCallable) -> None:
    request_id = uuid.uuid4().hex
    body = problem_bytes(
        503, "SERVICE_UNAVAILABLE", "The server is busy; try again shortly", request_id
    )
    await send(
        {
            "type": "http.response.start",
            "status": 503,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
                (b"x-request-id", request_id.encode()),
                (b"cache-control", b"no-store"),
                (b"retry-after", b"1"),
                (b"connection", b"close"),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body, "more_body": False})


class EdgeConfig(uvicorn.Config):
    """uvicorn's configuration with the edge limits; picklable, so worker processes get them."""

    def __init__(self, app: str, *, limits: EdgeLimits, **kwargs: Any) -> None:
        super().__init__(
            app,
            http=EdgeHttpProtocol,
            limit_concurrency=None,  # counted by the protocol, in-flight requests only
            timeout_keep_alive=max(1, round(limits.keep_alive_seconds)),
            **kwargs,
        )
        self.edge_limits = limits


def build_config(settings: Settings, host: str, port: int, workers: int) -> EdgeConfig:
    level = "info"
    return EdgeConfig(
        "gateway.asgi:app",
        limits=EdgeLimits.from_settings(settings),
        host=host,
        port=port,
        workers=workers,
        proxy_headers=False,
        server_header=False,
        log_level=level,
        log_config=logs.logging_config(settings.log_format, level.upper()),
        access_log=False,  # the application logs each request by its route template
        timeout_graceful_shutdown=settings.shutdown_grace_seconds,
    )


class _Server(Server):
    """uvicorn's server, except that a SIGTERM it has answered with a graceful shutdown ends the
    process with status 0: uvicorn raises the signal again once done, which a supervisor
    (systemd, Kubernetes) would read as a crash."""

    def handle_exit(self, sig: int, frame: Any) -> None:
        super().handle_exit(sig, frame)
        if sig == signal.SIGTERM and sig in self._captured_signals:
            self._captured_signals.remove(sig)


def run(settings: Settings, host: str, port: int, workers: int) -> None:
    """Serve until stopped: one process, or a supervisor of `workers` processes."""
    config = build_config(settings, host, port, workers)
    if config.workers > 1:
        # Workers count in files of one folder, so any worker's /metrics answers the sum.
        metrics.use_folder(settings.data_dir / "metrics")
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    _Server(config=config).run()
