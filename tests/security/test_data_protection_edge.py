"""T45, errors: an exception in any layer (route, dependency, middleware, a service on a worker
thread, the database, the disk) answers RFC 9457 problem+json that carries the request id and
nothing of the exception: no stack, no SQL, no path, no token. An outage of the database or a
full disk is 503 with Retry-After, not 500."""

from __future__ import annotations

import errno
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi import Depends, FastAPI
from fastapi.testclient import TestClient
from sqlalchemy import event
from starlette.concurrency import run_in_threadpool
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway.app import create_app
from services.kit.settings import Settings
from services.platform import Platform
from tests.fixtures.app import ClientCredentials, TokenFor

_EDGE_SECRET = "SELECT secret FROM clients WHERE token='eyJhbGciOi' /var/lib/together/keys.json"
_EDGE_LEAKS = ("secret", "SELECT", "/var/lib", "eyJ", "Traceback", "sqlalchemy", 'File "')


def _edge_assert_says_nothing(response: Any, status: int) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert set(body) == {"type", "status", "code", "title", "detail", "request_id"}
    assert body["request_id"] and response.headers["x-request-id"] == body["request_id"]
    assert response.headers["cache-control"] == "no-store"
    for leak in _EDGE_LEAKS:
        assert leak not in response.text, leak


def _edge_fail() -> None:
    raise RuntimeError(_EDGE_SECRET)


class _EdgeFailingMiddleware:
    """Raises inside the middleware stack (below the edge), for paths under /mw."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"].startswith("/mw"):
            _edge_fail()
        await self.app(scope, receive, send)


@pytest.fixture
def _edge_failing_app(settings: Settings, platform: Platform) -> Iterator[TestClient]:
    app = create_app(settings, platform)
    _edge_add_failing_routes(app)
    with TestClient(app, raise_server_exceptions=False) as client:
        yield client


def _edge_add_failing_routes(app: FastAPI) -> None:
    @app.get("/boom/route")
    def route() -> None:
        _edge_fail()

    @app.get("/boom/dependency")
    def dependency(_: None = Depends(_edge_fail)) -> None:
        return None

    @app.get("/boom/thread")
    async def thread() -> None:
        await run_in_threadpool(_edge_fail)

    @app.get("/boom/disk")
    def disk() -> None:
        raise OSError(errno.ENOSPC, "No space left on device", "/var/lib/together/staging/x")

    @app.get("/boom/wrapped-disk")
    def wrapped_disk() -> None:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as exc:
            raise RuntimeError(_EDGE_SECRET) from exc

    # Innermost middleware of the application's own (the edge stays outermost).
    app.user_middleware.insert(1, _edge_middleware_entry())


def _edge_middleware_entry() -> Any:
    from starlette.middleware import Middleware

    return Middleware(_EdgeFailingMiddleware)


@pytest.mark.parametrize("path", ["/boom/route", "/boom/dependency", "/boom/thread", "/mw/x"])
def test_T45_an_exception_in_any_layer_is_a_bare_500_problem(
    _edge_failing_app: TestClient, path: str
) -> None:
    response = _edge_failing_app.get(path)
    _edge_assert_says_nothing(response, 500)
    assert response.json()["code"] == "INTERNAL_ERROR"


def test_T45_a_full_disk_is_503_with_retry_after(_edge_failing_app: TestClient) -> None:
    for path in ("/boom/disk", "/boom/wrapped-disk"):
        response = _edge_failing_app.get(path)
        _edge_assert_says_nothing(response, 503)
        assert response.json()["code"] == "STORAGE_FULL"
        assert int(response.headers["retry-after"]) > 0
        assert "staging" not in response.text


def test_T45_a_database_outage_is_503_and_serving_resumes(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: TokenFor,
) -> None:
    """Fault-injecting wrapper: every statement the engine sends fails in the driver with its
    own OperationalError (as when the server is stopped or the connection drops), which
    SQLAlchemy wraps as it would a real outage. A real stop of the database is T34's test."""
    token = token_for(make_client(org="vru", roles=("l1_reader",)))
    headers = {"Authorization": f"Bearer {token}"}
    dbapi = platform.engine.dialect.loaded_dbapi

    def refuse(*_: Any) -> None:
        raise dbapi.OperationalError("server closed the connection unexpectedly: " + _EDGE_SECRET)

    event.listen(platform.engine, "do_execute", refuse)
    event.listen(platform.engine, "do_execute_no_params", refuse)
    try:
        for path in ("/v1/products", "/v1/uploads", "/v1/datasets/police.occurrences"):
            response = api.get(path, headers=headers)
            _edge_assert_says_nothing(response, 503)
            assert response.json()["code"] in ("DATABASE_UNAVAILABLE", "AUDIT_UNAVAILABLE")
            assert int(response.headers.get("retry-after", "1")) > 0
    finally:
        event.remove(platform.engine, "do_execute", refuse)
        event.remove(platform.engine, "do_execute_no_params", refuse)
    assert api.get("/v1/products", headers=headers).status_code == 200
