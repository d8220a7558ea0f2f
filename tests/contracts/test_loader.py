"""Loading contracts: the repository's own, and clear messages for broken ones."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from services.contracts.loader import (
    ContractError,
    default_contracts_dir,
    load_contract,
    load_contracts,
)
from services.contracts.model import Contract, FieldType, Protection, Status

# Every contract file on disk, by the id its name promises.
ALL_IDS = {path.stem for path in default_contracts_dir().glob("*.yaml")}

MINIMAL = """\
id: test.things
title: Things
owner: vru
sector: reference
version: 1.0.0
status: active
dpia_reference: DPIA-TEST
lawful_basis: test
purposes: [strategic-needs-assessment]
retention: P1Y
key: [ref]
fields:
  - name: ref
    type: string
    required: true
    classification: level1
  - name: count
    type: integer
    classification: level1
"""


def write(tmp_path: Path, text: str, name: str = "test.things.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def broken(tmp_path: Path, text: str) -> ContractError:
    with pytest.raises(ContractError) as caught:
        load_contract(write(tmp_path, text))
    return caught.value


def test_every_contract_loads() -> None:
    contracts = load_contracts(default_contracts_dir())
    assert "police.occurrences" in ALL_IDS
    assert set(contracts) == ALL_IDS
    for contract_id, contract in contracts.items():
        assert contract.id == contract_id
        assert contract.status is Status.ACTIVE


def test_default_dir_is_the_repository_contracts_folder() -> None:
    directory = default_contracts_dir()
    assert directory.name == "contracts"
    assert (directory / "police.occurrences.yaml").is_file()


def test_police_contract_details() -> None:
    police = load_contract(default_contracts_dir() / "police.occurrences.yaml")
    assert police.key == ["occurrence_ref", "suspect_nominal_ref"]
    assert police.person is not None and police.person.dob == "suspect_dob"
    nominal = police.field("suspect_nominal_ref")
    assert nominal.protection is Protection.IDENTIFIER and nominal.reveal_at_level3
    assert police.field("committed_at").type is FieldType.TIMESTAMP
    assert police.field("suspect_dob").bound("minimum").isoformat() == "1900-01-01"  # type: ignore[union-attr]


def test_health_contract_is_anonymous() -> None:
    health = load_contract(default_contracts_dir() / "health.ed_assaults.yaml")
    assert health.person is None
    assert all(spec.protection is Protection.NONE for spec in health.fields)
    ref = health.field("attendance_ref")
    assert ref.classification == "level1" and health.key == ["attendance_ref"]


def test_education_and_youth_justice_link_people() -> None:
    contracts = load_contracts(default_contracts_dir())
    education = contracts["education.exclusions"]
    upn = education.field("pupil_upn")
    assert upn.protection is Protection.IDENTIFIER and not upn.reveal_at_level3
    # A temporary UPN ends in a letter; check letters are never I, O or S.
    assert upn.pattern == r"^[A-HJ-NP-RT-Z]\d{11}[0-9A-HJ-NP-RT-Z]$"
    assert education.person is not None
    youth = contracts["youth_justice.first_time_entrants"]
    assert youth.field("yjs").allowed_values == [
        "yjs-hampshire",
        "yjs-portsmouth",
        "yjs-southampton",
        "yjs-iow",
    ]
    assert youth.person is not None


def test_minimal_contract_loads(tmp_path: Path) -> None:
    contract = load_contract(write(tmp_path, MINIMAL))
    assert isinstance(contract, Contract)
    assert contract.field_names == ["ref", "count"]


def test_bad_type_names_the_place_and_the_choices(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("type: integer", "type: int"))
    text = str(error)
    assert "test.things.yaml: fields[1].type: 'int' is not one of string, integer, float" in text
    assert error.location == "fields[1].type"
    assert error.line == 18
    assert "field 'count'" in text


def test_missing_key_field(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("key: [ref]", "key: [ref, nope]"))
    assert error.location == "key[1]"
    assert "'nope' is not a declared field" in str(error)


def test_unknown_top_level_key_suggests_the_right_one(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("retention: P1Y", "retention: P1Y\nretension: P2Y"))
    assert error.location == "retension"
    assert "unknown key 'retension'" in str(error)
    assert "did you mean 'retention'" in str(error)


def test_unknown_field_key(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("    required: true\n", "    requried: true\n"))
    assert error.location == "fields[0].requried"
    assert "did you mean 'required'" in str(error)


def test_bad_regex(tmp_path: Path) -> None:
    text = MINIMAL.replace("    required: true\n", "    required: true\n    pattern: '^[A-Z'\n")
    error = broken(tmp_path, text)
    assert error.location == "fields[0].pattern"
    assert "not a valid regular expression" in str(error)


def test_regex_the_validator_cannot_run(tmp_path: Path) -> None:
    text = MINIMAL.replace("    required: true\n", "    required: true\n    pattern: '^(?=A)A$'\n")
    error = broken(tmp_path, text)
    assert error.location == "fields[0].pattern"
    assert "RE2" in str(error)


def test_yaml_syntax_error(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("key: [ref]", "key: [ref"))
    assert "YAML syntax error" in str(error)
    assert "line" in str(error)
    assert error.line is not None


def test_yaml_key_given_twice(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL + "title: Again\n")
    assert "'title' is given twice" in str(error)


def test_empty_and_non_mapping_files(tmp_path: Path) -> None:
    assert "empty" in str(broken(tmp_path, ""))
    assert "YAML mapping" in str(broken(tmp_path, "- a\n- b\n"))


def test_unquoted_number_in_allowed_values(tmp_path: Path) -> None:
    text = MINIMAL.replace(
        "    required: true\n", "    required: true\n    allowed_values: [a, 2, yes]\n"
    )
    error = broken(tmp_path, text)
    assert error.location == "fields[0].allowed_values[1]"
    assert "quote it" in str(error)
    assert len(error.problems) == 2  # the 2 and the yes (a boolean in YAML)


@pytest.mark.parametrize(
    ("replace", "by", "location", "words"),
    [
        ("id: test.things", "id: Test-Things", "id", "sector.dataset"),
        ("version: 1.0.0", "version: '1.0'", "version", "semantic version"),
        ("retention: P1Y", "retention: 6 years", "retention", "ISO 8601 duration"),
        ("sector: reference", "sector: prison", "sector", "is not one of police"),
        ("purposes: [strategic-needs-assessment]", "purposes: []", "purposes", "not be empty"),
        ("owner: vru", "owner: VRU", "owner", "organisation id"),
    ],
)
def test_top_level_values(tmp_path: Path, replace: str, by: str, location: str, words: str) -> None:
    error = broken(tmp_path, MINIMAL.replace(replace, by))
    assert error.location == location
    assert words in str(error)


def test_missing_required_key(tmp_path: Path) -> None:
    error = broken(tmp_path, MINIMAL.replace("dpia_reference: DPIA-TEST\n", ""))
    assert error.location == "dpia_reference"
    assert "is required" in str(error)


PROTECTED = (
    MINIMAL
    + """\
  - name: name
    type: string
    classification: level3
    protection: direct_identifier
"""
)


@pytest.mark.parametrize(
    ("replace", "by", "location", "words"),
    [
        ("classification: level3", "classification: level2", "fields[2].classification", "level3"),
        ("key: [ref]", "key: [ref, name]", "key[1]", "direct_identifier"),
        (
            "    protection: direct_identifier",
            "    protection: direct_identifier\n    reveal_at_level3: true",
            "fields[2].reveal_at_level3",
            "only for fields with protection identifier",
        ),
        ("key: [ref]", "key: [ref, ref]", "key[1]", "listed twice"),
        ("  - name: name", "  - name: count", "fields[2].name", "declared twice"),
    ],
)
def test_model_rules(tmp_path: Path, replace: str, by: str, location: str, words: str) -> None:
    error = broken(tmp_path, PROTECTED.replace(replace, by))
    assert error.location == location, str(error)
    assert words in str(error)


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("    minimum: 'a'\n", "must be an integer"),
        ("    minimum: 1.5\n", "must be an integer"),
        ("    allowed_values: ['1']\n", "only for string fields"),
        ("    pattern: '^1$'\n", "only for string fields"),
        ("    minimum: 5\n    maximum: 1\n", "below minimum"),
        ("    max_length: 10\n", "max_length is only for string fields"),
    ],
)
def test_field_rules(tmp_path: Path, extra: str, words: str) -> None:
    text = MINIMAL + extra
    error = broken(tmp_path, text)
    assert error.location is not None and error.location.startswith("fields[1]")
    assert words in str(error)


def test_date_bounds_accept_quoted_and_unquoted_dates(tmp_path: Path) -> None:
    for bound in ("'1900-01-01'", "1900-01-01"):
        text = MINIMAL.replace("type: integer", "type: date") + f"    minimum: {bound}\n"
        contract = load_contract(write(tmp_path, text))
        assert contract.field("count").minimum == "1900-01-01"
    error = broken(
        tmp_path, MINIMAL.replace("type: integer", "type: date") + "    minimum: '1900-02-30'\n"
    )
    assert "real date" in str(error)


def test_person_fields_must_exist_and_be_protected(tmp_path: Path) -> None:
    text = PROTECTED + "person: {surname: name, forename: nobody, dob: count}\n"
    error = broken(tmp_path, text)
    messages = [problem.render() for problem in error.problems]
    assert any("person.forename" in message and "nobody" in message for message in messages)
    assert any("person.dob" in message and "type date" in message for message in messages)


def test_file_name_must_match_id(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, name="other.yaml")
    with pytest.raises(ContractError, match=r"must be named 'test\.things\.yaml'"):
        load_contracts(tmp_path)


def test_yml_files_are_not_silently_ignored(tmp_path: Path) -> None:
    write(tmp_path, MINIMAL, name="test.things.yml")
    with pytest.raises(ContractError, match=r"\.yaml"):
        load_contracts(tmp_path)


def test_load_contracts_needs_a_directory(tmp_path: Path) -> None:
    with pytest.raises(ContractError, match="not a directory"):
        load_contracts(tmp_path / "missing")


def test_real_contracts_round_trip_through_yaml() -> None:
    # The models accept exactly what the files hold: dumping and re-validating is stable.
    for path in sorted(default_contracts_dir().glob("*.yaml")):
        contract = load_contract(path)
        data = yaml.safe_load(path.read_text())
        assert Contract.model_validate(data) == contract


@pytest.mark.parametrize(
    ("extra", "words"),
    [
        ("    max_length: 0\n", "greater than or equal to 1"),
        ("    max_length: '40'\n", "valid integer"),
        ("    allowed_values: [short, longer]\n    max_length: 5\n", "longest allowed value"),
    ],
)
def test_max_length_rules(tmp_path: Path, extra: str, words: str) -> None:
    text = MINIMAL.replace("    required: true\n", "    required: true\n" + extra, 1)
    error = broken(tmp_path, text)
    assert error.location is not None and error.location.startswith("fields[0]"), str(error)
    assert words in str(error)


def test_max_length_loads(tmp_path: Path) -> None:
    text = MINIMAL.replace("    required: true\n", "    required: true\n    max_length: 40\n", 1)
    assert load_contract(write(tmp_path, text)).field("ref").max_length == 40
