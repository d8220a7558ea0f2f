"""Request parameters: strict parsing, clear refusals, never a silently ignored filter."""

from __future__ import annotations

import json
from datetime import date
from functools import cache
from pathlib import Path

import pytest

from services.contracts.loader import load_contracts
from services.kit.errors import BadRequest
from services.products.config import load_partnership
from services.products.definition import ProductDefinition
from services.products.loading import load_catalogue
from services.products.parameters import normalise_parameters, parse_parameters

ROOT = Path(__file__).resolve().parents[2]


@cache
def catalogue() -> dict[str, ProductDefinition]:
    contracts = load_contracts(ROOT / "contracts")
    partnership = load_partnership(ROOT / "config" / "partnership.yaml", contracts)
    return load_catalogue(ROOT / "services" / "products" / "definitions", contracts, partnership)


def parse(product: str, pairs: list[tuple[str, str]]) -> dict[str, object]:
    return parse_parameters(catalogue()[product], pairs)


PERIOD = [("from", "2023-04-01"), ("to", "2024-04-01")]


# The products the partnership's published tables are reproduced by; others may be added with a
# YAML file alone.
PUBLISHED = {
    "habitual-knife-carriers": 3,
    "person-profile": 3,
    "repeat-suspects": 3,
    "hkc-summary": 1,
    "hotspots": 2,
    "sv-counts": 1,
    "sv-flags": 1,
    "sv-rates": 1,
}


def test_the_catalogue_holds_every_definition_file_and_the_published_products() -> None:
    products = catalogue()
    files = sorted((ROOT / "services" / "products" / "definitions").glob("*.yaml"))
    assert len(products) == len(files)
    assert {p.id: p.level for p in products.values() if p.id in PUBLISHED} == PUBLISHED
    assert all(p.level in (1, 2, 3) for p in products.values())
    for product in products.values():
        described = [parameter.describe() for parameter in product.parameters]
        # Listings show choices by name, never the SQL behind them.
        text = json.dumps(described)
        assert "committed_at)" not in text and "SELECT" not in text
    by = next(p for p in products["sv-counts"].parameters if p.name == "by").describe()
    assert by["choices"] == [
        "csp",
        "hmic_group",
        "weekday",
        "hour",
        "month",
        "financial_year",
        "victim_gender",
        "victim_offender_relationship",
    ]
    assert products["hotspots"].sources == [
        "police.occurrences",
        "fire.deliberate_fires",
        "health.ed_assaults",
        "la.imd",
    ]


def test_valid_parameters_are_typed_and_defaulted() -> None:
    params = parse(
        "sv-counts",
        [
            *PERIOD,
            ("by", "weekday, hour"),
            ("csp", "portsmouth"),
            ("csp", "Isle of Wight,Gosport"),
        ],
    )
    assert params["from"] == date(2023, 4, 1)
    assert params["by"] == ["weekday", "hour"]
    assert params["csp"] == ["Portsmouth", "Isle of Wight", "Gosport"]
    assert params["compare_from"] is None
    assert parse("sv-counts", [*PERIOD, ("by", "")])["by"] == []
    hotspots = parse("hotspots", PERIOD)
    assert hotspots["unit"] == "lsoa" and hotspots["top"] == 20 and hotspots["layer"] == "sv"
    normalised = normalise_parameters(catalogue()["hotspots"], hotspots)
    assert normalised["from"] == "2023-04-01"
    assert normalised["resolution"] is None  # does not apply to LSOAs
    h3 = parse("hotspots", [*PERIOD, ("unit", "h3"), ("resolution", "10"), ("top", "500")])
    assert h3["resolution"] == 10 and h3["top"] == 500
    assert isinstance(parse("hkc-summary", [])["as_of"], date)


@pytest.mark.parametrize(
    ("product", "pairs", "message"),
    [
        ("sv-counts", [*PERIOD, ("form", "2023-01-01")], "unknown parameter 'form'"),
        ("sv-counts", [*PERIOD, ("from", "2023-05-01")], "from may be given only once"),
        ("sv-counts", [("to", "2024-04-01")], "from is required"),
        ("sv-counts", [("from", "2023-4-1"), ("to", "2024-04-01")], "YYYY-MM-DD"),
        ("sv-counts", [("from", "2023-02-30"), ("to", "2024-04-01")], "not a real date"),
        ("sv-counts", [("from", "01/04/2023"), ("to", "2024-04-01")], "YYYY-MM-DD"),
        ("sv-counts", [("from", "2024-04-01"), ("to", "2024-04-01")], "from must be before to"),
        ("sv-counts", [("from", "2024-04-02"), ("to", "2024-04-01")], "from must be before to"),
        ("sv-counts", [*PERIOD, ("compare_from", "2022-04-01")], "compare_to is missing"),
        ("sv-counts", [*PERIOD, ("compare_to", "2023-04-01")], "compare_from is missing"),
        (
            "sv-counts",
            [*PERIOD, ("compare_from", "2023-04-01"), ("compare_to", "2022-04-01")],
            "compare_from must be before compare_to",
        ),
        ("sv-counts", [*PERIOD, ("by", "csp,postcode")], "'postcode' is not one of"),
        ("sv-counts", [*PERIOD, ("by", "csp,csp")], "lists 'csp' twice"),
        ("sv-counts", [*PERIOD, ("csp", "Hampshire")], "'Hampshire' is not a CSP area"),
        (
            "sv-counts",
            [
                *PERIOD,
                ("by", "month"),
                ("compare_from", "2022-04-01"),
                ("compare_to", "2023-04-01"),
            ],
            "by=month cannot be compared",
        ),
        ("sv-flags", [*PERIOD, ("by", "csp")], "unknown parameter 'by'"),
        ("sv-rates", [*PERIOD, ("by", "csp")], "'csp' is not one of: hmic_group"),
        ("sv-rates", [*PERIOD, ("csp", "Gosport")], "unknown parameter 'csp'"),
        ("hkc-summary", [("as_of", "2024-13-01")], "not a real date"),
        ("hkc-summary", [("as_of", "")], "as_of is empty"),
        ("hotspots", [*PERIOD, ("top", "ten")], "top must be a whole number"),
        ("hotspots", [*PERIOD, ("top", "0")], "top must be at least 1"),
        ("hotspots", [*PERIOD, ("top", "501")], "top must be at most 500"),
        ("hotspots", [*PERIOD, ("top", "0x10")], "whole number"),
        ("hotspots", [*PERIOD, ("unit", "postcode")], "unit must be one of: lsoa, h3"),
        ("hotspots", [*PERIOD, ("resolution", "9")], "resolution applies only with unit=h3"),
        ("hotspots", [*PERIOD, ("unit", "h3"), ("resolution", "11")], "at most 10"),
        ("hotspots", [*PERIOD, ("unit", "h3"), ("resolution", "4")], "at least 5"),
        ("hotspots", [*PERIOD, ("unit", "h3"), ("layer", "ed")], "use unit=lsoa for layer=ed"),
        ("hotspots", [*PERIOD, ("layer", "crime")], "layer must be one of: sv, fire, ed"),
        ("hotspots", [*PERIOD, ("unit", "h3"), ("unit", "h3")], "unit may be given only once"),
    ],
)
def test_bad_parameters_are_refused_clearly(
    product: str, pairs: list[tuple[str, str]], message: str
) -> None:
    with pytest.raises(BadRequest) as caught:
        parse(product, pairs)
    assert message in caught.value.detail
    assert caught.value.status == 400


def test_too_many_or_too_long_values() -> None:
    with pytest.raises(BadRequest, match="too many"):
        parse("sv-counts", [*PERIOD] + [("csp", "Gosport")] * 200)
    with pytest.raises(BadRequest, match="too long"):
        parse("sv-counts", [*PERIOD, ("csp", "x" * 1000)])
