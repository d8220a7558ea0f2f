"""A product result as JSON, CSV, Parquet or GeoJSON. Pure functions; nothing is read here.

Exports are opened by people in spreadsheets, so CSV text cells that a spreadsheet would take
for a formula are neutralised, and Parquet carries no metadata beyond the product's own.
"""

from __future__ import annotations

import json
from datetime import UTC, date, datetime
from typing import Any

import h3
import pyarrow as pa

from services.kit.errors import BadRequest
from services.products.disclosure import SUPPRESSED
from services.products.engine import ProductResult
from services.storage import parquet

# A spreadsheet evaluates a cell starting with these as a formula (OWASP CSV injection); NUL
# and LF are added because some spreadsheets strip them before looking at the next character.
_FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "\n", "\x00")

_ARROW_TYPES: dict[str, pa.DataType] = {
    "integer": pa.int64(),
    "float": pa.float64(),
    "boolean": pa.bool_(),
    "string": pa.string(),
    "date": pa.date32(),
    "timestamp": pa.timestamp("us"),
}


def _suppression_applied(result: ProductResult) -> bool:
    suppression = result.notes.get("suppression")
    return isinstance(suppression, dict) and bool(suppression.get("applied"))


def export_columns(result: ProductResult) -> list[str]:
    # Suppressed readers get a column naming what was withheld in each row, so that a null in
    # an export is never mistaken for a missing value.
    return [*result.columns, SUPPRESSED] if _suppression_applied(result) else list(result.columns)


def to_json_document(result: ProductResult) -> dict[str, Any]:
    return {
        "product": result.product,
        "level": result.level,
        "parameters": result.parameters,
        "generated_at": result.generated_at,
        "sources": result.sources,
        "columns": result.columns,
        "rows": result.rows,
        "notes": result.notes,
    }


# CSV


def neutralise(text: str) -> str:
    """Text a spreadsheet would run as a formula, made inert with a leading apostrophe."""
    return "'" + text if text.startswith(_FORMULA_STARTS) else text


def _csv_cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        # Numbers stay numbers (unquoted), negative ones included: they are not text.
        return repr(value) if isinstance(value, float) else str(value)
    if isinstance(value, list):
        value = ";".join(str(item) for item in value)
    text = neutralise(str(value))
    return '"' + text.replace('"', '""') + '"'


def to_csv(result: ProductResult) -> bytes:
    """RFC 4180: CRLF line ends, text cells quoted (quotes doubled), a header of column names."""
    columns = export_columns(result)
    lines = [",".join(_csv_cell(name) for name in columns)]
    for row in result.rows:
        lines.append(",".join(_csv_cell(row.get(name)) for name in columns))
    return ("\r\n".join(lines) + "\r\n").encode("utf-8")


# Parquet


def _arrow_table(result: ProductResult) -> pa.Table:
    arrays: list[pa.Array] = []
    fields: list[pa.Field] = []
    for name in result.columns:
        kind = _ARROW_TYPES.get(result.column_types.get(name, "string"), pa.string())
        values = [row.get(name) for row in result.rows]
        if kind == pa.float64():
            values = [None if v is None else float(v) for v in values]
        elif kind == pa.string():
            values = [None if v is None else str(v) for v in values]
        elif kind == pa.date32():
            values = [None if v is None else date.fromisoformat(str(v)[:10]) for v in values]
        elif kind == pa.timestamp("us"):
            kind, values = _timestamps(values)
        arrays.append(pa.array(values, type=kind))
        fields.append(pa.field(name, kind))
    if _suppression_applied(result):
        arrays.append(
            pa.array([row.get(SUPPRESSED) or [] for row in result.rows], pa.list_(pa.string()))
        )
        fields.append(pa.field(SUPPRESSED, pa.list_(pa.string())))
    # Only the product's own description: no paths, hosts or users (security-tests T49).
    metadata = {
        b"together.product": result.product.encode(),
        b"together.generated_at": result.generated_at.encode(),
        b"together.parameters": json.dumps(result.parameters, sort_keys=True).encode(),
    }
    return pa.Table.from_arrays(arrays, schema=pa.schema(fields, metadata=metadata))


def _timestamps(values: list[Any]) -> tuple[pa.DataType, list[datetime | None]]:
    """ISO timestamps as datetimes: local wall-clock time stays as it is; a column holding
    an offset is normalised to UTC and says so, since a bare instant would be misread."""
    parsed = [None if v is None else datetime.fromisoformat(str(v)) for v in values]
    if not any(v is not None and v.tzinfo is not None for v in parsed):
        return pa.timestamp("us"), parsed
    utc = [None if v is None else v.replace(tzinfo=v.tzinfo or UTC).astimezone(UTC) for v in parsed]
    return pa.timestamp("us", tz="UTC"), utc


def to_parquet(result: ProductResult) -> bytes:
    return parquet.to_bytes(_arrow_table(result))


# GeoJSON


def to_geojson(result: ProductResult) -> dict[str, Any]:
    """A FeatureCollection of H3 cells as polygons, each row's values as its properties."""
    if result.parameters.get("unit") != "h3":
        raise BadRequest("GeoJSON needs unit=h3: no LSOA boundaries are held")
    features = []
    for row in result.rows:
        cell = row.get("area")
        if not isinstance(cell, str) or not h3.is_valid_cell(cell):
            continue
        # h3 gives (lat, lng); GeoJSON wants (lng, lat), and a ring ends where it starts.
        ring = [[lng, lat] for lat, lng in h3.cell_to_boundary(cell)]
        ring.append(ring[0])
        features.append(
            {
                "type": "Feature",
                "id": cell,
                "geometry": {"type": "Polygon", "coordinates": [ring]},
                "properties": dict(row),
            }
        )
    return {
        "type": "FeatureCollection",
        "features": features,
        "properties": {
            "product": result.product,
            "parameters": result.parameters,
            "generated_at": result.generated_at,
            "sources": result.sources,
            "notes": result.notes,
        },
    }
