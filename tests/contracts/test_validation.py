"""Validating uploads against contracts and building what is stored."""

from __future__ import annotations

from datetime import date, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pytest

from services.contracts import validation
from services.contracts.loader import default_contracts_dir, load_contract
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.contracts.validation import (
    MAX_VIOLATIONS,
    BatchValidator,
    Rule,
    ValidationReport,
    Violation,
)

PROTECTOR = Protector(b"h" * 32, b"e" * 32)
CSPS = [
    "Basingstoke and Deane", "East Hampshire", "Eastleigh", "Fareham", "Gosport", "Hart",
    "Havant", "Isle of Wight", "New Forest", "Portsmouth", "Rushmoor", "Southampton",
    "Test Valley", "Winchester",
]  # fmt: skip
FLAGS = [
    "public_place", "bladed_implement", "domestic", "licensed_premises", "alcohol", "drugs",
    "hate_crime",
]  # fmt: skip


def police() -> Contract:
    return load_contract(default_contracts_dir() / "police.occurrences.yaml")


def police_row(number: int, **changes: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "occurrence_ref": f"OCC/{number:06d}",
        "incident_ref": f"INC/{number:06d}",
        "ho_offence_code": "8N",
        "hmic_group": "1b",
        "msv": "false",
        "committed_at": "2024-03-01 21:15:00",
        "recorded_date": "2024-03-02",
        "csp": "Southampton",
        "lsoa_code": "E01032755",
        "latitude": "50.9097",
        "longitude": "-1.4044",
        "victim_gender": "F",
        "victim_age": "23",
        "victim_offender_relationship": "stranger",
        "suspect_nominal_ref": f"NOM{number:06d}",
        "suspect_forename": "Sean",
        "suspect_surname": "O'Brien",
        "suspect_dob": "2004-05-06",
        "suspect_gender": "M",
    }
    row.update({flag: "false" for flag in FLAGS})
    row["bladed_implement"] = "true"
    row.update(changes)
    return row


def batch_of(rows: list[dict[str, Any]], columns: list[str] | None = None) -> pa.RecordBatch:
    names = columns or list(rows[0])
    return pa.RecordBatch.from_arrays(
        [pa.array([row.get(name) for row in rows], pa.string()) for name in names], names=names
    )


def run(
    rows: list[dict[str, Any]], contract: Contract | None = None, first_row: int = 1
) -> tuple[pa.RecordBatch | None, ValidationReport]:
    validator = BatchValidator(contract or police(), PROTECTOR)
    report = ValidationReport()
    return validator.process(batch_of(rows), first_row, report), report


def only(report: ValidationReport) -> Violation:
    assert len(report.violations) == 1, report.violations
    return report.violations[0]


# The stored schema


def test_police_stored_schema() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    schema = validator.stored_schema()
    assert schema.names == [
        "occurrence_ref", "incident_ref", "ho_offence_code", "hmic_group", "msv", "committed_at",
        "recorded_date", "csp", "lsoa_code", "latitude", "longitude", *FLAGS, "victim_gender",
        "victim_age", "victim_offender_relationship", "suspect_nominal_ref_pseudonym",
        "suspect_nominal_ref_enc", "suspect_forename_enc", "suspect_surname_enc",
        "suspect_dob_enc", "suspect_gender", "person_key",
    ]  # fmt: skip
    types = {field.name: field.type for field in schema}
    assert types["msv"] == pa.bool_()
    assert types["committed_at"] == pa.timestamp("us")
    assert types["recorded_date"] == pa.date32()
    assert types["latitude"] == pa.float64()
    assert types["victim_age"] == pa.int64()
    assert types["suspect_nominal_ref_pseudonym"] == pa.string()
    assert types["suspect_nominal_ref_enc"] == pa.binary()
    assert types["suspect_dob_enc"] == pa.binary()
    assert types["person_key"] == pa.string()
    assert schema.metadata == {
        b"together.contract": b"police.occurrences",
        b"together.contract_version": b"1.0.0",
    }
    assert validator.key_columns() == ["occurrence_ref", "suspect_nominal_ref_pseudonym"]


def test_identifier_without_reveal_has_no_ciphertext() -> None:
    contract = load_contract(default_contracts_dir() / "education.exclusions.yaml")
    names = BatchValidator(contract, PROTECTOR).stored_schema().names
    assert "pupil_upn_pseudonym" in names and "pupil_upn_enc" not in names
    assert names[-1] == "person_key"


def test_stored_values_and_protection() -> None:
    stored, report = run([police_row(1), police_row(2, suspect_nominal_ref=None)])
    assert report.ok and stored is not None
    assert stored.schema == BatchValidator(police(), PROTECTOR).stored_schema()
    first = stored.to_pylist()[0]
    assert first["msv"] is False and first["bladed_implement"] is True
    assert first["committed_at"] == datetime(2024, 3, 1, 21, 15)
    assert first["recorded_date"] == date(2024, 3, 2)
    assert first["latitude"] == pytest.approx(50.9097)
    assert first["victim_age"] == 23
    assert first["suspect_nominal_ref_pseudonym"] == PROTECTOR.pseudonymise_value(
        "NOM000001", domain="suspect_nominal_ref"
    )
    aad = "police.occurrences/"
    assert (
        PROTECTOR.decrypt_value(first["suspect_nominal_ref_enc"], aad=aad + "suspect_nominal_ref")
        == "NOM000001"
    )
    assert (
        PROTECTOR.decrypt_value(first["suspect_surname_enc"], aad=aad + "suspect_surname")
        == "O'Brien"
    )
    assert (
        PROTECTOR.decrypt_value(first["suspect_dob_enc"], aad=aad + "suspect_dob") == "2004-05-06"
    )
    assert first["person_key"] == PROTECTOR.person_key("obrien", "SEAN", date(2004, 5, 6))
    second = stored.to_pylist()[1]
    assert second["suspect_nominal_ref_pseudonym"] is None
    assert second["suspect_nominal_ref_enc"] is None
    assert second["person_key"] == first["person_key"]


def test_values_are_trimmed_and_blank_is_empty() -> None:
    stored, report = run(
        [police_row(1, csp="  Hart ", victim_age=" 7", msv=" TRUE ", victim_gender="   ")]
    )
    assert report.ok, report.violations
    assert stored is not None
    row = stored.to_pylist()[0]
    assert row["csp"] == "Hart" and row["victim_age"] == 7 and row["msv"] is True
    assert row["victim_gender"] is None


@pytest.mark.parametrize(
    ("raw", "value"),
    [("true", True), ("False", False), ("1", True), ("0", False), ("YES", True), ("no", False),
     ("y", True), ("N", False), ("t", True), ("f", False)],
)  # fmt: skip
def test_boolean_spellings(raw: str, value: bool) -> None:
    stored, report = run([police_row(1, msv=raw)])
    assert report.ok and stored is not None
    assert stored.column("msv")[0].as_py() is value


@pytest.mark.parametrize(
    ("raw", "value"),
    [
        ("2024-03-01 21:15", datetime(2024, 3, 1, 21, 15)),
        ("2024-03-01T21:15:07", datetime(2024, 3, 1, 21, 15, 7)),
        ("2024-02-29 00:00:00.5", datetime(2024, 2, 29, 0, 0, 0, 500000)),
        ("2024-03-01 21:15:07.123456", datetime(2024, 3, 1, 21, 15, 7, 123456)),
    ],
)
def test_timestamp_forms(raw: str, value: datetime) -> None:
    stored, report = run([police_row(1, committed_at=raw)])
    assert report.ok and stored is not None
    assert stored.column("committed_at")[0].as_py() == value


@pytest.mark.parametrize("raw", ["1e3", "-1.5", "+2", ".5", "7."])
def test_float_forms(raw: str) -> None:
    contract = load_contract(default_contracts_dir() / "police.occurrences.yaml")
    spec = contract.field("latitude")
    typed, bad = validation._convert_float(pa.array([raw]))
    assert bad is None or not bad[0].as_py(), spec
    assert typed[0].as_py() == float(raw)


# Each rule: the right row, field and rule


@pytest.mark.parametrize(
    ("changes", "field", "rule", "message"),
    [
        ({"csp": None}, "csp", "required", "csp is required but empty"),
        ({"csp": "  "}, "csp", "required", "csp is required but empty"),
        ({"victim_age": "12.5"}, "victim_age", "type", "'12.5' is not a valid integer"),
        ({"victim_age": "0x10"}, "victim_age", "type", "not a valid integer"),
        ({"victim_age": "1" * 19}, "victim_age", "type", "not a valid integer"),
        ({"latitude": "north"}, "latitude", "type", "'north' is not a valid number"),
        ({"latitude": "nan"}, "latitude", "type", "not a valid number"),
        ({"latitude": "1e999"}, "latitude", "type", "not a valid number"),
        ({"msv": "maybe"}, "msv", "type", "'maybe' is not a valid boolean"),
        ({"recorded_date": "2023-02-29"}, "recorded_date", "type", "not a valid date"),
        ({"recorded_date": "02/03/2024"}, "recorded_date", "type", "not a valid date"),
        ({"recorded_date": "0000-01-01"}, "recorded_date", "type", "not a valid date"),
        ({"committed_at": "0000-01-01 10:00"}, "committed_at", "type", "not a valid timestamp"),
        ({"committed_at": "2024-03-01"}, "committed_at", "type", "not a valid timestamp"),
        ({"committed_at": "2024-03-01 24:00"}, "committed_at", "type", "not a valid timestamp"),
        ({"committed_at": "2024-04-31 10:00"}, "committed_at", "type", "not a valid timestamp"),
        ({"committed_at": "2024-03-01T10:00Z"}, "committed_at", "type", "not a valid timestamp"),
        ({"committed_at": "2024-03-01 10:00+01:00"}, "committed_at", "type", "timestamp"),
        ({"committed_at": "2024-03-01 10:00:00.1234567"}, "committed_at", "type", "timestamp"),
        ({"csp": "Hampshire"}, "csp", "allowed_values", "'Hampshire' is not one of: Basingstoke"),
        ({"csp": "hart"}, "csp", "allowed_values", "'hart' is not one of"),
        ({"lsoa_code": "E0112345"}, "lsoa_code", "pattern",
         "'E0112345' does not match the pattern ^[EW]01\\d{6}$"),
        ({"lsoa_code": "XE0112345"}, "lsoa_code", "pattern", "does not match"),
        ({"victim_age": "-1"}, "victim_age", "minimum", "'-1' is below the minimum 0"),
        ({"victim_age": "121"}, "victim_age", "maximum", "'121' is above the maximum 120"),
        ({"longitude": "2.5"}, "longitude", "maximum", "is above the maximum 1.8"),
        ({"suspect_dob": "1899-12-31"}, "suspect_dob", "minimum",
         "value is below the minimum 1900-01-01"),
        ({"suspect_forename": "A" * 101}, "suspect_forename", "max_length",
         "value is 101 characters long, above the max_length 100"),
    ],
)  # fmt: skip
def test_each_rule(changes: dict[str, Any], field: str, rule: str, message: str) -> None:
    rows = [police_row(1), police_row(2), police_row(3, **changes), police_row(4)]
    stored, report = run(rows, first_row=101)
    assert stored is None
    violation = only(report)
    assert (violation.row, violation.field, violation.rule) == (103, field, rule)
    assert message in violation.message
    assert report.totals == {rule: 1}
    assert not report.ok


def test_long_values_are_truncated_in_messages() -> None:
    _, report = run([police_row(1, csp="x" * 80)])
    messages = {v.rule: v.message for v in report.violations}
    assert "'" + "x" * 50 + "…'" in messages["allowed_values"]
    assert messages["max_length"] == "value is 80 characters long, above the max_length 21"


def test_a_huge_value_is_refused_without_being_quoted() -> None:
    forename = "Bartholomew" * 200_000  # over 2 MB
    rows = [police_row(1), police_row(2, suspect_forename=forename), police_row(3)]
    stored, report = run(rows)
    assert stored is None
    violation = only(report)
    assert (violation.row, violation.field, violation.rule) == (2, "suspect_forename", "max_length")
    assert "Bartholomew" not in str(report.to_dict())


def test_max_length_counts_characters_not_bytes() -> None:
    _, report = run([police_row(1, suspect_surname="Ó" * 100)])
    assert report.ok


def test_a_value_can_break_several_rules() -> None:
    contract = load_contract(default_contracts_dir() / "police.occurrences.yaml")
    data = contract.model_dump()
    data["fields"][2]["allowed_values"] = ["8N", "9A"]
    changed = Contract.model_validate(data)
    _, report = run([police_row(1, ho_offence_code="ABC")], contract=changed)
    assert sorted(v.rule for v in report.violations) == ["allowed_values", "pattern"]


def test_duplicate_key_in_one_batch() -> None:
    rows = [police_row(1), police_row(2), police_row(1), police_row(1, suspect_nominal_ref="X")]
    stored, report = run(rows)
    assert stored is None
    violation = only(report)
    assert (violation.row, violation.field, violation.rule) == (3, None, "duplicate_key")
    assert "same as row 1" in violation.message
    assert "NOM" not in violation.message  # part of the key is level3


def test_rows_without_suspect_share_a_key_when_the_occurrence_repeats() -> None:
    rows = [police_row(1, suspect_nominal_ref=None), police_row(1, suspect_nominal_ref=" ")]
    _, report = run(rows)
    assert only(report).rule == "duplicate_key"


def test_duplicate_key_across_batches() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    assert validator.process(batch_of([police_row(1), police_row(2)]), 1, report) is not None
    assert validator.process(batch_of([police_row(3), police_row(4)]), 3, report) is not None
    # Within its batch the third is clean: the repeat of row 2 shows once the last is in.
    assert validator.process(batch_of([police_row(5), police_row(2)]), 5, report) is not None
    assert report.ok
    validator.finish(report)
    violation = only(report)
    assert (violation.row, violation.rule) == (6, "duplicate_key")
    assert "same as row 2" in violation.message


def test_keys_repeated_across_many_batches_are_all_reported_in_row_order() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport(limit=3)
    for start in range(1, 41, 4):  # ten batches of four; the last three repeat rows 1-12
        ids = range(start, start + 4) if start < 29 else range(start - 28, start - 24)
        validator.process(batch_of([police_row(i) for i in ids]), start, report)
    validator.finish(report)
    assert [v.row for v in report.violations] == [29, 30, 31]
    assert report.totals == {"duplicate_key": 12}
    assert report.violations[0].message.endswith("same as row 1")


def test_integer_keys_compare_as_numbers() -> None:
    contract = load_contract(default_contracts_dir() / "reference.population.yaml")
    rows = [
        {"area_code": "Hart", "area_type": "csp", "year": "2021", "population": "100"},
        {"area_code": "Hart", "area_type": "csp", "year": "+2021", "population": "100"},
        {"area_code": "Hart", "area_type": "lsoa", "year": "2021", "population": "100"},
    ]
    _, report = run(rows, contract=contract)
    violation = only(report)
    assert (violation.row, violation.rule) == (2, "duplicate_key")


def test_bad_key_values_are_not_called_duplicates() -> None:
    contract = load_contract(default_contracts_dir() / "reference.population.yaml")
    rows = [
        {"area_code": "Hart", "area_type": "csp", "year": "x", "population": "1"},
        {"area_code": "Hart", "area_type": "csp", "year": "y", "population": "1"},
    ]
    _, report = run(rows, contract=contract)
    assert report.totals == {"type": 2}


# Level 3 values never appear in messages


def test_level3_values_never_appear_in_messages() -> None:
    secret = "ZZSECRET"
    rows = [
        police_row(1, suspect_nominal_ref=f"{secret} !"),
        police_row(2, suspect_dob=f"{secret}"),
        police_row(3, suspect_dob="1850-01-01"),
    ]
    _, report = run(rows)
    assert report.total == 3
    text = str(report.to_dict())
    assert secret not in text and "1850" not in text
    assert {v.message for v in report.violations} >= {"value is not a valid date (YYYY-MM-DD)"}


def test_protected_allowed_values_say_value_not_allowed(tmp_path: Path) -> None:
    data = police().model_dump()
    for spec in data["fields"]:
        if spec["name"] == "suspect_forename":
            spec["allowed_values"] = ["Al"]
    contract = Contract.model_validate(data)
    _, report = run([police_row(1, suspect_forename="Bartholomew")], contract=contract)
    assert only(report).message == "value not allowed"


# Headers


def test_undeclared_column_is_a_violation() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    names = [*police_row(1), "suspect_address"]
    assert validator.check_header(names, report) is True
    violation = only(report)
    assert violation.rule == "undeclared_column" and violation.row is None
    assert "'suspect_address'" in violation.message and "never stored" in violation.message
    # Still checked, never stored.
    rows = [dict(police_row(1), suspect_address="1 High Street")]
    assert validator.process(batch_of(rows, names), 1, report) is None
    assert report.total == 1


def test_missing_columns() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    names = [name for name in police_row(1) if name not in ("csp", "victim_age")]
    assert validator.check_header(names, report) is True
    violation = only(report)
    assert (violation.field, violation.rule) == ("csp", "missing_column")
    # One violation for the column, not one per row.
    assert validator.process(batch_of([police_row(1), police_row(2)], names), 1, report) is None
    assert report.total == 1


def test_optional_column_may_be_left_out() -> None:
    names = [name for name in police_row(1) if name != "victim_age"]
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    stored = validator.process(batch_of([police_row(1)], names), 1, report)
    assert report.ok and stored is not None
    assert stored.column("victim_age").to_pylist() == [None]
    assert stored.schema == validator.stored_schema()


def test_duplicate_column_makes_the_header_unusable() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    names = [*police_row(1), "csp"]
    assert validator.check_header(names, report) is False
    assert only(report).rule == "duplicate_column"
    with pytest.raises(ValueError, match="unusable"):
        validator.process(batch_of([police_row(1)], names), 1, report)


def test_a_header_with_no_contract_column_is_unusable() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    assert validator.check_header(["Jane", "Smith"], report) is False
    # Probably a file without its header: the first row is not quoted back (it may be a name).
    assert report.totals == {"missing_header": 1}
    assert "Smith" not in str(report.to_dict())
    assert BatchValidator(police(), PROTECTOR).check_header([], ValidationReport()) is False


def test_header_names_match_after_trimming() -> None:
    row = police_row(1)
    names = [f" {name}" for name in row]
    batch = pa.RecordBatch.from_arrays([pa.array([row[n.strip()]]) for n in names], names=names)
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    stored = validator.process(batch, 1, report)
    assert report.ok and stored is not None
    assert stored.column("csp").to_pylist() == ["Southampton"]


# The report


def test_report_keeps_the_first_thousand_and_counts_all() -> None:
    rows = [police_row(n, csp="Nowhere", victim_age="-5") for n in range(1, 701)]
    _, report = run(rows)
    assert report.total == 1400
    assert report.totals == {"allowed_values": 700, "minimum": 700}
    assert len(report.violations) == MAX_VIOLATIONS
    # The earliest rows first, across fields.
    assert [v.row for v in report.violations[:4]] == [1, 1, 2, 2]
    assert report.violations[-1].row == 500
    data = report.to_dict()
    assert data["ok"] is False and data["truncated"] is True
    assert data["total_violations"] == 1400
    assert len(data["violations"]) == MAX_VIOLATIONS
    assert data["violations"][0] == {
        "row": 1,
        "field": "csp",
        "rule": "allowed_values",
        "message": report.violations[0].message,
    }


def test_the_report_names_rules_in_plain_text() -> None:
    # The rule names are what partners' systems read in a rejected upload and what stored
    # reports and audit events hold: they are plain strings, whatever the code calls them.
    assert [rule.value for rule in Rule] == [
        "undeclared_column", "missing_header", "duplicate_column", "missing_column", "required",
        "type", "max_length", "allowed_values", "pattern", "minimum", "maximum", "not_after",
        "on_or_after", "on_or_before", "duplicate_key", "format", "empty",
    ]  # fmt: skip
    _stored, report = run([police_row(1, csp="X")])
    data = report.to_dict()
    assert type(data["violations"][0]["rule"]) is str
    assert all(type(name) is str for name in data["totals"])
    assert data["totals"] == {"allowed_values": 1}


def test_empty_report() -> None:
    report = ValidationReport()
    assert report.ok and report.total == 0
    assert report.to_dict() == {
        "ok": True, "total_violations": 0, "totals": {}, "violations": [], "truncated": False,
    }  # fmt: skip


def test_after_a_violation_later_batches_are_checked_not_stored() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    assert validator.process(batch_of([police_row(1, csp="X")]), 1, report) is None
    assert validator.process(batch_of([police_row(2), police_row(3, msv="?")]), 2, report) is None
    assert [(v.row, v.rule) for v in report.violations] == [(1, "allowed_values"), (3, "type")]


def test_empty_batch() -> None:
    validator = BatchValidator(police(), PROTECTOR)
    report = ValidationReport()
    empty = batch_of([police_row(1)]).slice(0, 0)
    stored = validator.process(empty, 1, report)
    assert report.ok and stored is not None and stored.num_rows == 0


# Repetitive columns (checked per distinct value) and the threaded path


def test_row_numbers_are_right_for_repetitive_columns(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(validation, "_PARALLEL_ROWS", 100)
    rows = [police_row(n, csp=CSPS[n % 14]) for n in range(1, 3001)]
    rows[1234] = police_row(1235, csp="Nowhere", msv="perhaps", suspect_dob="1800-01-01")
    rows[2500] = police_row(2501, lsoa_code="bad", victim_age="x")
    stored, report = run(rows, first_row=10)
    assert stored is None
    found = sorted((v.row, v.field, v.rule) for v in report.violations)
    assert found == [
        (1244, "csp", "allowed_values"),
        (1244, "msv", "type"),
        (1244, "suspect_dob", "minimum"),
        (2510, "lsoa_code", "pattern"),
        (2510, "victim_age", "type"),
    ]


def test_threaded_path_stores_the_same(monkeypatch: pytest.MonkeyPatch) -> None:
    rows = [police_row(n, csp=CSPS[n % 14], suspect_nominal_ref=f"N{n % 50}") for n in range(400)]
    serial, report = run(rows)
    assert report.ok and serial is not None
    monkeypatch.setattr(validation, "_PARALLEL_ROWS", 100)
    threaded, report = run(rows)
    assert report.ok and threaded is not None
    assert threaded.equals(serial)


# Performance


def police_strings(rows: int, suspects: int = 200_000, seed: int = 1) -> pa.RecordBatch:
    """A realistic police upload as text: 30% of rows without a suspect."""

    def uniform(salt: int) -> pa.Array:
        return pc.random(rows, initializer=seed * 1000 + salt)

    def integers(salt: int, high: int) -> pa.Array:
        return pc.cast(pc.floor(pc.multiply(uniform(salt), high)), pa.int64())

    def pick(salt: int, options: list[str]) -> pa.Array:
        return pc.take(pa.array(options, pa.string()), integers(salt, len(options)))

    def padded(values: pa.Array, width: int) -> pa.Array:
        return pc.utf8_lpad(pc.cast(values, pa.string()), width, "0")

    def prefixed(prefix: str, values: pa.Array, width: int) -> pa.Array:
        return pc.binary_join_element_wise(prefix, padded(values, width), "")

    numbers = pa.array(range(rows), pa.int64())
    suspect = pc.if_else(pc.less(uniform(1), 0.3), None, integers(2, suspects))
    seconds = integers(3, 3 * 365 * 86400)
    moments = pc.add(pc.cast(seconds, pa.duration("s")), pa.scalar(datetime(2021, 1, 1)))
    committed = pc.utf8_slice_codeunits(pc.cast(moments, pa.string()), 0, 19)
    people = pa.array(range(suspects), pa.int64())
    forenames = prefixed("Fore", pc.divide(people, 70), 4)
    surnames = prefixed("Sur", pc.divide(people, 5), 6)
    dobs = pc.cast(
        pc.add(
            pa.scalar(datetime(1960, 1, 1)),
            pc.cast(pc.multiply(pc.divide(people, 10), 86400), pa.duration("s")),
        ),
        pa.date32(),
    )
    columns: dict[str, pa.Array] = {
        "occurrence_ref": prefixed("OCC/", numbers, 8),
        "incident_ref": prefixed("INC/", pc.divide(numbers, 2), 8),
        "ho_offence_code": pick(4, ["8N", "34B", "10A", "64", "65", "105A", "8P", "33"]),
        "hmic_group": pick(5, ["1a", "1b", "1c", "2", "3a", "3b", "4", "5", "6", "7", "8", "9"]),
        "msv": pick(6, ["true", "false", "false", "false"]),
        "committed_at": committed,
        "recorded_date": pc.utf8_slice_codeunits(committed, 0, 10),
        "csp": pick(7, CSPS),
        "lsoa_code": prefixed("E01", pc.add(integers(8, 1300), 22000), 6),
        "latitude": pc.cast(pc.add(pc.multiply(uniform(9), 0.8), 50.6), pa.string()),
        "longitude": pc.cast(pc.subtract(pc.multiply(uniform(10), 1.2), 1.9), pa.string()),
    }
    for salt, flag in enumerate(FLAGS, start=11):
        columns[flag] = pick(salt, ["true", "false", "false", "false", "false"])
    columns["victim_gender"] = pick(20, ["M", "F", "F", "X", "U"])
    columns["victim_age"] = pc.cast(integers(21, 100), pa.string())
    columns["victim_offender_relationship"] = pick(
        22, ["stranger", "acquaintance", "partner", "ex_partner", "family", "unknown"]
    )
    columns["suspect_nominal_ref"] = prefixed("NOM", suspect, 7)
    columns["suspect_forename"] = pc.take(forenames, suspect)
    columns["suspect_surname"] = pc.take(surnames, suspect)
    columns["suspect_dob"] = pc.cast(pc.take(dobs, suspect), pa.string())
    columns["suspect_gender"] = pc.if_else(pc.is_null(suspect), None, pick(23, ["M", "M", "F"]))
    return pa.RecordBatch.from_pydict(columns)


def test_police_batch_builder_is_valid() -> None:
    stored, report = run(police_strings(5_000, suspects=1_000).to_pylist())
    assert report.ok, report.violations[:5]
    assert stored is not None and stored.num_rows == 5_000
