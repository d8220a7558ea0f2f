"""Small-number suppression, on tables made up here."""

from __future__ import annotations

import itertools
from typing import Any

from services.products import disclosure


def suppress(
    rows: list[dict[str, Any]],
    keys: list[str],
    counts: tuple[str, ...] = ("count",),
    derived: dict[str, list[str]] | None = None,
    secondary: bool = True,
    withheld_notes: set[str] | None = None,
) -> list[dict[str, Any]]:
    columns = list(rows[0]) if rows else []
    disclosure.suppress_rows(
        rows,
        columns=columns,
        key_columns=keys,
        count_columns=list(counts),
        derived=derived or {},
        k=5,
        secondary_suppression=secondary,
        withheld_notes=withheld_notes or set(),
    )
    return rows


def test_primary_withholds_one_to_four_only() -> None:
    rows = [{"measure": f"m{v}", "count": v} for v in range(7)]
    suppress(rows, ["measure"], secondary=False)
    assert [row["count"] for row in rows] == [0, None, None, None, None, 5, 6]
    assert [row.get("suppressed") for row in rows] == [
        None,
        ["count"],
        ["count"],
        ["count"],
        ["count"],
        None,
        None,
    ]
    assert disclosure.is_small(4, 5) and not disclosure.is_small(0, 5)
    assert not disclosure.is_small(None, 5) and not disclosure.is_small(True, 5)


def test_one_withheld_cell_in_a_line_takes_the_next_smallest() -> None:
    rows = [
        {"csp": "A", "count": 9},
        {"csp": "B", "count": 2},
        {"csp": "C", "count": 6},
        {"csp": "D", "count": 0},
        {"csp": "E", "count": 7},
    ]
    suppress(rows, ["csp"])
    # Zero is never withheld, so 6 (the smallest non-zero) goes with the 2.
    assert [row["count"] for row in rows] == [9, None, None, 0, 7]


def test_a_line_of_one_cell_is_left_alone() -> None:
    rows = [{"count": 3}]
    suppress(rows, [])
    assert rows == [{"count": None, "suppressed": ["count"]}]


def lines_ok(table: dict[tuple[int, int], int], withheld: set[tuple[int, int]]) -> bool:
    for dimension in (0, 1):
        groups: dict[int, list[tuple[int, int]]] = {}
        for cell in table:
            groups.setdefault(cell[1 - dimension], []).append(cell)
        for cells in groups.values():
            hidden = [c for c in cells if c in withheld]
            others = [c for c in cells if c not in withheld and table[c] > 0]
            if len(cells) >= 2 and len(hidden) == 1 and others:
                return False
    return True


def test_two_dimensions_iterate_until_stable() -> None:
    # A 3 x 3 table with one small cell: withholding its row partner breaks a column, and so on.
    values = {
        (0, 0): 2, (0, 1): 20, (0, 2): 30,
        (1, 0): 40, (1, 1): 7, (1, 2): 50,
        (2, 0): 60, (2, 1): 70, (2, 2): 8,
    }  # fmt: skip
    rows = [{"a": a, "b": b, "count": v} for (a, b), v in values.items()]
    suppress(rows, ["a", "b"])
    withheld = {(row["a"], row["b"]) for row in rows if row["count"] is None}
    assert (0, 0) in withheld
    assert len(withheld) >= 4
    assert lines_ok(values, withheld)
    # Every withheld cell's row and column has another withheld cell: no subtraction helps.
    for a, b in withheld:
        assert sum(1 for x, y in withheld if x == a) >= 2
        assert sum(1 for x, y in withheld if y == b) >= 2


def test_random_tables_never_leave_one_withheld_cell_in_a_line() -> None:
    import random

    generator = random.Random(4)
    for _ in range(200):
        width, height = generator.randint(2, 7), generator.randint(2, 24)
        table = {
            (a, b): generator.choice([0, 1, 2, 3, 4, 5, 6, 8, 12, 30])
            for a, b in itertools.product(range(width), range(height))
            if generator.random() > 0.1  # absent cells (zero) too
        }
        rows = [{"a": a, "b": b, "count": v} for (a, b), v in sorted(table.items())]
        suppress(rows, ["a", "b"])
        withheld = {(row["a"], row["b"]) for row in rows if row["count"] is None}
        assert {c for c, v in table.items() if 1 <= v <= 4} <= withheld
        assert lines_ok(table, withheld)
        assert all(table[c] > 0 for c in withheld)


def test_counts_are_suppressed_column_by_column_and_derived_follow() -> None:
    rows = [
        {"g": "a", "count": 3, "previous_count": 10, "change_n": -7, "change_pct": -70.0},
        {"g": "b", "count": 12, "previous_count": 2, "change_n": 10, "change_pct": 500.0},
        {"g": "c", "count": 20, "previous_count": 30, "change_n": -10, "change_pct": -33.3},
    ]
    derived = {
        "change_n": ["count", "previous_count"],
        "change_pct": ["count", "previous_count"],
    }
    suppress(rows, ["g"], counts=("count", "previous_count"), derived=derived)
    # count: 3 withheld, then 12 (next smallest); previous_count: 2 withheld, then 10.
    assert rows[0]["suppressed"] == ["count", "previous_count", "change_n", "change_pct"]
    assert rows[1]["suppressed"] == ["count", "previous_count", "change_n", "change_pct"]
    assert rows[2] == {
        "g": "c",
        "count": 20,
        "previous_count": 30,
        "change_n": -10,
        "change_pct": -33.3,
    }


def test_derived_from_a_withheld_total_is_withheld() -> None:
    notes: dict[str, Any] = {"total": 3, "previous_total": 40}
    withheld = disclosure.suppress_notes(notes, ["total", "previous_total"], 5)
    assert withheld == {"total"}
    assert notes == {"total": None, "previous_total": 40, "suppressed": ["total"]}
    rows = [
        {"flag": "x", "count": 0, "pct": 0.0, "previous_count": 8, "previous_pct": 20.0},
        {"flag": "y", "count": 0, "pct": 0.0, "previous_count": 9, "previous_pct": 22.5},
    ]
    suppress(
        rows,
        ["flag"],
        counts=("count", "previous_count"),
        derived={
            "pct": ["count", "notes.total"],
            "previous_pct": ["previous_count", "notes.previous_total"],
        },
        withheld_notes=withheld,
    )
    assert rows[0] == {
        "flag": "x",
        "count": 0,
        "pct": None,
        "previous_count": 8,
        "previous_pct": 20.0,
        "suppressed": ["pct"],
    }


def test_secondary_can_be_switched_off() -> None:
    rows = [{"m": "total", "v": 7}, {"m": "male", "v": 3}]
    suppress(rows, ["m"], counts=("v",), secondary=False)
    assert rows == [{"m": "total", "v": 7}, {"m": "male", "v": None, "suppressed": ["v"]}]


# The partnership's rule: 1 to 7 withheld, the rest rounded to the nearest 5


def test_counts_below_eight_withheld_others_rounded_zero_shown() -> None:
    rows = [{"m": f"m{v}", "count": v} for v in (0, 1, 7, 8, 12, 13, 17, 18, 102)]
    disclosure.suppress_rows(
        rows,
        columns=["m", "count"],
        key_columns=["m"],
        count_columns=["count"],
        derived={},
        k=disclosure.DEFAULT_K,
        secondary_suppression=False,
        base=disclosure.DEFAULT_ROUNDING,
    )
    assert [row["count"] for row in rows] == [0, None, None, 10, 10, 15, 15, 20, 100]
    assert disclosure.rounded(12, 5) == 10 and disclosure.rounded(13, 5) == 15
    assert disclosure.rounded(7, 1) == 7
    assert disclosure.published_interval(0, 8, 5) == (0, 0)
    assert disclosure.published_interval(3, 8, 5) == (1, 7)
    assert disclosure.published_interval(9, 8, 5) == (8, 12)
    assert disclosure.published_interval(24, 8, 5) == (23, 27)


def test_derived_values_come_from_the_rounded_counts() -> None:
    rows: list[dict[str, Any]] = [
        {"g": "a", "count": 12, "previous_count": 9, "change_n": 3},
        {"g": "b", "count": 33, "previous_count": 21, "change_n": 12},
        {"g": "c", "count": 4, "previous_count": 30, "change_n": -26},
    ]

    def rederive() -> None:
        for row in rows:
            both = row["count"] is not None and row["previous_count"] is not None
            row["change_n"] = row["count"] - row["previous_count"] if both else None

    disclosure.suppress_rows(
        rows,
        columns=["g", "count", "previous_count", "change_n"],
        key_columns=["g"],
        count_columns=["count", "previous_count"],
        derived={"change_n": ["count", "previous_count"]},
        k=8,
        secondary_suppression=False,
        base=5,
        rederive=rederive,
    )
    # 12 - 9 = 3 exactly; published, 10 - 10 = 0: the exact difference is never shown.
    assert rows[0] == {"g": "a", "count": 10, "previous_count": 10, "change_n": 0}
    assert rows[1]["change_n"] == 35 - 20
    assert rows[2]["change_n"] is None and rows[2]["suppressed"] == ["count", "change_n"]


def test_propagation_pins_what_the_bounds_allow() -> None:
    # Two cells in [1, 7] under a margin of at most 2: each is 1.
    cells = [(1, 7), (1, 7), (0, 0)]
    assert disclosure.propagate(cells, [[0, 1, 2]], [(1, 2)])[:2] == [(1, 1), (1, 1)]
    # A withheld 1 beside two visible 8s (published 10, 10) under a total of 17 (published 15):
    # 17 - 8 - 8 = 1 is the only value the bounds leave.
    values = [1, 8, 8]
    assert disclosure.determined([[0, 1, 2]], values, {0}, 8, 5) == [0]
    # Under a margin published as 20 (a total of 18) it is not.
    assert disclosure.determined([[0, 1, 2]], [2, 8, 8], {0}, 8, 5) == []


def test_random_tables_leave_no_withheld_cell_determined_where_it_can_be_helped() -> None:
    import random

    generator = random.Random(8)
    for _ in range(150):
        width, height = generator.randint(2, 6), generator.randint(2, 12)
        table = {
            (a, b): generator.choice([0, 1, 2, 3, 5, 7, 8, 9, 11, 13, 20, 40])
            for a, b in itertools.product(range(width), range(height))
        }
        keys = sorted(table)
        values: list[int | None] = [table[key] for key in keys]
        withheld = disclosure.withheld_cells(keys, values, 8, secondary_suppression=True, base=5)
        assert {i for i, v in enumerate(values) if v is not None and 1 <= v <= 7} <= withheld
        lines = disclosure.lines_of(keys)
        for cell in disclosure.determined(lines, values, withheld, 8, 5):
            # Only where no line through it has a visible non-zero cell left to withhold.
            through = [line for line in lines if cell in line]
            assert all(
                (values[other] or 0) == 0 or other in withheld for line in through for other in line
            ), (table, cell)
