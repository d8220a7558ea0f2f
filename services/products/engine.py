"""Running a product definition: DuckDB over the current Parquet versions, then the generic steps.

Each run opens its own in-memory DuckDB connection and gives the product's SQL the views of its
source datasets (``views``), ``h3_cells`` where the definition asks for it, and the named tables
the caller provides for the definition (``habitual_knife_carriers``, ``people``,
``hkc_assessments``: see ``compute``), as rows or as a query (``QueryTable``). This is the
only module that imports DuckDB.

What SQL does badly is done here, switched on by the definition: the comparison period (the
query run again over it and joined on the key columns), derived columns (ratios, changes, dense
ranks, with exact rounding), a row limit, small-number suppression and a stable row order.
Level 3 rows are limited to the reader's areas by the district column the definition names.
"""

from __future__ import annotations

import hashlib
import itertools
import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import date, datetime
from decimal import Decimal
from fractions import Fraction
from pathlib import Path
from typing import Any

import duckdb
import duckdb.func
import h3
import pyarrow as pa

from services.contracts.model import FieldType
from services.kit.clock import utcnow
from services.kit.errors import AreaNotPermitted, BadRequest, StoredVersionMissing
from services.products import disclosure, views
from services.products.definition import (
    ASSESSMENTS_TABLE,
    H3_CELLS_TABLE,
    HKC_TABLE,
    PEOPLE_TABLE,
    PLACEHOLDER_RE,
    SERIOUS_VIOLENCE_VIEW,
    SQL_PARAMETER_RE,
    ColumnModel,
    DeriveModel,
    ProductConfigError,
    ProductDefinition,
    conditions_hold,
)
from services.products.parameters import normalise_parameters
from services.storage import objects
from services.storage.service import VersionInfo

_H3_SCHEMA = pa.schema(
    [
        pa.field("latitude", pa.float64()),
        pa.field("longitude", pa.float64()),
        pa.field("cell", pa.string()),
    ]
)
_RELATION_NAME_RE = re.compile(r"^[a-z][a-z0-9_]*$")
# The most groups an ``every_group`` product answers with: every key multiplies them.
MAX_GROUPS = 100_000


@dataclass(frozen=True)
class ProductResult:
    product: str
    level: int
    parameters: dict[str, Any]
    generated_at: str
    sources: dict[str, int]
    columns: list[str]
    rows: list[dict[str, Any]]
    notes: dict[str, Any]
    # "integer", "float", "string", "boolean", "date", "timestamp" per column, for typed
    # exports (Parquet) even when suppression has left a column without a single value. Rows
    # hold dates and timestamps as ISO text (the JSON answer); the exports turn them back.
    column_types: dict[str, str] = field(default_factory=dict)
    # The contract version each source's data was validated against, for the read's audit
    # event (what a reader was shown, under which agreement).
    contract_versions: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class RunInputs:
    """What a named table of one run is built from."""

    definition: ProductDefinition
    params: Mapping[str, Any]
    versions: Mapping[str, VersionInfo]
    # The CSP areas the run's rows are limited to (None: every area).
    areas: frozenset[str] | None


@dataclass(frozen=True)
class QueryTable:
    """A named table given as a query over the run's own connection rather than as rows.

    The product's SQL reads it as a view, so DuckDB computes only what that SQL reads of it:
    the keys of a join can be passed down to a scan in the query (a Bloom filter), and the
    query's functions then run only for the rows that pass. ``functions`` are vectorised and
    deterministic, text to text, registered under their names for the run (nulls are handed
    to them). The text holds no value from a request; ``params`` are bound.
    """

    sql: str
    params: Mapping[str, Any] = field(default_factory=dict)
    functions: Mapping[str, Callable[[pa.Array], pa.Array]] = field(default_factory=dict)


TableBuilder = Callable[[RunInputs], pa.Table | QueryTable]


def named_tables(defn: ProductDefinition) -> list[str]:
    """The tables besides the views that a definition's SQL reads, by name."""
    spec = defn.spec
    wanted = (
        (PEOPLE_TABLE, spec.people is not None),
        (ASSESSMENTS_TABLE, spec.assessments),
        (HKC_TABLE, spec.habitual_knife_carriers is not None),
    )
    return [name for name, used in wanted if used]


# Public entry points


def run(
    defn: ProductDefinition,
    params: dict[str, Any],
    *,
    versions: dict[str, VersionInfo],
    suppress: bool,
    k: int,
    areas: frozenset[str] | None,
    tables: Mapping[str, TableBuilder],
) -> ProductResult:
    """One product over the given dataset versions. ``params`` come from ``parse_parameters``.

    ``areas`` None means no area restriction; otherwise rows are limited to those CSP areas and
    a ``csp`` parameter naming another area is ``AreaNotPermitted``. Level 3 rows are limited by
    the person's district instead. ``tables`` builds each named table the definition reads.
    """
    visible = _visible_areas(defn, params, areas)
    level3 = defn.level == 3
    if level3:
        # A person's district comes from all their records; their row is then kept or dropped.
        # Counts about one person are facts about them, not statistics to suppress.
        visible, suppress = None, False
    threshold = defn.k or k
    comparing = _comparing(defn, params)
    columns = _present_columns(defn, params, comparing)
    notes: dict[str, Any] = {}
    used = defn.used_sources(params)
    sources = {dataset: versions[dataset].version for dataset in used if dataset in versions}
    missing = [dataset for dataset in defn.needed_sources(params) if dataset not in versions]
    if missing:
        notes["missing_sources"] = missing
        notes["message"] = "no data has been pushed yet for " + ", ".join(missing)
        types = _column_types(defn, columns, [])
        empty = _result(defn, params, sources, columns, [], notes, types, suppress, threshold)
        return replace(empty, contract_versions=_contract_versions(versions, sources))
    inputs = RunInputs(defn, params, versions, visible)
    con = duckdb.connect()
    try:
        remote = _register_remote(con, versions)
        names = {path: read.name for path, read in remote.items()}
        _create_views(con, defn, {d: v.files for d, v in versions.items()}, visible, names)
        for name in named_tables(defn):
            build = tables.get(name)
            if build is None:
                raise ValueError(f"product {defn.id!r} reads the table {name}; none was given")
            _register(con, name, build(inputs))
        try:
            rows, types = _evaluate(con, defn, params, columns, comparing, notes)
        except duckdb.Error:
            _explain_remote_failure(remote)
            raise
    finally:
        con.close()
    for read in remote.values():
        # After the answer, not beside it: the next reads of the version are local.
        read.stored.store.fetch_later(read.stored.key)
    if level3:
        rows = _within_areas(defn, rows, areas)
    result = _finish(defn, params, sources, columns, rows, notes, types, suppress, threshold)
    return replace(result, contract_versions=_contract_versions(versions, sources))


@dataclass(frozen=True)
class _InPlace:
    """A source file read in place in the store, under its registered relation name."""

    name: str
    stored: objects.RemoteObject
    dataset_id: str
    version: int


def _register_remote(
    con: duckdb.DuckDBPyConnection, versions: Mapping[str, VersionInfo]
) -> dict[Path, _InPlace]:
    """Each source file that this replica holds no copy of (S3), registered as a scan of the
    object in place: the views then fetch only the columns and row groups the product reads,
    not the whole object. By file."""
    remote: dict[Path, _InPlace] = {}
    for info in versions.values():
        for path in info.files:
            found = objects.remote(path)
            if found is None:
                continue
            try:
                dataset = found.dataset()
            except objects.ObjectMissing:
                raise StoredVersionMissing(info.dataset_id, info.version) from None
            name = f"stored_object_{len(remote)}"
            con.register(name, dataset)
            remote[path] = _InPlace(name, found, info.dataset_id, info.version)
    return remote


def _explain_remote_failure(remote: Mapping[Path, _InPlace]) -> None:
    """When a query over objects read in place failed, the store's own error if it has one:
    an object gone since the scan began, or a store that stopped answering."""
    for read in remote.values():
        if not read.stored.exists():
            raise StoredVersionMissing(read.dataset_id, read.version)


def _register(con: duckdb.DuckDBPyConnection, name: str, table: pa.Table | QueryTable) -> None:
    if isinstance(table, pa.Table):
        con.register(name, table)
        return
    for function, compute in table.functions.items():
        if not _RELATION_NAME_RE.match(function):
            raise ValueError(f"{function!r} is not a function name")
        con.create_function(
            function,
            _text_function(compute),
            [duckdb.sqltype("VARCHAR")],
            duckdb.sqltype("VARCHAR"),
            type=duckdb.func.PythonUDFType.ARROW,
            null_handling=duckdb.func.FunctionNullHandling.SPECIAL,
            side_effects=False,
        )
    con.sql(table.sql, params=dict(table.params)).create_view(name)


def _text_function(compute: Callable[[pa.Array], pa.Array]) -> Callable[[Any], pa.Array]:
    def apply(values: Any) -> pa.Array:
        if isinstance(values, pa.ChunkedArray):
            values = values.combine_chunks()
        return compute(values.cast(pa.string()))

    return apply


def _contract_versions(
    versions: Mapping[str, VersionInfo], sources: dict[str, int]
) -> dict[str, str]:
    return {dataset: versions[dataset].contract_version for dataset in sources}


def check_definition(defn: ProductDefinition, schemas: Mapping[str, pa.Schema]) -> None:
    """Run the product's SQL on empty tables for every choice, to refuse a broken definition.

    ``schemas`` gives the shape of each named table. Raises ``ProductConfigError`` when the SQL
    does not run or does not return the declared columns. A definition that passed once is not
    run again in this process while its text, its sources' contracts and the partnership's
    definitions are unchanged (tests build many platforms).
    """
    fingerprint = _fingerprint(defn)
    if fingerprint in _CHECKED:
        return
    con = duckdb.connect()
    try:
        _create_views(con, defn, {}, None)
        for name in named_tables(defn):
            con.register(name, schemas[name].empty_table())
        for params in _trial_parameters(defn):
            comparing = _comparing(defn, params)
            columns = _present_columns(defn, params, comparing)
            _evaluate(con, defn, params, columns, comparing, {})
    except duckdb.Error as exc:
        raise ProductConfigError(
            f"product {defn.id!r}: its SQL does not run ({_first_line(exc)})"
        ) from None
    finally:
        con.close()
    _CHECKED.add(fingerprint)


def query(sql: str, params: Mapping[str, Any], relations: Mapping[str, str]) -> pa.Table:
    """One SELECT over the given relations (name -> relation text from ``views``), as Arrow.

    For the tables built from the stored data before a product reads them; values are bound,
    and the relation texts hold only checked names and storage paths.
    """
    con = duckdb.connect()
    try:
        for name, relation in relations.items():
            if not _RELATION_NAME_RE.match(name):
                raise ValueError(f"{name!r} is not a relation name")
            con.execute(f"CREATE VIEW {name} AS SELECT * FROM {relation}")  # noqa: S608
        return con.sql(sql, params=dict(params)).to_arrow_table()
    finally:
        con.close()


_CHECKED: set[str] = set()


def _fingerprint(defn: ProductDefinition) -> str:
    partnership = defn.partnership
    parts = [
        defn.spec.model_dump_json(),
        partnership.serious_violence_where.sql,
        *(defn.contracts[dataset].model_dump_json() for dataset in defn.sources),
    ]
    return hashlib.sha256("\x1f".join(parts).encode()).hexdigest()


# Areas and columns


def _visible_areas(
    defn: ProductDefinition, params: Mapping[str, Any], areas: frozenset[str] | None
) -> frozenset[str] | None:
    chosen: list[str] = []
    for parameter in defn.parameters:
        if parameter.type != "csp":
            continue
        value = params.get(parameter.name)
        if isinstance(value, list):
            chosen.extend(value)
        elif isinstance(value, str):
            chosen.append(value)
    if areas is not None:
        outside = [area for area in chosen if area not in areas]
        if outside:
            raise AreaNotPermitted(f"{outside[0]!r} is not one of your areas")
    if chosen:
        return frozenset(chosen)
    return areas


def _comparing(defn: ProductDefinition, params: Mapping[str, Any]) -> bool:
    pair = defn.spec.comparison
    return pair is not None and all(params.get(name) is not None for name in pair)


def _keys_parameter(defn: ProductDefinition) -> str | None:
    return next((p.name for p in defn.parameters if p.type == "keys"), None)


def _present_columns(
    defn: ProductDefinition, params: Mapping[str, Any], comparing: bool
) -> list[str]:
    keys_name = _keys_parameter(defn)
    chosen = set(params.get(keys_name) or []) if keys_name else set()
    present = []
    for name, column in defn.spec.output.columns.items():
        if column.by and name not in chosen:
            continue
        if column.comparison and not comparing:
            continue
        if column.when and not conditions_hold(column.when, params):
            continue
        present.append(name)
    return present


def _column(defn: ProductDefinition, name: str) -> ColumnModel:
    return defn.spec.output.columns[name]


def _create_views(
    con: duckdb.DuckDBPyConnection,
    defn: ProductDefinition,
    files: Mapping[str, tuple[Path, ...]],
    visible: frozenset[str] | None,
    remote: Mapping[Path, str] | None = None,
) -> None:
    for statement in views.create_statements(defn, files, visible, remote):
        con.execute(statement)


def _within_areas(
    defn: ProductDefinition, rows: list[dict[str, Any]], areas: frozenset[str] | None
) -> list[dict[str, Any]]:
    """Only the people whose district is one of the reader's areas (None: no restriction)."""
    spec = defn.spec.people
    if spec is None or areas is None:
        return rows
    return [row for row in rows if row.get(spec.district) in areas]


# Evaluation


def _expand(defn: ProductDefinition, text: str, params: Mapping[str, Any]) -> str:
    """The SQL with its placeholders replaced by the SQL of the choices made."""
    keys_name = _keys_parameter(defn)

    def replace(match: Any) -> str:
        name = match.group(1)
        if name in ("by", "by_names") and keys_name is not None:
            spec = defn.parameter(keys_name)
            assert spec is not None
            chosen = params.get(keys_name) or []
            if name == "by":
                return "".join(f', {spec.choice_sql[key]} AS "{key}"' for key in chosen)
            return "".join(f', "{key}"' for key in chosen)
        spec = defn.parameter(name)
        value = str(params.get(name))
        if spec is None or value not in spec.choice_sql:
            raise ProductConfigError(f"product {defn.id!r}: no SQL for {name}={value}")
        return spec.choice_sql[value]

    return PLACEHOLDER_RE.sub(replace, text)


def _bind(text: str, params: Mapping[str, Any]) -> dict[str, Any]:
    return {name: params.get(name) for name in set(SQL_PARAMETER_RE.findall(text))}


def _query(
    con: duckdb.DuckDBPyConnection, defn: ProductDefinition, text: str, params: Mapping[str, Any]
) -> tuple[list[str], list[tuple[Any, ...]]]:
    sql = _expand(defn, text, params)
    cursor = con.execute(sql, _bind(sql, params))
    names = [column[0] for column in cursor.description or []]
    return names, cursor.fetchall()


def _with_period(defn: ProductDefinition, params: Mapping[str, Any]) -> dict[str, Any]:
    """The parameters with the comparison period in place of the period."""
    assert defn.spec.period is not None and defn.spec.comparison is not None
    swapped = dict(params)
    for current, previous in zip(defn.spec.period, defn.spec.comparison, strict=True):
        swapped[current] = params[previous]
    return swapped


def _prepare_h3(
    con: duckdb.DuckDBPyConnection, defn: ProductDefinition, params: Mapping[str, Any]
) -> None:
    spec = defn.spec.h3
    table = _H3_SCHEMA.empty_table()
    if spec is not None and (spec.when is None or conditions_hold(spec.when, params)):
        resolution = int(params[spec.resolution])
        _, points = _query(con, defn, spec.points, params)
        to_cell = h3.latlng_to_cell
        latitudes: list[float] = []
        longitudes: list[float] = []
        cells: list[str] = []
        for latitude, longitude in points:
            if latitude is None or longitude is None:
                continue
            latitudes.append(latitude)
            longitudes.append(longitude)
            cells.append(to_cell(latitude, longitude, resolution))
        table = pa.table([latitudes, longitudes, cells], schema=_H3_SCHEMA)
    con.register(H3_CELLS_TABLE, table)


def _run_sql(
    con: duckdb.DuckDBPyConnection,
    defn: ProductDefinition,
    params: Mapping[str, Any],
    expected: list[str],
) -> list[dict[str, Any]]:
    _prepare_h3(con, defn, params)
    names, tuples = _query(con, defn, defn.spec.sql, params)
    declared = defn.spec.output.columns
    unknown = [name for name in names if name not in declared]
    absent = [name for name in expected if name not in names]
    if unknown or absent or len(set(names)) != len(names):
        raise ProductConfigError(
            f"product {defn.id!r}: its SQL returns {', '.join(names)}; expected "
            f"{', '.join(expected)}"
        )
    return [dict(zip(names, values, strict=True)) for values in tuples]


def _evaluate(
    con: duckdb.DuckDBPyConnection,
    defn: ProductDefinition,
    params: Mapping[str, Any],
    columns: list[str],
    comparing: bool,
    notes: dict[str, Any],
) -> tuple[list[dict[str, Any]], dict[str, str]]:
    spec = defn.spec
    from_sql = [
        name
        for name in columns
        if _column(defn, name).derive is None and _column(defn, name).previous_of is None
    ]
    rows = _run_sql(con, defn, params, from_sql)
    previous_params = _with_period(defn, params) if comparing else None
    if previous_params is not None:
        previous_from_sql = [name for name in from_sql if not _column(defn, name).comparison]
        previous = _run_sql(con, defn, previous_params, previous_from_sql)
        rows = _merge_comparison(defn, columns, rows, previous)
    if spec.output.every_group:
        rows = _every_group(con, defn, params, columns, rows)
    for name, note in spec.notes.items():
        if note.text is not None:
            notes[name] = " ".join(note.text.split())
            continue
        assert note.sql is not None
        notes[name] = _scalar(_query(con, defn, note.sql, params))
        if note.compare and previous_params is not None:
            notes[f"previous_{name}"] = _scalar(_query(con, defn, note.sql, previous_params))
    if SERIOUS_VIOLENCE_VIEW in _expand(defn, spec.sql, params):
        notes["serious_violence_definition"] = [
            clause.name for clause in defn.partnership.serious_violence.any_of
        ]
    sealed = defn.revealed_columns()
    # Typed before the values become JSON-safe text, so that a date stays a date in Parquet.
    types = _column_types(defn, columns, rows)
    rows = [
        {name: row.get(name) if name in sealed else _plain(row.get(name)) for name in columns}
        for row in rows
    ]
    _derive(defn, columns, rows, notes)
    return rows, types


def _scalar(result: tuple[list[str], list[tuple[Any, ...]]]) -> Any:
    _, tuples = result
    if not tuples or not tuples[0]:
        return None
    return _plain(tuples[0][0])


def _plain(value: Any) -> Any:
    """A JSON-safe Python value (dates as ISO text)."""
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Decimal):
        # DuckDB's SUM and AVG give decimals; readers get plain numbers.
        return int(value) if value == value.to_integral_value() else float(value)
    if isinstance(value, bytes | bytearray | memoryview):
        # Only ciphertexts are binary: whatever a definition says, they never leave.
        raise ProductConfigError("a product returned binary values (ciphertexts never leave)")
    if value is not None and not isinstance(value, str | int | float | bool):
        return str(value)
    return value


def _merge_comparison(
    defn: ProductDefinition,
    columns: list[str],
    current: list[dict[str, Any]],
    previous: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """Current and previous rows joined on the key columns; a group missing on a side is 0."""
    keys = [name for name in columns if _column(defn, name).key or _column(defn, name).by]
    counts = [name for name in columns if _column(defn, name).count]

    def key_of(row: Mapping[str, Any]) -> tuple[Any, ...]:
        return tuple(row.get(name) for name in keys)

    before = {key_of(row): row for row in previous}
    merged: list[dict[str, Any]] = []
    seen: set[tuple[Any, ...]] = set()
    for row in current:
        key = key_of(row)
        seen.add(key)
        merged.append(_joined(defn, columns, counts, row, before.get(key)))
    for row in previous:
        key = key_of(row)
        if key in seen:
            continue
        blank = {name: (0 if name in counts else None) for name in columns}
        blank.update({name: row.get(name) for name in keys})
        merged.append(_joined(defn, columns, counts, blank, row))
    return merged


def _every_group(
    con: duckdb.DuckDBPyConnection,
    defn: ProductDefinition,
    params: Mapping[str, Any],
    columns: list[str],
    rows: list[dict[str, Any]],
) -> list[dict[str, Any]]:
    """``rows`` with a row of count 0 for every combination of key values they lack.

    A key's values are its ``domain`` (the visible areas, the 24 hours) or else the values
    found in the rows of either period. Zero is never withheld (``disclosure``), so a suppressed
    reader sees the same groups as anyone else: which groups exist depends on the question,
    not on the reader.
    """
    keys = [name for name in columns if _column(defn, name).key or _column(defn, name).by]
    if not keys:
        return rows
    domains: list[list[Any]] = []
    for name in keys:
        domain = _column(defn, name).domain
        if domain is not None:
            _, found = _query(con, defn, domain, params)
            values = [value[0] for value in found]
        else:
            values = [row.get(name) for row in rows]
        domains.append(list(dict.fromkeys(values)))
    size = math.prod(len(values) for values in domains)
    if size > MAX_GROUPS:
        raise BadRequest(
            f"grouping by {', '.join(keys)} makes {size} groups; at most {MAX_GROUPS} "
            "(group by fewer keys or filter by csp)"
        )
    counts = [name for name in columns if _column(defn, name).count]
    present = {tuple(row.get(name) for name in keys) for row in rows}
    filled = list(rows)
    for combination in itertools.product(*domains):
        if combination in present:
            continue
        blank: dict[str, Any] = {name: (0 if name in counts else None) for name in columns}
        blank.update(zip(keys, combination, strict=True))
        filled.append(blank)
    return filled


def _joined(
    defn: ProductDefinition,
    columns: list[str],
    counts: list[str],
    row: Mapping[str, Any],
    previous: Mapping[str, Any] | None,
) -> dict[str, Any]:
    joined = dict(row)
    for name in columns:
        source = _column(defn, name).previous_of
        if source is None:
            continue
        value = previous.get(source) if previous is not None else None
        joined[name] = 0 if value is None and name in counts else value
    return joined


def _column_types(
    defn: ProductDefinition, columns: list[str], rows: list[dict[str, Any]]
) -> dict[str, str]:
    types: dict[str, str] = {}
    for name in columns:
        column = _column(defn, name)
        if column.count:
            types[name] = "integer"
        elif column.reveal is not None:
            types[name] = _revealed_type(defn, column.reveal)
        elif column.derive is not None:
            derive = column.derive
            types[name] = "float" if derive.ratio or derive.change else "integer"
        else:
            value = next((row[name] for row in rows if row.get(name) is not None), None)
            types[name] = _type_name(value)
    return types


def _revealed_type(defn: ProductDefinition, reveal: str) -> str:
    """A revealed field's type, from its contract: its values are ciphertext until then."""
    dataset, _, field_name = reveal.rpartition(".")
    contract = defn.contracts.get(dataset)
    kind = contract.field(field_name).type if contract is not None else None
    return kind.value if kind in (FieldType.DATE, FieldType.TIMESTAMP) else "string"


def _type_name(value: Any) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | Decimal):
        return "integer" if not isinstance(value, Decimal) or value == int(value) else "float"
    if isinstance(value, float):
        return "float"
    # datetime before date: every datetime is also a date.
    if isinstance(value, datetime):
        return "timestamp"
    if isinstance(value, date):
        return "date"
    return "string"


# Derived columns


def round_half_away(value: Fraction, decimals: int) -> float:
    """``value`` rounded to ``decimals`` places, halves away from zero, computed exactly.

    Binary floating point would round 0.125 or 2.675 the "wrong" way now and then; the figures
    must agree with what an analyst gets by hand.
    """
    scaled = value * 10**decimals
    magnitude = abs(scaled)
    whole = math.floor(magnitude + Fraction(1, 2))
    rounded = whole if scaled >= 0 else -whole
    return float(Fraction(rounded, 10**decimals))


def _operand(row: Mapping[str, Any], notes: Mapping[str, Any], name: str) -> Any:
    if name.startswith("notes."):
        return notes.get(name.removeprefix("notes."))
    return row.get(name)


def _number(value: Any) -> Fraction | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return Fraction(value)


def _derived_value(derive: DeriveModel, row: Mapping[str, Any], notes: Mapping[str, Any]) -> Any:
    operands = [_number(_operand(row, notes, name)) for name in derive.operands]
    if any(value is None for value in operands):
        return None
    first, second = operands[0], operands[1] if len(operands) > 1 else None
    assert first is not None
    if derive.difference is not None:
        assert second is not None
        result = first - second
        return int(result) if result.denominator == 1 else float(result)
    assert second is not None
    if second == 0:
        return None
    if derive.change is not None:
        ratio = (first - second) / second * 100
    else:
        ratio = first * derive.scale / second
    if derive.decimals is None:
        return float(ratio)
    return round_half_away(ratio, derive.decimals)


def _derive(
    defn: ProductDefinition,
    columns: list[str],
    rows: list[dict[str, Any]],
    notes: Mapping[str, Any],
) -> None:
    for name in columns:
        derive = _column(defn, name).derive
        if derive is None:
            continue
        if derive.dense_rank is not None:
            by = derive.dense_rank
            distinct = sorted({row[by] for row in rows if row.get(by) is not None}, reverse=True)
            ranks = {value: position + 1 for position, value in enumerate(distinct)}
            for row in rows:
                row[name] = ranks.get(row.get(by))
            continue
        for row in rows:
            row[name] = _derived_value(derive, row, notes)


def derived_operands(defn: ProductDefinition, columns: Iterable[str]) -> dict[str, list[str]]:
    return {
        name: list(derive.operands)
        for name in columns
        if (derive := _column(defn, name).derive) is not None
    }


# Ordering, limit, suppression


def _sort_keys(defn: ProductDefinition, columns: list[str]) -> list[str]:
    declared = defn.spec.output.sort
    if declared is not None:
        return [name for name in declared if name in columns]
    return [name for name in columns if _column(defn, name).key or _column(defn, name).by]


def _position(order: list[Any] | None, value: Any) -> tuple[int, Any]:
    """Where a value sorts: declared order first, then natural order, empty values last."""
    if value is None:
        return (2, 0)
    if order is not None and value in order:
        return (0, order.index(value))
    return (1, value)


def _sort(defn: ProductDefinition, columns: list[str], rows: list[dict[str, Any]]) -> None:
    keys = _sort_keys(defn, columns)
    orders = [_column(defn, name).order for name in keys]

    def key(row: dict[str, Any]) -> tuple[tuple[int, Any], ...]:
        return tuple(
            _position(order, row.get(name)) for name, order in zip(keys, orders, strict=True)
        )

    rows.sort(key=key)


def _apply_limit(
    defn: ProductDefinition,
    params: Mapping[str, Any],
    columns: list[str],
    rows: list[dict[str, Any]],
    notes: dict[str, Any],
) -> list[dict[str, Any]]:
    limit_name = defn.spec.output.limit
    if limit_name is None:
        return rows
    limit = int(params[limit_name])
    if len(rows) <= limit:
        return rows
    notes["rows_before_limit"] = len(rows)
    rank = next(
        (n for n in columns if (d := _column(defn, n).derive) is not None and d.dense_rank), None
    )
    if rank is not None and rows[limit - 1].get(rank) == rows[limit].get(rank):
        notes["ties_at_cutoff"] = True
    return rows[:limit]


def _finish(
    defn: ProductDefinition,
    params: Mapping[str, Any],
    sources: dict[str, int],
    columns: list[str],
    rows: list[dict[str, Any]],
    notes: dict[str, Any],
    types: dict[str, str],
    suppress: bool,
    k: int,
) -> ProductResult:
    _sort(defn, columns, rows)
    rows = _apply_limit(defn, params, columns, rows, notes)
    if suppress:
        count_notes = [
            name
            for base, note in defn.spec.notes.items()
            if note.count
            for name in (base, f"previous_{base}")
            if name in notes
        ]
        base = defn.spec.suppression.rounding
        withheld_notes = disclosure.suppress_notes(notes, count_notes, k, base)
        disclosure.suppress_rows(
            rows,
            columns=columns,
            key_columns=[n for n in columns if _column(defn, n).key or _column(defn, n).by],
            count_columns=[n for n in columns if _column(defn, n).count],
            derived=derived_operands(defn, columns),
            k=k,
            secondary_suppression=defn.spec.suppression.secondary,
            withheld_notes=withheld_notes,
            base=base,
            # Derived values come from the published (rounded) counts, never the exact ones.
            rederive=lambda: _derive(defn, columns, rows, notes),
        )
        # Withheld ranks sort last, so that the order of rows does not give them away.
        _sort(defn, columns, rows)
    return _result(defn, params, sources, columns, rows, notes, types, suppress, k)


def _result(
    defn: ProductDefinition,
    params: Mapping[str, Any],
    sources: dict[str, int],
    columns: list[str],
    rows: list[dict[str, Any]],
    notes: dict[str, Any],
    types: dict[str, str],
    suppress: bool,
    k: int,
) -> ProductResult:
    notes["suppression"] = (
        {"applied": True, "k": k, "rounding": defn.spec.suppression.rounding}
        if suppress
        else {"applied": False}
    )
    return ProductResult(
        product=defn.id,
        level=defn.level,
        parameters=normalise_parameters(defn, params),
        generated_at=utcnow().isoformat(timespec="seconds").replace("+00:00", "Z"),
        sources=sources,
        columns=columns,
        rows=rows,
        notes=notes,
        column_types={name: types.get(name, "string") for name in columns},
    )


# Trial runs for check_definition


def _trial_parameters(defn: ProductDefinition) -> list[dict[str, Any]]:
    base: dict[str, Any] = {}
    choice_names: list[str] = []
    choice_lists: list[list[str]] = []
    for parameter in defn.parameters:
        if parameter.type == "date":
            base[parameter.name] = date(2001, 1, 1)
        elif parameter.type == "integer":
            default = parameter.default if isinstance(parameter.default, int) else None
            base[parameter.name] = default or parameter.minimum or 1
        elif parameter.type == "keys":
            base[parameter.name] = list(parameter.choices or ())
        elif parameter.type == "csp":
            base[parameter.name] = [] if parameter.repeatable else None
        elif parameter.type == "person":
            base[parameter.name] = "0" * 32
        else:
            choice_names.append(parameter.name)
            choice_lists.append(list(parameter.choices or ()))
    trials: list[dict[str, Any]] = []
    for combination in itertools.product(*choice_lists):
        params = {**base, **dict(zip(choice_names, combination, strict=True))}
        if any(conditions_hold(c.when, params) for c in defn.spec.constraints):
            continue
        trials.append(params)
        keys_name = _keys_parameter(defn)
        if keys_name is not None:
            trials.append({**params, keys_name: []})
    return trials


def _first_line(exc: BaseException) -> str:
    return str(exc).strip().splitlines()[0][:300] if str(exc).strip() else type(exc).__name__
