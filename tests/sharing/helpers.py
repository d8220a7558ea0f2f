"""Published tables for tests, and the comparison of a table's rows with the JSON API's."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import SecretStr

from services.kit.settings import Environment, Settings

# Fixed dates inside the test data (2023), so that tables have rows.
PARAMS: dict[str, dict[str, str]] = {
    "counts_by_csp": {"from": "2023-01-01", "to": "2024-01-01", "by": "csp"},
    "counts_by_csp_month": {"from": "2023-01-01", "to": "2024-01-01", "by": "csp,month"},
    "flags": {"from": "2023-01-01", "to": "2024-01-01"},
    "hotspots_lsoa": {"from": "2023-01-01", "to": "2024-01-01", "unit": "lsoa", "top": "50"},
}
PRODUCT = {
    "counts_by_csp": "sv-counts",
    "counts_by_csp_month": "sv-counts",
    "flags": "sv-flags",
    "hotspots_lsoa": "hotspots",
}
SHARES = """
shares:
  strategic:
    description: Level 1
    schemas:
      violence:
        tables:
          counts_by_csp:
            product: sv-counts
            parameters: {from: "2023-01-01", to: "2024-01-01", by: csp}
          counts_by_csp_month:
            product: sv-counts
            parameters: {from: "2023-01-01", to: "2024-01-01", by: "csp,month"}
          flags:
            product: sv-flags
            parameters: {from: "2023-01-01", to: "2024-01-01"}
  local:
    description: Level 2
    schemas:
      hotspots:
        tables:
          hotspots_lsoa:
            product: hotspots
            parameters: {from: "2023-01-01", to: "2024-01-01", unit: lsoa, top: 50}
          hotspots_havant:
            product: hotspots
            parameters: {from: "2023-01-01", to: "2024-01-01", csp: Havant}
"""
LEVEL1_TABLES = {"strategic.violence.counts_by_csp", "strategic.violence.counts_by_csp_month",
                 "strategic.violence.flags"}  # fmt: skip
# The Havant table is for Level 2 readers of Havant: the tests' Level 2 readers are not.
LEVEL2_TABLES = {"local.hotspots.hotspots_lsoa"}


def sharing_settings(
    data_dir: Path, database_url: str, key_file: Path, audit_key_file: Path
) -> Settings:
    """The test settings with the shares above, written beside the data folder."""
    shares = data_dir.parent / "sharing.yaml"
    shares.write_text(SHARES)
    return Settings(
        env=Environment.test,
        data_dir=data_dir,
        database_url=SecretStr(database_url),
        key_file=key_file,
        audit_key_file=audit_key_file,
        sharing_file=shares,
        sharing_refresh_seconds=0,
    )


def api_rows(document: dict[str, Any]) -> list[dict[str, Any]]:
    """The JSON API's rows as a table file holds them: every column, and what was withheld."""
    suppression = document["notes"].get("suppression", {})
    rows = []
    for row in document["rows"]:
        shaped = {name: row.get(name) for name in document["columns"]}
        if suppression.get("applied"):
            shaped["suppressed"] = row.get("suppressed") or []
        rows.append(shaped)
    return rows
