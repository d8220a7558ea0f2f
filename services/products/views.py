"""How a dataset version becomes a relation a product's SQL reads.

Each source dataset is one view (``police.occurrences`` -> ``police_occurrences``) holding only
the fields the definition declares, under their stored names (``contracts.columns``). Every
view of a dataset with a ``csp`` field is already limited to the areas visible to the run, so a
product cannot forget them. A dataset with no version yet is an empty relation of the right
shape, so that the SQL still binds.

A view cannot hold bound parameters, so these texts are built here, only from names checked
against the contracts, paths from storage, the compiled partnership definition and CSP names
from the closed vocabulary (quoted); nothing in them comes from a request as typed.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from services.contracts.columns import StoredColumn, StoredKind, query_column, stored_columns
from services.contracts.model import Contract, FieldType
from services.kit.partnership import CSP_AREAS
from services.products.config import POLICE_DATASET, quote_identifier, sql_string
from services.products.definition import (
    CSP_AREAS_VIEW,
    SERIOUS_VIOLENCE_VIEW,
    ProductDefinition,
    view_name,
)
from services.storage import objects

_DUCKDB_TYPES: dict[FieldType, str] = {
    FieldType.STRING: "VARCHAR",
    FieldType.INTEGER: "BIGINT",
    FieldType.FLOAT: "DOUBLE",
    FieldType.BOOLEAN: "BOOLEAN",
    FieldType.DATE: "DATE",
    FieldType.TIMESTAMP: "TIMESTAMP",
}


def _sql_type(column: StoredColumn) -> str:
    if column.kind is StoredKind.VALUE:
        assert column.type is not None
        return _DUCKDB_TYPES[column.type]
    return "BLOB" if column.kind is StoredKind.CIPHERTEXT else "VARCHAR"


def files_relation(files: tuple[Path, ...], remote: Mapping[Path, str] | None = None) -> str:
    """The Parquet files of one dataset version as one relation. A file named in ``remote`` is
    read through the relation registered under that name (an object read in place in the
    store, ``objects.remote``); every other file is a local file, or a cached copy of an object
    fetched again if the cache evicted it since the version's paths were read."""
    remote = remote or {}
    local = [path for path in files if path not in remote]
    parts: list[str] = []
    if local:
        paths = ", ".join(sql_string(str(objects.present(path))) for path in local)
        parts.append(f"read_parquet([{paths}], union_by_name = true)")
    parts.extend(quote_identifier(remote[path]) for path in files if path in remote)
    if len(parts) == 1:
        return parts[0]
    # As read_parquet's union_by_name: a column that a file has not got is null in its rows.
    union = " UNION ALL BY NAME ".join(f"SELECT * FROM {part}" for part in parts)  # noqa: S608
    return f"({union})"


def main_code_sql(column: str, separator: str) -> str:
    """The main code of a coded column (``contracts.model.main_code``), in DuckDB's SQL."""
    return f"split_part({quote_identifier(column)}, {sql_string(separator)}, 1)"


def coded_relation(contract: Contract, source: str) -> str:
    """``source`` with every field that has sub-codes reduced to its main code.

    The one place the rule is applied: every view of a dataset and every predicate over it
    reads the main code ("64/1" is 64, as "64" is), so no product can count "64/1" and "64"
    apart; the stored dataset keeps the code as the partner recorded it.
    """
    coded = [
        spec
        for spec in contract.fields
        if spec.subcode_separator is not None and not spec.protected
    ]
    if not coded:
        return source
    replaced = ", ".join(
        f"{main_code_sql(spec.name, spec.subcode_separator)} AS {quote_identifier(spec.name)}"
        for spec in coded
        if spec.subcode_separator is not None
    )
    return f"(SELECT * REPLACE ({replaced}) FROM {source})"  # noqa: S608


def relation(
    contract: Contract, files: tuple[Path, ...] | None, remote: Mapping[Path, str] | None = None
) -> str:
    """Every stored column of a dataset version (coded fields as their main code), or an empty
    relation of that shape."""
    if files:
        return coded_relation(contract, files_relation(files, remote))
    nulls = ", ".join(
        f'NULL::{_sql_type(column)} AS "{column.name}"' for column in stored_columns(contract)
    )
    return f"(SELECT {nulls} WHERE false)"


def area_filter(visible: frozenset[str] | None) -> str:
    """A condition on ``csp``: true for the visible areas (None: every area)."""
    if visible is None:
        return "true"
    if not visible:
        return "false"
    return '"csp" IN (' + ", ".join(sql_string(area) for area in sorted(visible)) + ")"


def create_statements(
    defn: ProductDefinition,
    files: Mapping[str, tuple[Path, ...]],
    visible: frozenset[str] | None,
    remote: Mapping[Path, str] | None = None,
) -> list[str]:
    """The views of one run: the sources, ``serious_violence`` and ``csp_areas``. ``remote``:
    the files read in place in the store, each by the name of its registered relation."""
    statements: list[str] = []
    for dataset, fields in defn.spec.sources.items():
        contract = defn.contracts[dataset]
        source = relation(contract, files.get(dataset), remote)
        stored = [query_column(contract.field(name)) for name in fields]
        if defn.level == 3 and contract.person is not None:
            # Level 3 links people across partners by the person key.
            stored.append("person_key")
        projection = ", ".join(f'"{name}"' for name in stored)
        where = area_filter(visible) if "csp" in contract.field_names else "true"
        statements.append(
            f"CREATE VIEW {view_name(dataset)} AS SELECT {projection} "  # noqa: S608
            f"FROM {source} WHERE {where}"
        )
        if dataset == POLICE_DATASET:
            predicate = defn.partnership.serious_violence_where.sql
            statements.append(
                f"CREATE VIEW {SERIOUS_VIOLENCE_VIEW} AS SELECT {projection} "  # noqa: S608
                f"FROM {source} WHERE {predicate} AND {where}"
            )
    shown = sorted(visible) if visible is not None else list(CSP_AREAS)
    if shown:
        values = ", ".join(sql_string(area) for area in shown)
        statements.append(f"CREATE VIEW {CSP_AREAS_VIEW} AS SELECT unnest([{values}]) AS csp")
    else:
        statements.append(
            f"CREATE VIEW {CSP_AREAS_VIEW} AS SELECT NULL::VARCHAR AS csp WHERE false"
        )
    return statements
