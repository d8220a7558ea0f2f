"""One error shape (RFC 9457 problem details with a stable ``code``) for every failure."""

from __future__ import annotations

import logging
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException

from gateway.responses import ProblemResponse
from services.kit.errors import QuotaExceeded, TogetherError

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
        return problem(request, exc.status_code, code, detail, detail)

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception) -> ProblemResponse:
        # Library messages may carry SQL, paths or values: log the type, send nothing of it.
        log.error(
            "unhandled error",
            extra={"request_id": getattr(request.state, "request_id", None)},
            exc_info=exc,
        )
        return problem(
            request, 500, "INTERNAL_ERROR", "Internal error", "An internal error occurred"
        )
