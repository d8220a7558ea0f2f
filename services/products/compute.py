"""A product computed with every table its SQL may read.

The engine gives a definition its dataset views; the tables that carry the partnership's rules
and Level 3 are built here, on top of it: the habitual knife carrier list (``carriers``), the
people table (``people``) and the latest gradings, which the caller reads from the database.
Every computation of a product (a read, a grading's check, a published table, the check of a
definition at start-up) goes through this module, so none can miss a table.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pyarrow as pa

from services.contracts.protection import Protector
from services.kit.clock import london_today
from services.products import carriers, engine, people
from services.products.definition import (
    ASSESSMENTS_TABLE,
    HKC_TABLE,
    PEOPLE_TABLE,
    ProductDefinition,
)
from services.products.engine import ProductResult, RunInputs, TableBuilder
from services.storage.service import VersionInfo

TABLE_SCHEMAS: dict[str, pa.Schema] = {
    HKC_TABLE: carriers.HKC_SCHEMA,
    PEOPLE_TABLE: people.PEOPLE_SCHEMA,
    ASSESSMENTS_TABLE: people.ASSESSMENTS_SCHEMA,
}


def run(
    definition: ProductDefinition,
    params: dict[str, Any],
    *,
    versions: dict[str, VersionInfo],
    suppress: bool,
    k: int,
    areas: frozenset[str] | None,
    protector: Protector,
    assessments: Callable[[], pa.Table] | None = None,
) -> ProductResult:
    """One product over the given dataset versions (see ``engine.run``).

    ``assessments`` reads the latest gradings when the product shows them (none: no gradings).
    """
    return engine.run(
        definition,
        params,
        versions=versions,
        suppress=suppress,
        k=k,
        areas=areas,
        tables=_tables(protector, assessments),
    )


def check_definition(definition: ProductDefinition) -> None:
    """Refuse a definition whose SQL does not run (see ``engine.check_definition``)."""
    engine.check_definition(definition, TABLE_SCHEMAS)


def _tables(
    protector: Protector, assessments: Callable[[], pa.Table] | None
) -> dict[str, TableBuilder]:
    today = london_today()

    def carriers_table(inputs: RunInputs) -> pa.Table:
        use = inputs.definition.spec.habitual_knife_carriers
        assert use is not None
        return carriers.habitual_knife_carriers(
            inputs.versions,
            inputs.params[use.as_of],
            partnership=inputs.definition.partnership,
            protector=protector,
            areas=inputs.areas,
        )

    def people_table(inputs: RunInputs) -> pa.Table:
        return people.build_people(
            inputs.definition, inputs.params, inputs.versions, today, protector
        )

    def assessments_table(_: RunInputs) -> pa.Table:
        if assessments is None:
            return people.ASSESSMENTS_SCHEMA.empty_table()
        return assessments()

    return {
        HKC_TABLE: carriers_table,
        PEOPLE_TABLE: people_table,
        ASSESSMENTS_TABLE: assessments_table,
    }
