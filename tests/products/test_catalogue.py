"""Loading product definitions and the partnership configuration: what is refused, and why."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import pytest
import yaml

from services.contracts.loader import load_contracts
from services.contracts.model import Contract
from services.products.config import (
    PartnershipConfig,
    PartnershipConfigError,
    load_partnership,
    parse_partnership,
)
from services.products.definition import ProductConfigError
from services.products.loading import load_catalogue

ROOT = Path(__file__).resolve().parents[2]
DEFINITIONS = ROOT / "services" / "products" / "definitions"


@pytest.fixture(scope="module")
def contracts() -> dict[str, Contract]:
    return load_contracts(ROOT / "contracts")


@pytest.fixture(scope="module")
def partnership(contracts: dict[str, Contract]) -> PartnershipConfig:
    return load_partnership(ROOT / "config" / "partnership.yaml", contracts)


def minimal(**changes: Any) -> dict[str, Any]:
    definition: dict[str, Any] = {
        "id": "probe",
        "level": 1,
        "title": "Probe",
        "description": "A test product.",
        "sources": {"police.occurrences": ["occurrence_ref", "committed_at", "csp"]},
        "parameters": {
            "from": {"type": "date", "required": True, "description": "From."},
            "to": {"type": "date", "required": True, "description": "To."},
        },
        "period": ["from", "to"],
        "output": {
            "columns": {
                "csp": {"key": True, "description": "CSP", "exposes": ["police.occurrences.csp"]},
                "count": {"count": True, "description": "Offences"},
            }
        },
        "sql": (
            "SELECT csp, count(DISTINCT occurrence_ref) AS count FROM serious_violence "
            "WHERE committed_at >= $from AND committed_at < $to GROUP BY csp"
        ),
    }
    definition.update(changes)
    return definition


def load_one(
    tmp_path: Path,
    definition: dict[str, Any],
    contracts: dict[str, Contract],
    partnership: PartnershipConfig,
    name: str | None = None,
) -> Any:
    folder = tmp_path / "definitions"
    folder.mkdir(exist_ok=True)
    (folder / f"{name or definition['id']}.yaml").write_text(
        yaml.safe_dump(definition, sort_keys=False)
    )
    return load_catalogue(folder, contracts, partnership)


def test_the_shipped_definitions_load(
    contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    catalogue = load_catalogue(DEFINITIONS, contracts, partnership)
    assert catalogue["hkc-summary"].spec.computed_from == {
        "police.occurrences": ["suspect_nominal_ref", "suspect_dob"]
    }


def test_a_minimal_definition_loads(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    catalogue = load_one(tmp_path, minimal(), contracts, partnership)
    assert list(catalogue) == ["probe"]
    assert catalogue["probe"].sources == ["police.occurrences"]


def test_exposing_a_stricter_field_refuses_to_load(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    # A Level 1 product showing the LSOA (classified level2).
    definition = minimal(
        sources={"police.occurrences": ["occurrence_ref", "committed_at", "lsoa_code"]},
        output={
            "columns": {
                "lsoa": {
                    "key": True,
                    "description": "LSOA",
                    "exposes": ["police.occurrences.lsoa_code"],
                },
                "count": {"count": True, "description": "Offences"},
            }
        },
        sql="SELECT lsoa_code AS lsoa, count(*) AS count FROM serious_violence GROUP BY 1",
    )
    with pytest.raises(ProductConfigError) as caught:
        load_one(tmp_path, definition, contracts, partnership)
    message = str(caught.value)
    assert "'probe'" in message and "police.occurrences.lsoa_code" in message
    assert "level2" in message


def test_computed_from_allows_use_but_never_output(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    sources = {"police.occurrences": ["occurrence_ref", "committed_at", "csp", "suspect_dob"]}
    # Used (ages need it) and declared: loads.
    uses = minimal(
        sources=sources,
        computed_from={"police.occurrences": ["suspect_dob"]},
        sql=(
            "SELECT csp, count(DISTINCT occurrence_ref) FILTER (WHERE suspect_dob_enc IS NOT NULL)"
            " AS count FROM serious_violence GROUP BY csp"
        ),
    )
    assert "probe" in load_one(tmp_path, uses, contracts, partnership)
    # Used without computed_from: refused, naming the field.
    undeclared = minimal(sources=sources)
    with pytest.raises(
        ProductConfigError, match=r"police\.occurrences\.suspect_dob.*computed_from"
    ):
        load_one(tmp_path, undeclared, contracts, partnership)
    # Declared but shown: refused.
    shown = minimal(
        sources=sources,
        computed_from={"police.occurrences": ["suspect_dob"]},
        output={
            "columns": {
                "dob": {
                    "key": True,
                    "description": "DOB",
                    "exposes": ["police.occurrences.suspect_dob"],
                },
                "count": {"count": True, "description": "Offences"},
            }
        },
    )
    with pytest.raises(ProductConfigError, match=r"'probe'.*suspect_dob"):
        load_one(tmp_path, shown, contracts, partnership)


def test_sql_can_only_read_declared_fields(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    # The view holds only the declared fields, so reading another one fails at load.
    sneaky = minimal(
        sql=(
            "SELECT suspect_dob_enc::VARCHAR AS csp, count(*) AS count FROM serious_violence "
            "GROUP BY 1"
        )
    )
    with pytest.raises(ProductConfigError, match="does not run"):
        load_one(tmp_path, sneaky, contracts, partnership)


@pytest.mark.parametrize(
    ("changes", "message"),
    [
        ({"sql": "SELECT csp, 1 AS count, 2 AS extra FROM csp_areas"}, "returns csp, count, extra"),
        ({"sql": "SELECT csp FROM csp_areas"}, "expected csp, count"),
        ({"sql": "SELECT csp, count(*) AS count FROM nowhere GROUP BY csp"}, "does not run"),
        ({"sql": "SELECT {where} csp, 1 AS count FROM csp_areas"}, "{where}"),
        ({"sql": "SELECT csp, $limit AS count FROM csp_areas"}, "$limit"),
        ({"sources": {"police.occurrences": ["occurrence_ref", "postcode"]}}, "postcode"),
        ({"sources": {"police.arrests": ["arrest_ref"]}}, "police.arrests"),
        ({"level": 3}, "Level 3 product declares `people`"),
        ({"level": 4}, "level"),
        ({"colour": "red"}, "colour"),
        ({"period": ["from", "until"]}, "until"),
        (
            {
                "output": {
                    "columns": {
                        "csp": {"key": True, "description": "CSP"},
                        "pct": {"derive": {"ratio": ["count", "total"]}, "description": "%"},
                        "count": {"count": True, "description": "n"},
                    }
                }
            },
            "derives from 'total'",
        ),
        ({"output": {"columns": {"csp": {"key": True, "description": "CSP"}}}}, "count column"),
    ],
)
def test_broken_definitions_refuse_to_load(
    tmp_path: Path,
    contracts: dict[str, Contract],
    partnership: PartnershipConfig,
    changes: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(ProductConfigError) as caught:
        load_one(tmp_path, minimal(**changes), contracts, partnership)
    assert message in str(caught.value)
    assert "probe" in str(caught.value)


def test_file_name_must_match_the_id(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    with pytest.raises(ProductConfigError, match=r"probe\.yaml"):
        load_one(tmp_path, minimal(), contracts, partnership, name="other")


def test_duplicate_yaml_keys_are_refused(
    tmp_path: Path, contracts: dict[str, Contract], partnership: PartnershipConfig
) -> None:
    folder = tmp_path / "definitions"
    shutil.copytree(DEFINITIONS, folder)
    path = folder / "sv-counts.yaml"
    path.write_text(path.read_text() + "\nlevel: 2\n")
    with pytest.raises(ProductConfigError, match="given twice"):
        load_catalogue(folder, contracts, partnership)


# The partnership configuration


def document() -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "config" / "partnership.yaml").read_text())
    return loaded


def test_the_definition_compiles_to_sql(partnership: PartnershipConfig) -> None:
    where = partnership.serious_violence_where
    assert where.sql == (
        "((\"msv\" = true) OR (\"hmic_group\" IN ('3a', '3b')) OR (\"hmic_group\" IN ('7')) "
        "OR (\"hmic_group\" IN ('8') AND \"ho_offence_code\" IN ('64', '65')) "
        'OR ("hmic_group" IN (\'1b\') AND "bladed_implement" = true))'
    )
    assert where.fields == ("msv", "hmic_group", "ho_offence_code", "bladed_implement")
    assert partnership.hkc_qualifying_where.sql == (
        '(("hmic_group" IN (\'7\')) OR ("bladed_implement" = true))'
    )
    assert partnership.hkc_exclude_where is not None
    assert partnership.hkc_exclude_where.sql == '(("domestic" = true))'
    assert partnership.k == 8


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ({"postcode": ["SO14"]}, "'postcode' is not in the contract"),
        ({"hmic_group": ["99"]}, "'99' is not an allowed value"),
        ({"msv": "yes"}, "boolean field"),
        ({"hmic_group": True}, "not a boolean field"),
        ({"suspect_nominal_ref": ["X1"]}, "protected at rest"),
        ({"ho_offence_code": ["8n'; DROP"]}, "does not match the pattern"),
        ({"latitude": [50]}, "only text, integer and boolean"),
        ({"hmic_group": []}, "lists no values"),
        ({"ho_offence_code": ["64/1"]}, "write '64'"),
    ],
)
def test_bad_clauses_are_refused(
    contracts: dict[str, Contract], where: dict[str, Any], message: str
) -> None:
    data = document()
    data["serious_violence"]["any_of"].append({"name": "probe", "where": where})
    with pytest.raises(PartnershipConfigError) as caught:
        parse_partnership(data, contracts)
    assert message in str(caught.value)
    assert "serious_violence.any_of[5]" in str(caught.value)


def test_quotes_in_values_cannot_break_out(contracts: dict[str, Contract]) -> None:
    # Values are checked against the contract first; the quoting is a second line of defence.
    from services.products.config import sql_string

    assert sql_string("O'Brien") == "'O''Brien'"


def test_unknown_keys_and_inconsistent_settings_are_refused(
    contracts: dict[str, Contract],
) -> None:
    data = document()
    data["serious_violence"]["any_off"] = []
    with pytest.raises(PartnershipConfigError, match="any_off"):
        parse_partnership(data, contracts)
    data = document()
    data["habitual_knife_carriers"]["recent_months"] = 36
    with pytest.raises(PartnershipConfigError, match="recent_months"):
        parse_partnership(data, contracts)
    data = document()
    data["disclosure_control"]["products"] = {"hkc-summary": {"k": 10}}
    assert parse_partnership(data, contracts).k_for("hkc-summary") == 10


def test_product_threshold_from_the_partnership(
    tmp_path: Path, contracts: dict[str, Contract]
) -> None:
    data = document()
    data["disclosure_control"]["products"] = {"probe": {"k": 11}}
    partnership = parse_partnership(data, contracts)
    catalogue = load_one(tmp_path, minimal(), contracts, partnership)
    assert catalogue["probe"].k == 11
