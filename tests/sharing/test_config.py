"""The sharing file: relative dates, and everything refused before the platform starts."""

from __future__ import annotations

import dataclasses
from datetime import date
from pathlib import Path

import pytest

from services.contracts.loader import load_contracts
from services.kit.settings import Settings
from services.products.config import load_partnership
from services.products.definition import ProductDefinition
from services.products.loading import load_catalogue
from services.sharing.config import SharingConfigError, load_sharing, resolve_date
from services.sharing.urls import FileGrant, UrlRefused, derive_key, open_token, seal

TODAY = date(2026, 3, 31)


@pytest.fixture(scope="module")
def catalogue() -> dict[str, ProductDefinition]:
    settings = Settings()
    contracts = load_contracts(settings.contracts_dir)
    partnership = load_partnership(settings.partnership_file, contracts)
    return load_catalogue(settings.products_dir, contracts, partnership)


@pytest.mark.parametrize(
    ("expression", "expected"),
    [
        ("2024-02-29", date(2024, 2, 29)),
        ("today", TODAY),
        ("today + 1 day", date(2026, 4, 1)),
        ("today - 1 month", date(2026, 2, 28)),  # no 31 February: the month's last day
        ("month_start", date(2026, 3, 1)),
        ("month_start - 36 months", date(2023, 3, 1)),
        ("month_start+2months", date(2026, 5, 1)),
        ("year_start", date(2026, 1, 1)),
        ("year_start - 1 year", date(2025, 1, 1)),
        ("financial_year_start", date(2025, 4, 1)),  # 31 March is still the year begun 2025
        ("financial_year_start - 3 years", date(2022, 4, 1)),
    ],
)
def test_relative_dates(expression: str, expected: date) -> None:
    assert resolve_date(expression, TODAY) == expected


def test_financial_year_turns_on_1_april() -> None:
    assert resolve_date("financial_year_start", date(2026, 4, 1)) == date(2026, 4, 1)


@pytest.mark.parametrize("expression", ["yesterday", "today - 1 week", "2024-13-01", "today -"])
def test_bad_dates_are_refused(expression: str) -> None:
    with pytest.raises(ValueError):
        resolve_date(expression, TODAY)


def test_the_partnership_file_loads(catalogue: dict[str, ProductDefinition]) -> None:
    config = load_sharing(Settings().sharing_file, catalogue, TODAY)
    keys = {t.key for t in config.tables}
    assert "vrp_strategic.serious_violence.sv_counts_by_csp_month" in keys
    assert {t.level for t in config.tables} == {1, 2}
    # Every day of a year, including 1 January and 1 April, gives valid periods.
    for day in (date(2026, 1, 1), date(2026, 4, 1), date(2024, 2, 29), date(2026, 12, 31)):
        load_sharing(Settings().sharing_file, catalogue, day)


def _table(product: str = "sv-counts", **parameters: str) -> str:
    lines = [f"              {k}: {v!r}" for k, v in parameters.items()]
    return "\n".join(
        [
            "shares:",
            "  s:",
            "    schemas:",
            "      d:",
            "        tables:",
            "          t:",
            f"            product: {product}",
            "            parameters:",
            *lines,
        ]
    )


GOOD = {"from": "2023-01-01", "to": "2024-01-01"}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        (_table("nothing", **GOOD), "no product 'nothing'"),
        (_table(**GOOD, by="street"), "street"),
        (_table(**{"from": "2024-01-01", "to": "2023-01-01"}), "from"),
        (_table(**GOOD, format="csv"), "format"),
        (_table(**{"from": "last tuesday", "to": "2024-01-01"}), "last tuesday"),
        (_table(**GOOD).replace("  s:", "  My Share:"), "share name"),
        (_table(**GOOD).replace("      d:", "      a.b:"), "schema name"),
        (_table(**GOOD).replace("          t:", "          t/1:"), "table name"),
        (_table(**GOOD).replace("    schemas:", "    shemas:"), "schemas: Field required"),
        (_table(**GOOD) + "\n  s:\n    schemas: {}", "given twice"),
    ],
)
def test_refused_at_load(
    text: str, message: str, tmp_path: Path, catalogue: dict[str, ProductDefinition]
) -> None:
    path = tmp_path / "sharing.yaml"
    path.write_text(text)
    with pytest.raises(SharingConfigError, match=message):
        load_sharing(path, catalogue, TODAY)


def test_level3_is_never_published(tmp_path: Path, catalogue: dict[str, ProductDefinition]) -> None:
    path = tmp_path / "sharing.yaml"
    path.write_text(_table("people", **GOOD))
    people = dataclasses.replace(catalogue["sv-counts"], id="people", level=3)
    with pytest.raises(SharingConfigError, match="Level 3"):
        load_sharing(path, {**catalogue, "people": people}, TODAY)
    path.write_text(_table("sv-counts", **GOOD))
    assert len(load_sharing(path, catalogue, TODAY).tables) == 1


def test_file_url_tokens() -> None:
    key = derive_key(b"h" * 32)
    grant = FileGrant("3f1c2a9e-0000-4000-8000-000000000001", "tgc_0123456789abcdef01234567", 2000)
    token = seal(key, grant)
    assert open_token(key, token, now=1999) == grant
    assert seal(key, grant) != token  # a fresh nonce every time
    for secret in (grant.file_id, grant.recipient, "3f1c2a9e", "tgc_"):
        assert secret not in token
    with pytest.raises(UrlRefused, match="url_expired"):
        open_token(key, token, now=2001)
    for index in range(len(token)):
        changed = token[:index] + ("A" if token[index] != "A" else "B") + token[index + 1 :]
        with pytest.raises(UrlRefused, match=r"url_tampered|url_malformed"):
            open_token(key, changed, now=1999)
    with pytest.raises(UrlRefused, match="url_tampered"):
        open_token(derive_key(b"x" * 32), token, now=1999)
    with pytest.raises(UrlRefused, match="url_malformed"):
        open_token(key, "x" * 1000, now=1999)
