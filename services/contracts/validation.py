"""Checking uploads against their contract and turning them into what is stored.

Input batches hold text columns only (the readers read every column as ``string``, empty cells
as null). Each column is checked with Arrow compute kernels over the whole batch; Python only
runs per violation (at most ``MAX_VIOLATIONS`` are described) and per distinct protected value.

Checks stop at the first failing stage for a cell: an empty cell is only ``required`` (when the
field is required); a value of the wrong type is only ``type``; a well-typed value can fail
``allowed_values``, ``pattern``, ``minimum`` and ``maximum`` together.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from functools import partial
from typing import Any, TypeVar

import pyarrow as pa
import pyarrow.compute as pc

from services.contracts.columns import StoredColumn, StoredKind, query_column, stored_columns
from services.contracts.keyhash import KeyLedger
from services.contracts.model import (
    Classification,
    Contract,
    ContractField,
    FieldType,
    Protection,
    latest_day,
)
from services.contracts.protection import DistinctMemo, Protector

MAX_VIOLATIONS = 1000
VALUE_QUOTE_LIMIT = 50


class Rule(StrEnum):
    """What a violation broke, as the validation report names it.

    Violations of one row are listed in this order, so the header rules come first and a
    cell's own checks in the order they run.
    """

    UNDECLARED_COLUMN = "undeclared_column"
    MISSING_HEADER = "missing_header"
    DUPLICATE_COLUMN = "duplicate_column"
    MISSING_COLUMN = "missing_column"
    REQUIRED = "required"
    TYPE = "type"
    MAX_LENGTH = "max_length"
    ALLOWED_VALUES = "allowed_values"
    PATTERN = "pattern"
    MINIMUM = "minimum"
    MAXIMUM = "maximum"
    NOT_AFTER = "not_after"
    ON_OR_AFTER = "on_or_after"
    ON_OR_BEFORE = "on_or_before"
    DUPLICATE_KEY = "duplicate_key"
    # Found while reading the file rather than by a field's checks.
    FORMAT = "format"
    EMPTY = "empty"


_RULE_ORDER: dict[str, int] = {rule.value: index for index, rule in enumerate(Rule)}

ARROW_TYPES: dict[FieldType, pa.DataType] = {
    FieldType.STRING: pa.string(),
    FieldType.INTEGER: pa.int64(),
    FieldType.FLOAT: pa.float64(),
    FieldType.BOOLEAN: pa.bool_(),
    FieldType.DATE: pa.date32(),
    FieldType.TIMESTAMP: pa.timestamp("us"),
}

_TYPE_NAMES: dict[FieldType, str] = {
    FieldType.STRING: "text",
    FieldType.INTEGER: "integer",
    FieldType.FLOAT: "number",
    FieldType.BOOLEAN: "boolean (true/false, yes/no, y/n, t/f, 1/0)",
    FieldType.DATE: "date (YYYY-MM-DD)",
    FieldType.TIMESTAMP: "timestamp (YYYY-MM-DD HH:MM[:SS[.ffffff]], local time)",
}

# RE2 (Arrow's engine): \d is ASCII only. Eighteen digits always fit in int64, so a longer
# number is reported as a type violation instead of failing the cast of the whole batch.
_INTEGER_RE = r"^[+-]?\d{1,18}$"
_FLOAT_RE = r"^[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?$"
_DATE_RE = r"^\d{4}-\d{2}-\d{2}$"
_TIMESTAMP_RE = r"^\d{4}-\d{2}-\d{2}[ T]\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?$"
_TRUE = pa.array(["true", "1", "yes", "y", "t"], pa.string())
_FALSE = pa.array(["false", "0", "no", "n", "f"], pa.string())
_DAYS_IN_MONTH = pa.array([31, 28, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31], pa.int32())
_FIRST_DATE = pa.scalar(date(1, 1, 1), pa.date32())
_FIRST_TIMESTAMP = pa.scalar(datetime(1, 1, 1), pa.timestamp("us"))
# Separates key parts, and stands for an empty key part, in duplicate detection. Control
# characters, so a reference cannot contain them by accident.
_KEY_SEPARATOR = "\x1f"
_KEY_NULL = "\x00"

# Below this many rows, threads cost more than they save.
_PARALLEL_ROWS = 50_000
_MAX_THREADS = 4
# A column is checked per distinct value when a sample of its first rows has at most one
# distinct value in four.
_SAMPLE_ROWS = 8192
_MIN_SAMPLE_ROWS = 256
_DISTINCT_RATIO = 4

_T = TypeVar("_T")

CONTRACT_METADATA_KEY = b"together.contract"
CONTRACT_VERSION_METADATA_KEY = b"together.contract_version"


@dataclass(frozen=True)
class Violation:
    row: int | None
    field: str | None
    rule: Rule
    message: str

    def to_dict(self) -> dict[str, Any]:
        rule = self.rule.value
        return {"row": self.row, "field": self.field, "rule": rule, "message": self.message}


class ValidationReport:
    """Counts every violation; describes the first ``limit`` of them."""

    def __init__(self, limit: int = MAX_VIOLATIONS) -> None:
        self.limit = limit
        self.violations: list[Violation] = []
        self.totals: dict[str, int] = {}

    def add(self, violation: Violation) -> None:
        self.count(violation.rule)
        if len(self.violations) < self.limit:
            self.violations.append(violation)

    def count(self, rule: Rule, n: int = 1) -> None:
        """Count violations that are not described (beyond the limit)."""
        if n:
            # Keyed by the plain name: the totals go into the audit event's canonical JSON.
            self.totals[rule.value] = self.totals.get(rule.value, 0) + n

    @property
    def room(self) -> int:
        return self.limit - len(self.violations)

    @property
    def total(self) -> int:
        return sum(self.totals.values())

    @property
    def ok(self) -> bool:
        return self.total == 0

    @property
    def truncated(self) -> bool:
        return self.total > len(self.violations)

    def to_dict(self) -> dict[str, Any]:
        return {
            "ok": self.ok,
            "total_violations": self.total,
            "totals": dict(
                sorted(self.totals.items(), key=lambda item: _RULE_ORDER.get(item[0], 99))
            ),
            "violations": [violation.to_dict() for violation in self.violations],
            "truncated": self.truncated,
        }


# Small Arrow helpers


def _count(mask: pa.Array) -> int:
    total = pc.sum(mask).as_py()
    return int(total) if total else 0


def _any(mask: pa.Array) -> bool:
    return bool(pc.any(mask).as_py())


def _only_true(mask: pa.Array) -> pa.Array:
    """A boolean mask with nulls read as false."""
    return mask if mask.null_count == 0 else pc.fill_null(mask, False)


def _null_where(mask: pa.Array, values: pa.Array) -> pa.Array:
    return pc.if_else(mask, pa.scalar(None, values.type), values)


def _quote(value: Any) -> str:
    text = str(value)
    if len(text) > VALUE_QUOTE_LIMIT:
        text = text[:VALUE_QUOTE_LIMIT] + "…"
    return repr(text)


def _real_dates(text: pa.Array) -> pa.Array:
    """Which 'YYYY-MM-DD...' strings start with a real calendar date (year 0001 or later)."""
    year = pc.cast(pc.utf8_slice_codeunits(text, 0, 4), pa.int32())
    month = pc.cast(pc.utf8_slice_codeunits(text, 5, 7), pa.int32())
    day = pc.cast(pc.utf8_slice_codeunits(text, 8, 10), pa.int32())

    def divisible(by: int) -> pa.Array:
        return pc.equal(pc.subtract(year, pc.multiply(pc.divide(year, by), by)), 0)

    leap = pc.and_(divisible(4), pc.or_(pc.invert(divisible(100)), divisible(400)))
    month_index = pc.subtract(pc.max_element_wise(pc.min_element_wise(month, 12), 1), 1)
    days = pc.add(
        pc.take(_DAYS_IN_MONTH, month_index),
        pc.cast(pc.and_(leap, pc.equal(month, 2)), pa.int32()),
    )
    checks = [
        pc.greater_equal(year, 1),
        pc.greater_equal(month, 1),
        pc.less_equal(month, 12),
        pc.greater_equal(day, 1),
        pc.less_equal(day, days),
    ]
    result = checks[0]
    for check in checks[1:]:
        result = pc.and_(result, check)
    return result


def _real_times(text: pa.Array) -> pa.Array:
    """Which 'YYYY-MM-DD HH:MM[:SS...]' strings have an hour, minute and second in range."""
    hour = pc.cast(pc.utf8_slice_codeunits(text, 11, 13), pa.int32())
    minute = pc.cast(pc.utf8_slice_codeunits(text, 14, 16), pa.int32())
    seconds_text = pc.utf8_slice_codeunits(text, 17, 19)
    seconds_text = _null_where(pc.equal(seconds_text, ""), seconds_text)
    second = pc.fill_null(pc.cast(seconds_text, pa.int32()), 0)
    return pc.and_(
        pc.and_(pc.less(hour, 24), pc.less(minute, 60)),
        pc.less(second, 60),
    )


# Conversions. Each returns the typed array (null where empty or invalid) and a mask of the
# non-empty values that are not of the type (None when there are none). Most try Arrow's cast
# first, which succeeds for clean data and costs one pass; only a failed cast pays for the
# finer checks that find which values are wrong.


Conversion = tuple[pa.Array, pa.Array | None]


def _convert_integer(text: pa.Array) -> Conversion:
    # Always through the pattern: Arrow's integer parser also reads hexadecimal ("0x1F").
    well_formed = _only_true(pc.match_substring_regex(text, _INTEGER_RE))
    bad = pc.and_(pc.is_valid(text), pc.invert(well_formed))
    if _any(bad):
        text = _null_where(bad, text)
    else:
        bad = None
    if _any(pc.starts_with(text, "+")):
        text = pc.replace_substring_regex(text, r"^\+", "")
    return pc.cast(text, pa.int64()), bad


def _convert_float(text: pa.Array) -> Conversion:
    try:
        typed = pc.cast(text, pa.float64())
        bad = None
    except pa.ArrowInvalid:
        well_formed = _only_true(pc.match_substring_regex(text, _FLOAT_RE))
        bad = pc.and_(pc.is_valid(text), pc.invert(well_formed))
        typed = pc.cast(_null_where(bad, text), pa.float64())
    # Arrow reads nan and inf, and overflow gives inf; none is a measurement.
    not_finite = _only_true(pc.invert(pc.is_finite(typed)))
    if _any(not_finite):
        bad = not_finite if bad is None else pc.or_(bad, not_finite)
        typed = _null_where(not_finite, typed)
    return typed, bad


def _convert_boolean(text: pa.Array) -> Conversion:
    try:
        # Arrow reads true/false/1/0 in any case: the usual export, one pass.
        return pc.cast(text, pa.bool_()), None
    except pa.ArrowInvalid:
        pass
    lower = pc.utf8_lower(text)
    is_true = pc.is_in(lower, value_set=_TRUE)
    is_false = pc.is_in(lower, value_set=_FALSE)
    bad = pc.and_(pc.is_valid(text), pc.invert(pc.or_(is_true, is_false)))
    typed = _null_where(pc.is_null(text), is_true)
    if not _any(bad):
        return typed, None
    return _null_where(bad, typed), bad


def _from_year_one(typed: pa.Array, first: pa.Scalar) -> Conversion:
    # Some Arrow builds read year 0000, which no date library (Python's included) can hold.
    too_early = _only_true(pc.less(typed, first))
    if _any(too_early):
        return _null_where(too_early, typed), too_early
    return typed, None


def _convert_date(text: pa.Array) -> Conversion:
    try:
        # Arrow's date parser accepts exactly YYYY-MM-DD and checks the calendar.
        return _from_year_one(pc.cast(text, pa.date32()), _FIRST_DATE)
    except pa.ArrowInvalid:
        pass
    well_formed = _only_true(pc.match_substring_regex(text, _DATE_RE))
    valid = pc.and_(well_formed, _only_true(_real_dates(_null_where(pc.invert(well_formed), text))))
    bad = pc.and_(pc.is_valid(text), pc.invert(valid))
    return pc.cast(_null_where(bad, text), pa.date32()), bad


def _convert_timestamp(text: pa.Array) -> Conversion:
    # Arrow's naive timestamp parser rejects zone designators and out-of-range parts, but
    # also accepts a bare date or a bare hour; those are shorter than 'YYYY-MM-DD HH:MM' (16).
    length = pc.binary_length(text)
    plausible = pc.and_(pc.greater_equal(length, 16), pc.less_equal(length, 26))
    if not _any(pc.and_(pc.is_valid(text), pc.invert(plausible))):
        try:
            return _from_year_one(pc.cast(text, pa.timestamp("us")), _FIRST_TIMESTAMP)
        except pa.ArrowInvalid:
            pass
    well_formed = _only_true(pc.match_substring_regex(text, _TIMESTAMP_RE))
    candidates = _null_where(pc.invert(well_formed), text)
    valid = pc.and_(
        well_formed,
        _only_true(pc.and_(_real_dates(candidates), _real_times(candidates))),
    )
    bad = pc.and_(pc.is_valid(text), pc.invert(valid))
    cleaned = _null_where(bad, text)
    return pc.cast(cleaned, pa.timestamp("us")), bad


_CONVERTERS: dict[FieldType, Callable[[pa.Array], Conversion]] = {
    FieldType.INTEGER: _convert_integer,
    FieldType.FLOAT: _convert_float,
    FieldType.BOOLEAN: _convert_boolean,
    FieldType.DATE: _convert_date,
    FieldType.TIMESTAMP: _convert_timestamp,
}


# Per-column results


@dataclass
class _Finding:
    """Rows of one batch that break one rule on one field (or on the key)."""

    rule: Rule
    field: str | None
    order: int  # the field's position in the contract, to sort violations
    mask: pa.Array  # boolean per row, no nulls
    describe: Callable[[int], str]  # batch row index -> message


class _Column:
    """One checked column: typed values per row, made on first use."""

    def __init__(
        self,
        typed: pa.Array | Callable[[], pa.Array],
        bad_rows: pa.Array | None,
        findings: list[_Finding],
        encoded: pa.DictionaryArray | None = None,
    ) -> None:
        self._typed = typed
        self.bad_rows = bad_rows  # per row, values that are not of the field's type
        self.findings = findings
        # Protected fields only: per row, the value's text form as indices into its distinct
        # values, so that pseudonyms and ciphertexts are made once per distinct value.
        self.encoded = encoded

    @property
    def typed(self) -> pa.Array:
        """Per row, the stored Arrow type; null where empty or invalid."""
        # Lazy: a protected field is stored from ``encoded`` and rarely needs this at all.
        if callable(self._typed):
            self._typed = self._typed()
        return self._typed


def _bound_scalar(spec: ContractField, which: str) -> tuple[pa.Scalar, str] | None:
    bound = spec.bound(which)
    if bound is None:
        return None
    arrow_type = ARROW_TYPES[spec.type]
    if isinstance(bound, datetime):
        return pa.scalar(bound, arrow_type), bound.isoformat(sep=" ")
    if isinstance(bound, date):
        return pa.scalar(bound, arrow_type), bound.isoformat()
    return pa.scalar(bound, arrow_type), str(bound)


def _few_distinct(column: pa.Array) -> bool:
    """Whether a column repeats its values enough to be checked once per distinct value.

    Judged on a sample: encoding a column of near-unique values (references, timestamps,
    coordinates) costs more than checking it row by row.
    """
    sample = column.slice(0, _SAMPLE_ROWS)
    if len(sample) < _MIN_SAMPLE_ROWS:
        return False
    return len(pc.unique(sample)) * _DISTINCT_RATIO <= len(sample)


def _stored_arrow_type(column: StoredColumn) -> pa.DataType:
    if column.kind is StoredKind.VALUE:
        assert column.type is not None
        return ARROW_TYPES[column.type]
    return pa.binary() if column.kind is StoredKind.CIPHERTEXT else pa.string()


class BatchValidator:
    """Validates the batches of one upload in order and builds the batches to store.

    One instance per upload: it remembers the header and the keys already seen, so duplicate
    keys are found across batches too.
    """

    def __init__(
        self, contract: Contract, protector: Protector, *, latest: date | None = None
    ) -> None:
        self.contract = contract
        self.protector = protector
        # The last day a ``not_after: today`` value may fall on; fixed for the whole upload.
        self.latest = latest if latest is not None else latest_day()
        self._order = {spec.name: index for index, spec in enumerate(contract.fields)}
        self._header_checked = False
        self._header_usable = True
        self._columns: dict[str, str] = {}  # contract field -> column name in the upload
        self._schema = self._build_schema()
        self._key_columns = [self._key_column(name) for name in contract.key]
        # Each batch's distinct keys (as 128 bits of hash) and the row each first came from,
        # for duplicates across batches: compared once, in `finish` (one sort over the upload),
        # rather than each batch against all earlier ones (a pass over everything so far).
        self._keys = KeyLedger()
        self._memos: dict[str, DistinctMemo] = {}

    # Schema

    def _build_schema(self) -> pa.Schema:
        columns = [
            pa.field(column.name, _stored_arrow_type(column))
            for column in stored_columns(self.contract)
        ]
        metadata = {
            CONTRACT_METADATA_KEY: self.contract.id.encode(),
            CONTRACT_VERSION_METADATA_KEY: self.contract.version.encode(),
        }
        return pa.schema(columns, metadata=metadata)

    def stored_schema(self) -> pa.Schema:
        return self._schema

    def _key_column(self, name: str) -> str:
        # A key is never a direct identifier (the contract refuses it): its value or pseudonym.
        return query_column(self.contract.field(name))

    def key_columns(self) -> list[str]:
        return list(self._key_columns)

    def aad(self, field_name: str) -> str:
        """What an encrypted column of this dataset is bound to."""
        return f"{self.contract.id}/{field_name}"

    # Header

    def check_header(self, column_names: list[str], report: ValidationReport) -> bool:
        """Report undeclared, duplicated and missing columns; False if the header is unusable.

        Column names are matched after trimming surrounding whitespace. A column the contract
        does not declare is a violation (data minimisation), never silently dropped. Unusable
        means no columns, a repeated column name, or not one column of the contract.
        """
        self._header_checked = True
        declared = set(self.contract.field_names)
        trimmed = [name.strip() for name in column_names]
        usable = True
        if not column_names:
            report.add(Violation(None, None, Rule.MISSING_COLUMN, "the upload has no columns"))
            usable = False
        for name, times in Counter(trimmed).items():
            if times > 1:
                report.add(
                    Violation(
                        None,
                        name if name in declared else None,
                        Rule.DUPLICATE_COLUMN,
                        f"column {_quote(name)} appears {times} times",
                    )
                )
                usable = False
        columns: dict[str, str] = {}
        undeclared: set[str] = set()
        if column_names and not declared.intersection(trimmed):
            # No column matches: most likely a file without a header, whose first row (perhaps
            # a name) would otherwise be quoted back as column names.
            report.add(
                Violation(
                    None,
                    None,
                    Rule.MISSING_HEADER,
                    f"the first row matches no field of contract {self.contract.id}; "
                    "the file must start with a header row of field names",
                )
            )
            self._columns = {}
            self._header_usable = False
            return False
        for original, name in zip(column_names, trimmed, strict=True):
            if name in declared:
                columns.setdefault(name, original)
            elif name not in undeclared:
                undeclared.add(name)
                report.add(
                    Violation(
                        None,
                        name[:100],
                        Rule.UNDECLARED_COLUMN,
                        f"column {_quote(name)} is not in contract {self.contract.id}; fields "
                        "that are not in the contract are never stored, remove the column",
                    )
                )
        for spec in self.contract.fields:
            if spec.required and spec.name not in columns:
                report.add(
                    Violation(
                        None,
                        spec.name,
                        Rule.MISSING_COLUMN,
                        f"required column {spec.name!r} is missing",
                    )
                )
        if column_names and not columns:
            usable = False
        self._columns = columns
        self._header_usable = usable
        return usable

    # Batches

    def process(
        self, batch: pa.RecordBatch, first_row: int, report: ValidationReport
    ) -> pa.RecordBatch | None:
        """Check one batch; the batch to store, or None once the upload has any violation.

        ``first_row`` is the 1-based number of the batch's first data row. After a violation
        the caller stops writing but should keep calling this to complete the report; the
        protection work is then skipped.
        """
        if not self._header_checked:
            self.check_header(batch.schema.names, report)
        if not self._header_usable:
            raise ValueError("the header of this upload is unusable; see the report")
        rows = batch.num_rows
        specs = self.contract.fields
        person = self.contract.person
        # Protection (Python cryptography, holding the GIL) starts as soon as the protected
        # columns are checked, while Arrow (releasing the GIL) checks the rest. Its result is
        # thrown away if the batch turns out to have violations; once the upload has any, it
        # is not started at all.
        speculate = report.ok
        with _Runner(parallel=rows >= _PARALLEL_ROWS) as run:
            checks: dict[str, Callable[[], _Column]] = {}
            stored: dict[str, Callable[[], list[pa.Array]]] = {}
            protected = [spec for spec in specs if spec.protected]
            for spec in protected:
                checks[spec.name] = run(partial(self._check_column, spec, batch, rows))
            if speculate:
                for spec in protected:
                    stored[spec.name] = run(
                        partial(self._protect, spec, checks[spec.name]), gil=True
                    )
                if person is not None:
                    parts = [checks[name] for name in (person.surname, person.forename, person.dob)]
                    stored["person_key"] = run(partial(self._person_key, *parts), gil=True)
            # The key's columns next, so that duplicate detection (a long Arrow task) starts
            # early and overlaps the remaining checks.
            for name in self.contract.key:
                if name not in checks:
                    spec = self.contract.field(name)
                    checks[name] = run(partial(self._check_column, spec, batch, rows))
            key_parts = [checks[name] for name in self.contract.key]
            duplicates = run(partial(self._duplicate_keys, key_parts, first_row, rows))
            for spec in specs:
                if spec.name not in checks:
                    checks[spec.name] = run(partial(self._check_column, spec, batch, rows))
            # Protection gives per-distinct results; spreading them over the rows is Arrow work,
            # done off the protection lane so that it overlaps the next field's cryptography.
            for name, get_protected in list(stored.items()):
                stored[name] = run(partial(_decode_all, get_protected))
            columns = {name: get() for name, get in checks.items()}
            findings = [finding for column in columns.values() for finding in column.findings]
            findings.extend(self._field_order_findings(columns))
            findings.extend(duplicates())
            self._report(findings, first_row, report)
            if not report.ok:
                return None
            arrays: list[pa.Array] = []
            for spec in specs:
                if spec.protected:
                    arrays.extend(stored[spec.name]())
                else:
                    arrays.append(columns[spec.name].typed)
            if person is not None:
                arrays.extend(stored["person_key"]())
        return pa.RecordBatch.from_arrays(arrays, schema=self._schema)

    def _input_column(self, batch: pa.RecordBatch, spec: ContractField) -> pa.Array | None:
        name = self._columns.get(spec.name, spec.name)
        index = batch.schema.get_field_index(name)
        if index < 0:
            return None
        column = batch.column(index)
        if not pa.types.is_string(column.type):
            # The readers promise text; a null-typed column (all empty) is the usual exception.
            column = pc.cast(column, pa.string())
        return column

    def _check_column(self, spec: ContractField, batch: pa.RecordBatch, rows: int) -> _Column:
        arrow_type = ARROW_TYPES[spec.type]
        raw = self._input_column(batch, spec)
        if raw is None:
            # An optional column left out of the upload; a required one was reported once as
            # missing_column, not once per row.
            typed = pa.nulls(rows, arrow_type)
            encoded = None
            if spec.protected:
                encoded = pa.DictionaryArray.from_arrays(
                    pa.nulls(rows, pa.int32()), pa.array([], pa.string())
                )
            return _Column(typed, None, [], encoded)

        # Checks run on ``values``: the distinct values when the column repeats itself (and
        # always for protected fields, whose protection works per distinct value anyway), else
        # the rows. ``rows_of`` spreads a per-value result back over the rows.
        indices: pa.Array | None = None
        values = raw
        if spec.protected or _few_distinct(raw):
            encoded_raw = pc.dictionary_encode(raw)
            indices, values = encoded_raw.indices, encoded_raw.dictionary

        def rows_of(per_value: pa.Array) -> pa.Array:
            return per_value if indices is None else pc.take(per_value, indices)

        def value_index(row: int) -> int:
            if indices is None:
                return row
            found: int = indices[row].as_py()
            return found

        text = pc.utf8_trim_whitespace(values)
        empty = pc.equal(text, "")
        if _any(empty):
            text = _null_where(empty, text)
        findings: list[_Finding] = []
        order = self._order[spec.name]
        sensitive = spec.protected or spec.classification is Classification.LEVEL3

        def add(rule: Rule, per_value: pa.Array, describe: Callable[[int], str]) -> None:
            mask = _only_true(rows_of(per_value))
            findings.append(_Finding(rule, spec.name, order, mask, describe))

        def shown(row: int) -> str:
            return _quote(text[value_index(row)].as_py())

        if spec.required:
            if indices is None:
                missing = pc.is_null(text) if text.null_count else None
            elif indices.null_count or text.null_count:
                missing = pc.fill_null(pc.take(pc.is_null(text), indices), True)
            else:
                missing = None
            if missing is not None:
                findings.append(
                    _Finding(
                        Rule.REQUIRED,
                        spec.name,
                        order,
                        missing,
                        lambda _r: f"{spec.name} is required but empty",
                    )
                )

        converter = _CONVERTERS.get(spec.type)
        if converter is None:
            typed, bad = text, None
        else:
            typed, bad = converter(text)
        if bad is not None:
            type_name = _TYPE_NAMES[spec.type]
            if sensitive:
                add(Rule.TYPE, bad, lambda _r: f"value is not a valid {type_name}")
            else:
                add(Rule.TYPE, bad, lambda r: f"{shown(r)} is not a valid {type_name}")

        present = pc.is_valid(typed)
        if spec.max_length is not None:
            lengths = pc.utf8_length(typed)
            too_long = _only_true(pc.greater(lengths, spec.max_length))
            if _any(too_long):
                limit = spec.max_length
                # Never quoted, even when not sensitive: the value is long by definition.
                add(
                    Rule.MAX_LENGTH,
                    too_long,
                    lambda r: (
                        f"value is {lengths[value_index(r)].as_py()} characters long, "
                        f"above the max_length {limit}"
                    ),
                )
        if spec.allowed_values is not None:
            allowed = pa.array(spec.allowed_values, pa.string())
            outside = pc.and_(present, pc.invert(pc.is_in(typed, value_set=allowed)))
            if _any(outside):
                listing = ", ".join(spec.allowed_values)
                if len(listing) > 200:
                    listing = listing[:200] + "…"
                if sensitive:
                    add(Rule.ALLOWED_VALUES, outside, lambda _r: "value not allowed")
                else:
                    add(
                        Rule.ALLOWED_VALUES,
                        outside,
                        lambda r: f"{shown(r)} is not one of: {listing}",
                    )
        if spec.pattern is not None:
            matches = pc.match_substring_regex(typed, rf"\A(?:{spec.pattern})\z")
            mismatched = pc.and_(present, pc.invert(_only_true(matches)))
            if _any(mismatched):
                pattern = spec.pattern
                if sensitive:
                    add(
                        Rule.PATTERN,
                        mismatched,
                        lambda _r: f"value does not match the pattern {pattern}",
                    )
                else:
                    add(
                        Rule.PATTERN,
                        mismatched,
                        lambda r: f"{shown(r)} does not match the pattern {pattern}",
                    )

        def out_of_bounds(message: str) -> Callable[[int], str]:
            if sensitive:
                return lambda _r: f"value {message}"
            return lambda r: f"{shown(r)} {message}"

        for rule, compare, words in (
            (Rule.MINIMUM, pc.less, "is below the minimum"),
            (Rule.MAXIMUM, pc.greater, "is above the maximum"),
        ):
            bound = _bound_scalar(spec, rule)
            if bound is None:
                continue
            scalar, bound_text = bound
            outside = _only_true(compare(typed, scalar))
            if _any(outside):
                add(rule, outside, out_of_bounds(f"{words} {bound_text}"))

        if spec.not_after is not None:
            latest = self.latest
            day = typed if spec.type is FieldType.DATE else pc.cast(typed, pa.date32())
            future = _only_true(pc.greater(day, pa.scalar(latest, pa.date32())))
            if _any(future):
                add(
                    Rule.NOT_AFTER,
                    future,
                    out_of_bounds(f"is in the future (after {latest.isoformat()})"),
                )

        encoded = None
        if spec.protected:
            assert indices is not None
            as_text = typed if pa.types.is_string(typed.type) else pc.cast(typed, pa.string())
            encoded = pa.DictionaryArray.from_arrays(indices, as_text)
        bad_rows = None if bad is None else _only_true(rows_of(bad))
        if indices is None:
            return _Column(typed, bad_rows, findings, encoded)
        if converter is None and typed.null_count == 0 and pc.all(pc.equal(typed, values)).as_py():
            # Nothing was trimmed or emptied: the upload's own column is the stored one, and
            # spreading the distinct values back over a million rows is saved.
            return _Column(raw, bad_rows, findings, encoded)
        return _Column(lambda: rows_of(typed), bad_rows, findings, encoded)

    # Rules between two fields

    def _field_order_findings(self, columns: dict[str, _Column]) -> list[_Finding]:
        """Rows where a date or time is before (``on_or_after``) or after (``on_or_before``)
        the other field it names; a row with either value empty or invalid is left alone.

        A date compared with a timestamp is compared by day: a crime recorded on the day it
        was committed is on or after its time of day.
        """
        findings: list[_Finding] = []
        for spec in self.contract.fields:
            for rule, other_name in (
                (Rule.ON_OR_AFTER, spec.on_or_after),
                (Rule.ON_OR_BEFORE, spec.on_or_before),
            ):
                if other_name is None or other_name not in columns or spec.name not in columns:
                    continue
                other = self.contract.field(other_name)
                left, right = columns[spec.name].typed, columns[other_name].typed
                left_day, right_day = left, right
                if FieldType.DATE in (spec.type, other.type):
                    left_day, right_day = pc.cast(left, pa.date32()), pc.cast(right, pa.date32())
                compare = pc.less if rule is Rule.ON_OR_AFTER else pc.greater
                mask = _only_true(compare(left_day, right_day))
                if not _any(mask):
                    continue
                words = "before" if rule is Rule.ON_OR_AFTER else "after"
                findings.append(
                    _Finding(
                        rule,
                        spec.name,
                        self._order[spec.name],
                        mask,
                        self._describe_order(spec, other, words, left, right),
                    )
                )
        return findings

    @staticmethod
    def _describe_order(
        spec: ContractField, other: ContractField, words: str, left: pa.Array, right: pa.Array
    ) -> Callable[[int], str]:
        sensitive = any(
            field.protected or field.classification is Classification.LEVEL3
            for field in (spec, other)
        )
        if sensitive:
            return lambda _r: f"{spec.name} is {words} {other.name}"
        return lambda r: (
            f"{spec.name} {_quote(left[r].as_py())} is {words} {other.name} "
            f"{_quote(right[r].as_py())}"
        )

    # Duplicate keys

    def _duplicate_keys(
        self, key_parts: list[Callable[[], _Column]], first_row: int, rows: int
    ) -> list[_Finding]:
        if rows == 0:
            return []
        parts: list[pa.Array] = []
        unusable: pa.Array | None = None
        for get_column in key_parts:
            column = get_column()
            typed = column.typed
            parts.append(typed if pa.types.is_string(typed.type) else pc.cast(typed, pa.string()))
            # A value that failed its type check has no typed value; leave its row out rather
            # than report a duplicate of another row's empty value.
            if column.bad_rows is not None:
                broken = column.bad_rows
                unusable = broken if unusable is None else pc.or_(unusable, broken)
        if len(parts) == 1:
            keys = pc.fill_null(parts[0], _KEY_NULL)
        else:
            keys = pc.binary_join_element_wise(
                *parts, _KEY_SEPARATOR, null_handling="replace", null_replacement=_KEY_NULL
            )
        if unusable is not None:
            keys = _null_where(unusable, keys)
        encoded = pc.dictionary_encode(keys)
        indices = encoded.indices
        distinct = encoded.dictionary
        # dictionary_encode numbers values in order of first appearance, so a row repeats an
        # earlier row exactly when its index is not above the highest index before it.
        filled = pc.fill_null(pc.cast(indices, pa.int64()), -1)
        running = pc.cumulative_max(filled)
        before = pa.concat_arrays([pa.array([-1], pa.int64()), running.slice(0, rows - 1)])
        is_first = pc.greater(filled, before)
        first_rows = pc.indices_nonzero(is_first)  # entry i -> its first row in this batch
        findings: list[_Finding] = []
        key_names = ", ".join(self.contract.key)
        order = len(self.contract.fields)
        if len(distinct) < len(indices) - indices.null_count:
            repeated = pc.and_(pc.greater_equal(filled, 0), pc.invert(is_first))

            def describe_repeat(row: int) -> str:
                entry = indices[row].as_py()
                earlier = first_rows[entry].as_py() + first_row
                return f"duplicate key ({key_names}): same as row {earlier}"

            findings.append(_Finding(Rule.DUPLICATE_KEY, None, order, repeated, describe_repeat))

        absolute_first = pc.cast(pc.add(first_rows, first_row), pa.int64())
        valid = pc.is_valid(distinct)
        self._keys.add(pc.filter(distinct, valid), pc.filter(absolute_first, valid))
        return findings

    def finish(self, report: ValidationReport) -> None:
        """Report the keys repeated across batches (call once, after the last batch): each
        row whose key an earlier batch had, naming the row it first came from."""
        found, earlier = self._keys.repeats()
        if not len(found):
            return
        key_names = ", ".join(self.contract.key)
        room = report.room
        for row, first in zip(found[:room].tolist(), earlier[:room].tolist(), strict=True):
            message = f"duplicate key ({key_names}): same as row {first}"
            report.add(Violation(row, key_names, Rule.DUPLICATE_KEY, message))
        report.count(Rule.DUPLICATE_KEY, len(found) - min(room, len(found)))

    # Reporting

    def _report(self, findings: list[_Finding], first_row: int, report: ValidationReport) -> None:
        room = report.room
        described: list[tuple[int, int, int, Violation]] = []
        for finding in findings:
            total = _count(finding.mask)
            if not total:
                continue
            positions = pc.indices_nonzero(finding.mask).slice(0, room).to_pylist()
            for row in positions:
                violation = Violation(
                    row + first_row, finding.field, finding.rule, finding.describe(row)
                )
                described.append((row, finding.order, _RULE_ORDER[finding.rule], violation))
            report.count(finding.rule, total - len(positions))
        # Keep the earliest rows across all fields, as a reader would scan the file.
        described.sort(key=lambda item: item[:3])
        for _row, _order, _rule, violation in described:
            report.add(violation)

    # Storage

    def _protect(self, spec: ContractField, checked: Callable[[], _Column]) -> list[pa.Array]:
        """The stored columns of a protected field."""
        encoded = checked().encoded
        assert encoded is not None
        aad = self.aad(spec.name)
        if spec.protection is Protection.IDENTIFIER:
            # The domain is the field name alone, not the dataset, so that one police id gives
            # one pseudonym in every upload and in every dataset that names the field so.
            result = [
                self.protector.pseudonymise(
                    encoded, domain=spec.name, dictionary=True, memo=self._memo("p:" + spec.name)
                )
            ]
            if spec.reveal_at_level3:
                result.append(
                    self.protector.encrypt(
                        encoded, aad=aad, dictionary=True, memo=self._memo("e:" + spec.name)
                    )
                )
            return result
        return [
            self.protector.encrypt(
                encoded, aad=aad, dictionary=True, memo=self._memo("e:" + spec.name)
            )
        ]

    def _memo(self, name: str) -> DistinctMemo:
        # Created on first use; each protected column has its own lane, so no two threads
        # share one memo.
        memo = self._memos.get(name)
        if memo is None:
            memo = self._memos[name] = DistinctMemo()
        return memo

    def _person_key(
        self,
        surname: Callable[[], _Column],
        forename: Callable[[], _Column],
        dob: Callable[[], _Column],
    ) -> list[pa.Array]:
        parts = [get().encoded for get in (surname, forename, dob)]
        # Person fields are direct identifiers (a model rule), so all three are encoded.
        assert parts[0] is not None and parts[1] is not None and parts[2] is not None
        return [
            self.protector.person_keys(
                parts[0], parts[1], parts[2], dictionary=True, memo=self._memo("person_key")
            )
        ]


def _decode_all(get_arrays: Callable[[], list[pa.Array]]) -> list[pa.Array]:
    return [array.dictionary_decode() for array in get_arrays()]


class _Runner:
    """Runs tasks in the order given, on threads or inline.

    ``run(task)`` returns a getter for the task's result. Tasks given with ``gil=True`` (the
    Python cryptography) go to a lane of their own, one at a time, so that they never take
    every thread while Arrow work, which releases the GIL, waits. A task may call the getters
    of tasks given before it: each lane starts tasks in order, and no Arrow task waits on a
    GIL task, so waiting cannot deadlock.
    """

    def __init__(self, *, parallel: bool) -> None:
        workers = min(os.cpu_count() or 1, _MAX_THREADS)
        self._arrow: ThreadPoolExecutor | None = None
        self._python: ThreadPoolExecutor | None = None
        if parallel and workers > 1:
            # One thread per CPU in all: more Arrow threads only fight the cryptography (which
            # is the longest lane) for the GIL between kernels.
            self._arrow = ThreadPoolExecutor(max_workers=workers - 1)
            self._python = ThreadPoolExecutor(max_workers=1)

    def __enter__(self) -> _Runner:
        return self

    def __exit__(self, *_exc: object) -> None:
        for pool in (self._python, self._arrow):
            if pool is not None:
                pool.shutdown(wait=True, cancel_futures=True)

    def __call__(self, task: Callable[[], _T], *, gil: bool = False) -> Callable[[], _T]:
        pool = self._python if gil else self._arrow
        if pool is None:
            result = task()
            return lambda: result
        return pool.submit(task).result
