"""A subject access request: an IG lead asks what the platform holds about one person."""

from __future__ import annotations

import io
from datetime import date
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.kit.errors import BadRequest
from services.products.formats import neutralise
from services.retention import subject_access
from services.retention.selectors import PersonQuery

router = APIRouter(prefix="/v1/subject-access", tags=["information governance"])

IdentifierName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
IdentifierValue = Annotated[str, StringConstraints(max_length=200)]
Name = Annotated[str, StringConstraints(max_length=100)]


class SubjectAccessIn(BaseModel):
    """The person's identifying values travel in the body, never in the URL: paths and query
    strings end up in proxy and access logs (security-tests T45)."""

    model_config = ConfigDict(extra="forbid")
    identifiers: dict[IdentifierName, IdentifierValue] = Field(
        default_factory=dict,
        max_length=20,
        description="identifier fields of the contracts and their values, e.g. "
        '`{"suspect_nominal_ref": "N101"}`',
    )
    surname: Name | None = None
    forename: Name | None = None
    dob: date | None = Field(default=None, description="with surname and forename, never alone")


class SubjectAccessOut(schemas._Open):
    """What the platform holds about the person: datasets and versions with rows about them
    (fields by classification; values only from the caller's own organisation's data), the
    Level 3 products that listed them, and every audited read that returned them."""

    held: bool
    summary: str
    person_ids: list[str]
    stored_rows: int
    datasets: list[Any]
    not_searched: list[Any]
    products: list[Any]
    reads: list[Any]
    reads_complete: bool


_FORMAT = {
    "name": "format",
    "in": "query",
    "required": False,
    "description": "json (default) or csv (one flat file: a line per dataset, version and "
    "field, then the products and reads)",
    "schema": {"type": "string", "enum": list(subject_access.FORMATS)},
}
_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {"content": schemas.media(schemas.CSV), "description": "The answer, as `format`"},
    **schemas.problems(400, 403, 503),
}


def _format(request: Request) -> str:
    params = request.query_params
    for key in params:
        if key != "format":
            raise BadRequest(f"unknown parameter {key!r}")
    values = params.getlist("format")
    if len(values) > 1:
        raise BadRequest("parameter 'format' given twice")
    # Its value is checked by the use case, after the caller's role: a refusal comes first.
    return values[0] if values else "json"


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return str(value)
    if isinstance(value, list | dict):
        value = orjson.dumps(value).decode()
    return '"' + neutralise(str(value)).replace('"', '""') + '"'


def to_csv(document: dict[str, Any]) -> bytes:
    """RFC 4180; every text cell quoted, formula-like text made inert (security-tests T47)."""
    out = io.StringIO()
    out.write(",".join(subject_access.CSV_COLUMNS) + "\r\n")
    for line in subject_access.flat_rows(document):
        out.write(",".join(_csv_cell(line.get(c)) for c in subject_access.CSV_COLUMNS) + "\r\n")
    return out.getvalue().encode("utf-8")


@router.post(
    "",
    response_model=SubjectAccessOut,
    responses=_RESPONSES,
    openapi_extra={"parameters": [_FORMAT]},
)
async def subject_access_request(
    body: SubjectAccessIn,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    """An IG lead's subject access request: give the person's identifiers, or their surname,
    forename and date of birth. Every dataset is searched through the keyed pseudonyms (no
    stored value is decrypted to search); the answer is audited before it is returned, and a
    search that finds nothing answers 200 with `held: false`."""
    fmt = _format(request)
    query = PersonQuery(
        identifiers=dict(body.identifiers),
        surname=body.surname,
        forename=body.forename,
        dob=body.dob,
    )
    document = await run_in_threadpool(
        subject_access.answer, platform.subject_access, principal, ctx, query, fmt
    )
    if fmt == "json":
        return FastJSONResponse(document)
    return Response(
        to_csv(document),
        media_type="text/csv; charset=utf-8",
        headers={"Content-Disposition": 'attachment; filename="subject-access.csv"'},
    )
