"""A product computed with every table its SQL may read.

The engine gives a definition its dataset views; the tables that carry the partnership's rules
and Level 3 are built here, on top of it: the habitual knife carrier list (``carriers``), the
people table (``people``) and the latest gradings, which the caller reads from the database.
Every computation of a product (a read, a grading's check, a published table, the check of a
definition at start-up) goes through this module, so none can miss a table.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date
from typing import Any

import pyarrow as pa

from services.contracts.protection import Protector
from services.kit.clock import london_today
from services.kit.errors import BadRequest
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
    A suppressed reader's dates are taken as the first of their month (``on_month_grid``).
    """
    gridded = suppress and definition.level < 3
    if gridded:
        params = on_month_grid(definition, params)
    result = engine.run(
        definition,
        params,
        versions=versions,
        suppress=suppress,
        k=k,
        areas=areas,
        tables=_tables(protector, assessments),
    )
    if gridded:
        result.notes["month_grid"] = MONTH_GRID_NOTE
    return result


MONTH_GRID_NOTE = (
    "Figures withheld or rounded for disclosure control are given for whole calendar months: "
    "every date is taken as the first of its month."
)


def on_month_grid(definition: ProductDefinition, params: dict[str, Any]) -> dict[str, Any]:
    """``params`` with every date moved back to the first of its month.

    Rounding protects one figure from another only while the periods asked about are few and
    coarse: two periods a day apart differ by that day's events, and many overlapping periods
    pin each other down (tests/security/test_authorization_disclosure.py). Readers of
    suppressed figures therefore get whole months, the published tables' own grid; a period
    that then ends where it starts is a ``BadRequest``.
    """
    gridded = dict(params)
    for parameter in definition.parameters:
        value = params.get(parameter.name)
        if parameter.type == "date" and isinstance(value, date):
            gridded[parameter.name] = value.replace(day=1)
    for pair in (definition.spec.period, definition.spec.comparison):
        if pair is None:
            continue
        start, end = (gridded.get(name) for name in pair)
        if isinstance(start, date) and isinstance(end, date) and start >= end:
            raise BadRequest(
                f"{pair[0]} and {pair[1]} fall in the same month: figures withheld or rounded "
                "for disclosure control are given for whole calendar months (from the first "
                "of a month to the first of a later one)"
            )
    return gridded


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

    def people_table(inputs: RunInputs) -> pa.Table | engine.QueryTable:
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
