"""What the API answers, as the published OpenAPI description states it.

The routes build their answers as plain dictionaries (orjson renders them); these models only
describe them, through `response_model=` and `responses=` on the route decorators, and the
fuzz pass (tests/security/test_ingestion_openapi.py) checks every answer against them. Each
model names the members a client can rely on and allows others (``extra="allow"``): a member
added later is not a breaking change, a member removed or retyped is caught by the fuzz pass.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from services.audit.review import FILTER_NAMES

PROBLEM_JSON = "application/problem+json"

# What each error status means on this API, for the description of every response.
ERROR_DESCRIPTIONS: dict[int, str] = {
    400: "Bad request: a parameter, header or body is malformed or unknown",
    401: "Not authenticated: a valid bearer token is required",
    403: "Not permitted: the caller's roles or areas do not allow this",
    404: "Not found (also for what exists but is not the caller's to see)",
    409: "Conflict with the current state (see the `code`)",
    413: "The body is larger than the limit (before or after gzip)",
    415: "Unsupported Content-Type or Content-Encoding",
    416: "The requested range cannot be satisfied",
    422: "The request was understood but refused (see the `code`)",
    429: "Too many requests: a quota or rate limit is reached (see Retry-After)",
    503: "Temporarily unavailable: the database or the audit trail cannot be written; "
    "nothing was returned or changed",
    507: "Insufficient storage: the data folder is full; nothing was stored",
}


def problems(*statuses: int, **descriptions: str) -> dict[int | str, dict[str, Any]]:
    """`responses=` for a route's own error statuses; the shared problem+json schema is attached
    once, in `gateway.openapi`. Keyword arguments override a description (``e422="..."``)."""
    found: dict[int | str, dict[str, Any]] = {}
    for status in statuses:
        text = descriptions.get(f"e{status}", ERROR_DESCRIPTIONS[status])
        found[status] = {"description": text}
    return found


class _Open(BaseModel):
    """An answer's members as documented; further members may be present."""

    model_config = ConfigDict(extra="allow")


class ProblemDetails(_Open):
    """RFC 9457 problem details, the shape of every error of the API. Some errors add members
    (an upload's `report`, Delta Sharing's `errorCode` and `message`, a quota's `retry_after`)."""

    type: str = Field(description="always about:blank: `code` says which error it is")
    status: int = Field(description="the HTTP status, repeated")
    code: str = Field(description="a stable, machine-readable error code")
    title: str
    detail: str
    request_id: str | None = Field(description="also sent as the X-Request-ID header")


class OAuthToken(_Open):
    access_token: str = Field(description="a signed JWT, sent as `Authorization: Bearer ...`")
    token_type: str = Field(description="Bearer")
    expires_in: int = Field(description="seconds")


class OAuthError(_Open):
    """RFC 6749 section 5.2: the token endpoint's errors are OAuth's, not problem details."""

    error: str
    error_description: str | None = None


class ContractSummary(_Open):
    id: str
    title: str
    owner: str
    version: str
    status: str


class ContractList(_Open):
    contracts: list[ContractSummary]


class ContractDocument(_Open):
    """A data contract as its YAML states it (fields, rules, protection, retention)."""

    id: str
    title: str
    owner: str
    version: str
    status: str


class UploadAccepted(_Open):
    upload_id: str
    dataset: str
    status: str = Field(description="accepted")
    mode: str
    rows: int
    version: int = Field(description="the dataset version this upload published")
    contract_version: str
    content_sha256: str = Field(description="SHA-256 of the body as received")
    received_at: str


class Upload(_Open):
    upload_id: str
    dataset: str
    status: str = Field(description="accepted or rejected")
    mode: str
    media_type: str
    rows: int | None
    size_bytes: int | None
    content_sha256: str | None
    contract_version: str
    version: int | None
    received_at: str
    report: dict[str, Any] | None = Field(description="the validation report of a rejection")


class UploadPage(_Open):
    uploads: list[Upload]
    next_before: str | None = Field(description="pass as `before` for the next page")


class DatasetContract(_Open):
    id: str
    version: str
    status: str


class DatasetVersion(_Open):
    version: int
    contract_version: str
    mode: str
    rows: int | None
    upload_id: str | None


class Dataset(_Open):
    dataset: str
    owner: str
    contract: DatasetContract
    current_version: DatasetVersion | None = Field(description="null before the first upload")


class ProductSummary(_Open):
    id: str
    level: int
    title: str
    description: str
    parameters: list[dict[str, Any]]
    formats: list[str]
    suppressed: bool
    areas: list[str] | None = Field(description="null where the caller's roles are not by area")


class ProductList(_Open):
    products: list[ProductSummary]


class ProductDocument(_Open):
    """`format=json`: the rows of a product with the parameters and sources they came from."""

    product: str
    level: int
    parameters: dict[str, Any]
    generated_at: str
    sources: Any
    columns: list[Any]
    rows: list[Any]
    notes: Any


class AccessExplanation(_Open):
    product: str
    level: int
    allowed: bool
    rule: str | None
    policy_version: str | None
    suppressed: bool
    areas: list[str] | None
    roles: list[str]


class Assessment(_Open):
    person_id: str
    rag: str
    lead_agency: str
    previous_rag: str | None
    previous_lead_agency: str | None
    graded_by: str
    graded_by_org: str
    graded_at: str


class ClientList(_Open):
    clients: list[dict[str, Any]]


class ClientCreated(_Open):
    client_id: str
    client_secret: str = Field(description="shown in this answer only")
    organisation: str
    roles: list[Any]


class ClientRoles(_Open):
    client_id: str
    roles: list[Any]


class GrantRequest(_Open):
    """A role grant that waits for a second person (an IG lead of the client's organisation)."""

    request_id: str
    client_id: str
    organisation: str
    roles: list[Any]
    state: str = Field(description="pending, approved or refused")
    requested_by: str | None
    requested_at: str


class GrantRequestList(_Open):
    requests: list[GrantRequest]


class ExpiringGrant(_Open):
    """A time-bound role grant still in force that ends soon."""

    client_id: str
    name: str
    organisation: str
    role: str
    area: str | None
    expires_at: str
    days_left: int = Field(description="whole days until expires_at")


class ExpiringGrantList(_Open):
    days: int
    grants: list[ExpiringGrant]


class ClientDisabled(_Open):
    client_id: str
    disabled: bool


class Checkpoints(_Open):
    log: str
    keys: list[dict[str, Any]] = Field(description="public keys (JWK) that verify checkpoints")
    checkpoints: list[dict[str, Any]]
    next_after: int | None


class ConsistencyProof(_Open):
    """RFC 6962 consistency proof between two tree sizes of the audit log."""

    log: str
    from_size: int
    to_size: int
    proof: list[str] = Field(description="hex-encoded nodes")


class AuditEventPage(_Open):
    events: list[dict[str, Any]]
    next_cursor: str | None = Field(description="pass as `cursor` for the next page")


class AuditEvent(_Open):
    id: str


class AlertReview(_Open):
    state: str
    comment: str
    reviewer: str | None
    reviewer_org: str | None
    reviewed_at: str


class Alert(_Open):
    id: str
    rule: str
    title: str
    occurred_at: str
    actor: str | None
    actor_org: str | None
    summary: str
    event_ids: list[str]
    state: str
    reviews: list[AlertReview]


class AlertList(_Open):
    alerts: list[Alert]


class SharingProfile(_Open):
    """A Delta Sharing profile file (`type=bearer_token` or `oauth_client_credentials`)."""

    shareCredentialsVersion: int
    endpoint: str


class Share(_Open):
    name: str
    id: str


class ShareDocument(_Open):
    share: Share


class SharesPage(_Open):
    items: list[Share]
    nextPageToken: str | None = None


class SharingSchema(_Open):
    name: str
    share: str


class SchemasPage(_Open):
    items: list[SharingSchema]
    nextPageToken: str | None = None


class SharingTable(_Open):
    name: str
    schema_: str = Field(alias="schema")
    share: str
    shareId: str | None = None
    id: str | None = None


class TablesPage(_Open):
    items: list[SharingTable]
    nextPageToken: str | None = None


# Media types of the answers that are not JSON documents.
CSV = "text/csv"
PARQUET = "application/vnd.apache.parquet"
NDJSON = "application/x-ndjson"
GEOJSON = "application/geo+json"
_BINARY: dict[str, Any] = {"type": "string", "format": "binary"}
_TEXT: dict[str, Any] = {"type": "string"}
PRODUCT_FORMATS = ["json", "csv", "parquet", "geojson"]


def media(*types: str) -> dict[str, Any]:
    """A response's further media types, for `responses={200: {"content": media(...)}}`."""
    return {t: {"schema": _BINARY if t == PARQUET else _TEXT} for t in types}


def _query(name: str, description: str, **schema: Any) -> dict[str, Any]:
    return {
        "name": name,
        "in": "query",
        "required": False,
        "description": description,
        "schema": {"type": "string", **schema},
    }


# Query parameters that routes read from the request themselves (and refuse when unknown).
AUDIT_FILTERS = [_query(name, f"filter: {name}", maxLength=200) for name in sorted(FILTER_NAMES)]
AUDIT_PAGING = [
    _query("cursor", "the `next_cursor` of the previous page"),
    _query("limit", "events per page"),
    _query("format", "json (default), csv or ndjson", enum=["json", "csv", "ndjson"]),
]
ALERT_FILTERS = [
    _query("since", "from this time (default: 30 days ago)"),
    _query("until", "up to this time"),
    _query("rule", "only this rule's alerts"),
    _query("state", "open or reviewed"),
]
LEVEL3_HEADERS = [
    {
        "name": name,
        "in": "header",
        "required": False,
        "description": f"Level 3 only (required there): {text}",
        "schema": {"type": "string", "maxLength": 200},
    }
    for name, text in (
        ("X-Purpose", "why the record is needed"),
        ("X-Case-Reference", "the case it is needed for"),
    )
]
PRODUCT_PARAMETERS = [
    _query("format", "json (default), csv, parquet or geojson", enum=PRODUCT_FORMATS),
    {
        "name": "parameters",
        "in": "query",
        "required": False,
        "style": "form",
        "explode": True,
        "description": "the product's own parameters (GET /v1/products lists them), e.g. "
        "`from`, `to`, `by`, `area`; an unknown one is a 400",
        "schema": {"type": "object", "additionalProperties": {"type": "string"}},
    },
    *LEVEL3_HEADERS,
    {
        "name": "X-Person-Id",
        "in": "header",
        "required": False,
        "description": "the person a product is about (person-profile): never in the URL, which "
        "proxies log; `person_id` in the query string is a 400",
        "schema": {"type": "string", "maxLength": 200},
    },
]


def _merge(*parts: dict[int | str, dict[str, Any]]) -> dict[int | str, dict[str, Any]]:
    merged: dict[int | str, dict[str, Any]] = {}
    for part in parts:
        for status, response in part.items():
            merged.setdefault(status, {}).update(response)
    return merged


def _body(media_type: str, schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "description": description,
            "content": {media_type: {"schema": schema}},
        }
    }


# POST /oauth/token reads its form itself (RFC 6749 section 4.4).
TOKEN_REQUEST: dict[str, Any] = _body(
    "application/x-www-form-urlencoded",
    {
        "type": "object",
        "properties": {
            "grant_type": {"type": "string", "enum": ["client_credentials"]},
            "client_id": {"type": "string", "maxLength": 64},
            "client_secret": {"type": "string", "maxLength": 256},
            "scope": {"type": "string", "description": "ignored: roles decide"},
        },
        "required": ["grant_type"],
    },
    "Client credentials in the form, or in HTTP Basic (`Authorization: Basic ...`) instead",
)
TOKEN_RESPONSES: dict[int | str, dict[str, Any]] = {
    400: {"model": OAuthError, "description": "invalid_request or unsupported_grant_type"},
    401: {"model": OAuthError, "description": "invalid_client: authentication failed"},
}

# The upload route streams its body itself: the document states what it accepts.
UPLOAD_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "description": "The whole file: CSV (UTF-8, header row), NDJSON (one object a line) or "
        "Parquet; gzip-compressed with `Content-Encoding: gzip` if wished",
        "content": {
            CSV: {"schema": _BINARY},
            NDJSON: {"schema": _BINARY},
            PARQUET: {"schema": _BINARY},
        },
    },
    "parameters": [
        {
            "name": "Content-Encoding",
            "in": "header",
            "required": False,
            "description": "gzip, or absent (identity)",
            "schema": {"type": "string", "enum": ["gzip", "identity"]},
        }
    ],
}
UPLOAD_RESPONSES = problems(
    403,
    404,
    409,
    413,
    415,
    422,
    507,
    e409="A request with this Idempotency-Key is still being processed: retry later",
    e422="The file breaks the dataset's contract (the `report` lists each violation; nothing "
    "was stored), or the Idempotency-Key was first used with a different file",
)

PRODUCT_REQUEST: dict[str, Any] = {"parameters": PRODUCT_PARAMETERS}
PRODUCT_RESPONSES = _merge(
    {200: {"content": media(CSV, PARQUET, GEOJSON), "description": "The product, as `format`"}},
    problems(403, 404, 429),
)
ASSESSMENT_REQUEST: dict[str, Any] = {
    **_body(
        "application/json",
        {
            "type": "object",
            "properties": {
                "rag": {"type": "string", "enum": ["red", "amber", "green"]},
                "lead_agency": {"type": "string", "description": "an organisation id"},
            },
            "required": ["rag", "lead_agency"],
        },
        "The grading",
    ),
    "parameters": LEVEL3_HEADERS,
}

AUDIT_PAGE_RESPONSES = _merge(
    {200: {"content": media(CSV, NDJSON), "description": "One page of events, as `format`"}},
    problems(403),
)
AUDIT_EVENTS_REQUEST: dict[str, Any] = {"parameters": AUDIT_FILTERS + AUDIT_PAGING}
AUDIT_PAGING_REQUEST: dict[str, Any] = {"parameters": AUDIT_PAGING}
ALERTS_REQUEST: dict[str, Any] = {"parameters": ALERT_FILTERS}

# Delta Sharing: https://github.com/delta-io/delta-sharing/blob/main/PROTOCOL.md
_DELTA_VERSION = {"Delta-Table-Version": {"schema": {"type": "string"}}}
CAPABILITIES_HEADER: dict[str, Any] = {
    "name": "delta-sharing-capabilities",
    "in": "header",
    "required": False,
    "description": "e.g. `responseformat=parquet` (the default) or `responseformat=delta`",
    "schema": {"type": "string"},
}
TABLE_VERSION_RESPONSES = _merge(
    {
        200: {
            "description": "No body: the version is the Delta-Table-Version header",
            "headers": _DELTA_VERSION,
        }
    },
    problems(403, 404),
)
TABLE_LINES_RESPONSES = _merge(
    {
        200: {
            "description": "Newline-delimited JSON: protocol, metadata, then files",
            "headers": _DELTA_VERSION,
            "content": media(NDJSON),
        }
    },
    problems(403, 404),
)
CAPABILITIES_REQUEST: dict[str, Any] = {"parameters": [CAPABILITIES_HEADER]}
QUERY_REQUEST: dict[str, Any] = {
    "requestBody": {
        "required": False,
        "description": "The protocol's query (predicateHints, limitHint, version...); "
        "at most 64 KiB",
        "content": {"application/json": {"schema": {"type": "object"}}},
    },
    "parameters": [CAPABILITIES_HEADER],
}
CHANGES_RESPONSES = problems(
    400, 403, 404, e400="The change data feed of published tables is not shared"
)
FILE_RESPONSES = _merge(
    {200: {"description": "The Parquet file", "content": media(PARQUET)}},
    problems(400, 403, 404, 416),
)
