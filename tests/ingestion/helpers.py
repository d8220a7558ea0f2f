from __future__ import annotations

import csv
import io
from datetime import date

from services.demo.generate import generate_police


def police_rows(rows: int = 200, seed: int = 7) -> list[dict[str, str]]:
    return list(generate_police(rows, seed=seed, start=date(2023, 1, 1), end=date(2024, 1, 1)))


def to_csv(rows: list[dict[str, str]], extra_columns: dict[str, str] | None = None) -> bytes:
    buffer = io.StringIO()
    fieldnames = list(rows[0].keys()) + list((extra_columns or {}).keys())
    writer = csv.DictWriter(buffer, fieldnames=fieldnames, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({**row, **(extra_columns or {})})
    return buffer.getvalue().encode()


def with_suspect(rows: list[dict[str, str]]) -> int:
    """Index of the first row with a named suspect."""
    return next(i for i, row in enumerate(rows) if row["suspect_surname"])
