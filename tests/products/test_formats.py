"""Exports: JSON document, CSV (RFC 4180, formula injection neutralised), Parquet, GeoJSON."""

from __future__ import annotations

import csv
import io
import itertools
from datetime import UTC, date, datetime
from typing import Any

import h3
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from services.kit.errors import BadRequest
from services.products import formats
from services.products.engine import ProductResult


def result(
    rows: list[dict[str, Any]],
    columns: list[str],
    types: dict[str, str],
    *,
    suppressed: bool = True,
    parameters: dict[str, Any] | None = None,
) -> ProductResult:
    return ProductResult(
        product="hotspots",
        level=2,
        parameters=parameters or {"from": "2023-04-01", "to": "2024-04-01", "unit": "lsoa"},
        generated_at="2024-05-01T09:00:00Z",
        sources={"police.occurrences": 3},
        columns=columns,
        rows=rows,
        notes={"suppression": {"applied": True, "k": 5} if suppressed else {"applied": False}},
        column_types=types,
    )


HOSTILE = [
    '=HYPERLINK("http://x","y")',
    "@SUM(1+1)",
    "+cmd|' /C calc'!A0",
    "-2+3",
    "\tTAB",
    "\rCR",
    "plain, with comma",
    'quote " inside',
]


def test_csv_neutralises_formulas_and_keeps_numbers() -> None:
    rows = [
        {"area": text, "count": index, "change_pct": -12.5} for index, text in enumerate(HOSTILE)
    ]
    rows.append(
        {
            "area": "E01017001",
            "count": None,
            "change_pct": None,
            "suppressed": ["count", "change_pct"],
        }
    )
    body = formats.to_csv(
        result(
            rows,
            ["area", "count", "change_pct"],
            {"area": "string", "count": "integer", "change_pct": "float"},
        )
    )
    text = body.decode("utf-8")
    assert text.endswith("\r\n")
    lines = text.split("\r\n")
    assert lines[0] == '"area","count","change_pct","suppressed"'
    assert lines[1] == '"\'=HYPERLINK(""http://x"",""y"")",0,-12.5,'
    parsed = list(csv.reader(io.StringIO(text, newline="")))
    assert parsed[0] == ["area", "count", "change_pct", "suppressed"]
    cells = [row[0] for row in parsed[1:-1]]
    for original, cell in zip(HOSTILE, cells, strict=True):
        if original[0] in "=+-@\t\r":
            assert cell == "'" + original
        else:
            assert cell == original
    # Negative numbers are numbers, not text: written bare, never prefixed.
    assert all(",-12.5," in line for line in lines[1 : len(HOSTILE) + 1])
    assert parsed[-1] == ["E01017001", "", "", "count;change_pct"]


def test_csv_without_suppression_has_no_suppressed_column() -> None:
    body = formats.to_csv(result([{"count": 3}], ["count"], {"count": "integer"}, suppressed=False))
    assert body == b'"count"\r\n3\r\n'


def test_parquet_round_trips_with_types_and_clean_metadata() -> None:
    rows: list[dict[str, Any]] = [
        {"area": "E01017001", "csp": "Portsmouth", "count": 9, "rank": 1, "imd_decile": 1},
        {
            "area": "E01017002",
            "csp": "Portsmouth",
            "count": None,
            "rank": None,
            "imd_decile": 3,
            "suppressed": ["count", "rank"],
        },
    ]
    source = result(
        rows,
        ["area", "csp", "count", "rank", "imd_decile"],
        {
            "area": "string",
            "csp": "string",
            "count": "integer",
            "rank": "integer",
            "imd_decile": "integer",
        },
    )
    table = pq.read_table(io.BytesIO(formats.to_parquet(source)))
    assert table.column_names == ["area", "csp", "count", "rank", "imd_decile", "suppressed"]
    assert table.schema.field("count").type == pa.int64()
    assert table.to_pylist() == [
        {**rows[0], "suppressed": []},
        rows[1],
    ]
    metadata = {k.decode(): v.decode() for k, v in (table.schema.metadata or {}).items()}
    text = " ".join(metadata.values())
    assert set(metadata) <= {
        "together.product",
        "together.generated_at",
        "together.parameters",
        "ARROW:schema",
    }
    assert "tmp" not in text and "var" not in text
    # An all-null column keeps its type.
    empty = result([{"count": None, "suppressed": ["count"]}], ["count"], {"count": "integer"})
    assert (
        pq.read_table(io.BytesIO(formats.to_parquet(empty))).schema.field("count").type
        == pa.int64()
    )


def test_parquet_dates_and_timestamps_are_typed() -> None:
    """Dates are Arrow date32 and timestamps timestamps, not the JSON answer's text."""
    rows: list[dict[str, Any]] = [
        {"day": "2024-03-31", "at": "2024-03-31T01:30:00", "utc": "2024-03-31T01:30:00+01:00"},
        {"day": None, "at": None, "utc": None},
    ]
    types = {"day": "date", "at": "timestamp", "utc": "timestamp"}
    source = result(rows, ["day", "at", "utc"], types, suppressed=False)
    table = pq.read_table(io.BytesIO(formats.to_parquet(source)))
    assert table.schema.field("day").type == pa.date32()
    assert table.schema.field("at").type == pa.timestamp("us")
    # A timestamp with an offset becomes the same instant in UTC, and says it is UTC.
    assert table.schema.field("utc").type == pa.timestamp("us", tz="UTC")
    got = table.to_pylist()
    assert got[0]["day"] == date(2024, 3, 31)
    assert got[0]["at"] == datetime(2024, 3, 31, 1, 30)
    assert got[0]["utc"] == datetime(2024, 3, 31, 0, 30, tzinfo=UTC)
    assert got[1] == {"day": None, "at": None, "utc": None}
    # The JSON answer keeps ISO text.
    assert formats.to_json_document(source)["rows"][0]["day"] == "2024-03-31"


def test_json_document_shape() -> None:
    document = formats.to_json_document(result([{"count": 1}], ["count"], {"count": "integer"}))
    assert list(document) == [
        "product",
        "level",
        "parameters",
        "generated_at",
        "sources",
        "columns",
        "rows",
        "notes",
    ]


def test_geojson_cells_are_closed_polygons() -> None:
    cells = [h3.latlng_to_cell(50.8, -1.08, 8), h3.latlng_to_cell(50.91, -1.40, 8)]
    rows = [
        {"area": cells[0], "csp": "Portsmouth", "count": 7, "rank": 1},
        {
            "area": cells[1],
            "csp": "Southampton",
            "count": None,
            "rank": None,
            "suppressed": ["count", "rank"],
        },
    ]
    source = result(
        rows,
        ["area", "csp", "count", "rank"],
        {"area": "string", "csp": "string", "count": "integer", "rank": "integer"},
        parameters={"from": "2023-04-01", "to": "2024-04-01", "unit": "h3", "resolution": 8},
    )
    document = formats.to_geojson(source)
    assert document["type"] == "FeatureCollection"
    assert len(document["features"]) == 2
    for feature, row in zip(document["features"], rows, strict=True):
        assert feature["type"] == "Feature"
        assert feature["properties"] == row
        geometry = feature["geometry"]
        assert geometry["type"] == "Polygon"
        ring = geometry["coordinates"][0]
        assert len(ring) == 7 and ring[0] == ring[-1]
        for longitude, latitude in ring:
            assert -2 < longitude < 0 and 50 < latitude < 52  # (lng, lat) order
        # Exterior rings run counter-clockwise (RFC 7946): positive signed area.
        area = sum(x1 * y2 - x2 * y1 for (x1, y1), (x2, y2) in itertools.pairwise(ring))
        assert area > 0
        centre_lat, centre_lng = h3.cell_to_latlng(row["area"])
        assert min(p[1] for p in ring) < centre_lat < max(p[1] for p in ring)
        assert min(p[0] for p in ring) < centre_lng < max(p[0] for p in ring)


def test_geojson_needs_h3() -> None:
    with pytest.raises(BadRequest, match="GeoJSON needs unit=h3: no LSOA boundaries are held"):
        formats.to_geojson(result([], ["area", "count"], {}))
