"""A product definition: one YAML file per product, typed and checked when the platform starts.

The format (``services/products/definitions/<id>.yaml``; unknown keys are refused)::

    id: sv-counts                  # the file's name; lower-case words and hyphens
    level: 1                       # 1 aggregates, 2 small areas, 3 named people
    title: ...
    description: ...               # shown to readers in the catalogue
    sources:                       # dataset -> every contract field the product reads
      police.occurrences: [occurrence_ref, committed_at, csp]
    computed_from:                 # fields stricter than `level`, used but never output
      police.occurrences: [suspect_dob]
    optional_sources: [la.imd]     # results are still made without these
    sources_needed_when:           # a source needed only for some choices
      fire.deliberate_fires: {layer: fire}
    parameters:                    # name -> type, required, default, choices, description
      from: {type: date, required: true, description: ...}
      by:                          # type keys: a comma list of choices; {by} in the SQL
        type: keys                 # becomes ", <sql> AS <key>" for each, {by_names} ", <key>"
        choices:
          weekday: {sql: "...", description: ..., comparable: true}
      unit:                        # type choice: one of the choices; {unit} in the SQL
        type: choice               # becomes the chosen choice's sql
        default: lsoa
        choices: {lsoa: {sql: e.lsoa_code}, h3: {sql: cells.cell}}
      top: {type: integer, default: 20, minimum: 1, maximum: 500, description: ...}
      csp: {type: csp, repeatable: true, description: ...}
      resolution: {type: integer, applies_when: {unit: h3}, ...}
    period: [from, to]             # must satisfy from < to
    comparison: [compare_from, compare_to]   # the engine runs the SQL again over this period
    constraints:                   # combinations refused with a message
      - {when: {layer: ed, unit: h3}, message: ...}
    habitual_knife_carriers: {as_of: as_of}  # gives the SQL the table habitual_knife_carriers
    people:                        # Level 3 only: gives the SQL the table `people` (below)
      as_of: as_of                 # the date districts are computed at (omitted: today)
      person_id: person_id         # the output column holding the pseudonymous person id
      district: district           # the output column checked against the reader's areas
    assessments: true              # gives the SQL hkc_assessments (latest RAG per person_id)
    h3: {when: {unit: h3}, resolution: resolution, points: "SELECT DISTINCT latitude, ..."}
    notes:                         # name -> one value from sql (or a text), in the notes
      total: {description: ..., count: true, compare: true, sql: "SELECT count(...) ..."}
    suppression: {secondary: true, k: 8, rounding: 5}
    output:
      columns:                     # in output order
        weekday:
          by: true                 # present when chosen in `by` (a key)
          key: true                # a dimension: rows are compared and suppressed along it
          count: true              # a count, suppressed from 1 to k-1
          comparison: true         # present only with a comparison
          previous_of: count       # taken from the comparison period's rows
          derive: {ratio: [count, notes.total], scale: 100, decimals: 1}
                                   # or {difference: [a, b]}, {change: [a, b], decimals: 1},
                                   # {dense_rank: count}; withheld with what it derives from
          exposes: [police.occurrences.committed_at]   # contract fields whose values it shows
          reveal: police.occurrences.suspect_forename  # Level 3: the SQL gives the field's
                                   # ciphertext; decrypted only after the read is audited
          order: [Mon, Tue, ...]   # sort order of the values (default: natural)
          when: {unit: lsoa}       # present only for these choices
          domain: SELECT csp FROM csp_areas   # every value of a key (every_group; default:
                                   # the values found in the rows)
          description: ...
      sort: [rank, area]           # default: the key columns
      limit: top                   # an integer parameter: rows kept after sorting
      every_group: true            # a row for every combination of key values, 0 if none
    sql: |                         # DuckDB; $name binds a parameter's value
      SELECT count(DISTINCT occurrence_ref) AS count{by} FROM serious_violence ...

The SQL reads one view per source dataset (dots as underscores: ``police_occurrences``) holding
only the declared fields (stored names: ``<field>``, ``<field>_pseudonym`` for identifiers,
``<field>_enc`` for direct identifiers), ``serious_violence`` (the police rows of the
partnership's definition), ``csp_areas`` (the visible CSP areas), and ``h3_cells`` or
``habitual_knife_carriers`` when asked for. Every view of a dataset with a ``csp`` field is
already limited to the reader's areas and to the ``csp`` parameter.

Level 3 products name people. Their views are not limited to areas (a person's district comes
from all their offences); instead each row's ``people.district`` column must be one of the
reader's areas, and rows outside them are dropped before anything else sees them. The table
``people`` holds one row per police person as of ``people.as_of``: ``person`` (the police person
id's pseudonym, as in ``habitual_knife_carriers``), ``person_id`` (the platform's pseudonymous
person id), ``person_key`` (the cross-agency link), ``district``, ``gender`` and the latest
ciphertexts ``nominal_ref_enc``, ``forename_enc``, ``surname_enc``, ``dob_enc``. Level 3 counts
are facts about one person, never suppressed.

A definition is refused at load (``ProductConfigError``, naming the product and the field) when
it would expose a field whose contract classification is stricter than the product's level
(level1 < level2 < level3), or reads such a field without declaring it under ``computed_from``;
when it names a dataset or field no contract declares; or when its SQL does not run against
empty tables of the declared fields, for every choice, or does not return the declared columns.
A bad definition therefore stops the platform at start-up rather than failing, or leaking, on a
reader's request.

Reading the files of the folder is ``loading``; running a definition's SQL is the ``engine``;
a request's parameters are parsed against a definition in ``parameters``.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictInt,
    StrictStr,
    model_validator,
)

from services.contracts.columns import StoredKind, field_columns
from services.contracts.model import Classification, Contract
from services.kit.errors import ConfigurationError
from services.kit.partnership import CSP_AREAS
from services.products.config import PartnershipConfig

NAME_PATTERN = r"^[a-z][a-z0-9_]*$"
PRODUCT_ID_PATTERN = r"^[a-z][a-z0-9-]*$"

# Names the engine gives to the relations a product's SQL reads (besides one view per source
# dataset, named after the dataset with dots as underscores).
SERIOUS_VIOLENCE_VIEW = "serious_violence"
CSP_AREAS_VIEW = "csp_areas"
H3_CELLS_TABLE = "h3_cells"
HKC_TABLE = "habitual_knife_carriers"

_LEVELS = {Classification.LEVEL1: 1, Classification.LEVEL2: 2, Classification.LEVEL3: 3}

# The people table of Level 3 products is built from these police fields.
POLICE_PEOPLE_SOURCE = "police.occurrences"
POLICE_PEOPLE_FIELDS = (
    "occurrence_ref",
    "committed_at",
    "csp",
    "suspect_nominal_ref",
    "suspect_forename",
    "suspect_surname",
    "suspect_dob",
    "suspect_gender",
)
PEOPLE_TABLE = "people"
ASSESSMENTS_TABLE = "hkc_assessments"
PLACEHOLDER_RE = re.compile(r"\{([a-z][a-z0-9_]*)\}")
SQL_PARAMETER_RE = re.compile(r"\$([a-z_][a-z0-9_]*)")


class ProductConfigError(ConfigurationError):
    """A product definition that must not be served; the message names product and problem."""


def view_name(dataset_id: str) -> str:
    """The SQL name of a dataset's view: ``police.occurrences`` -> ``police_occurrences``."""
    return dataset_id.replace(".", "_")


# The YAML format. Unknown keys are refused everywhere: an analyst's misspelt key would
# otherwise be ignored and change what a product shows.


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ChoiceModel(_Strict):
    description: str | None = None
    # The SQL the placeholder of the parameter stands for when this choice is made. Written by
    # the product's author and reviewed with it; a reader only picks the choice's name.
    sql: str | None = None
    # For `keys` choices: False when the groups differ between periods (months), so that a
    # comparison of them would pair nothing with nothing.
    comparable: bool = True


ParameterType = Literal["date", "integer", "choice", "keys", "csp", "person"]


class ParameterModel(_Strict):
    type: ParameterType
    description: str
    required: bool = False
    default: StrictStr | StrictInt | list[StrictStr] | None = None
    choices: dict[str, ChoiceModel | None] | None = None
    minimum: int | None = None
    maximum: int | None = None
    repeatable: bool = False
    # Given explicitly while these other parameters have other values, it would do nothing:
    # refused rather than ignored.
    applies_when: dict[str, str] | None = None

    @model_validator(mode="after")
    def _check(self) -> ParameterModel:
        if self.type in ("choice", "keys") and not self.choices:
            raise ValueError(f"a {self.type} parameter needs choices")
        if self.type not in ("choice", "keys") and self.choices is not None:
            raise ValueError(f"a {self.type} parameter takes no choices")
        if self.repeatable and self.type != "csp":
            raise ValueError("only csp parameters are repeatable (by takes a comma list)")
        if (self.minimum is not None or self.maximum is not None) and self.type != "integer":
            raise ValueError("minimum and maximum are for integer parameters")
        if self.required and self.default is not None:
            raise ValueError("a required parameter has no default")
        return self


class DeriveModel(_Strict):
    """A column the engine computes from others (and withholds whenever one of them is).

    Operands are column names, or ``notes.<name>`` for a total kept in the notes.
    """

    ratio: tuple[str, str] | None = None
    scale: int = 1
    decimals: int | None = Field(default=None, ge=0, le=6)
    difference: tuple[str, str] | None = None
    change: tuple[str, str] | None = None  # (current - previous) / previous * 100
    dense_rank: str | None = None  # by this column, largest first

    @model_validator(mode="after")
    def _one(self) -> DeriveModel:
        given = [
            op
            for op in (self.ratio, self.difference, self.change, self.dense_rank)
            if op is not None
        ]
        if len(given) != 1:
            raise ValueError("derive takes exactly one of ratio, difference, change, dense_rank")
        return self

    @property
    def operands(self) -> tuple[str, ...]:
        for op in (self.ratio, self.difference, self.change):
            if op is not None:
                return tuple(op)
        assert self.dense_rank is not None
        return (self.dense_rank,)


class ColumnModel(_Strict):
    description: str
    key: bool = False  # a dimension: rows are keyed, compared and suppressed along these
    by: bool = False  # a key present only when chosen in the `by` parameter
    count: bool = False  # a count of people or events, subject to small-number suppression
    comparison: bool = False  # present only when a comparison period is given
    previous_of: str | None = None  # this column of the comparison period's rows
    derive: DeriveModel | None = None
    exposes: list[str] = Field(default_factory=list)  # "dataset.field" whose values it shows
    reveal: str | None = None  # Level 3: "dataset.field" whose ciphertext the SQL returns
    order: list[StrictStr | StrictInt] | None = None  # the values' natural order, for sorting
    when: dict[str, str] | None = None  # present only when these parameters have these values
    # A key's every value, as SQL giving one column (``every_group``); none: the values found.
    domain: str | None = None


class NoteModel(_Strict):
    description: str
    sql: str | None = None  # one row, one value
    text: str | None = None
    count: bool = False  # suppressed like a count
    compare: bool = False  # also computed for the comparison period, as previous_<name>

    @model_validator(mode="after")
    def _one(self) -> NoteModel:
        if (self.sql is None) == (self.text is None):
            raise ValueError("a note has either sql or text")
        if self.compare and self.sql is None:
            raise ValueError("only a sql note can be compared")
        return self


class OutputModel(_Strict):
    columns: dict[str, ColumnModel] = Field(min_length=1)
    sort: list[str] | None = None  # default: the key columns in order
    limit: str | None = None  # an integer parameter: rows kept after sorting
    # A row for every combination of the key columns' values, a group without events counting
    # 0: an analyst comparing groups must tell "none" from "not asked" (see engine._every_group).
    every_group: bool = False


class SuppressionModel(_Strict):
    secondary: bool = True
    k: int | None = Field(default=None, ge=2, le=100)
    # Published counts are rounded to the nearest multiple of this (1: exact; see disclosure).
    rounding: int = Field(default=5, ge=1, le=100)


class H3Model(_Strict):
    when: dict[str, str] | None = None
    resolution: str
    points: str  # SQL giving distinct (latitude, longitude) to index


class HkcUseModel(_Strict):
    as_of: str  # the date parameter


class PeopleModel(_Strict):
    as_of: str | None = None  # a date parameter; None: today
    person_id: str  # the output column with the pseudonymous person id
    district: str  # the output column limited to the reader's areas


class ConstraintModel(_Strict):
    when: dict[str, str] = Field(min_length=2)
    message: str


class ProductSpec(_Strict):
    id: str = Field(pattern=PRODUCT_ID_PATTERN)
    level: Literal[1, 2, 3]
    title: str
    description: str
    sources: dict[str, list[str]] = Field(min_length=1)
    computed_from: dict[str, list[str]] = Field(default_factory=dict)
    optional_sources: list[str] = Field(default_factory=list)
    sources_needed_when: dict[str, dict[str, str]] = Field(default_factory=dict)
    parameters: dict[str, ParameterModel] = Field(default_factory=dict)
    period: tuple[str, str] | None = None
    comparison: tuple[str, str] | None = None
    constraints: list[ConstraintModel] = Field(default_factory=list)
    habitual_knife_carriers: HkcUseModel | None = None
    people: PeopleModel | None = None
    assessments: bool = False
    h3: H3Model | None = None
    output: OutputModel
    notes: dict[str, NoteModel] = Field(default_factory=dict)
    suppression: SuppressionModel = Field(default_factory=SuppressionModel)
    sql: str


# What the rest of the platform sees


@dataclass(frozen=True)
class ParameterSpec:
    name: str
    type: ParameterType
    description: str
    required: bool
    default: Any
    choices: tuple[str, ...] | None
    repeatable: bool = False
    minimum: int | None = None
    maximum: int | None = None
    choice_sql: Mapping[str, str] = field(default_factory=dict)
    not_comparable: frozenset[str] = frozenset()
    applies_when: Mapping[str, str] | None = None

    @property
    def is_list(self) -> bool:
        return self.type == "keys" or self.repeatable

    def describe(self) -> dict[str, Any]:
        """The parameter for a catalogue listing (JSON-serialisable; no SQL)."""
        described: dict[str, Any] = {
            "name": self.name,
            "type": self.type,
            "required": self.required,
            "default": self.default,
            "choices": list(self.choices) if self.choices is not None else None,
            "description": self.description,
        }
        if self.type == "csp":
            described["choices"] = list(CSP_AREAS)
        if self.is_list:
            described["repeatable"] = self.repeatable
            if self.type == "keys":
                described["format"] = "comma-separated list"
        if self.type == "date":
            described["format"] = "YYYY-MM-DD"
        if self.type == "person":
            described["format"] = "person id: 32 lower-case hex digits"
        if self.minimum is not None:
            described["minimum"] = self.minimum
        if self.maximum is not None:
            described["maximum"] = self.maximum
        return described


@dataclass(frozen=True)
class ProductDefinition:
    id: str
    level: int
    title: str
    description: str
    parameters: list[ParameterSpec]
    sources: list[str]
    spec: ProductSpec
    partnership: PartnershipConfig
    contracts: Mapping[str, Contract]
    # The threshold the product asks for (its file, or the partnership's list); None: the
    # platform's.
    k: int | None = None

    def parameter(self, name: str) -> ParameterSpec | None:
        for spec in self.parameters:
            if spec.name == name:
                return spec
        return None

    def used_sources(self, params: Mapping[str, Any]) -> list[str]:
        """The datasets a run with these parameters reads."""
        used = []
        for dataset in self.sources:
            condition = self.spec.sources_needed_when.get(dataset)
            if condition is None or conditions_hold(condition, params):
                used.append(dataset)
        return used

    def needed_sources(self, params: Mapping[str, Any]) -> list[str]:
        """The datasets without which this run has nothing to show."""
        return [d for d in self.used_sources(params) if d not in self.spec.optional_sources]

    def revealed_columns(self) -> dict[str, tuple[str, str]]:
        """Output column -> (dataset, field) whose ciphertext it holds until revealed."""
        found: dict[str, tuple[str, str]] = {}
        for name, column in self.spec.output.columns.items():
            if column.reveal is not None:
                dataset, _, field_name = column.reveal.rpartition(".")
                found[name] = (dataset, field_name)
        return found


def conditions_hold(condition: Mapping[str, str], params: Mapping[str, Any]) -> bool:
    return all(str(params.get(name)) == value for name, value in condition.items())


def build_definition(
    spec: ProductSpec, contracts: Mapping[str, Contract], partnership: PartnershipConfig
) -> ProductDefinition:
    _Checker(spec, contracts).check()
    parameters = [_parameter(name, model) for name, model in spec.parameters.items()]
    return ProductDefinition(
        id=spec.id,
        level=spec.level,
        title=spec.title,
        description=spec.description.strip(),
        parameters=parameters,
        sources=list(spec.sources),
        spec=spec,
        partnership=partnership,
        contracts=contracts,
        k=spec.suppression.k or partnership.k_for(spec.id),
    )


def _parameter(name: str, model: ParameterModel) -> ParameterSpec:
    choices = tuple(model.choices) if model.choices is not None else None
    choice_sql = {
        key: choice.sql
        for key, choice in (model.choices or {}).items()
        if choice is not None and choice.sql is not None
    }
    not_comparable = frozenset(
        key
        for key, choice in (model.choices or {}).items()
        if choice is not None and not choice.comparable
    )
    default: Any = model.default
    if default is None and model.type == "keys":
        default = []
    return ParameterSpec(
        name=name,
        type=model.type,
        description=model.description.strip(),
        required=model.required,
        default=default,
        choices=choices,
        repeatable=model.repeatable,
        minimum=model.minimum,
        maximum=model.maximum,
        choice_sql=choice_sql,
        not_comparable=not_comparable,
        applies_when=model.applies_when,
    )


class _Checker:
    """The load-time rules that do not need to run the SQL."""

    def __init__(self, spec: ProductSpec, contracts: Mapping[str, Contract]) -> None:
        self.spec = spec
        self.contracts = contracts

    def fail(self, message: str) -> ProductConfigError:
        return ProductConfigError(f"product {self.spec.id!r}: {message}")

    def check(self) -> None:
        self._sources()
        self._classification()
        self._parameters()
        self._columns()
        self._sql_names()

    def _sources(self) -> None:
        spec = self.spec
        for dataset, fields in {**spec.sources, **spec.computed_from}.items():
            contract = self.contracts.get(dataset)
            if contract is None:
                raise self.fail(f"source {dataset!r} has no data contract")
            for name in fields:
                if name not in contract.field_names:
                    raise self.fail(f"{dataset}.{name} is not a field of the contract")
        for dataset, fields in spec.computed_from.items():
            declared = spec.sources.get(dataset, [])
            for name in fields:
                if name not in declared:
                    raise self.fail(
                        f"{dataset}.{name} is under computed_from but not under sources"
                    )
        for dataset in [*spec.optional_sources, *spec.sources_needed_when]:
            if dataset not in spec.sources:
                raise self.fail(f"{dataset!r} is not one of the sources")

    def _classification(self) -> None:
        spec = self.spec
        computed = {
            (dataset, name) for dataset, fields in spec.computed_from.items() for name in fields
        }
        for dataset, fields in spec.sources.items():
            contract = self.contracts[dataset]
            for name in fields:
                level = _LEVELS[contract.field(name).classification]
                if level > spec.level and (dataset, name) not in computed:
                    raise self.fail(
                        f"field {dataset}.{name} is classified level{level}, stricter than the "
                        f"product's level {spec.level}; it may only be used in computation, "
                        "declared under computed_from and never output"
                    )
        for column, model in spec.output.columns.items():
            for exposed in model.exposes:
                dataset, _, name = exposed.rpartition(".")
                if name not in spec.sources.get(dataset, []):
                    raise self.fail(
                        f"column {column!r} exposes {exposed}, which is not a declared source field"
                    )
                level = _LEVELS[self.contracts[dataset].field(name).classification]
                if level > spec.level or (dataset, name) in computed:
                    raise self.fail(
                        f"column {column!r} would expose field {exposed} (classified "
                        f"level{level}) in a level {spec.level} product"
                    )
        if spec.habitual_knife_carriers is not None:
            police = spec.computed_from.get("police.occurrences", [])
            if spec.level == 3:
                police = spec.sources.get("police.occurrences", [])
            for name in ("suspect_nominal_ref", "suspect_dob"):
                if name not in police:
                    raise self.fail(
                        "the habitual knife carrier list is computed from police.occurrences."
                        f"{name}; declare it under sources"
                        + ("" if spec.level == 3 else " and computed_from")
                    )
        self._level3()

    def _level3(self) -> None:
        spec = self.spec
        level3_only = {
            "people": spec.people is not None,
            "assessments": spec.assessments,
            "a revealed column": any(c.reveal for c in spec.output.columns.values()),
            "a person parameter": any(p.type == "person" for p in spec.parameters.values()),
        }
        if spec.level != 3:
            for what, present in level3_only.items():
                if present:
                    raise self.fail(f"{what} is for Level 3 products only")
            return
        if spec.people is None:
            raise self.fail("a Level 3 product declares `people` (person id and district)")
        police = set(spec.sources.get(POLICE_PEOPLE_SOURCE, []))
        missing = [name for name in POLICE_PEOPLE_FIELDS if name not in police]
        if missing:
            raise self.fail(
                f"the people table is built from {POLICE_PEOPLE_SOURCE}; declare "
                f"{', '.join(missing)} under its sources"
            )
        for role, column in (
            ("person_id", spec.people.person_id),
            ("district", spec.people.district),
        ):
            if column not in spec.output.columns:
                raise self.fail(f"people.{role} names {column!r}, which is not a column")
        if spec.people.as_of is not None and self._type_of(spec.people.as_of) != "date":
            raise self.fail("people.as_of must name a date parameter")
        for name, model in spec.output.columns.items():
            if model.reveal is None:
                continue
            dataset, _, field_name = model.reveal.rpartition(".")
            if field_name not in spec.sources.get(dataset, []):
                raise self.fail(
                    f"column {name!r} reveals {model.reveal}, not a declared source field"
                )
            contract_field = self.contracts[dataset].field(field_name)
            encrypted = any(
                column.kind is StoredKind.CIPHERTEXT for column in field_columns(contract_field)
            )
            if not encrypted:
                raise self.fail(
                    f"column {name!r} reveals {model.reveal}, which is not kept encrypted for "
                    "Level 3 display"
                )
            if model.count or model.derive is not None or model.key:
                raise self.fail(f"revealed column {name!r} cannot be a key, count or derived")

    def _parameters(self) -> None:
        spec = self.spec
        for name, model in spec.parameters.items():
            if not re.match(NAME_PATTERN, name):
                raise self.fail(f"parameter name {name!r} must be lower_case")
            if name == "format":
                raise self.fail("'format' is the platform's parameter, not a product's")
            for key in model.choices or {}:
                if not re.match(NAME_PATTERN, key):
                    raise self.fail(f"choice {key!r} of {name} must be lower_case")
            if model.applies_when:
                self._known_choice_condition(model.applies_when, f"applies_when of {name}")
        for pair_name, pair in (("period", spec.period), ("comparison", spec.comparison)):
            if pair is None:
                continue
            for name in pair:
                if self._type_of(name) != "date":
                    raise self.fail(f"{pair_name} names {name!r}, which is not a date parameter")
        if spec.comparison is not None and spec.period is None:
            raise self.fail("a comparison needs a period")
        hkc = spec.habitual_knife_carriers
        if hkc is not None and self._type_of(hkc.as_of) != "date":
            raise self.fail("habitual_knife_carriers.as_of must name a date parameter")
        if spec.h3 is not None:
            if self._type_of(spec.h3.resolution) != "integer":
                raise self.fail("h3.resolution must name an integer parameter")
            if spec.h3.when:
                self._known_choice_condition(spec.h3.when, "h3.when")
        if spec.output.limit is not None and self._type_of(spec.output.limit) != "integer":
            raise self.fail("output.limit must name an integer parameter")
        for constraint in spec.constraints:
            self._known_choice_condition(constraint.when, "a constraint")
        for dataset, condition in spec.sources_needed_when.items():
            self._known_choice_condition(condition, f"sources_needed_when of {dataset}")
        keys = [m for m in spec.parameters.values() if m.type == "keys"]
        if len(keys) > 1:
            raise self.fail("a product has at most one keys parameter")

    def _type_of(self, name: str) -> str | None:
        model = self.spec.parameters.get(name)
        return model.type if model is not None else None

    def _known_choice_condition(self, condition: Mapping[str, str], where: str) -> None:
        for name, value in condition.items():
            model = self.spec.parameters.get(name)
            if model is None or model.type != "choice" or value not in (model.choices or {}):
                raise self.fail(f"{where} names {name}={value}, which is not a declared choice")

    def _columns(self) -> None:
        spec = self.spec
        columns = spec.output.columns
        keys_param = next(
            ((n, m) for n, m in spec.parameters.items() if m.type == "keys"), (None, None)
        )
        by_choices = set((keys_param[1].choices or {}) if keys_param[1] else {})
        for name, model in columns.items():
            if not re.match(NAME_PATTERN, name) or name == "suppressed":
                raise self.fail(f"column name {name!r} is not allowed")
            if model.by and name not in by_choices:
                raise self.fail(f"column {name!r} is marked by but is not a choice of by")
            if model.by and model.count:
                raise self.fail(f"column {name!r} cannot be both a key and a count")
            if model.comparison and spec.comparison is None:
                raise self.fail(f"column {name!r} is for comparisons, but none is declared")
            if model.previous_of is not None:
                target = columns.get(model.previous_of)
                if target is None or not model.comparison:
                    raise self.fail(
                        f"column {name!r}: previous_of must name a column, on a comparison column"
                    )
                if target.count != model.count:
                    raise self.fail(
                        f"column {name!r} must be a count exactly when {model.previous_of!r} is"
                    )
            if model.derive is not None:
                if model.count:
                    raise self.fail(f"derived column {name!r} cannot be a count")
                for operand in model.derive.operands:
                    self._operand(name, operand)
            if model.when:
                self._known_choice_condition(model.when, f"column {name!r}")
        missing = by_choices - set(columns)
        if missing:
            raise self.fail(f"by choices without a column: {', '.join(sorted(missing))}")
        for name in spec.output.sort or []:
            if name not in columns:
                raise self.fail(f"sort names {name!r}, which is not a column")
        if spec.level < 3 and not any(model.count for model in columns.values()):
            raise self.fail("a product shows at least one count column")
        for name, note in spec.notes.items():
            if not re.match(NAME_PATTERN, name) or name.startswith("previous_"):
                raise self.fail(f"note name {name!r} is not allowed")
            if note.compare and spec.comparison is None:
                raise self.fail(f"note {name!r} is compared, but no comparison is declared")

    def _operand(self, column: str, operand: str) -> None:
        spec = self.spec
        if operand.startswith("notes."):
            note_name = operand.removeprefix("notes.")
            base = note_name.removeprefix("previous_")
            note = spec.notes.get(base)
            if note is None or note.sql is None:
                raise self.fail(
                    f"column {column!r} derives from {operand}, which is not a sql note"
                )
            if note_name != base and not note.compare:
                raise self.fail(f"column {column!r} uses {operand}, but {base} is not compared")
            return
        if operand not in spec.output.columns or operand == column:
            raise self.fail(f"column {column!r} derives from {operand!r}, which is not a column")

    def _sql_names(self) -> None:
        spec = self.spec
        placeholders = {
            name
            for name, model in spec.parameters.items()
            if model.type == "choice"
            and model.choices
            and any(c is not None and c.sql is not None for c in model.choices.values())
        }
        keys = [name for name, model in spec.parameters.items() if model.type == "keys"]
        if keys:
            placeholders |= {"by", "by_names"}
        texts = {"sql": spec.sql}
        texts.update({f"notes.{n}": note.sql for n, note in spec.notes.items() if note.sql})
        if spec.h3 is not None:
            texts["h3.points"] = spec.h3.points
        engine_parameters = set(spec.parameters)
        for where, text in texts.items():
            for found in PLACEHOLDER_RE.findall(text):
                if found not in placeholders:
                    raise self.fail(
                        f"{where} uses {{{found}}}, which is not a declared placeholder"
                    )
            for found in SQL_PARAMETER_RE.findall(text):
                if found not in engine_parameters:
                    raise self.fail(f"{where} uses ${found}, which is not a declared parameter")
            comparison = set(spec.comparison or ())
            if comparison & set(SQL_PARAMETER_RE.findall(text)):
                raise self.fail(
                    f"{where} reads the comparison period directly; the engine runs the query "
                    "again over it"
                )
        for model in spec.parameters.values():
            for choice in (model.choices or {}).values():
                if choice is not None and choice.sql and PLACEHOLDER_RE.search(choice.sql):
                    raise self.fail("a choice's sql cannot hold a placeholder")
