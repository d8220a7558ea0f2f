"""The data-contract format: typed models for the YAML files in ``contracts/``.

Every model forbids unknown keys so that a typo in a contract (``requried: true``) is an error
rather than a silently ignored setting. Rules that involve more than one key are checked in
model validators and reported as ``contract_rule`` errors carrying their own locations, which
the loader turns into readable messages.
"""

from __future__ import annotations

import re
from datetime import date, datetime, timedelta
from enum import StrEnum
from typing import Annotated, Any, Literal

import pyarrow as pa
import pyarrow.compute as pc
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictFloat,
    StrictInt,
    StrictStr,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from services.kit.clock import LONDON, utcnow

CONTRACT_RULE = "contract_rule"

ID_PATTERN = r"^[a-z_]+\.[a-z_]+$"
FIELD_NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
ORGANISATION_PATTERN = r"^[a-z][a-z0-9-]*$"
PURPOSE_PATTERN = r"^[a-z][a-z0-9-]*$"
SEMVER_PATTERN = (
    r"^(0|[1-9]\d*)\.(0|[1-9]\d*)\.(0|[1-9]\d*)"
    r"(?:-[0-9A-Za-z.-]+)?(?:\+[0-9A-Za-z.-]+)?$"
)
# Checked with Python's re rather than as a pydantic pattern: the look-aheads (a duration needs
# at least one component, and a T needs a time component after it) are not supported by the
# Rust regex engine pydantic uses for patterns.
_DURATION_RE = re.compile(
    r"^P(?=\d|T\d)(?:\d+Y)?(?:\d+M)?(?:\d+W)?(?:\d+D)?(?:T(?=\d)(?:\d+H)?(?:\d+M)?(?:\d+S)?)?$"
)
_ISO_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_ISO_TIMESTAMP_RE = re.compile(r"^\d{4}-\d{2}-\d{2}(?:[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?)?$")


class FieldType(StrEnum):
    STRING = "string"
    INTEGER = "integer"
    FLOAT = "float"
    BOOLEAN = "boolean"
    DATE = "date"
    TIMESTAMP = "timestamp"


class Classification(StrEnum):
    LEVEL1 = "level1"
    LEVEL2 = "level2"
    LEVEL3 = "level3"


class Protection(StrEnum):
    NONE = "none"
    IDENTIFIER = "identifier"
    DIRECT_IDENTIFIER = "direct_identifier"


class Sector(StrEnum):
    POLICE = "police"
    FIRE = "fire"
    HEALTH = "health"
    SOCIAL_CARE = "social_care"
    EDUCATION = "education"
    YOUTH_JUSTICE = "youth_justice"
    PROBATION = "probation"
    LOCAL_AUTHORITY = "local_authority"
    REFERENCE = "reference"


class Status(StrEnum):
    ACTIVE = "active"
    RETIRED = "retired"


Problem = tuple[tuple[str | int, ...], str]
"""A rule violation: a location relative to the model that found it, and a message."""

Bound = StrictInt | StrictFloat | StrictStr


def _rule_error(problems: list[Problem]) -> PydanticCustomError:
    summary = "; ".join(message for _, message in problems)
    return PydanticCustomError(
        CONTRACT_RULE, "{summary}", {"summary": summary, "problems": problems}
    )


def regex_problem(pattern: str) -> str | None:
    """Why ``pattern`` cannot be used, or None.

    Contracts are read by people who know Python regexes, but uploads are checked with Arrow's
    RE2 engine, which lacks look-around and back-references; a pattern must work in both or
    the first upload would fail with an engine error instead of a violation report.
    """
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"{pattern!r} is not a valid regular expression: {exc}"
    try:
        pc.match_substring_regex(pa.array([""], pa.string()), pattern)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as exc:
        detail = str(exc).removeprefix("Invalid regular expression: ")
        return (
            f"{pattern!r} cannot be used by the upload validator (RE2 syntax: no look-around "
            f"or back-references): {detail}"
        )
    return None


def _parse_date_bound(value: str) -> date | None:
    if not _ISO_DATE_RE.match(value):
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        return None


def _parse_timestamp_bound(value: str) -> datetime | None:
    if not _ISO_TIMESTAMP_RE.match(value):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


# Dates and times that cannot be in the future (``not_after: today``) are compared by their day
# with the day in Europe/London, one hour ahead: a clock a little fast, or a record made in the
# last minutes of the day, is not a whole refused upload; a date in 2099 is.
FUTURE_TOLERANCE = timedelta(hours=1)
_DATED = frozenset({"date", "timestamp"})


def latest_day(now: datetime | None = None) -> date:
    """The last day a ``not_after: today`` value may fall on, for an upload made at ``now``."""
    moment = (now or utcnow()).astimezone(LONDON) + FUTURE_TOLERANCE
    return moment.date()


def main_code(value: str, separator: str) -> str:
    """The main code of a code written ``MAIN`` or ``MAIN<separator>SUB`` (``64/1`` -> ``64``).

    The rule of every field with a ``subcode_separator``: the platform compares, groups and
    shows the main code; the dataset keeps the value as the partner recorded it.
    """
    return value.split(separator, 1)[0]


class PersonSpec(BaseModel):
    """Which fields identify a person; the platform derives a ``person_key`` column from them."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    surname: str
    forename: str
    dob: str


class ContractField(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    name: Annotated[str, Field(pattern=FIELD_NAME_PATTERN)]
    type: FieldType
    required: bool = False
    description: str | None = None
    allowed_values: list[StrictStr] | None = None
    pattern: str | None = None
    minimum: Bound | None = None
    maximum: Bound | None = None
    # In characters, after trimming. Bounds what one cell may cost the validator, the stored
    # file and every reader downstream: a 2 MB "forename" is an error, not a name.
    max_length: Annotated[StrictInt, Field(ge=1)] | None = None
    classification: Classification
    protection: Protection = Protection.NONE
    reveal_at_level3: bool = False
    # A code with optional sub-codes after this character (Home Office offence codes: "1/1",
    # "64/1"); what the platform compares is the main code before it (``main_code``).
    subcode_separator: Annotated[str, Field(min_length=1, max_length=1)] | None = None
    # Plausibility rules of dates and times, checked on every row of an upload.
    not_after: Literal["today"] | None = None
    on_or_after: str | None = None  # the name of another date or timestamp field
    on_or_before: str | None = None

    @field_validator("minimum", "maximum", mode="before")
    @classmethod
    def _dates_as_text(cls, value: Any) -> Any:
        # YAML turns an unquoted 1900-01-01 into a date object; accept it as the text it was.
        if isinstance(value, datetime):
            return value.isoformat(sep=" ")
        if isinstance(value, date):
            return value.isoformat()
        return value

    @property
    def protected(self) -> bool:
        return self.protection is not Protection.NONE

    def bound(self, which: str) -> int | float | date | datetime | None:
        """The typed minimum or maximum (``which`` is "minimum" or "maximum")."""
        raw = self.minimum if which == "minimum" else self.maximum
        if raw is None:
            return None
        if self.type is FieldType.DATE and isinstance(raw, str):
            return _parse_date_bound(raw)
        if self.type is FieldType.TIMESTAMP and isinstance(raw, str):
            return _parse_timestamp_bound(raw)
        if isinstance(raw, int | float):
            return raw
        return None

    @model_validator(mode="after")
    def _check_rules(self) -> ContractField:
        problems: list[Problem] = []
        is_string = self.type is FieldType.STRING
        if self.allowed_values is not None:
            if not is_string:
                problems.append(
                    (
                        ("allowed_values",),
                        f"allowed_values is only for string fields, not {self.type}",
                    )
                )
            elif not self.allowed_values:
                problems.append((("allowed_values",), "allowed_values must not be empty"))
            elif len(set(self.allowed_values)) != len(self.allowed_values):
                problems.append((("allowed_values",), "allowed_values has duplicates"))
        if self.max_length is not None:
            if not is_string:
                problems.append(
                    (("max_length",), f"max_length is only for string fields, not {self.type}")
                )
            elif self.allowed_values:
                longest = max(len(value) for value in self.allowed_values)
                if longest > self.max_length:
                    problems.append(
                        (
                            ("max_length",),
                            f"max_length {self.max_length} is below the longest allowed value "
                            f"({longest} characters)",
                        )
                    )
        if self.pattern is not None:
            if not is_string:
                problems.append(
                    (("pattern",), f"pattern is only for string fields, not {self.type}")
                )
            else:
                why = regex_problem(self.pattern)
                if why:
                    problems.append((("pattern",), why))
        for which in ("minimum", "maximum"):
            problem = self._bound_problem(which)
            if problem:
                problems.append(((which,), problem))
        low, high = self.bound("minimum"), self.bound("maximum")
        if low is not None and high is not None and not problems and low > high:  # type: ignore[operator]
            problems.append(
                (("maximum",), f"maximum {self.maximum} is below minimum {self.minimum}")
            )
        if self.subcode_separator is not None:
            if not is_string:
                problems.append(
                    (
                        ("subcode_separator",),
                        f"subcode_separator is only for string fields, not {self.type}",
                    )
                )
            elif self.subcode_separator.isalnum() or self.subcode_separator.isspace():
                problems.append(
                    (
                        ("subcode_separator",),
                        "subcode_separator must be a punctuation character such as '/'",
                    )
                )
            elif self.protected:
                problems.append(
                    (
                        ("subcode_separator",),
                        "a protected field is stored as a pseudonym or ciphertext; its sub-codes "
                        "cannot be compared",
                    )
                )
        for key in ("not_after", "on_or_after", "on_or_before"):
            if getattr(self, key) is not None and self.type.value not in _DATED:
                problems.append(
                    ((key,), f"{key} is only for date and timestamp fields, not {self.type}")
                )
        for key in ("on_or_after", "on_or_before"):
            if getattr(self, key) == self.name:
                problems.append(((key,), f"{key} names the field itself"))
        if self.protected and self.classification is not Classification.LEVEL3:
            problems.append(
                (
                    ("classification",),
                    f"a field with protection {self.protection} identifies people and must be "
                    f"classification level3, not {self.classification}",
                )
            )
        if self.reveal_at_level3 and self.protection is not Protection.IDENTIFIER:
            problems.append(
                (
                    ("reveal_at_level3",),
                    "reveal_at_level3 is only for fields with protection identifier "
                    "(direct identifiers are always kept encrypted for Level 3)",
                )
            )
        if problems:
            raise _rule_error(problems)
        return self

    def _bound_problem(self, which: str) -> str | None:
        raw = self.minimum if which == "minimum" else self.maximum
        if raw is None:
            return None
        kind = self.type
        if kind is FieldType.INTEGER:
            return (
                None if isinstance(raw, int) else f"{which} of an integer field must be an integer"
            )
        if kind is FieldType.FLOAT:
            return (
                None
                if isinstance(raw, int | float)
                else f"{which} of a float field must be a number"
            )
        if kind is FieldType.DATE:
            if isinstance(raw, str) and _parse_date_bound(raw) is not None:
                return None
            return f"{which} of a date field must be a real date written 'YYYY-MM-DD'"
        if kind is FieldType.TIMESTAMP:
            if isinstance(raw, str) and _parse_timestamp_bound(raw) is not None:
                return None
            return f"{which} of a timestamp field must be written 'YYYY-MM-DD HH:MM[:SS]'"
        return f"{which} is not allowed for {kind} fields"


class Contract(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    id: Annotated[str, Field(pattern=ID_PATTERN)]
    title: str
    owner: Annotated[str, Field(pattern=ORGANISATION_PATTERN)]
    sector: Sector
    version: Annotated[str, Field(pattern=SEMVER_PATTERN)]
    status: Status
    dpia_reference: str
    lawful_basis: str
    purposes: Annotated[list[Annotated[str, Field(pattern=PURPOSE_PATTERN)]], Field(min_length=1)]
    retention: str
    # The date or timestamp field the retention counts from: a row whose value is before today
    # minus `retention` has expired. Reference data with no date (not personal data) omits it.
    retention_from: Annotated[str, Field(pattern=FIELD_NAME_PATTERN)] | None = None
    description: str | None = None
    key: Annotated[list[str], Field(min_length=1)]
    person: PersonSpec | None = None
    fields: Annotated[list[ContractField], Field(min_length=1)]

    @field_validator("retention")
    @classmethod
    def _iso_duration(cls, value: str) -> str:
        if not _DURATION_RE.match(value):
            raise PydanticCustomError(
                "iso_duration",
                "{value!r} is not an ISO 8601 duration such as P6Y or P18M",
                {"value": value},
            )
        return value

    @model_validator(mode="after")
    def _check_rules(self) -> Contract:
        problems: list[Problem] = []
        by_name: dict[str, ContractField] = {}
        for index, spec in enumerate(self.fields):
            if spec.name in by_name:
                problems.append(
                    (("fields", index, "name"), f"field {spec.name!r} is declared twice")
                )
            by_name.setdefault(spec.name, spec)
        seen_key: set[str] = set()
        for index, name in enumerate(self.key):
            found = by_name.get(name)
            if name in seen_key:
                problems.append((("key", index), f"{name!r} is listed twice in the key"))
            seen_key.add(name)
            if found is None:
                problems.append((("key", index), f"key field {name!r} is not a declared field"))
            elif found.protection is Protection.DIRECT_IDENTIFIER:
                problems.append(
                    (
                        ("key", index),
                        f"key field {name!r} is a direct_identifier; a key is stored as a "
                        "joinable value, so use an identifier (pseudonymised) or a plain reference",
                    )
                )
        for index, spec in enumerate(self.fields):
            for key in ("on_or_after", "on_or_before"):
                other_name = getattr(spec, key)
                if other_name is None or other_name == spec.name:
                    continue
                other = by_name.get(other_name)
                if other is None:
                    problems.append(
                        (("fields", index, key), f"{key}: {other_name!r} is not a declared field")
                    )
                elif other.type.value not in _DATED:
                    problems.append(
                        (
                            ("fields", index, key),
                            f"{key}: {other_name!r} is a {other.type} field, not a date or "
                            "timestamp",
                        )
                    )
        problems.extend(self._retention_from_problems(by_name))
        if self.person is not None:
            expected = {
                "surname": FieldType.STRING,
                "forename": FieldType.STRING,
                "dob": FieldType.DATE,
            }
            for role, wanted in expected.items():
                name = getattr(self.person, role)
                found = by_name.get(name)
                if found is None:
                    problems.append(
                        (("person", role), f"person {role} field {name!r} is not a declared field")
                    )
                    continue
                if found.type is not wanted:
                    problems.append(
                        (("person", role), f"person {role} field {name!r} must be of type {wanted}")
                    )
                if found.protection is not Protection.DIRECT_IDENTIFIER:
                    problems.append(
                        (
                            ("person", role),
                            f"person {role} field {name!r} must have protection direct_identifier",
                        )
                    )
        if problems:
            raise _rule_error(problems)
        return self

    def _retention_from_problems(self, by_name: dict[str, ContractField]) -> list[Problem]:
        """Retention is enforced by comparing the stored values with a cutoff day: the field
        must hold a date, on every row, in the clear. A date of birth would erase people by
        their age, not by the age of the record."""
        name = self.retention_from
        if name is None:
            return []
        where: tuple[str | int, ...] = ("retention_from",)
        found = by_name.get(name)
        if found is None:
            return [(where, f"{name!r} is not a declared field")]
        if found.type.value not in _DATED:
            return [
                (
                    where,
                    f"{name!r} is a {found.type} field, not a date or timestamp",
                )
            ]
        if self.person is not None and name == self.person.dob:
            return [(where, f"{name!r} is the date of birth, not the record's date")]
        problems: list[Problem] = []
        if not found.required:
            problems.append(
                (
                    where,
                    f"{name!r} must be required (a row without it would never expire)",
                )
            )
        if found.protected:
            problems.append(
                (
                    where,
                    f"{name!r} is stored protected and cannot be compared with a date",
                )
            )
        return problems

    # Helpers for the rest of the platform.

    def field(self, name: str) -> ContractField:
        for spec in self.fields:
            if spec.name == name:
                return spec
        raise KeyError(name)

    @property
    def field_names(self) -> list[str]:
        return [spec.name for spec in self.fields]
