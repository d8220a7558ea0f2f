"""The Delta Sharing protocol's shapes: schemas, pagination tokens, capabilities."""

from __future__ import annotations

import base64
import binascii
import json
from typing import Any

import pyarrow as pa

from services.kit.errors import BadRequest
from services.storage import parquet

DEFAULT_PAGE = 100
MAX_PAGE = 1000


def delta_type(kind: pa.DataType) -> Any:
    """An Arrow type in the protocol's schema vocabulary (Spark SQL JSON)."""
    if pa.types.is_int64(kind):
        return "long"
    if pa.types.is_int32(kind):
        return "integer"
    if pa.types.is_float64(kind):
        return "double"
    if pa.types.is_float32(kind):
        return "float"
    if pa.types.is_boolean(kind):
        return "boolean"
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        return "string"
    if pa.types.is_date32(kind):
        return "date"
    if pa.types.is_timestamp(kind):
        return "timestamp"
    if pa.types.is_list(kind) or pa.types.is_large_list(kind):
        return {"type": "array", "elementType": delta_type(kind.value_type), "containsNull": True}
    raise ValueError(f"no Delta Sharing type for {kind}")


def schema_string(body: bytes) -> str:
    """The schema of a Parquet file (given as bytes) as the protocol's ``schemaString``."""
    schema = parquet.schema_of(body)
    fields = [
        {"name": f.name, "type": delta_type(f.type), "nullable": True, "metadata": {}}
        for f in schema
    ]
    return json.dumps({"type": "struct", "fields": fields}, separators=(",", ":"))


def page(items: list[dict[str, Any]], max_results: int | None, token: str | None) -> dict[str, Any]:
    """One page of a listing with the protocol's ``maxResults`` and ``pageToken``."""
    if max_results is not None and max_results < 0:
        raise BadRequest("maxResults must be non-negative")
    size = min(DEFAULT_PAGE if max_results is None else max_results, MAX_PAGE)
    start = _offset(token) if token else 0
    body: dict[str, Any] = {"items": items[start : start + size]}
    if start + size < len(items):
        body["nextPageToken"] = _token(start + size)
    return body


def _token(offset: int) -> str:
    return base64.urlsafe_b64encode(f"o:{offset}".encode()).decode().rstrip("=")


def _offset(token: str) -> int:
    try:
        text = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()
        kind, _, value = text.partition(":")
        offset = int(value)
    except (binascii.Error, ValueError, UnicodeDecodeError):
        raise BadRequest("pageToken is not one this server gave") from None
    if kind != "o" or offset < 0 or len(token) > 40:
        raise BadRequest("pageToken is not one this server gave")
    return offset


def capabilities(header: str | None) -> dict[str, list[str]]:
    """The ``delta-sharing-capabilities`` header: ``key=v1,v2;key2=v3``, case-insensitive."""
    found: dict[str, list[str]] = {}
    for part in (header or "").split(";"):
        key, _, values = part.partition("=")
        if key.strip():
            found[key.strip().lower()] = [v.strip().lower() for v in values.split(",") if v]
    return found
