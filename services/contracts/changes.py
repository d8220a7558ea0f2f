"""What changed between two versions of a contract, and whether it is a minor or a major change.

A minor change cannot break a reader or widen what is identifying: a new optional field that is
not identifying, a wider set of allowed values, a looser bound, a text of explanation. Anything
else is major: a field removed or retyped, a new identifying or Level 3 field, a new required
field, a narrower domain, a purpose added, a protection or classification changed, a longer
retention, another legal basis. A major change is validated against the dataset's current data
before anyone may approve it (services/governance). Pure: no database, no files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from services.contracts.model import Contract, ContractField, Protection

SEMVER_CORE = 3


class ChangeKind(StrEnum):
    NONE = "none"
    MINOR = "minor"
    MAJOR = "major"


@dataclass(frozen=True)
class Change:
    kind: ChangeKind
    where: str  # "contract" or "field <name>"
    what: str

    def as_json(self) -> dict[str, str]:
        return {"kind": self.kind.value, "where": self.where, "what": self.what}


@dataclass(frozen=True)
class ChangeReport:
    changes: tuple[Change, ...]

    @property
    def kind(self) -> ChangeKind:
        kinds = {change.kind for change in self.changes}
        if ChangeKind.MAJOR in kinds:
            return ChangeKind.MAJOR
        return ChangeKind.MINOR if kinds else ChangeKind.NONE

    def as_json(self) -> dict[str, Any]:
        return {"kind": self.kind.value, "changes": [c.as_json() for c in self.changes]}


_DURATION_PARTS = re.compile(r"(\d+)([YMWDHS])")
_APPROXIMATE_DAYS = {"Y": 365.25, "M": 30.44, "W": 7.0, "D": 1.0}


def _days(duration: str) -> float:
    """An ISO 8601 duration (already validated by the model) in days, near enough to compare."""
    date_part, _, time_part = duration.removeprefix("P").partition("T")
    days = sum(int(n) * _APPROXIMATE_DAYS[unit] for n, unit in _DURATION_PARTS.findall(date_part))
    seconds = {"H": 3600, "M": 60, "S": 1}
    days += sum(int(n) * seconds[u] for n, u in _DURATION_PARTS.findall(time_part)) / 86400
    return days


def _identifying(spec: ContractField) -> bool:
    return spec.protection is not Protection.NONE or spec.classification.value == "level3"


def _bounds(old: ContractField, new: ContractField, out: list[Change]) -> None:
    where = f"field {new.name}"
    major, minor = ChangeKind.MAJOR, ChangeKind.MINOR
    if old.allowed_values != new.allowed_values:
        before, after = set(old.allowed_values or []), set(new.allowed_values or [])
        if old.allowed_values is None:
            out.append(Change(major, where, "allowed values now limited"))
        elif new.allowed_values is None:
            out.append(Change(minor, where, "any value now allowed"))
        elif before - after:
            removed = ", ".join(sorted(before - after))
            out.append(Change(major, where, f"allowed values removed: {removed}"))
        else:
            added = ", ".join(sorted(after - before))
            out.append(Change(minor, where, f"allowed values added: {added}"))
    if old.pattern != new.pattern:
        # Whether one expression accepts everything another does is not decidable in general:
        # only dropping the pattern is certainly wider.
        kind = minor if new.pattern is None else major
        out.append(Change(kind, where, f"pattern {old.pattern!r} -> {new.pattern!r}"))
    for name, wider_if_greater in (("max_length", True), ("maximum", True), ("minimum", False)):
        before, after = getattr(old, name), getattr(new, name)
        if before == after:
            continue
        if after is None:
            kind = minor
        elif before is None:
            kind = major
        else:
            try:
                wider = after > before if wider_if_greater else after < before
            except TypeError:
                wider = False
            kind = minor if wider else major
        out.append(Change(kind, where, f"{name} {before!r} -> {after!r}"))
    if old.required != new.required:
        kind = minor if not new.required else major
        out.append(Change(kind, where, "now required" if new.required else "now optional"))
    for name in ("not_after", "on_or_after", "on_or_before", "subcode_separator"):
        before, after = getattr(old, name), getattr(new, name)
        if before != after:
            kind = minor if after is None else major
            out.append(Change(kind, where, f"{name} {before!r} -> {after!r}"))


def _field(old: ContractField, new: ContractField, out: list[Change]) -> None:
    where = f"field {new.name}"
    major = ChangeKind.MAJOR
    if old.type != new.type:
        out.append(Change(major, where, f"type {old.type.value} -> {new.type.value}"))
    if old.protection != new.protection:
        change = f"protection {old.protection.value} -> {new.protection.value}"
        out.append(Change(major, where, change))
    if old.classification != new.classification:
        change = f"classification {old.classification.value} -> {new.classification.value}"
        out.append(Change(major, where, change))
    if old.reveal_at_level3 != new.reveal_at_level3:
        shown = "shown" if new.reveal_at_level3 else "no longer shown"
        out.append(Change(major, where, f"{shown} at Level 3"))
    _bounds(old, new, out)
    if old.description != new.description:
        out.append(Change(ChangeKind.MINOR, where, "description"))


def classify(old: Contract, new: Contract) -> ChangeReport:
    """Every difference between two versions of one dataset's contract, each minor or major."""
    out: list[Change] = []
    major, minor = ChangeKind.MAJOR, ChangeKind.MINOR
    before = {spec.name: spec for spec in old.fields}
    after = {spec.name: spec for spec in new.fields}
    for name in before.keys() - after.keys():
        out.append(Change(major, f"field {name}", "removed"))
    for name in [spec.name for spec in new.fields if spec.name not in before]:
        spec = after[name]
        if _identifying(spec):
            out.append(Change(major, f"field {name}", "new identifying field"))
        elif spec.required:
            out.append(Change(major, f"field {name}", "new required field"))
        else:
            out.append(Change(minor, f"field {name}", "new optional field"))
    for name in [spec.name for spec in old.fields if spec.name in after]:
        _field(before[name], after[name], out)
    contract = "contract"
    if old.owner != new.owner:
        out.append(Change(major, contract, f"owner {old.owner} -> {new.owner}"))
    added = [p for p in new.purposes if p not in old.purposes]
    if added:
        out.append(Change(major, contract, f"purposes added: {', '.join(added)}"))
    removed = [p for p in old.purposes if p not in new.purposes]
    if removed:
        out.append(Change(minor, contract, f"purposes removed: {', '.join(removed)}"))
    if old.retention != new.retention:
        longer = _days(new.retention) > _days(old.retention)
        kind = major if longer else minor
        out.append(Change(kind, contract, f"retention {old.retention} -> {new.retention}"))
    if old.retention_from != new.retention_from:
        # Another date to count from can expire rows a reader relies on, or keep some longer.
        out.append(
            Change(major, contract, f"retention_from {old.retention_from} -> {new.retention_from}")
        )
    for name in ("lawful_basis", "dpia_reference", "key", "person", "sector"):
        if getattr(old, name) != getattr(new, name):
            out.append(Change(major, contract, f"{name} changed"))
    if [s.name for s in old.fields if s.name in after] != [
        s.name for s in new.fields if s.name in before
    ]:
        out.append(Change(minor, contract, "fields reordered"))
    for name in ("title", "description"):
        if getattr(old, name) != getattr(new, name):
            out.append(Change(minor, contract, name))
    return ChangeReport(tuple(out))


def _core(version: str) -> tuple[int, int, int]:
    major, minor, patch = version.split("+")[0].split("-")[0].split(".")[:SEMVER_CORE]
    return int(major), int(minor), int(patch)


def version_problem(old_version: str, new_version: str, kind: ChangeKind) -> str | None:
    """Why `new_version` is not an acceptable number for a change of `kind`, or None.

    A major change needs a new major number; a minor one at least a new minor number (a new
    major is allowed too); a proposal with no change needs no new number."""
    old, new = _core(old_version), _core(new_version)
    if kind is ChangeKind.NONE:
        return None
    if new <= old:
        return f"version {new_version} is not after {old_version}"
    if kind is ChangeKind.MAJOR and new[0] == old[0]:
        return (
            f"this is a major change: the version must be {old[0] + 1}.0.0 or later, "
            f"not {new_version}"
        )
    if kind is ChangeKind.MINOR and new[:2] == old[:2]:
        return (
            f"this is a minor change: the version must be {old[0]}.{old[1] + 1}.0 or later, "
            f"not {new_version}"
        )
    return None
