"""The application factory: the HTTP edge only."""

from __future__ import annotations

import json
import logging
import re
import sys
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI, Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import errors, openapi
from gateway.routes import (
    admin,
    audit_checkpoints,
    audit_review,
    contracts,
    datasets,
    governance,
    health,
    metrics,
    oauth,
    products,
    sharing,
    subject_access,
    uploads,
)
from gateway.web import pages as ig_pages
from gateway.web.session import WebSessionMiddleware
from services.kit import logs
from services.kit import metrics as figures
from services.kit.outages import classify
from services.kit.settings import Settings, get_settings
from services.platform import Platform, build_platform

# Routes reachable without a bearer token. Pinned by a test: anything else must authenticate.
# The IG pages under /ig/ authenticate with their session cookie instead (`gateway.web.auth`);
# Delta Sharing file URLs carry their own signed, expiring, recipient-bound token.
PUBLIC_PATHS = frozenset(
    {"/healthz", "/readyz", "/oauth/token", sharing.FILE_PATH} | ig_pages.PUBLIC_PATHS
)

ROUTERS = (
    health.router,
    metrics.router,
    oauth.router,
    contracts.router,
    uploads.router,
    datasets.router,
    governance.router,
    products.router,
    admin.router,
    audit_review.router,
    audit_checkpoints.router,
    subject_access.router,
    ig_pages.router,
    sharing.router,
    sharing.protocol,
)

SWITCH_INTERVAL_SECONDS = 0.0005

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")

# A Host header is a name or an address and an optional port, nothing else: a value such as
# `x/v1/products/...` is refused before routing, and no URL is ever built from one.
_HOST = re.compile(
    r"^(?:\[[0-9A-Fa-f:.]+\]|[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?)(?::\d{1,5})?$"
)

# One JSON object per line, non-ASCII escaped: no value can forge a line (CR, LF, U+2028, ANSI).
access_log = logging.getLogger("together.access")


def _configure_access_log() -> None:
    if not access_log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(message)s"))
        access_log.addHandler(handler)
        access_log.setLevel(logging.INFO)
        access_log.propagate = False


def _route_template(scope: Scope) -> str | None:
    """The matched route's template (`/v1/products/{product_id}`), never the path as sent: paths
    may carry identifiers, and a log must not be a copy of what a client chose to write."""
    route = scope.get("route")
    path = getattr(route, "path", None)
    return path if isinstance(path, str) else None


def _bad_host(scope: Scope) -> bool:
    hosts = [value for name, value in scope.get("headers", []) if name == b"host"]
    if len(hosts) > 1:
        return True
    if not hosts:
        return scope.get("http_version") == "1.1"  # RFC 9112 3.2: a 1.1 request names its host
    return _HOST.match(hosts[0].decode("latin-1")) is None


_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def _bad_target(scope: Scope) -> bool:
    """A path with a control character (after percent-decoding) names no route, and a NUL in the
    query is no parameter's value: both are refused before they reach a handler, a log or a
    database (PostgreSQL refuses NUL in text, which would otherwise surface as a 5xx)."""
    path = scope.get("path", "")
    if _CONTROL.search(path):
        return True
    query = scope.get("query_string", b"")
    return b"\x00" in query or b"%00" in query


async def _refuse(request_id: str, detail: str, send: Send) -> None:
    body = json.dumps(
        {
            "type": "about:blank",
            "status": 400,
            "code": "BAD_REQUEST",
            "title": "Bad request",
            "detail": detail,
            "request_id": request_id,
        }
    ).encode()
    await send(
        {
            "type": "http.response.start",
            "status": 400,
            "headers": [
                (b"content-type", b"application/problem+json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class EdgeMiddleware:
    """Request ids, the headers every response carries (no caching of data, no sniffing), the
    Host check, and the access log line."""

    def __init__(self, app: ASGIApp, log_requests: bool = False) -> None:
        self.app = app
        self.log_requests = log_requests

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        supplied = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        request_id = supplied if supplied and _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id
        request_token = logs.request_id_var.set(request_id)
        principal_token = logs.principal_var.set(None)
        status = 500
        started_response = False

        async def send_with_headers(message: Message) -> None:
            nonlocal status, started_response
            if message["type"] == "http.response.start":
                status = message["status"]
                started_response = True
                headers = [h for h in message.get("headers", []) if h[0] != b"cache-control"]
                headers += [
                    (b"x-request-id", request_id.encode()),
                    (b"cache-control", b"no-store"),
                    (b"x-content-type-options", b"nosniff"),
                    (b"referrer-policy", b"no-referrer"),
                    (b"x-frame-options", b"DENY"),
                ]
                message["headers"] = headers
            await send(message)

        try:
            if _bad_host(scope):
                await _refuse(
                    request_id, "The Host header is missing or malformed", send_with_headers
                )
            elif _bad_target(scope):
                await _refuse(
                    request_id, "The path or query contains a control character", send_with_headers
                )
            else:
                await self.app(scope, receive, send_with_headers)
        except Exception as exc:
            # Answered here, so that a failure carries the request id and the headers every
            # response carries. An outage is handled; anything else goes on to be logged with
            # its stack by the server (the catch-all handler sees a response already sent).
            if started_response:
                raise
            response = errors.unexpected(Request(scope), exc, log_error=False)
            await response(scope, receive, send_with_headers)
            if classify(exc) is None:
                raise
        finally:
            elapsed = time.perf_counter() - started
            route = _route_template(scope) or "unmatched"
            figures.HTTP_REQUESTS.labels(route, scope.get("method", ""), str(status)).inc()
            figures.HTTP_LATENCY.labels(route).observe(elapsed)
            if self.log_requests:
                self._log(scope, status, request_id, elapsed)
            logs.principal_var.reset(principal_token)
            logs.request_id_var.reset(request_token)

    @staticmethod
    def _log(scope: Scope, status: int, request_id: str, elapsed: float) -> None:
        event = {
            "event": "http.request",
            "method": scope.get("method"),
            "route": _route_template(scope),
            "status": status,
            "ms": round(elapsed * 1000, 1),
            "request_id": request_id,
        }
        access_log.info(json.dumps(event, ensure_ascii=True))


def create_app(settings: Settings | None = None, platform: Platform | None = None) -> FastAPI:
    settings = settings or get_settings()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Only a server process builds its own platform and runs the background threads; an
        # app given a platform (a test, a benchmark) leaves them to whoever built it.
        if platform is None:
            # A server process: requests hand work to threads (the audit group committer, the
            # thread pool) and wait for it. With Python's default 5 ms switch interval each
            # hand-over back can wait up to 5 ms for a busy thread to yield the interpreter;
            # 0.5 ms measured about 25% more audited reads per second.
            sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
            app.state.platform = build_platform(settings)
            app.state.platform.start_background()
        try:
            yield
        finally:
            if platform is None:
                app.state.platform.stop_background()
            writer = app.state.platform.products.async_audit
            if writer is not None:
                await writer.close()
            if platform is None:
                app.state.platform.close()

    docs: dict[str, Any] = {}
    if not settings.is_development:
        docs = {"docs_url": None, "redoc_url": None, "openapi_url": None}
    app = FastAPI(
        title="Together",
        version="0.1.0",
        description="Governed, audited data sharing for the Violence Reduction Partnership.",
        lifespan=lifespan,
        # No redirect from `/x/` to `/x`: Starlette builds its Location from the Host header.
        redirect_slashes=False,
        **docs,
    )
    if platform is not None:
        app.state.platform = platform
    errors.install(app)
    openapi.install(app, settings)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(WebSessionMiddleware)
    if settings.http_access_log:
        _configure_access_log()
    app.add_middleware(EdgeMiddleware, log_requests=settings.http_access_log)
    return app
