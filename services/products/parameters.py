"""A request's parameters, parsed strictly against the product's definition.

An unknown name, a repeated single value, a malformed date or number, an unknown choice or a
half-given comparison is a ``BadRequest``: a filter is never silently ignored.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from datetime import date
from typing import Any

from services.kit.clock import utcnow
from services.kit.errors import BadRequest
from services.kit.partnership import CSP_AREAS
from services.products.definition import ParameterSpec, ProductDefinition, conditions_hold

_DATE_RE = re.compile(r"^\d{4}-\d{2}-\d{2}$")
_INTEGER_RE = re.compile(r"^[+-]?\d{1,9}$")
_PERSON_ID_RE = re.compile(r"^[0-9a-f]{32}$")
_MAX_VALUE_LENGTH = 200
_MAX_PAIRS = 100


def parse_parameters(defn: ProductDefinition, pairs: list[tuple[str, str]]) -> dict[str, Any]:
    """The request's parameters, checked and typed; defaults filled in.

    Dates become ``datetime.date``, integers ``int``, lists ``list[str]``; a parameter that was
    not given and has no default is None (an empty list for lists).
    """
    if len(pairs) > _MAX_PAIRS:
        raise BadRequest(f"too many parameters (at most {_MAX_PAIRS})")
    given: dict[str, list[str]] = {}
    for name, value in pairs:
        spec = defn.parameter(name)
        if spec is None:
            known = ", ".join(p.name for p in defn.parameters) or "none"
            raise BadRequest(
                f"unknown parameter {name[:40]!r}; {defn.id} takes: {known} (and format)"
            )
        if len(value) > _MAX_VALUE_LENGTH:
            raise BadRequest(f"{name} is too long")
        given.setdefault(name, []).append(value)
    params: dict[str, Any] = {}
    explicit: set[str] = set()
    for spec in defn.parameters:
        values = given.get(spec.name)
        if values is None:
            if spec.required:
                raise BadRequest(f"{spec.name} is required ({spec.description})")
            params[spec.name] = _default(spec)
            continue
        explicit.add(spec.name)
        if len(values) > 1 and not spec.is_list:
            raise BadRequest(f"{spec.name} may be given only once")
        params[spec.name] = _parse_values(spec, values)
    _check_together(defn, params, explicit)
    return params


def _default(spec: ParameterSpec) -> Any:
    if spec.default is None:
        return [] if spec.is_list else None
    if spec.type == "date":
        if spec.default == "today":
            return utcnow().date()
        return date.fromisoformat(str(spec.default))
    if isinstance(spec.default, list):
        return list(spec.default)
    return spec.default


def _parse_values(spec: ParameterSpec, values: list[str]) -> Any:
    if spec.type == "keys":
        keys: list[str] = []
        for value in values:
            for item in value.split(","):
                key = item.strip()
                if not key:
                    continue
                if key not in (spec.choices or ()):
                    raise BadRequest(
                        f"{spec.name} {key[:40]!r} is not one of: {', '.join(spec.choices or ())}"
                    )
                if key in keys:
                    raise BadRequest(f"{spec.name} lists {key!r} twice")
                keys.append(key)
        return keys
    if spec.type == "csp":
        areas: list[str] = []
        for value in values:
            # CSP names hold no commas, so "a,b" is accepted as two areas as well as repeats.
            for item in value.split(",") if spec.repeatable else [value]:
                area = _csp(spec.name, item)
                if area not in areas:
                    areas.append(area)
        return areas if spec.repeatable else areas[0]
    value = values[0].strip()
    if not value:
        raise BadRequest(f"{spec.name} is empty")
    if spec.type == "person":
        if not _PERSON_ID_RE.match(value):
            raise BadRequest(f"{spec.name} must be a person id (32 lower-case hex digits)")
        return value
    if spec.type == "date":
        return _date(spec.name, value)
    if spec.type == "integer":
        if not _INTEGER_RE.match(value):
            raise BadRequest(f"{spec.name} must be a whole number, not {value[:40]!r}")
        number = int(value)
        if spec.minimum is not None and number < spec.minimum:
            raise BadRequest(f"{spec.name} must be at least {spec.minimum}")
        if spec.maximum is not None and number > spec.maximum:
            raise BadRequest(f"{spec.name} must be at most {spec.maximum}")
        return number
    if value not in (spec.choices or ()):
        raise BadRequest(f"{spec.name} must be one of: {', '.join(spec.choices or ())}")
    return value


def _csp(name: str, value: str) -> str:
    wanted = value.strip().casefold()
    for area in CSP_AREAS:
        if area.casefold() == wanted:
            return area
    raise BadRequest(f"{name} {value[:60]!r} is not a CSP area; one of: {', '.join(CSP_AREAS)}")


def _date(name: str, value: str) -> date:
    if not _DATE_RE.match(value):
        raise BadRequest(f"{name} must be a date written YYYY-MM-DD, not {value[:40]!r}")
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise BadRequest(f"{name} {value!r} is not a real date") from None


def _check_together(defn: ProductDefinition, params: dict[str, Any], explicit: set[str]) -> None:
    spec = defn.spec
    if spec.period is not None:
        start, end = spec.period
        if params[start] is not None and params[end] is not None and params[start] >= params[end]:
            raise BadRequest(f"{start} must be before {end} (periods are [{start}, {end}))")
    if spec.comparison is not None:
        start, end = spec.comparison
        given = [name for name in (start, end) if params[name] is not None]
        if len(given) == 1:
            missing = end if given[0] == start else start
            raise BadRequest(f"a comparison needs both {start} and {end}; {missing} is missing")
        if given and params[start] >= params[end]:
            raise BadRequest(f"{start} must be before {end}")
        if given:
            for parameter in defn.parameters:
                if parameter.type != "keys":
                    continue
                fixed = [key for key in params[parameter.name] if key in parameter.not_comparable]
                if fixed:
                    raise BadRequest(
                        f"{parameter.name}={fixed[0]} cannot be compared between periods "
                        "(its groups differ from one period to the other)"
                    )
    for parameter in defn.parameters:
        condition = parameter.applies_when
        if parameter.name in explicit and condition and not conditions_hold(condition, params):
            wanted = ", ".join(f"{k}={v}" for k, v in condition.items())
            raise BadRequest(f"{parameter.name} applies only with {wanted}")
    for constraint in spec.constraints:
        if conditions_hold(constraint.when, params):
            raise BadRequest(constraint.message)


def normalise_parameters(defn: ProductDefinition, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters as JSON values (dates as ISO text), for results and the audit trail."""
    normalised: dict[str, Any] = {}
    for spec in defn.parameters:
        value = params.get(spec.name)
        if spec.applies_when and not conditions_hold(spec.applies_when, params):
            value = None
        normalised[spec.name] = _json_value(value)
    return normalised


def _json_value(value: Any) -> Any:
    if isinstance(value, date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_json_value(item) for item in value]
    return value
