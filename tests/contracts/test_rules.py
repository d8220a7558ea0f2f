"""Plausibility rules of dates (``not_after``, ``on_or_after``, ``on_or_before``) and coded
fields (``subcode_separator``): how contracts declare them, how the loader checks them, and
what the validator reports."""

from __future__ import annotations

from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest

from services.contracts.loader import ContractError, load_contract
from services.contracts.model import FUTURE_TOLERANCE, latest_day
from services.contracts.validation import BatchValidator, Rule, ValidationReport
from tests.contracts.test_validation import PROTECTOR, batch_of, police, police_row

LATEST = date(2024, 6, 30)

CONTRACT = """\
id: test.dates
title: Dates
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
  - {name: ref, type: string, max_length: 10, required: true, classification: level1}
  - {name: happened_at, type: timestamp, classification: level1}
  - {name: code, type: string, max_length: 9, classification: level1}
"""


def _write(tmp_path: Path, extra: str) -> Path:
    path = tmp_path / "test.dates.yaml"
    path.write_text(CONTRACT + extra, encoding="utf-8")
    return path


def _run(rows: list[dict[str, Any]]) -> ValidationReport:
    validator = BatchValidator(police(), PROTECTOR, latest=LATEST)
    report = ValidationReport()
    validator.process(batch_of(rows), 1, report)
    return report


# The day "today" allows


def test_latest_day_is_the_london_day_an_hour_ahead() -> None:
    assert FUTURE_TOLERANCE.total_seconds() == 3600
    # 22:30 UTC on 30 June is 23:30 in London (summer time): within the hour before midnight.
    assert latest_day(datetime(2024, 6, 30, 22, 30, tzinfo=UTC)) == date(2024, 7, 1)
    assert latest_day(datetime(2024, 6, 30, 21, 30, tzinfo=UTC)) == date(2024, 6, 30)
    # In winter London is on UTC.
    assert latest_day(datetime(2024, 12, 31, 22, 59, tzinfo=UTC)) == date(2024, 12, 31)


# The loader


@pytest.mark.parametrize(
    ("extra", "found"),
    [
        (
            "  - {name: day, type: date, classification: level1, on_or_after: nowhere}\n",
            "'nowhere' is not a declared field",
        ),
        (
            "  - {name: day, type: date, classification: level1, on_or_after: code}\n",
            "'code' is a string field, not a date or timestamp",
        ),
        (
            "  - {name: day, type: date, classification: level1, on_or_before: day}\n",
            "names the field itself",
        ),
        (
            "  - {name: n, type: integer, classification: level1, not_after: today}\n",
            "not_after is only for date and timestamp fields",
        ),
        (
            "  - {name: day, type: date, classification: level1, not_after: tomorrow}\n",
            "'tomorrow' is not one of today",
        ),
        (
            "  - {name: c, type: string, max_length: 5, classification: level1, "
            "subcode_separator: 'a'}\n",
            "must be a punctuation character",
        ),
        (
            "  - {name: n, type: integer, classification: level1, subcode_separator: '/'}\n",
            "subcode_separator is only for string fields",
        ),
    ],
)
def test_malformed_rules_are_refused_at_load(tmp_path: Path, extra: str, found: str) -> None:
    with pytest.raises(ContractError) as caught:
        load_contract(_write(tmp_path, extra))
    assert found in str(caught.value) or any(found in p.message for p in caught.value.problems)


def test_well_formed_rules_load(tmp_path: Path) -> None:
    contract = load_contract(
        _write(
            tmp_path,
            "  - {name: day, type: date, classification: level1, not_after: today, "
            "on_or_after: happened_at}\n",
        )
    )
    day = contract.field("day")
    assert (day.not_after, day.on_or_after, day.on_or_before) == ("today", "happened_at", None)


def test_the_shipped_contracts_declare_the_rules_where_they_hold() -> None:
    contract = police()
    assert contract.field("committed_at").not_after == "today"
    assert contract.field("recorded_date").on_or_after == "committed_at"
    assert contract.field("suspect_dob").not_after == "today"
    assert contract.field("suspect_dob").on_or_before == "committed_at"


# The validator


def test_a_clean_row_passes() -> None:
    assert _run([police_row(1)]).ok


def test_a_time_in_the_future_is_not_after() -> None:
    report = _run(
        [
            police_row(1, committed_at="2099-01-01 10:00:00", recorded_date="2099-01-02"),
            police_row(2, committed_at="2024-06-30 23:59:59", recorded_date="2024-06-30"),
        ]
    )
    # The time committed and the day recorded are both in the future: both are named.
    found = {(v.row, v.field, v.rule) for v in report.violations}
    assert found == {(1, "committed_at", Rule.NOT_AFTER), (1, "recorded_date", Rule.NOT_AFTER)}
    [violation] = [v for v in report.violations if v.field == "committed_at"]
    assert "2099-01-01" in violation.message and "2024-06-30" in violation.message


def test_a_date_of_birth_in_the_future_is_refused_without_quoting_it() -> None:
    report = _run([police_row(1, suspect_dob="2024-07-01")])
    rules = {(v.field, v.rule) for v in report.violations}
    assert ("suspect_dob", Rule.NOT_AFTER) in rules
    assert all("2024-07-01" not in v.message for v in report.violations)


def test_recorded_before_committed_is_on_or_after() -> None:
    report = _run(
        [
            police_row(1, committed_at="2024-03-02 00:10:00", recorded_date="2024-03-01"),
            # The same day is on or after: a date is compared with a time by its day.
            police_row(2, committed_at="2024-03-02 23:10:00", recorded_date="2024-03-02"),
            # An invalid or empty value leaves the comparison alone (it is reported for itself).
            police_row(3, committed_at="not a time", recorded_date="2024-03-01"),
        ]
    )
    by_rule = [(v.row, v.field, v.rule) for v in report.violations]
    assert (1, "recorded_date", Rule.ON_OR_AFTER) in by_rule
    assert not any(row == 2 for row, _, _ in by_rule)
    assert [rule for row, _, rule in by_rule if row == 3] == [Rule.TYPE]
    message = next(v.message for v in report.violations if v.rule is Rule.ON_OR_AFTER)
    assert message == ("recorded_date '2024-03-01' is before committed_at '2024-03-02 00:10:00'")


def test_a_person_born_after_the_offence_is_on_or_before_and_not_quoted() -> None:
    report = _run([police_row(1, suspect_dob="2024-03-05", committed_at="2024-03-01 10:00:00")])
    [violation] = report.violations
    assert (violation.field, violation.rule) == ("suspect_dob", Rule.ON_OR_BEFORE)
    assert violation.message == "suspect_dob is after committed_at"


def test_rules_count_in_the_totals_across_many_rows() -> None:
    rows = [police_row(n, committed_at="2099-01-01 00:00:00") for n in range(1, 301)]
    report = _run(rows)
    assert report.totals["not_after"] == 300
    assert report.totals["on_or_after"] == 300
