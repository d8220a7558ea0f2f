"""The contract linter: load errors, the s.16(4) rule and warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.contracts.lint import S16_4, LintMessage, lint_path, main
from services.contracts.loader import default_contracts_dir, load_contracts
from services.kit.partnership import ORGANISATIONS

HEALTH = """\
id: health.things
title: Things
owner: hiow-icb
sector: health
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
    max_length: 40
    classification: level1
"""

NHS_NUMBER = """\
  - name: nhs_number
    type: string
    max_length: 10
    classification: level3
    protection: identifier
"""

NAMES = """\
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
    classification: level3
    protection: direct_identifier
person: {surname: surname, forename: forename, dob: dob}
"""


def write(tmp_path: Path, text: str, name: str = "health.things.yaml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def errors(messages: list[LintMessage]) -> list[LintMessage]:
    return [message for message in messages if message.severity == "error"]


def test_repository_contracts_lint_clean() -> None:
    assert lint_path(default_contracts_dir()) == []


def test_each_repository_contract_lints_clean_alone() -> None:
    files = sorted(default_contracts_dir().glob("*.yaml"))
    assert [path.stem for path in files] == sorted(load_contracts(default_contracts_dir()))
    for path in files:
        assert lint_path(path) == [], path


def test_health_identifier_is_rejected_citing_s16_4(tmp_path: Path) -> None:
    messages = lint_path(write(tmp_path, HEALTH + NHS_NUMBER))
    assert len(errors(messages)) == 1
    message = errors(messages)[0].message
    assert "nhs_number" in message
    assert S16_4 in message
    assert "PCSC Act 2022 s.16(4)" in message


def test_health_person_block_is_rejected_citing_s16_4(tmp_path: Path) -> None:
    messages = errors(lint_path(write(tmp_path, HEALTH + NAMES)))
    assert any(m.message.startswith("person:") and S16_4 in m.message for m in messages)
    # Each direct identifier is named too.
    assert sum("direct_identifier" in m.message for m in messages) == 3


def test_social_care_is_covered_too(tmp_path: Path) -> None:
    text = HEALTH.replace("id: health.things", "id: social_care.things").replace(
        "sector: health", "sector: social_care"
    )
    messages = errors(lint_path(write(tmp_path, text + NHS_NUMBER, "social_care.things.yaml")))
    assert messages and S16_4 in messages[0].message


def test_other_sectors_may_hold_identifiers(tmp_path: Path) -> None:
    text = HEALTH.replace("id: health.things", "id: police.things").replace(
        "sector: health", "sector: police"
    )
    assert lint_path(write(tmp_path, text + NHS_NUMBER + NAMES, "police.things.yaml")) == []


def test_level3_in_clear_is_a_warning(tmp_path: Path) -> None:
    text = HEALTH.replace("id: health.things", "id: police.things").replace(
        "sector: health", "sector: police"
    )
    extra = "  - name: note\n    type: string\n    max_length: 2000\n    classification: level3\n"
    messages = lint_path(write(tmp_path, text + extra, "police.things.yaml"))
    assert [m.severity for m in messages] == ["warning"]
    assert "note" in messages[0].message and "protection none" in messages[0].message


def test_an_owner_outside_the_partnership_is_an_error(tmp_path: Path) -> None:
    text = HEALTH.replace("owner: hiow-icb", "owner: hiow-icbb")
    messages = lint_path(write(tmp_path, text))
    assert [m.severity for m in messages] == ["error"]
    assert messages[0].message.startswith("owner: 'hiow-icbb' is not a known organisation")
    assert "did you mean 'hiow-icb'?" in messages[0].message


def test_every_repository_owner_is_an_organisation() -> None:
    owners = {contract.owner for contract in load_contracts(default_contracts_dir()).values()}
    assert owners <= set(ORGANISATIONS)


def test_an_unknown_owner_fails_the_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    text = HEALTH.replace("owner: hiow-icb", "owner: nobody-we-know")
    assert main([str(write(tmp_path, text))]) == 1
    out = capsys.readouterr().out
    assert "owner: 'nobody-we-know' is not a known organisation" in out
    assert "did you mean" not in out


def test_load_errors_are_reported_per_problem(tmp_path: Path) -> None:
    text = HEALTH.replace("type: string", "type: text").replace("key: [ref]", "key: [nope]")
    messages = lint_path(write(tmp_path, text))
    assert len(messages) == 1  # the schema error; rules run only on a well-formed contract
    assert messages[0].severity == "error"
    assert "fields[0].type: 'text' is not one of" in messages[0].message
    assert str(messages[0]).startswith(str(tmp_path / "health.things.yaml") + ": error: ")


def test_directory_reports_every_file(tmp_path: Path) -> None:
    write(tmp_path, HEALTH + NHS_NUMBER)
    write(tmp_path, "id: [", "broken.things.yaml")
    write(tmp_path, HEALTH, "misnamed.yaml")
    messages = errors(lint_path(tmp_path))
    by_file = {message.path.name for message in messages}
    assert by_file == {"health.things.yaml", "broken.things.yaml", "misnamed.yaml"}
    assert any("must be named 'health.things.yaml'" in m.message for m in messages)


def test_missing_path(tmp_path: Path) -> None:
    messages = lint_path(tmp_path / "nothing.yaml")
    assert messages[0].severity == "error"


def test_main_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main([str(default_contracts_dir())]) == 0
    assert main([str(write(tmp_path, HEALTH + NHS_NUMBER))]) == 1
    assert "s.16(4)" in capsys.readouterr().out


def test_a_string_field_without_max_length_is_an_error(tmp_path: Path) -> None:
    text = HEALTH.replace("    max_length: 40\n", "") + (
        "  - name: count\n    type: integer\n    classification: level1\n"
    )
    messages = lint_path(write(tmp_path, text))
    assert [m.severity for m in messages] == ["error"]
    assert messages[0].message.startswith("fields[0] (ref): a string field needs a max_length")


def test_every_repository_string_field_has_a_max_length() -> None:
    for contract in load_contracts(default_contracts_dir()).values():
        for spec in contract.fields:
            if spec.type.value == "string":
                assert spec.max_length is not None, (contract.id, spec.name)
