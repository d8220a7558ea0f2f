"""Small-number suppression for Level 1 and Level 2 products.

Primary suppression withholds every count from 1 to k-1. Zero is never withheld: it tells
nothing about a person.

Secondary suppression protects the primary cells from subtraction. A table keyed by several
dimensions (weekday x hour) is published next to its margins (by=weekday alone), so along every
*line* of the table (the cells that share all key values but one) a single withheld cell could
be recovered as the margin minus the visible cells. Along every line with at least two cells
there must therefore never be exactly one withheld cell: the smallest other non-zero cell of the
line is withheld too, and since that can break another line (the crossing dimension), the rule
is applied again until nothing changes. Each count column is treated on its own (a comparison's
``count`` and ``previous_count`` are separate tables of the same shape).

A line whose other cells are all zero cannot be helped (zero is never withheld); such a line's
margin equals the withheld cell, and is itself withheld by primary suppression wherever it is
published.

Derived values (percentages, changes, rates, ranks) go with the counts they come from: they are
withheld whenever one of their counts, or a total they divide by, is withheld.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

SUPPRESSED = "suppressed"


def is_small(value: Any, k: int) -> bool:
    """Whether a count is withheld by primary suppression (1 to k-1)."""
    return isinstance(value, int) and not isinstance(value, bool) and 0 < value < k


def lines_of(keys: Sequence[tuple[Hashable, ...]]) -> list[list[int]]:
    """The lines of a keyed table: per dimension, the cells agreeing on every other key.

    Lines with fewer than two cells are left out: there is nothing to subtract.
    """
    if not keys:
        return []
    dimensions = len(keys[0])
    lines: list[list[int]] = []
    for dimension in range(dimensions):
        groups: dict[tuple[Hashable, ...], list[int]] = {}
        for index, key in enumerate(keys):
            groups.setdefault(key[:dimension] + key[dimension + 1 :], []).append(index)
        lines.extend(cells for cells in groups.values() if len(cells) >= 2)
    return lines


def secondary(
    keys: Sequence[tuple[Hashable, ...]], values: Sequence[int | None], withheld: set[int]
) -> set[int]:
    """``withheld`` grown until no line has exactly one withheld cell (where it can be).

    Cells are indices into ``keys`` and ``values``; ties between equally small candidates go to
    the first in table order, so the result is deterministic for a sorted table.
    """
    result = set(withheld)
    lines = lines_of(keys)
    changed = True
    while changed:
        changed = False
        for line in lines:
            hidden = [cell for cell in line if cell in result]
            if len(hidden) != 1:
                continue
            candidates = [cell for cell in line if cell not in result and (values[cell] or 0) > 0]
            if not candidates:
                continue
            result.add(min(candidates, key=lambda cell: (values[cell] or 0, cell)))
            changed = True
    return result


def withheld_cells(
    keys: Sequence[tuple[Hashable, ...]],
    values: Sequence[int | None],
    k: int,
    *,
    secondary_suppression: bool,
) -> set[int]:
    """The cells of one count column to withhold."""
    primary = {index for index, value in enumerate(values) if is_small(value, k)}
    if not secondary_suppression or not primary:
        return primary
    return secondary(keys, values, primary)


def suppress_notes(notes: dict[str, Any], names: Sequence[str], k: int) -> set[str]:
    """Withhold small totals kept in the notes; returns the names withheld."""
    withheld = {name for name in names if is_small(notes.get(name), k)}
    for name in sorted(withheld):
        notes[name] = None
    if withheld:
        notes[SUPPRESSED] = sorted(withheld)
    return withheld


def suppress_rows(
    rows: list[dict[str, Any]],
    *,
    columns: Sequence[str],
    key_columns: Sequence[str],
    count_columns: Sequence[str],
    derived: Mapping[str, Sequence[str]],
    k: int,
    secondary_suppression: bool,
    withheld_notes: AbstractSet[str] = frozenset(),
) -> None:
    """Null the withheld values of ``rows`` in place and list them under ``"suppressed"``.

    ``derived`` maps a derived column to what it is computed from: column names, or
    ``notes.<name>`` for a total in the notes. Derived columns are handled in ``columns``
    order, so a column derived from a derived column follows it.
    """
    keys = [tuple(row.get(name) for name in key_columns) for row in rows]
    hidden: list[set[str]] = [set() for _ in rows]
    for column in count_columns:
        values = [row.get(column) for row in rows]
        for index in withheld_cells(keys, values, k, secondary_suppression=secondary_suppression):
            hidden[index].add(column)
    for column in columns:
        operands = derived.get(column)
        if operands is None:
            continue
        for index in range(len(rows)):
            if any(
                (operand.startswith("notes.") and operand.removeprefix("notes.") in withheld_notes)
                or operand in hidden[index]
                for operand in operands
            ):
                hidden[index].add(column)
    for row, names in zip(rows, hidden, strict=True):
        if not names:
            continue
        for name in names:
            row[name] = None
        row[SUPPRESSED] = [name for name in columns if name in names]
