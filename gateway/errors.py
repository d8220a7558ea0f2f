"""One error shape (RFC 9457 problem details with a stable ``code``) for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.routing import Match

from gateway.responses import ProblemResponse
from services.kit.errors import QuotaExceeded, TogetherError
from services.kit.outages import Outage, classify

log = logging.getLogger("together.errors")

_HTTP_CODES = {
    400: "BAD_REQUEST",
    401: "NOT_AUTHENTICATED",
    403: "FORBIDDEN",
    404: "NOT_FOUND",
    405: "METHOD_NOT_ALLOWED",
    413: "PAYLOAD_TOO_LARGE",
    415: "UNSUPPORTED_MEDIA_TYPE",
    431: "HEADERS_TOO_LARGE",
}

# An outage answers 503 and asks the client to come back: the request itself was fine.
OUTAGE_RETRY_AFTER_SECONDS = 5
_OUTAGES = {
    Outage.DATABASE: ("DATABASE_UNAVAILABLE", "The database is unavailable; try again shortly"),
    Outage.STORAGE_FULL: ("STORAGE_FULL", "The server's storage is full; try again later"),
}


def allowed_methods(request: Request) -> list[str]:
    """Every method some route answers at this path (Starlette names only the first route's).
    The routers are included without a prefix, so their routes match the path as they are."""
    methods: set[str] = set()
    pending = list(request.app.routes)
    while pending:
        route = pending.pop()
        included = getattr(route, "original_router", None)  # FastAPI's wrapper of a router
        if included is not None:
            pending.extend(included.routes)
            continue
        route_methods = getattr(route, "methods", None)
        if route_methods and route.matches(request.scope)[0] is not Match.NONE:
            methods |= set(route_methods)
    return sorted(methods)


def problem(
    request: Request,
    status: int,
    code: str,
    title: str,
    detail: str,
    extra: dict[str, Any] | None = None,
    headers: dict[str, str] | None = None,
) -> ProblemResponse:
    body: dict[str, Any] = {
        "type": "about:blank",
        "status": status,
        "code": code,
        "title": title,
        "detail": detail,
        "request_id": getattr(request.state, "request_id", None),
    }
    if extra:
        body.update(extra)
    return ProblemResponse(body, status_code=status, headers=headers)


def install(app: FastAPI) -> None:
    @app.exception_handler(TogetherError)
    async def _domain(request: Request, exc: TogetherError) -> ProblemResponse:
        headers = None
        if exc.status == 401:
            headers = {"WWW-Authenticate": 'Bearer realm="together", error="invalid_token"'}
        if isinstance(exc, QuotaExceeded) and "retry_after" in exc.extra:
            headers = {"Retry-After": str(exc.extra["retry_after"])}
        return problem(request, exc.status, exc.code, exc.title, exc.detail, exc.extra, headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError) -> ProblemResponse:
        messages = []
        for error in exc.errors():
            location = ".".join(str(part) for part in error.get("loc", ()))
            messages.append(f"{location}: {error.get('msg', 'invalid')}")
        return problem(request, 400, "BAD_REQUEST", "Bad request", "; ".join(messages))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> ProblemResponse:
        code = _HTTP_CODES.get(exc.status_code, "HTTP_ERROR")
        detail = exc.detail if isinstance(exc.detail, str) else code
        headers = dict(exc.headers or {})
        if exc.status_code == 405:
            headers["Allow"] = ", ".join(allowed_methods(request))
        return problem(request, exc.status_code, code, detail, detail, headers=headers or None)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> ProblemResponse:
        return unexpected(request, exc)


def unexpected(request: Request, exc: BaseException, log_error: bool = True) -> ProblemResponse:
    """503 with Retry-After for an outage, else 500; neither says anything of the exception.
    An outage is logged as one line (it is expected in operation: a restart, a full disk)."""
    request_id = getattr(request.state, "request_id", None)
    outage = classify(exc)
    if outage is not None:
        log.error(
            "outage",
            extra={"request_id": request_id, "outage": outage.value, "error": type(exc).__name__},
        )
        code, detail = _OUTAGES[outage]
        return problem(
            request,
            503,
            code,
            "Service unavailable",
            detail,
            headers={"Retry-After": str(OUTAGE_RETRY_AFTER_SECONDS)},
        )
    # Library messages may carry SQL, paths or values: log the type, send nothing of it.
    if log_error:
        log.error("unhandled error", extra={"request_id": request_id}, exc_info=exc)
    return problem(request, 500, "INTERNAL_ERROR", "Internal error", "An internal error occurred")
