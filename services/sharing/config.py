"""The published tables: shares, schemas and tables built from products with fixed parameters.

The format (``config/sharing.yaml``; unknown keys are refused)::

    shares:
      vrp:                                   # share name: lower-case letters, digits, _
        description: ...
        schemas:
          serious_violence:                  # schema name
            tables:
              sv_counts_by_csp_month:        # table name
                product: sv-counts           # a Level 1 or Level 2 product
                description: ...
                parameters:                  # the product's parameters, fixed
                  from: month_start - 36 months
                  to: month_start
                  by: csp,month

A date parameter is an ISO date or a date relative to the day the table is materialised:
``today``, ``month_start``, ``year_start`` or ``financial_year_start`` (1 April), optionally
followed by ``+`` or ``-`` and a number of days, months or years. Dates are days in UTC.

The file is checked when the platform starts: an unknown product, a Level 3 product, a name the
protocol does not allow, a table given twice or parameters the product refuses stop the
platform, rather than a recipient's query failing later.
"""

from __future__ import annotations

import calendar
import re
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, timedelta
from pathlib import Path
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, StrictInt, StrictStr, ValidationError

from services.kit.errors import BadRequest, ConfigurationError
from services.products.config import describe_validation_error, read_yaml
from services.products.definition import ProductDefinition
from services.products.parameters import parse_parameters

# Names: the protocol forbids spaces, slashes, dots and control characters and compares them
# without case; these are lower-case to start with, so a lookup lower-cases the request.
NAME_PATTERN = r"^[a-z][a-z0-9_]{0,99}$"
PUBLISHABLE_LEVELS = (1, 2)
_NAMESPACE = uuid.UUID("5f0c3f7e-9a51-4c55-8f0e-3a6c1f0d2b71")
_RELATIVE = re.compile(
    r"^(today|month_start|year_start|financial_year_start)"
    r"(?:\s*([+-])\s*(\d{1,4})\s*(days?|months?|years?))?$"
)
_ISO_DATE = re.compile(r"^\d{4}-\d{2}-\d{2}$")


class SharingConfigError(ConfigurationError):
    """The sharing file cannot be used; the message names the table and the problem."""


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


ParameterValue = StrictStr | StrictInt | list[StrictStr]


class _TableModel(_Strict):
    product: str
    description: str | None = None
    parameters: dict[str, ParameterValue] = Field(default_factory=dict)


class _SchemaModel(_Strict):
    description: str | None = None
    tables: dict[str, _TableModel] = Field(min_length=1)


class _ShareModel(_Strict):
    description: str | None = None
    schemas: dict[str, _SchemaModel] = Field(min_length=1)


class _Document(_Strict):
    shares: dict[str, _ShareModel] = Field(default_factory=dict)


@dataclass(frozen=True)
class PublishedTable:
    share: str
    schema: str
    name: str
    product: str
    level: int
    description: str
    parameters: Mapping[str, ParameterValue]

    @property
    def key(self) -> str:
        return f"{self.share}.{self.schema}.{self.name}"

    @property
    def id(self) -> str:
        """Stable across restarts and versions (the protocol's table id)."""
        return str(uuid.uuid5(_NAMESPACE, "table:" + self.key))

    @property
    def share_id(self) -> str:
        return share_id(self.share)


def share_id(name: str) -> str:
    return str(uuid.uuid5(_NAMESPACE, "share:" + name))


@dataclass(frozen=True)
class SharingConfig:
    # share -> schema -> table name -> table, in the file's order.
    shares: dict[str, dict[str, dict[str, PublishedTable]]]

    @property
    def tables(self) -> list[PublishedTable]:
        return [
            table
            for schemas in self.shares.values()
            for tables in schemas.values()
            for table in tables.values()
        ]

    def find(self, share: str, schema: str | None = None, table: str | None = None) -> Any:
        """The share's schemas, a schema's tables or one table; None when it does not exist."""
        schemas = self.shares.get(share.lower())
        if schemas is None or schema is None:
            return schemas
        tables = schemas.get(schema.lower())
        if tables is None or table is None:
            return tables
        return tables.get(table.lower())


def resolve_date(expression: str, today: date) -> date:
    """An ISO date, or a date relative to ``today`` (see the module's docstring)."""
    text = expression.strip()
    if _ISO_DATE.match(text):
        return date.fromisoformat(text)
    match = _RELATIVE.match(text)
    if match is None:
        raise ValueError(
            f"{expression!r} is neither an ISO date nor today, month_start, year_start or "
            "financial_year_start with an optional + or - N days, months or years"
        )
    anchor, sign, amount, unit = match.groups()
    if anchor == "today":
        base = today
    elif anchor == "month_start":
        base = today.replace(day=1)
    elif anchor == "year_start":
        base = today.replace(month=1, day=1)
    else:
        year = today.year if today.month >= 4 else today.year - 1
        base = date(year, 4, 1)
    if sign is None:
        return base
    n = int(amount) * (-1 if sign == "-" else 1)
    if unit.startswith("day"):
        return base + timedelta(days=n)
    months = n if unit.startswith("month") else 12 * n
    return _add_months(base, months)


def _add_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) + months
    year, month = index // 12, index % 12 + 1
    # The last day of the target month when the day does not exist there (31 March - 1 month).
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def parameter_pairs(
    table: PublishedTable, definition: ProductDefinition, today: date
) -> list[tuple[str, str]]:
    """The table's parameters as request pairs, relative dates resolved for ``today``."""
    pairs: list[tuple[str, str]] = []
    for name, value in table.parameters.items():
        spec = definition.parameter(name)
        values = value if isinstance(value, list) else [value]
        for item in values:
            if spec is not None and spec.type == "date" and isinstance(item, str):
                item = resolve_date(item, today).isoformat()
            pairs.append((name, str(item)))
    return pairs


def load_sharing(
    path: Path, catalogue: Mapping[str, ProductDefinition], today: date
) -> SharingConfig:
    """Read and check the sharing file; raises ``SharingConfigError``. A missing file: no shares."""
    if not path.exists():
        return SharingConfig({})
    try:
        data = read_yaml(path)
    except ValueError as exc:
        raise SharingConfigError(f"{path.name}: {exc}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise SharingConfigError(f"{path.name}: the file must be a YAML mapping")
    try:
        document = _Document.model_validate(data)
    except ValidationError as exc:
        raise SharingConfigError(f"{path.name}: {describe_validation_error(exc)}") from None
    shares: dict[str, dict[str, dict[str, PublishedTable]]] = {}
    for share_name, share in document.shares.items():
        _check_name(path, "share", share_name)
        schemas: dict[str, dict[str, PublishedTable]] = {}
        for schema_name, schema in share.schemas.items():
            _check_name(path, "schema", schema_name)
            tables: dict[str, PublishedTable] = {}
            for table_name, model in schema.tables.items():
                _check_name(path, "table", table_name)
                label = f"{path.name}: table {share_name}.{schema_name}.{table_name}"
                tables[table_name] = _table(
                    label, share_name, schema_name, table_name, model, catalogue, today
                )
            schemas[schema_name] = tables
        shares[share_name] = schemas
    return SharingConfig(shares)


def _check_name(path: Path, kind: str, name: str) -> None:
    if not re.match(NAME_PATTERN, name):
        raise SharingConfigError(
            f"{path.name}: {kind} name {name!r} must be lower-case letters, digits and _ "
            "(starting with a letter, at most 100 characters)"
        )


def _table(
    label: str,
    share: str,
    schema: str,
    name: str,
    model: _TableModel,
    catalogue: Mapping[str, ProductDefinition],
    today: date,
) -> PublishedTable:
    definition = catalogue.get(model.product)
    if definition is None:
        raise SharingConfigError(f"{label}: no product {model.product!r}")
    if definition.level not in PUBLISHABLE_LEVELS:
        raise SharingConfigError(
            f"{label}: {model.product} is Level {definition.level}; only Level 1 and 2 products "
            "are published over Delta Sharing"
        )
    if "format" in model.parameters:
        raise SharingConfigError(f"{label}: format is not a parameter (tables are Parquet)")
    table = PublishedTable(
        share=share,
        schema=schema,
        name=name,
        product=definition.id,
        level=definition.level,
        description=(model.description or definition.title).strip(),
        parameters=dict(model.parameters),
    )
    try:
        parse_parameters(definition, parameter_pairs(table, definition, today))
    except (ValueError, BadRequest) as exc:
        detail = exc.detail if isinstance(exc, BadRequest) else str(exc)
        raise SharingConfigError(f"{label}: {detail}") from None
    return table
