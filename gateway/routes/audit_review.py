"""The audit trail for information-governance review: events, a person's history, alerts."""

from __future__ import annotations

import io
from collections.abc import Iterable
from typing import Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.audit.review import EXPORT_COLUMNS, FILTER_NAMES, Page
from services.kit.errors import BadRequest
from services.products.formats import neutralise
from services.review import service as review_service

router = APIRouter(prefix="/v1/audit", tags=["audit review"])

_PAGING = frozenset({"cursor", "limit", "format"})
_MEDIA = {"csv": "text/csv; charset=utf-8", "ndjson": "application/x-ndjson"}


def _params(request: Request, allowed: Iterable[str]) -> dict[str, str]:
    allowed = set(allowed)
    params: dict[str, str] = {}
    for key, value in request.query_params.multi_items():
        if key not in allowed:
            raise BadRequest(f"unknown parameter {key!r}")
        if key in params:
            raise BadRequest(f"parameter {key!r} given twice")
        params[key] = value
    fmt = params.get("format", "json")
    if fmt not in review_service.FORMATS:
        raise BadRequest("format is json, csv or ndjson")
    return params


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list):
        value = ";".join(str(v) for v in value)
    elif isinstance(value, dict):
        value = orjson.dumps(value, option=orjson.OPT_SORT_KEYS).decode()
    return '"' + neutralise(str(value)).replace('"', '""') + '"'


def to_csv(events: list[dict[str, Any]]) -> bytes:
    """RFC 4180; every text cell quoted, formula-like text made inert (security-tests T47)."""
    out = io.StringIO()
    out.write(",".join(EXPORT_COLUMNS) + "\r\n")
    for event in events:
        out.write(",".join(_csv_cell(event.get(c)) for c in EXPORT_COLUMNS) + "\r\n")
    return out.getvalue().encode("utf-8")


def to_ndjson(events: list[dict[str, Any]]) -> bytes:
    return b"".join(orjson.dumps(e) + b"\n" for e in events)


def _page_response(page: Page, fmt: str, filename: str) -> Response:
    headers = {}
    if page.next_cursor:
        headers["X-Next-Cursor"] = page.next_cursor
    if fmt == "json":
        return FastJSONResponse(
            {"events": page.events, "next_cursor": page.next_cursor}, headers=headers
        )
    headers["Content-Disposition"] = f'attachment; filename="{filename}.{fmt}"'
    body = to_csv(page.events) if fmt == "csv" else to_ndjson(page.events)
    return Response(body, media_type=_MEDIA[fmt], headers=headers)


@router.get(
    "/events",
    response_model=schemas.AuditEventPage,
    responses=schemas.AUDIT_PAGE_RESPONSES,
    openapi_extra=schemas.AUDIT_EVENTS_REQUEST,
)
async def events(
    request: Request, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> Response:
    """Audit events the caller may review, newest first, filtered; `format=json|csv|ndjson`."""
    params = _params(request, FILTER_NAMES | _PAGING)
    fmt = params.get("format", "json")
    page = await run_in_threadpool(
        review_service.search_events, platform.review, principal, ctx, params, fmt=fmt
    )
    return _page_response(page, fmt, "audit-events")


@router.get(
    "/events/{event_id}", response_model=schemas.AuditEvent, responses=schemas.problems(403, 404)
)
async def event(
    event_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """One event (404 when it does not exist or is not the caller's to review)."""
    found = await run_in_threadpool(
        review_service.event_detail, platform.review, principal, ctx, event_id
    )
    return FastJSONResponse(found)


class PersonQuery(BaseModel):
    """A person's identifier travels in the body, never in the URL: paths and query strings
    end up in proxy and access logs (security-tests T45)."""

    model_config = ConfigDict(extra="forbid")
    person_id: str = Field(min_length=1, max_length=200)


@router.post(
    "/people",
    response_model=schemas.AuditEventPage,
    responses=schemas.AUDIT_PAGE_RESPONSES,
    openapi_extra=schemas.AUDIT_PAGING_REQUEST,
)
async def person(
    body: PersonQuery,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    """Every read that returned this person: who, when, why (purpose and case reference).
    The person id is in the JSON body; paging (`cursor`, `limit`, `format`) in the query."""
    params = _params(request, _PAGING)
    fmt = params.get("format", "json")
    page = await run_in_threadpool(
        review_service.person_history,
        platform.review,
        principal,
        ctx,
        body.person_id,
        params,
        fmt=fmt,
    )
    return _page_response(page, fmt, "person-history")


@router.get(
    "/alerts",
    response_model=schemas.AlertList,
    responses=schemas.problems(403),
    openapi_extra=schemas.ALERTS_REQUEST,
)
async def alerts(
    request: Request, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Rule-based flags for review (default: the last 30 days), each with its events."""
    params = _params(request, {"since", "until", "rule", "state"})
    found = await run_in_threadpool(
        review_service.list_alerts, platform.review, principal, ctx, params
    )
    return FastJSONResponse({"alerts": [a.document() for a in found]})


class ReviewIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    comment: str = Field(min_length=1, max_length=2000)


@router.post(
    "/alerts/{alert_id}/review", response_model=schemas.Alert, responses=schemas.problems(403, 404)
)
async def review_alert(
    alert_id: str, body: ReviewIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Mark an alert reviewed, with a comment (kept, append-only, and audited)."""
    alert = await run_in_threadpool(
        review_service.review_alert, platform.review, principal, ctx, alert_id, body.comment
    )
    return FastJSONResponse(alert.document())
