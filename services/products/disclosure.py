"""Disclosure control for Level 1 and Level 2 products: the partnership's rule.

For every reader without the unsuppressed permission, in every Level 1 and Level 2 product, in
API answers and published (Delta Sharing) tables alike:

- every count from 1 to k-1 is withheld (k = 8 by default: "1 to 7 withheld"); zero is shown;
- every other count is rounded to the nearest multiple of the rounding base (5 by default);
- every derived value (change, change %, percentage, rate, rank) is computed from the published
  (rounded) counts, never from the exact ones, and is withheld whenever one of its counts, or a
  total it divides by, is withheld;
- secondary suppression withholds more cells where subtraction would otherwise recover one.

Why rounding, and why whole months. Suppression alone fails against differencing: two
overlapping periods (or a comparison's ``change_n``) differ by the events of the days in one and
not the other, and when both totals are exact that difference is exact, however small. Rounded
to 5, each published count is only known to within +-2. Rounding is not enough on its own
either: a year of periods a day apart gives so many overlapping sums that their bounds pin
small counts down again (the intruder of tests/security/test_authorization_disclosure.py finds
them). So a reader of withheld or rounded figures is answered for whole calendar months (every
date taken as the first of its month: ``compute.on_month_grid``), and a one-day shift asks the
same question again. What remains: the rounded counts of every month-aligned period of a year
(78 per area) still pin down some small monthly counts of thin areas; periods up to a quarter
do not (both are tested, the first as a known residual).

Secondary suppression along lines. A table keyed by several dimensions (weekday x hour) is
published next to its margins (by=weekday alone), so along every *line* of the table (the cells
that share all key values but one) the margin minus the visible cells bounds the withheld ones.
Two checks are made, and repeated until neither adds a cell:

1. a line with at least two cells never has exactly one withheld cell (the smallest other
   non-zero cell is withheld with it);
2. an intruder's bounds: each withheld cell lies in [1, k-1] (or, withheld to protect another,
   [k, inf): the intruder is assumed to know which), each visible value r in [r-2, r+2] (and at
   least k), each zero is 0, and each line's margin, published under the same rule, likewise.
   Interval propagation over every line and its margin narrows these; when a withheld cell's
   interval collapses to one value, the smallest visible non-zero cell of a line through it is
   withheld too.

Zeros are shown. A zero says that nothing happened in a group, which is not a fact about any
person; and showing zeros keeps the groups of an answer the same for every reader. It makes
every withheld cell known to be at least 1, and that lower bound is exactly what check 2 feeds
into the propagation, so a line whose withheld cells add up to what the margin leaves is caught
("six withheld Mondays under a Monday total of 6": each is 1). Withholding zeros too was tried
against the same intruder: on whole months it protects nothing more. What cannot be helped is
a line with no visible non-zero cell left to withhold (for instance seven cells of 1 and
otherwise zeros under a withheld total of 7): those cells follow from the zeros and the
threshold whatever is done in the line; ``secondary`` leaves them withheld and goes on.

Each count column is treated on its own (a comparison's ``count`` and ``previous_count`` are
separate tables of the same shape). A threshold of k and a base of 1 give the former rule
(suppression of 1 to k-1, exact counts).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Mapping, Sequence
from collections.abc import Set as AbstractSet
from typing import Any

SUPPRESSED = "suppressed"
# The partnership's rule (OpenSAFELY's): 1 to 7 withheld, the rest rounded to the nearest 5.
DEFAULT_K = 8
DEFAULT_ROUNDING = 5
# Stands for "no upper bound" in the integer interval arithmetic below.
UNBOUNDED = 10**15
# A version of the rule, for what is materialised under it (a change makes new files).
RULE_VERSION = 2

Interval = tuple[int, int]


def is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def is_small(value: Any, k: int) -> bool:
    """Whether a count is withheld by primary suppression (1 to k-1; zero is shown)."""
    return is_count(value) and 0 < value < k


def rounded(value: int, base: int) -> int:
    """``value`` to the nearest multiple of ``base`` (halves up; no half exists for an odd base)."""
    if base <= 1:
        return value
    return ((2 * value + base) // (2 * base)) * base


def published_interval(value: int, k: int, base: int) -> Interval:
    """What a reader learns of a count published under the rule."""
    if value <= 0:
        return (0, 0)
    if value < k:
        return (1, k - 1)
    shown = rounded(value, base)
    return (max(k, shown - base // 2), shown + (base - 1) // 2)


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


def propagate(
    cells: list[Interval], lines: Sequence[Sequence[int]], margins: Sequence[Interval]
) -> list[Interval]:
    """Each cell's interval narrowed by every line summing to its margin, until stable.

    The same reasoning an intruder with every published figure can do by hand; an empty
    interval (lower above upper) only arises from inconsistent input.
    """
    bounds = [list(cell) for cell in cells]
    totals = [list(margin) for margin in margins]
    for _round in range(200):
        changed = False
        for line, total in zip(lines, totals, strict=True):
            low = sum(bounds[cell][0] for cell in line)
            high = sum(min(bounds[cell][1], UNBOUNDED) for cell in line)
            if low > total[0]:
                total[0], changed = low, True
            if high < total[1]:
                total[1], changed = high, True
            for cell in line:
                others_low = low - bounds[cell][0]
                others_high = high - min(bounds[cell][1], UNBOUNDED)
                new_low = max(bounds[cell][0], total[0] - others_high)
                new_high = min(bounds[cell][1], total[1] - others_low)
                if (new_low, new_high) != (bounds[cell][0], bounds[cell][1]):
                    low += new_low - bounds[cell][0]
                    high += min(new_high, UNBOUNDED) - min(bounds[cell][1], UNBOUNDED)
                    bounds[cell] = [new_low, new_high]
                    changed = True
        if not changed:
            break
    return [(low, high) for low, high in bounds]


def _value(values: Sequence[int | None], cell: int) -> int:
    value = values[cell]
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _smallest_visible(
    cells: Sequence[int], values: Sequence[int | None], withheld: AbstractSet[int]
) -> int | None:
    candidates = [c for c in cells if c not in withheld and _value(values, c) > 0]
    return min(candidates, key=lambda c: (_value(values, c), c)) if candidates else None


def determined(
    lines: Sequence[Sequence[int]],
    values: Sequence[int | None],
    withheld: AbstractSet[int],
    k: int,
    base: int,
) -> list[int]:
    """The withheld cells whose value bounds over lines and margins pin down exactly."""
    cells: list[Interval] = []
    for cell in range(len(values)):
        value = _value(values, cell)
        if cell in withheld:
            # Conservatively, an intruder is taken to know which cells are withheld to protect
            # others (those are at least k).
            cells.append(published_interval(value, k, base) if value < k else (k, UNBOUNDED))
        else:
            cells.append(published_interval(value, k, base))
    margins = [published_interval(sum(_value(values, c) for c in line), k, base) for line in lines]
    bounds = propagate(cells, lines, margins)
    return [cell for cell in sorted(withheld) if bounds[cell][0] >= bounds[cell][1]]


def secondary(
    keys: Sequence[tuple[Hashable, ...]],
    values: Sequence[int | None],
    withheld: set[int],
    k: int = DEFAULT_K,
    base: int = 1,
) -> set[int]:
    """``withheld`` grown until no line has exactly one withheld cell and no withheld cell is
    determined by the bounds of its lines (where another cell can be withheld to prevent it).

    Cells are indices into ``keys`` and ``values``; ties between equally small candidates go to
    the first in table order, so the result is deterministic for a sorted table.
    """
    result = set(withheld)
    lines = lines_of(keys)
    through: dict[int, list[list[int]]] = {}
    for line in lines:
        for cell in line:
            through.setdefault(cell, []).append(line)
    hopeless: set[int] = set()
    while True:
        changed = True
        while changed:
            changed = False
            for line in lines:
                hidden = [cell for cell in line if cell in result]
                if len(hidden) != 1:
                    continue
                candidate = _smallest_visible(line, values, result)
                if candidate is not None:
                    result.add(candidate)
                    changed = True
        pinned = [c for c in determined(lines, values, result, k, base) if c not in hopeless]
        if not pinned:
            return result
        cell = pinned[0]
        neighbours = [c for line in through.get(cell, []) for c in line]
        candidate = _smallest_visible(neighbours, values, result)
        if candidate is None:
            hopeless.add(cell)
        else:
            result.add(candidate)


def withheld_cells(
    keys: Sequence[tuple[Hashable, ...]],
    values: Sequence[int | None],
    k: int,
    *,
    secondary_suppression: bool,
    base: int = 1,
) -> set[int]:
    """The cells of one count column to withhold."""
    primary = {index for index, value in enumerate(values) if is_small(value, k)}
    if not secondary_suppression or not primary:
        return primary
    return secondary(keys, values, primary, k, base)


def suppress_notes(notes: dict[str, Any], names: Sequence[str], k: int, base: int = 1) -> set[str]:
    """Withhold small totals kept in the notes and round the others; returns the names withheld."""
    withheld = {name for name in names if is_small(notes.get(name), k)}
    for name in names:
        value = notes.get(name)
        if name in withheld:
            notes[name] = None
        elif isinstance(value, int) and not isinstance(value, bool):
            notes[name] = rounded(value, base)
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
    base: int = 1,
    rederive: Callable[[], None] | None = None,
) -> None:
    """Withhold and round the counts of ``rows`` in place, listing what is withheld under
    ``"suppressed"``.

    Which cells are withheld is decided on the exact counts; the others are then rounded, and
    ``rederive`` (when given) computes the derived columns again from the published counts.
    ``derived`` maps a derived column to what it is computed from: column names, or
    ``notes.<name>`` for a total in the notes. Derived columns are handled in ``columns``
    order, so a column derived from a derived column follows it.
    """
    keys = [tuple(row.get(name) for name in key_columns) for row in rows]
    hidden: list[set[str]] = [set() for _ in rows]
    for column in count_columns:
        values = [row.get(column) for row in rows]
        withheld = withheld_cells(
            keys, values, k, secondary_suppression=secondary_suppression, base=base
        )
        for index, row in enumerate(rows):
            if index in withheld:
                hidden[index].add(column)
                row[column] = None
            elif is_count(row.get(column)):
                row[column] = rounded(row[column], base)
    if rederive is not None:
        rederive()
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
