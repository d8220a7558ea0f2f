"""The application factory: the HTTP edge only."""

from __future__ import annotations

import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from fastapi import FastAPI
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from gateway import errors, openapi
from gateway.routes import (
    admin,
    audit_checkpoints,
    audit_review,
    contracts,
    datasets,
    health,
    oauth,
    products,
    sharing,
    uploads,
)
from gateway.web import pages as ig_pages
from gateway.web.session import WebSessionMiddleware
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
    oauth.router,
    contracts.router,
    uploads.router,
    datasets.router,
    products.router,
    admin.router,
    audit_review.router,
    audit_checkpoints.router,
    ig_pages.router,
    sharing.router,
    sharing.protocol,
)

SWITCH_INTERVAL_SECONDS = 0.0005

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{8,64}$")


class EdgeMiddleware:
    """Request ids and the headers every response carries (no caching of data, no sniffing)."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        supplied = None
        for name, value in scope.get("headers", []):
            if name == b"x-request-id":
                supplied = value.decode("latin-1")
                break
        request_id = supplied if supplied and _REQUEST_ID.match(supplied) else uuid.uuid4().hex
        scope.setdefault("state", {})["request_id"] = request_id

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
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

        await self.app(scope, receive, send_with_headers)


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
        **docs,
    )
    if platform is not None:
        app.state.platform = platform
    errors.install(app)
    openapi.install(app, settings)
    for router in ROUTERS:
        app.include_router(router)
    app.add_middleware(WebSessionMiddleware)
    app.add_middleware(EdgeMiddleware)
    return app
