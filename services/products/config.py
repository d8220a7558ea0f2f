"""The partnership configuration (``config/partnership.yaml``) as typed models and SQL.

The partnership revises its definitions (what counts as serious violence, who is a habitual
knife carrier) as policy, not code. They are compiled here, once, into SQL predicates over the
stored columns of the police dataset. Every field a clause names is checked against the data
contract, and every value against the field's type and allowed values, so a typo in the policy
file stops the platform at start-up instead of silently counting nothing.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictInt, StrictStr, ValidationError

from services.contracts.model import Contract, FieldType, Protection
from services.kit.errors import ConfigurationError
from services.kit.yamlfile import StrictLoader

POLICE_DATASET = "police.occurrences"

ConditionValue = StrictBool | StrictStr | StrictInt | list[StrictStr | StrictInt]
Where = dict[str, ConditionValue]


class PartnershipConfigError(ConfigurationError):
    """The partnership file cannot be used; the message names the place in the file."""


# The file's shape. Sections compiled into SQL forbid unknown keys: a misspelt key in a policy
# would otherwise be ignored and change what is counted without anyone noticing.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SeriousViolenceClause(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]*$")
    description: str | None = None
    where: Where = Field(min_length=1)


class SeriousViolenceConfig(_Strict):
    dataset: str = POLICE_DATASET
    description: str | None = None
    any_of: list[SeriousViolenceClause] = Field(min_length=1)


class HabitualKnifeCarrierConfig(_Strict):
    lookback_months: int = Field(ge=1, le=120)
    recent_months: int = Field(ge=1, le=120)
    min_offences: int = Field(ge=1, le=100)
    qualifying_any_of: list[Where] = Field(min_length=1)
    exclude: list[Where] = Field(default_factory=list)


class ProductDisclosure(_Strict):
    k: int = Field(ge=2, le=100)


class DisclosureControl(_Strict):
    k: int = Field(default=5, ge=2, le=100)
    # Product id -> its own threshold, for a product the DPIA asks to protect more strongly.
    products: dict[str, ProductDisclosure] = Field(default_factory=dict)


class Level3Config(BaseModel):
    # Read by the Level 3 products; kept open so that adding a setting there does not need a
    # change here.
    model_config = ConfigDict(extra="allow", frozen=True)

    purposes: list[str] = Field(default_factory=list)
    daily_quota: int | None = None
    # Level 3 reads a principal may make in one clock hour (security-tests T16: 50/h, 200/day).
    hourly_quota: int | None = None


class _Document(BaseModel):
    # Other sections may be added for other parts of the platform; only the ones read here
    # are checked here.
    model_config = ConfigDict(extra="ignore", frozen=True)

    serious_violence: SeriousViolenceConfig
    habitual_knife_carriers: HabitualKnifeCarrierConfig
    disclosure_control: DisclosureControl = Field(default_factory=DisclosureControl)
    level3: Level3Config | None = None


@dataclass(frozen=True)
class Predicate:
    """A SQL boolean expression over stored columns, and the contract fields it reads."""

    sql: str
    fields: tuple[str, ...]


@dataclass(frozen=True)
class PartnershipConfig:
    serious_violence: SeriousViolenceConfig
    habitual_knife_carriers: HabitualKnifeCarrierConfig
    disclosure_control: DisclosureControl
    level3: Level3Config | None
    # Compiled at load, over the stored columns of the police dataset.
    serious_violence_where: Predicate
    hkc_qualifying_where: Predicate
    hkc_exclude_where: Predicate | None
    # The contract those predicates were compiled over: its views (services/products/views.py)
    # are what the predicates are evaluated on.
    police: Contract

    @property
    def k(self) -> int:
        return self.disclosure_control.k

    def k_for(self, product_id: str) -> int | None:
        """The product's own threshold, if the partnership set one."""
        override = self.disclosure_control.products.get(product_id)
        return override.k if override is not None else None


# Compiling clauses


def sql_string(value: str) -> str:
    """A SQL string literal. Values come from checked configuration, never from a request."""
    if "\x00" in value:
        raise ValueError("a value may not contain NUL")
    return "'" + value.replace("'", "''") + "'"


def quote_identifier(name: str) -> str:
    if not re.fullmatch(r"[a-z][a-z0-9_]*", name):
        raise ValueError(f"{name!r} is not a plain column name")
    return f'"{name}"'


def _condition(field_name: str, value: ConditionValue, contract: Contract, where: str) -> str:
    try:
        spec = contract.field(field_name)
    except KeyError:
        raise PartnershipConfigError(
            f"{where}: field {field_name!r} is not in the contract of {contract.id}"
        ) from None
    if spec.protection is not Protection.NONE:
        # Stored only as a pseudonym or ciphertext: a plain value can never match it.
        raise PartnershipConfigError(
            f"{where}: field {field_name!r} is protected at rest and cannot be matched by value"
        )
    column = quote_identifier(spec.name)
    if spec.type is FieldType.BOOLEAN:
        if not isinstance(value, bool):
            raise PartnershipConfigError(
                f"{where}: {field_name!r} is a boolean field; write true or false"
            )
        return f"{column} = {'true' if value else 'false'}"
    if isinstance(value, bool):
        raise PartnershipConfigError(f"{where}: {field_name!r} is not a boolean field")
    values = value if isinstance(value, list) else [value]
    if not values:
        raise PartnershipConfigError(f"{where}: {field_name!r} lists no values")
    if spec.type is FieldType.STRING:
        literals = []
        for item in values:
            if not isinstance(item, str):
                raise PartnershipConfigError(
                    f"{where}: {field_name!r} is a text field; quote the value {item!r}"
                )
            if spec.allowed_values is not None and item not in spec.allowed_values:
                raise PartnershipConfigError(
                    f"{where}: {item!r} is not an allowed value of {field_name!r} "
                    f"({', '.join(spec.allowed_values)})"
                )
            if spec.pattern is not None and not re.search(spec.pattern, item):
                raise PartnershipConfigError(
                    f"{where}: {item!r} does not match the pattern of {field_name!r}"
                )
            if spec.subcode_separator is not None and spec.subcode_separator in item:
                # Products read such a field by its main code: a sub-code would never match.
                raise PartnershipConfigError(
                    f"{where}: {field_name!r} is compared by its main code (the part before "
                    f"{spec.subcode_separator!r}); write {item.split(spec.subcode_separator)[0]!r}"
                )
            literals.append(sql_string(item))
    elif spec.type is FieldType.INTEGER:
        literals = []
        for item in values:
            if not isinstance(item, int) or isinstance(item, bool):
                raise PartnershipConfigError(f"{where}: {field_name!r} takes whole numbers")
            literals.append(str(item))
    else:
        raise PartnershipConfigError(
            f"{where}: {field_name!r} is a {spec.type} field; only text, integer and boolean "
            "fields can be matched"
        )
    return f"{column} IN ({', '.join(literals)})"


def compile_where(where: Mapping[str, ConditionValue], contract: Contract, place: str) -> Predicate:
    """All conditions of one clause, joined with AND."""
    parts = [_condition(name, value, contract, place) for name, value in where.items()]
    return Predicate("(" + " AND ".join(parts) + ")", tuple(where))


def compile_any_of(
    clauses: Sequence[Mapping[str, ConditionValue]], contract: Contract, place: str
) -> Predicate:
    """Clauses joined with OR; each clause's conditions with AND."""
    compiled = [
        compile_where(clause, contract, f"{place}[{index}]") for index, clause in enumerate(clauses)
    ]
    fields: list[str] = []
    for predicate in compiled:
        fields.extend(name for name in predicate.fields if name not in fields)
    return Predicate("(" + " OR ".join(p.sql for p in compiled) + ")", tuple(fields))


# Loading


def read_yaml(path: Path) -> Any:
    """A YAML file read safely, duplicate keys refused; raises ``ValueError`` with the reason."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as exc:
        raise ValueError(f"cannot read the file: {exc}") from exc
    try:
        return yaml.load(text, Loader=StrictLoader)  # noqa: S506 - a SafeLoader subclass
    except yaml.YAMLError as exc:
        raise ValueError(f"YAML error: {exc}") from exc


def describe_validation_error(exc: ValidationError) -> str:
    first = exc.errors()[0]
    location = ".".join(str(part) for part in first["loc"]) or "(top level)"
    return f"{location}: {first['msg']}"


def load_partnership(path: Path, contracts: Mapping[str, Contract]) -> PartnershipConfig:
    """Read, check and compile the partnership file; raises ``PartnershipConfigError``."""
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise PartnershipConfigError(f"{path}: {exc}") from None
    if not isinstance(data, dict):
        raise PartnershipConfigError(f"{path}: the file must be a YAML mapping")
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        raise PartnershipConfigError(f"{path}: {describe_validation_error(exc)}") from None
    return compile_partnership(document, contracts, str(path))


def parse_partnership(
    data: Mapping[str, Any], contracts: Mapping[str, Contract]
) -> PartnershipConfig:
    """As ``load_partnership``, from an already parsed mapping (tests, tools)."""
    try:
        document = _Document.model_validate(dict(data))
    except ValidationError as exc:
        raise PartnershipConfigError(describe_validation_error(exc)) from None
    return compile_partnership(document, contracts, "partnership")


def compile_partnership(
    document: _Document, contracts: Mapping[str, Contract], source: str
) -> PartnershipConfig:
    sv = document.serious_violence
    if sv.dataset != POLICE_DATASET:
        raise PartnershipConfigError(
            f"{source}: serious_violence.dataset must be {POLICE_DATASET} (the products read "
            "occurrences from it)"
        )
    police = contracts.get(POLICE_DATASET)
    if police is None:
        raise PartnershipConfigError(f"{source}: no contract for {POLICE_DATASET}")
    names = [clause.name for clause in sv.any_of]
    if len(set(names)) != len(names):
        raise PartnershipConfigError(f"{source}: serious_violence.any_of names must be unique")
    sv_where = compile_any_of(
        [clause.where for clause in sv.any_of], police, f"{source}: serious_violence.any_of"
    )
    hkc = document.habitual_knife_carriers
    if hkc.recent_months > hkc.lookback_months:
        raise PartnershipConfigError(
            f"{source}: habitual_knife_carriers.recent_months cannot exceed lookback_months"
        )
    qualifying = compile_any_of(
        hkc.qualifying_any_of, police, f"{source}: habitual_knife_carriers.qualifying_any_of"
    )
    exclude = (
        compile_any_of(hkc.exclude, police, f"{source}: habitual_knife_carriers.exclude")
        if hkc.exclude
        else None
    )
    return PartnershipConfig(
        serious_violence=sv,
        habitual_knife_carriers=hkc,
        disclosure_control=document.disclosure_control,
        level3=document.level3,
        serious_violence_where=sv_where,
        hkc_qualifying_where=qualifying,
        hkc_exclude_where=exclude,
        police=police,
    )
