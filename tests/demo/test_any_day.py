"""The demo answers on whatever day it is loaded: every product's default and the README's
example parameters find data, and every published table has rows.

The products' relative defaults ("today") and the published tables' relative dates read the
clock; each test fixes it at the anchor the demo is generated for.
"""

from __future__ import annotations

import json
import re
from datetime import UTC, date, datetime, time
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from services.demo.load import credentials_path, load_demo
from services.kit.clock import london_today
from services.platform import Platform
from services.sharing import materialise
from tests.fixtures.app import ClientCredentials, TokenFor

README = Path(__file__).resolve().parents[2] / "README.md"

# Small enough for a load in a few seconds, large enough for the Level 3 lists.
ROWS = {
    "police.occurrences": 6_000,
    "fire.deliberate_fires": 600,
    "health.ed_assaults": 500,
    "education.exclusions": 300,
    "youth_justice.first_time_entrants": 100,
}

ANCHORS = [
    pytest.param(date(2027, 1, 1), id="1-january"),
    pytest.param(date(2028, 2, 29), id="29-february-leap-year"),
    pytest.param(date(2026, 3, 31), id="31-march"),
    pytest.param(date(2026, 4, 1), id="1-april"),
    pytest.param(date(2025, 9, 30), id="30-september"),
]

LEVEL3 = {"X-Purpose": "safeguarding", "X-Case-Reference": "SG-2024-0042"}


def readme_period(today: date) -> tuple[date, date]:
    """The README's example period: the last 12 whole months (its FROM and TO lines)."""
    return today.replace(year=today.year - 1, day=1), today.replace(day=1)


def fix_today(monkeypatch: pytest.MonkeyPatch, day: date) -> None:
    noon = datetime.combine(day, time(12), tzinfo=UTC)
    monkeypatch.setattr("services.products.parameters.utcnow", lambda: noon)
    monkeypatch.setattr("services.sharing.materialise.today", lambda: day)
    # The contracts' "not after today" rule reads the same day as the products.
    monkeypatch.setattr("services.contracts.model.utcnow", lambda: noon)


# The demo clients the README's consumer examples use.
READERS = ("demo-l1-analyst", "demo-l1-reader", "demo-l2-reader", "demo-l3-practitioner")


def tokens(platform: Platform, token_for: TokenFor) -> dict[str, str]:
    clients = json.loads(credentials_path(platform.settings.data_dir).read_text())
    return {
        client["name"]: token_for(
            ClientCredentials(client["client_id"], client["client_secret"], client["organisation"])
        )
        for client in clients
        if client["name"] in READERS
    }


def rows_of(api: TestClient, token: str, query: str, **headers: str) -> list[dict[str, Any]]:
    response = api.get(
        f"/v1/products/{query}", headers={"Authorization": f"Bearer {token}", **headers}
    )
    assert response.status_code == 200, (query, response.text)
    rows: list[dict[str, Any]] = response.json()["rows"]
    return rows


def check_answers(api: TestClient, platform: Platform, token_for: TokenFor, today: date) -> None:
    found = tokens(platform, token_for)
    start, end = readme_period(today)
    period = f"from={start}&to={end}"

    counts = rows_of(api, found["demo-l1-analyst"], f"sv-counts?{period}&by=csp")
    assert sum(row["count"] for row in counts) > 0
    heat = rows_of(api, found["demo-l1-analyst"], f"sv-counts?{period}&by=weekday,hour")
    assert any(row["count"] for row in heat)
    # A suppressed reader gets rounded counts where cells are large enough to show.
    days = rows_of(api, found["demo-l1-reader"], f"sv-counts?{period}&by=weekday")
    assert any(row["count"] for row in days)
    assert all(row["count"] is None or row["count"] % 5 == 0 for row in days)
    summary = rows_of(api, found["demo-l1-analyst"], "hkc-summary")
    assert {row["measure"]: row["value"] for row in summary}["total"] > 0

    hotspots = rows_of(api, found["demo-l2-reader"], f"hotspots?{period}")
    assert hotspots

    practitioner = found["demo-l3-practitioner"]
    assert rows_of(api, practitioner, "repeat-suspects", **LEVEL3)
    assert rows_of(api, practitioner, "habitual-knife-carriers", **LEVEL3)

    deps = platform.sharing
    for table in deps.config.tables:
        for suppressed in (True, False):
            snapshot = materialise.current_snapshot(
                deps.products, deps.store, table, materialise.Variant(suppressed, None)
            )
            assert snapshot.row_count > 0, (table.key, snapshot.parameters)


@pytest.mark.parametrize("anchor", ANCHORS)
def test_demo_answers_on_the_day_it_is_loaded(
    api: TestClient,
    platform: Platform,
    token_for: TokenFor,
    monkeypatch: pytest.MonkeyPatch,
    anchor: date,
) -> None:
    fix_today(monkeypatch, anchor)
    load_demo(
        platform.ingestion,
        platform.admin,
        platform.settings.data_dir,
        echo=lambda _: None,
        as_of=anchor,
        rows=ROWS,
    )
    check_answers(api, platform, token_for, anchor)


def test_demo_loaded_today_answers_with_the_real_clock(
    api: TestClient, platform: Platform, token_for: TokenFor
) -> None:
    # No anchor given: the demo is made for today, and the products read the real clock.
    load_demo(
        platform.ingestion,
        platform.admin,
        platform.settings.data_dir,
        echo=lambda _: None,
        rows=ROWS,
    )
    check_answers(api, platform, token_for, london_today())


def test_readme_examples_use_no_fixed_dates() -> None:
    text = README.read_text()
    queries = re.findall(r"/v1/products/[^\"\s]+", text)
    assert queries
    for query in queries:
        assert not re.search(r"\d{4}-\d{2}-\d{2}", query), query
    assert "from=$FROM&to=$TO" in text


def test_an_aged_demo_loaded_again_answers_today(
    api: TestClient,
    platform: Platform,
    token_for: TokenFor,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # What `together demo load --force` does a year and a half after the first load.
    data_dir = platform.settings.data_dir
    first, later = date(2025, 3, 31), date(2026, 10, 15)
    load_demo(
        platform.ingestion, platform.admin, data_dir, echo=lambda _: None, as_of=first, rows=ROWS
    )
    fix_today(monkeypatch, later)
    load_demo(
        platform.ingestion, platform.admin, data_dir, echo=lambda _: None, as_of=later, rows=ROWS
    )
    check_answers(api, platform, token_for, later)
