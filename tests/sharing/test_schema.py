"""The schema a Delta Sharing client is given says what the published file holds."""

from __future__ import annotations

import json

from services.products import formats
from services.products.engine import ProductResult
from services.sharing import protocol


def test_dates_and_timestamps_are_typed_in_the_schema_string() -> None:
    result = ProductResult(
        product="sv-counts",
        level=1,
        parameters={},
        generated_at="2024-05-01T09:00:00Z",
        sources={"police.occurrences": 1},
        columns=["day", "at", "count"],
        rows=[{"day": "2024-03-31", "at": "2024-03-31T01:30:00", "count": 7}],
        notes={"suppression": {"applied": False}},
        column_types={"day": "date", "at": "timestamp", "count": "integer"},
    )
    schema = json.loads(protocol.schema_string(formats.to_parquet(result)))
    assert {f["name"]: f["type"] for f in schema["fields"]} == {
        "day": "date",
        "at": "timestamp",
        "count": "long",
    }
