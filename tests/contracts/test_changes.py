"""Classifying a contract change: minor when no reader breaks and nothing identifying is added."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
import yaml

from services.contracts.changes import ChangeKind, classify, version_problem
from services.contracts.loader import default_contracts_dir
from services.contracts.model import Contract

Edit = Callable[[dict[str, Any]], None]


def _police() -> dict[str, Any]:
    text = (default_contracts_dir() / "police.occurrences.yaml").read_text()
    document: dict[str, Any] = yaml.safe_load(text)
    return document


def _field(document: dict[str, Any], name: str) -> dict[str, Any]:
    found: dict[str, Any] = next(f for f in document["fields"] if f["name"] == name)
    return found


def _changed(edit: Edit) -> tuple[ChangeKind, list[str]]:
    before = _police()
    after = _police()
    edit(after)
    report = classify(Contract.model_validate(before), Contract.model_validate(after))
    return report.kind, [f"{c.where}: {c.what}" for c in report.changes]


def _add_optional(document: dict[str, Any]) -> None:
    document["fields"].append(
        {"name": "weather", "type": "string", "classification": "level1", "max_length": 20}
    )


def _add_identifying(document: dict[str, Any]) -> None:
    document["fields"].append(
        {
            "name": "victim_name",
            "type": "string",
            "classification": "level3",
            "protection": "direct_identifier",
            "max_length": 100,
        }
    )


def _widen_enum(document: dict[str, Any]) -> None:
    _field(document, "victim_gender")["allowed_values"].append("Z")


def _narrow_enum(document: dict[str, Any]) -> None:
    _field(document, "victim_gender")["allowed_values"].remove("X")


def _remove_field(document: dict[str, Any]) -> None:
    document["fields"] = [f for f in document["fields"] if f["name"] != "drugs"]


def _retype(document: dict[str, Any]) -> None:
    _field(document, "victim_age").update(type="string", minimum=None, maximum=None)


def _add_purpose(document: dict[str, Any]) -> None:
    document["purposes"].append("research")


def _longer_retention(document: dict[str, Any]) -> None:
    document["retention"] = "P7Y"


def _shorter_retention(document: dict[str, Any]) -> None:
    document["retention"] = "P5Y6M"


def _retention_from(document: dict[str, Any]) -> None:
    document["retention_from"] = "committed_at"


def _longer_strings(document: dict[str, Any]) -> None:
    _field(document, "suspect_forename")["max_length"] += 50


def _shorter_strings(document: dict[str, Any]) -> None:
    _field(document, "suspect_forename")["max_length"] -= 50


def _now_required(document: dict[str, Any]) -> None:
    _field(document, "victim_gender")["required"] = True


def _unprotect(document: dict[str, Any]) -> None:
    _field(document, "suspect_nominal_ref").update(
        protection="none", classification="level2", reveal_at_level3=False
    )


def _description(document: dict[str, Any]) -> None:
    document["description"] = "Reworded."
    _field(document, "drugs")["description"] = "Reworded too."


@pytest.mark.parametrize(
    ("edit", "kind", "says"),
    [
        (_add_optional, ChangeKind.MINOR, "field weather: new optional field"),
        (_widen_enum, ChangeKind.MINOR, "field victim_gender: allowed values added: Z"),
        (_shorter_retention, ChangeKind.MINOR, "contract: retention P6Y -> P5Y6M"),
        (_longer_strings, ChangeKind.MINOR, "field suspect_forename: max_length"),
        (_description, ChangeKind.MINOR, "contract: description"),
        (_add_identifying, ChangeKind.MAJOR, "field victim_name: new identifying field"),
        (_narrow_enum, ChangeKind.MAJOR, "field victim_gender: allowed values removed: X"),
        (_remove_field, ChangeKind.MAJOR, "field drugs: removed"),
        (_retype, ChangeKind.MAJOR, "field victim_age: type integer -> string"),
        (_add_purpose, ChangeKind.MAJOR, "contract: purposes added: research"),
        (_longer_retention, ChangeKind.MAJOR, "contract: retention P6Y -> P7Y"),
        (
            _retention_from,
            ChangeKind.MAJOR,
            "contract: retention_from recorded_date -> committed_at",
        ),
        (_shorter_strings, ChangeKind.MAJOR, "field suspect_forename: max_length"),
        (_now_required, ChangeKind.MAJOR, "field victim_gender: now required"),
        (_unprotect, ChangeKind.MAJOR, "suspect_nominal_ref: protection identifier -> none"),
    ],
)
def test_each_change_is_classified_and_named(edit: Edit, kind: ChangeKind, says: str) -> None:
    found, lines = _changed(edit)
    assert found is kind, lines
    assert any(says in line for line in lines), lines


def test_one_major_change_makes_the_whole_change_major() -> None:
    def both(document: dict[str, Any]) -> None:
        _add_optional(document)
        _remove_field(document)

    kind, lines = _changed(both)
    assert kind is ChangeKind.MAJOR and len(lines) == 2


def test_the_same_contract_is_no_change() -> None:
    assert _changed(lambda document: None) == (ChangeKind.NONE, [])


@pytest.mark.parametrize(
    ("old", "new", "kind", "problem"),
    [
        ("1.0.0", "1.1.0", ChangeKind.MINOR, None),
        ("1.0.0", "2.0.0", ChangeKind.MINOR, None),
        ("1.0.0", "1.0.1", ChangeKind.MINOR, "must be 1.1.0 or later"),
        ("1.4.2", "2.0.0", ChangeKind.MAJOR, None),
        ("1.4.2", "1.5.0", ChangeKind.MAJOR, "must be 2.0.0 or later"),
        ("1.4.2", "1.4.2", ChangeKind.MAJOR, "is not after 1.4.2"),
        ("2.0.0", "1.9.0", ChangeKind.MINOR, "is not after"),
        ("1.0.0", "1.0.0", ChangeKind.NONE, None),
    ],
)
def test_the_version_number_must_say_what_kind_of_change_it_is(
    old: str, new: str, kind: ChangeKind, problem: str | None
) -> None:
    found = version_problem(old, new, kind)
    if problem is None:
        assert found is None
    else:
        assert found is not None and problem in found
