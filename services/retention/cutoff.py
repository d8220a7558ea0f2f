"""The day before which a contract's rows have expired, and which rows those are.

A row has expired when its `retention_from` value (a date, or a local timestamp) falls before
the cutoff: today minus the contract's retention, counted on the calendar (P6Y from 29 February
2032 is 28 February 2026, P1M from 31 March is the last day of February), so that "six years"
means what the data-sharing agreement means by it rather than 6 x 365 days. A retention's time
part (hours, minutes, seconds) is below a day and is not counted.
"""

from __future__ import annotations

import calendar
import re
from datetime import date, datetime, timedelta

import pyarrow as pa
import pyarrow.compute as pc

from services.contracts.model import Contract, FieldType

_DATE_PART = re.compile(r"(\d+)([YMWD])")


def _minus_months(day: date, months: int) -> date:
    index = day.year * 12 + (day.month - 1) - months
    year, month = divmod(index, 12)
    month += 1
    return date(year, month, min(day.day, calendar.monthrange(year, month)[1]))


def cutoff_day(retention: str, today: date) -> date:
    """The first day whose rows are still kept: rows dated before it have expired."""
    date_part = retention.removeprefix("P").partition("T")[0]
    months = days = 0
    for number, unit in _DATE_PART.findall(date_part):
        value = int(number)
        if unit == "Y":
            months += 12 * value
        elif unit == "M":
            months += value
        elif unit == "W":
            days += 7 * value
        else:
            days += value
    return _minus_months(today, months) - timedelta(days=days)


def expired_mask(table: pa.Table, contract: Contract, cutoff: date) -> pa.ChunkedArray:
    """True for each stored row of `table` whose `retention_from` value is before `cutoff`.

    A contract without `retention_from` expires nothing (reference data with no date). A
    missing value is never expired: the contract requires the field, so none is stored."""
    name = contract.retention_from
    if name is None:
        return pa.chunked_array([pa.array([False] * table.num_rows, pa.bool_())])
    column = table.column(name)
    if contract.field(name).type is FieldType.TIMESTAMP:
        # Stored as local wall-clock time without a zone: midnight of the cutoff day, local.
        bound = pa.scalar(datetime.combine(cutoff, datetime.min.time()), column.type)
    else:
        bound = pa.scalar(cutoff, column.type)
    return pc.fill_null(pc.less(column, bound), False)
