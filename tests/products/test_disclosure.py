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
