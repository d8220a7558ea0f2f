"""Each contract names the date field its retention counts from (`retention_from`), and a
field that cannot be compared with a cutoff day is refused when the contract is loaded and by
`together contracts lint`."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from gateway.cli import app
from services.contracts.lint import lint_path
from services.contracts.loader import (
    ContractError,
    default_contracts_dir,
    load_contract,
    load_contracts,
)
from services.contracts.model import FieldType

CONTRACT = """\
id: test.events
title: Events
owner: vru
sector: reference
version: 1.0.0
status: active
dpia_reference: DPIA-TEST
lawful_basis: test
purposes: [strategic-needs-assessment]
retention: P1Y
{retention_from}
key: [ref]
person: {{surname: surname, forename: forename, dob: dob}}
fields:
  - {{name: ref, type: string, max_length: 10, required: true, classification: level1}}
  - {{name: count, type: integer, required: true, classification: level1}}
  - {{name: recorded_on, type: date, required: true, classification: level1}}
  - {{name: happened_at, type: timestamp, required: true, classification: level1}}
  - {{name: closed_on, type: date, classification: level1}}
  - name: surname
    type: string
    max_length: 100
    classification: level3
    protection: direct_identifier
  - name: forename
    type: string
    max_length: 100
    classification: level3
    protection: direct_identifier
  - name: dob
    type: date
    required: true
    classification: level3
    protection: direct_identifier
"""


def _write(tmp_path: Path, line: str) -> Path:
    path = tmp_path / "test.events.yaml"
    path.write_text(CONTRACT.format(retention_from=line), encoding="utf-8")
    return path


# The shipped contracts


def test_every_shipped_contract_with_a_date_names_a_required_record_date() -> None:
    for contract in load_contracts(default_contracts_dir()).values():
        dated = [f for f in contract.fields if f.type in (FieldType.DATE, FieldType.TIMESTAMP)]
        if not dated:
            # Reference data with no date and no personal data (IMD, population).
            assert contract.person is None
            assert contract.retention_from is None
            continue
        assert contract.retention_from is not None, contract.id
        spec = contract.field(contract.retention_from)
        assert spec.type in (FieldType.DATE, FieldType.TIMESTAMP)
        assert spec.required and not spec.protected
        if contract.person is not None:
            assert contract.retention_from != contract.person.dob


def test_the_police_retention_counts_from_the_recorded_date() -> None:
    contracts = load_contracts(default_contracts_dir())
    assert contracts["police.occurrences"].retention_from == "recorded_date"


def test_every_shipped_contract_says_why_in_a_comment() -> None:
    for path in sorted(default_contracts_dir().glob("*.yaml")):
        lines = path.read_text(encoding="utf-8").splitlines()
        for index, line in enumerate(lines):
            if line.startswith("retention_from:"):
                assert lines[index - 1].startswith("#"), path.name


# Accepted and refused fields


@pytest.mark.parametrize("name", ["recorded_on", "happened_at"])
def test_a_required_date_or_timestamp_is_accepted(tmp_path: Path, name: str) -> None:
    contract = load_contract(_write(tmp_path, f"retention_from: {name}"))
    assert contract.retention_from == name


def test_it_may_be_left_out(tmp_path: Path) -> None:
    assert load_contract(_write(tmp_path, "")).retention_from is None


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("opened_on", "'opened_on' is not a declared field"),
        ("count", "'count' is a integer field, not a date or timestamp"),
        ("ref", "'ref' is a string field, not a date or timestamp"),
        ("closed_on", "'closed_on' must be required"),
        ("dob", "'dob' is the date of birth"),
    ],
)
def test_a_field_that_cannot_count_is_refused(tmp_path: Path, name: str, message: str) -> None:
    with pytest.raises(ContractError) as caught:
        load_contract(_write(tmp_path, f"retention_from: {name}"))
    assert message in str(caught.value)
    assert "retention_from" in str(caught.value)


def test_lint_reports_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "retention_from: count")
    messages = lint_path(path)
    errors = [str(m) for m in messages if m.severity == "error"]
    assert any("retention_from" in text and "'count'" in text for text in errors), errors


def test_the_lint_command_fails_on_it(tmp_path: Path) -> None:
    path = _write(tmp_path, "retention_from: closed_on")
    result = CliRunner().invoke(app, ["contracts", "lint", str(path)])
    assert result.exit_code != 0
    assert "retention_from" in result.output + (result.stderr if result.stderr_bytes else "")
    good = _write(tmp_path, "retention_from: recorded_on")
    assert CliRunner().invoke(app, ["contracts", "lint", str(good)]).exit_code == 0
