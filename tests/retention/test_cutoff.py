"""The cutoff day of a retention, on the calendar, and the rows before it (dates straddling
the cutoff, with a fixed today: never the wall clock)."""

from __future__ import annotations

from datetime import date, datetime

import pyarrow as pa
import pytest

from services.contracts.loader import default_contracts_dir, load_contracts
from services.retention.cutoff import cutoff_day, expired_mask

CONTRACTS = load_contracts(default_contracts_dir())
TODAY = date(2026, 12, 5)


@pytest.mark.parametrize(
    ("retention", "today", "cutoff"),
    [
        ("P6Y", TODAY, date(2020, 12, 5)),
        ("P10Y", TODAY, date(2016, 12, 5)),
        ("P18M", TODAY, date(2025, 6, 5)),
        ("P1M", date(2026, 3, 31), date(2026, 2, 28)),
        ("P1Y", date(2028, 2, 29), date(2027, 2, 28)),
        ("P2W", TODAY, date(2026, 11, 21)),
        ("P30D", TODAY, date(2026, 11, 5)),
        ("P1Y1M1D", TODAY, date(2025, 11, 4)),
        ("P1DT12H", TODAY, date(2026, 12, 4)),
        ("PT36H", TODAY, TODAY),
    ],
)
def test_the_cutoff_is_counted_on_the_calendar(retention: str, today: date, cutoff: date) -> None:
    assert cutoff_day(retention, today) == cutoff


def test_dates_straddling_the_cutoff() -> None:
    police = CONTRACTS["police.occurrences"]
    cutoff = cutoff_day(police.retention, TODAY)
    days = [date(2020, 12, 3), date(2020, 12, 4), date(2020, 12, 5), date(2020, 12, 6), None]
    table = pa.table({"recorded_date": pa.array(days, pa.date32())})
    assert expired_mask(table, police, cutoff).to_pylist() == [True, True, False, False, False]


def test_timestamps_straddling_the_cutoff() -> None:
    fire = CONTRACTS["fire.deliberate_fires"]
    cutoff = cutoff_day(fire.retention, TODAY)
    moments = [
        datetime(2020, 12, 4, 23, 59, 59, 999999),
        datetime(2020, 12, 5, 0, 0),
        datetime(2026, 12, 1, 12, 0),
    ]
    table = pa.table({"occurred_at": pa.array(moments, pa.timestamp("us"))})
    assert expired_mask(table, fire, cutoff).to_pylist() == [True, False, False]


def test_reference_data_without_a_date_expires_nothing() -> None:
    imd = CONTRACTS["la.imd"]
    assert imd.retention_from is None
    table = pa.table({"lsoa_code": ["E01000001", "E01000002"]})
    assert expired_mask(table, imd, TODAY).to_pylist() == [False, False]
