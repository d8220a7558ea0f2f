"""The Delta Sharing endpoint (``/delta-sharing``) and the profile a recipient connects with.

Errors under ``/delta-sharing`` carry the protocol's ``errorCode`` and ``message`` beside the
platform's problem-details members, so both the connectors and people reading them understand.
"""

from __future__ import annotations

from collections.abc import Callable, Coroutine
from typing import Any

import orjson
from fastapi import APIRouter, Query, Request
from fastapi.exceptions import RequestValidationError
from fastapi.routing import APIRoute
from starlette.concurrency import run_in_threadpool
from starlette.responses import FileResponse, Response

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep, request_context
from gateway.errors import problem
from gateway.responses import FastJSONResponse
from services.kit.errors import BadRequest, TogetherError
from services.platform import Platform
from services.sharing import protocol as protocol_shapes
from services.sharing import service as sharing_service

PREFIX = "/delta-sharing"
FILE_PATH = PREFIX + "/files/{token}"
TABLE_PATH = PREFIX + "/shares/{share}/schemas/{schema}/tables/{table}"
NDJSON = "application/x-ndjson; charset=utf-8"
_MAX_QUERY_BODY = 64 * 1024
CAPABILITIES = "delta-sharing-capabilities"

_ERROR_CODES = {
    400: "INVALID_PARAMETER_VALUE",
    401: "UNAUTHENTICATED",
    403: "PERMISSION_DENIED",
    404: "RESOURCE_DOES_NOT_EXIST",
    413: "INVALID_PARAMETER_VALUE",
    503: "TEMPORARILY_UNAVAILABLE",
}


class SharingRoute(APIRoute):
    """Routes whose errors, including authentication's, are in the protocol's shape too."""

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()

        async def handle(request: Request) -> Response:
            try:
                return await handler(request)
            except TogetherError as exc:
                return _error(request, exc.status, exc.code, exc.title, exc.detail)
            except RequestValidationError as exc:
                detail = "; ".join(
                    f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}"
                    for e in exc.errors()
                )
                return _error(request, 400, "BAD_REQUEST", "Bad request", detail)

        return handle


def _error(request: Request, status: int, code: str, title: str, detail: str) -> Response:
    headers = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="together", error="invalid_token"'}
    extra = {"errorCode": _ERROR_CODES.get(status, "INTERNAL_ERROR"), "message": detail}
    return problem(request, status, code, title, detail, extra, headers)


router = APIRouter(tags=["sharing"])
protocol = APIRouter(prefix=PREFIX, tags=["sharing"], route_class=SharingRoute)


def _base(platform: Platform, request: Request) -> str:
    configured = platform.sharing.endpoint
    if configured:
        return configured.rstrip("/").removesuffix(PREFIX)
    return str(request.base_url).rstrip("/")


def _endpoint(platform: Platform, request: Request) -> str:
    return platform.sharing.endpoint or (_base(platform, request) + PREFIX)


@router.get(
    "/v1/sharing/profile", response_model=schemas.SharingProfile, responses=schemas.problems(403)
)
async def profile(
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    kind: str = Query(
        default="bearer_token",
        alias="type",
        description="bearer_token, or oauth_client_credentials",
    ),
) -> FastJSONResponse:
    """A Delta Sharing profile file for the caller (audited)."""
    document = await run_in_threadpool(
        sharing_service.issue_profile,
        platform.sharing,
        principal,
        ctx,
        endpoint=_endpoint(platform, request),
        token_endpoint=_base(platform, request) + "/oauth/token",
        kind=kind,
    )
    return FastJSONResponse(
        document, headers={"Content-Disposition": 'attachment; filename="together.share"'}
    )


@protocol.get("/shares", response_model=schemas.SharesPage, responses=schemas.problems(403))
async def list_shares(
    principal: Authenticated,
    platform: PlatformDep,
    max_results: int | None = Query(None, alias="maxResults"),
    page_token: str | None = Query(None, alias="pageToken"),
) -> FastJSONResponse:
    body = await run_in_threadpool(
        sharing_service.list_shares, platform.sharing, principal, max_results, page_token
    )
    return FastJSONResponse(body)


@protocol.get(
    "/shares/{share}", response_model=schemas.ShareDocument, responses=schemas.problems(403, 404)
)
async def get_share(
    share: str, principal: Authenticated, platform: PlatformDep
) -> FastJSONResponse:
    body = await run_in_threadpool(sharing_service.get_share, platform.sharing, principal, share)
    return FastJSONResponse(body)


@protocol.get(
    "/shares/{share}/schemas",
    response_model=schemas.SchemasPage,
    responses=schemas.problems(403, 404),
)
async def list_schemas(
    share: str,
    principal: Authenticated,
    platform: PlatformDep,
    max_results: int | None = Query(None, alias="maxResults"),
    page_token: str | None = Query(None, alias="pageToken"),
) -> FastJSONResponse:
    body = await run_in_threadpool(
        sharing_service.list_schemas, platform.sharing, principal, share, max_results, page_token
    )
    return FastJSONResponse(body)


@protocol.get(
    "/shares/{share}/schemas/{schema}/tables",
    response_model=schemas.TablesPage,
    responses=schemas.problems(403, 404),
)
async def list_tables(
    share: str,
    schema: str,
    principal: Authenticated,
    platform: PlatformDep,
    max_results: int | None = Query(None, alias="maxResults"),
    page_token: str | None = Query(None, alias="pageToken"),
) -> FastJSONResponse:
    body = await run_in_threadpool(
        sharing_service.list_tables,
        platform.sharing,
        principal,
        share,
        schema,
        max_results,
        page_token,
    )
    return FastJSONResponse(body)


@protocol.get(
    "/shares/{share}/all-tables",
    response_model=schemas.TablesPage,
    responses=schemas.problems(403, 404),
)
async def list_all_tables(
    share: str,
    principal: Authenticated,
    platform: PlatformDep,
    max_results: int | None = Query(None, alias="maxResults"),
    page_token: str | None = Query(None, alias="pageToken"),
) -> FastJSONResponse:
    body = await run_in_threadpool(
        sharing_service.list_tables,
        platform.sharing,
        principal,
        share,
        None,
        max_results,
        page_token,
    )
    return FastJSONResponse(body)


def _delta_format(request: Request) -> bool:
    """The response format: parquet (every connector reads it) unless only delta is asked for."""
    asked = protocol_shapes.capabilities(request.headers.get(CAPABILITIES)).get(
        "responseformat", ["parquet"]
    )
    if "parquet" in asked:
        return False
    if "delta" in asked:
        return True
    raise BadRequest("responseformat must be parquet or delta")


def _version_headers(read: sharing_service.TableRead, delta: bool = False) -> dict[str, str]:
    return {
        "Delta-Table-Version": str(read.snapshot.version),
        CAPABILITIES: "responseformat=" + ("delta" if delta else "parquet"),
    }


@protocol.get(
    "/shares/{share}/schemas/{schema}/tables/{table}/version",
    response_class=Response,
    responses=schemas.TABLE_VERSION_RESPONSES,
)
async def table_version(
    share: str,
    schema: str,
    table: str,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    starting_timestamp: str | None = Query(None, alias="startingTimestamp"),
) -> Response:
    if starting_timestamp is not None:
        raise BadRequest("startingTimestamp: the history of published tables is not shared")
    read = await run_in_threadpool(
        sharing_service.open_table, platform.sharing, principal, ctx, share, schema, table
    )
    return Response(status_code=200, headers=_version_headers(read))


@protocol.head(
    "/shares/{share}/schemas/{schema}/tables/{table}",
    response_class=Response,
    responses=schemas.TABLE_VERSION_RESPONSES,
)
async def table_version_head(
    share: str,
    schema: str,
    table: str,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    """The protocol's older form of the version request."""
    read = await run_in_threadpool(
        sharing_service.open_table, platform.sharing, principal, ctx, share, schema, table
    )
    return Response(status_code=200, headers=_version_headers(read))


def _ndjson(lines: list[dict[str, Any]], headers: dict[str, str]) -> Response:
    body = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    return Response(body, media_type=NDJSON, headers=headers)


@protocol.get(
    "/shares/{share}/schemas/{schema}/tables/{table}/metadata",
    response_class=Response,
    responses=schemas.TABLE_LINES_RESPONSES,
    openapi_extra=schemas.CAPABILITIES_REQUEST,
)
async def table_metadata(
    share: str,
    schema: str,
    table: str,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    delta = _delta_format(request)
    read = await run_in_threadpool(
        sharing_service.open_table, platform.sharing, principal, ctx, share, schema, table
    )
    return _ndjson(sharing_service.metadata_lines(read, delta=delta), _version_headers(read, delta))


@protocol.post(
    "/shares/{share}/schemas/{schema}/tables/{table}/query",
    response_class=Response,
    responses=schemas.TABLE_LINES_RESPONSES,
    openapi_extra=schemas.QUERY_REQUEST,
)
async def query_table(
    share: str,
    schema: str,
    table: str,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    raw = b""
    async for chunk in request.stream():
        raw += chunk
        if len(raw) > _MAX_QUERY_BODY:
            raise BadRequest("the query body is too large")
    try:
        body = orjson.loads(raw) if raw.strip() else {}
    except orjson.JSONDecodeError:
        raise BadRequest("the query body is not JSON") from None
    if not isinstance(body, dict):
        raise BadRequest("the query body must be a JSON object")
    endpoint = _endpoint(platform, request)
    delta = _delta_format(request)

    def answer() -> tuple[sharing_service.TableRead, list[dict[str, Any]]]:
        read = sharing_service.open_table(platform.sharing, principal, ctx, share, schema, table)
        sharing_service.check_query(read, body)
        return read, sharing_service.query_lines(
            platform.sharing, principal, ctx, read, endpoint, delta=delta
        )

    read, lines = await run_in_threadpool(answer)
    # The query is audited and committed by now.
    return _ndjson(lines, _version_headers(read, delta))


@protocol.get(
    "/shares/{share}/schemas/{schema}/tables/{table}/changes",
    response_class=Response,
    responses=schemas.CHANGES_RESPONSES,
)
async def table_changes(share: str, schema: str, table: str, principal: Authenticated) -> Response:
    raise BadRequest("the change data feed of published tables is not shared")


# One route per method: a route of two methods gives both the same OpenAPI operation id.
@protocol.get("/files/{token}", response_class=Response, responses=schemas.FILE_RESPONSES)
@protocol.head("/files/{token}", response_class=Response, responses=schemas.FILE_RESPONSES)
async def read_file(token: str, request: Request, platform: PlatformDep) -> Response:
    """A file of a table, by the signed URL a query gave (no bearer token needed)."""
    ctx = request_context(request)
    found = await run_in_threadpool(
        sharing_service.read_file,
        platform.sharing,
        ctx,
        token,
        request.headers.get("authorization"),
        request.headers.get("range"),
        audit=request.method != "HEAD",
    )
    # Audited and committed by now; only from here do bytes leave.
    return FileResponse(found.path, media_type="application/vnd.apache.parquet")
