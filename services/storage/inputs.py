"""Readers for uploaded files: CSV, Parquet and NDJSON, streamed in batches of string columns.

Every reader hands the validator the same thing: record batches whose columns are all strings
(empty means null), so one set of checks covers every format. Nothing here holds a whole file.
Error messages never quote the file's content: it may hold names.
"""

from __future__ import annotations

import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

MEDIA_CSV = "text/csv"
MEDIA_PARQUET = "application/vnd.apache.parquet"
MEDIA_NDJSON = "application/x-ndjson"
SUPPORTED_MEDIA = (MEDIA_CSV, MEDIA_PARQUET, MEDIA_NDJSON)
_BLOCK = 32 << 20
_PARQUET_MAGIC = b"PAR1"


class InputFormatError(Exception):
    def __init__(self, message: str, row: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.field = field


@dataclass
class InputLimits:
    max_rows: int
    max_decompressed_bytes: int
    date_fields: frozenset[str] = frozenset()


class InputReader:
    column_names: list[str]

    def batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError


def _as_strings(batch: pa.RecordBatch, date_fields: frozenset[str]) -> pa.RecordBatch:
    columns = []
    for name, column in zip(batch.schema.names, batch.columns, strict=True):
        if pa.types.is_string(column.type):
            columns.append(column)
        elif pa.types.is_large_string(column.type) or pa.types.is_dictionary(column.type):
            columns.append(column.cast(pa.string()))
        elif pa.types.is_null(column.type):
            columns.append(pa.nulls(len(column), pa.string()))
        elif pa.types.is_timestamp(column.type):
            if column.type.tz is not None:
                column = pc.local_timestamp(column.cast(pa.timestamp("us", "Europe/London")))
            # JSON readers infer ISO dates as timestamps; a contract date comes back as a date
            # only when no value carries a time of day, so a real time still fails validation.
            midnight = pc.all(
                pc.equal(
                    pc.divide(pc.cast(column.cast(pa.timestamp("us")), pa.int64()), 86_400_000_000)
                    * 86_400_000_000,
                    pc.cast(column.cast(pa.timestamp("us")), pa.int64()),
                )
            ).as_py()
            as_date = name in date_fields and midnight is not False
            text = "%Y-%m-%d" if as_date else "%Y-%m-%d %H:%M:%S"
            columns.append(pc.strftime(column.cast(pa.timestamp("us")), format=text))
        elif (
            pa.types.is_integer(column.type)
            or pa.types.is_floating(column.type)
            or pa.types.is_boolean(column.type)
            or pa.types.is_date(column.type)
            or pa.types.is_decimal(column.type)
        ):
            columns.append(column.cast(pa.string()))
        else:
            raise InputFormatError(
                f"column {batch.schema.names[len(columns)]!r} has a nested or binary type "
                f"({column.type}); only scalar values are accepted"
            )
    return pa.RecordBatch.from_arrays(columns, names=batch.schema.names)


class CsvReader(InputReader):
    def __init__(self, path: Path, limits: InputLimits) -> None:
        self.path = path
        self.limits = limits
        with open(path, newline="", encoding="utf-8-sig", errors="strict") as handle:
            try:
                first = handle.readline()
            except UnicodeDecodeError as exc:
                raise InputFormatError("the header is not valid UTF-8", row=None) from exc
        if not first.strip():
            raise InputFormatError("the file is empty: a header row is required")
        self.column_names = next(csv.reader(io.StringIO(first)))
        self._bad_row: int | None = None

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        # The row's text is deliberately not kept: it may contain a name.
        self._bad_row = (row.number - 1) if row.number is not None else None
        return "error"

    def batches(self) -> Iterator[pa.RecordBatch]:
        names = self.column_names
        read_options = pacsv.ReadOptions(
            block_size=_BLOCK, column_names=names, skip_rows=1, use_threads=True
        )
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        parse = pacsv.ParseOptions(newlines_in_values=False, invalid_row_handler=self._on_invalid)
        rows = 0
        try:
            reader = pacsv.open_csv(
                self.path, read_options=read_options, convert_options=convert, parse_options=parse
            )
            for batch in reader:
                rows += batch.num_rows
                if rows > self.limits.max_rows:
                    raise InputFormatError(f"the file has more than {self.limits.max_rows} rows")
                yield batch
        except pa.ArrowInvalid as exc:
            text = str(exc)
            if "UTF8" in text or "UTF-8" in text or "utf8" in text:
                raise InputFormatError("the file is not valid UTF-8 text", row=None) from exc
            if self._bad_row is not None:
                raise InputFormatError(
                    "the row does not have the same number of columns as the header",
                    row=self._bad_row,
                ) from exc
            raise InputFormatError("the file is not valid CSV") from exc


class ParquetReader(InputReader):
    def __init__(self, path: Path, limits: InputLimits) -> None:
        self.limits = limits
        with open(path, "rb") as handle:
            if handle.read(4) != _PARQUET_MAGIC:
                raise InputFormatError("the body is not a Parquet file")
        try:
            self._file = pq.ParquetFile(path)
            metadata = self._file.metadata
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError("the Parquet file cannot be read") from exc
        if metadata.num_rows > limits.max_rows:
            raise InputFormatError(f"the file has more than {limits.max_rows} rows")
        uncompressed = sum(
            metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
        )
        if uncompressed > limits.max_decompressed_bytes:
            raise InputFormatError("the Parquet file decompresses beyond the size limit")
        self.column_names = list(self._file.schema_arrow.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        try:
            for batch in self._file.iter_batches(batch_size=128 * 1024):
                yield _as_strings(batch, self.limits.date_fields)
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError("the Parquet file is corrupt or unreadable") from exc


_KIND_NAMES = {
    "null": "null",
    "boolean": "a boolean",
    "number": "a number",
    "integer": "a whole number",
    "fraction": "a number with a fraction",
    "string": "a string",
    "timestamp": "a date or time",
    "object": "an object",
    "array": "an array",
}


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "integer" if value.is_integer() else "fraction"
    if isinstance(value, str):
        return "string"
    return "object" if isinstance(value, dict) else "array"


def _fits(kind: str, expected: str) -> bool:
    # A number field may mix whole numbers and fractions: Arrow widens it to a float.
    return kind == expected or (expected == "number" and kind in ("integer", "fraction"))


def _fits_fixed(kind: str, value: object, expected: str) -> bool:
    if expected == "timestamp":
        return isinstance(value, str) and _is_iso_time(value)
    return _fits(kind, expected)


def _arrow_kind(data_type: pa.DataType) -> str:
    """The JSON kind a field must keep once Arrow has fixed its type from an earlier block."""
    if pa.types.is_null(data_type):
        return "null"
    if pa.types.is_boolean(data_type):
        return "boolean"
    if pa.types.is_integer(data_type):
        return "integer"
    if pa.types.is_floating(data_type):
        return "number"
    if pa.types.is_struct(data_type):
        return "object"
    if pa.types.is_list(data_type) or pa.types.is_large_list(data_type):
        return "array"
    if pa.types.is_timestamp(data_type):
        # Inferred from ISO text: a later value must be ISO text too.
        return "timestamp"
    return "string"


def _is_iso_time(text: str) -> bool:
    try:
        datetime.fromisoformat(text)
    except ValueError:
        return False
    return True


def _locate_ndjson_problem(
    path: Path, skip_objects: int, schema: pa.Schema | None
) -> InputFormatError | None:
    """Find the first line Arrow refused and say why, naming the line and the field.

    Arrow's own message counts rows within a block and quotes values, so it is neither
    actionable nor safe to pass on. The lines before the failing block are skipped unparsed and
    the block is re-read one line at a time, so memory stays bounded by the longest line. A
    field's expected kind is the one Arrow fixed from the earlier blocks (``schema``) or, in
    the failing block, its first non-null value.
    """
    fixed: dict[str, str] = {}
    if schema is not None:
        for name, data_type in zip(schema.names, schema.types, strict=True):
            fixed[name] = _arrow_kind(data_type)
    seen: dict[str, tuple[str, int]] = {}
    objects = 0
    with open(path, "rb") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            objects += 1
            if objects <= skip_objects:
                continue
            try:
                value = json.loads(line)
            except RecursionError:
                return InputFormatError(
                    f"line {number} nests objects or arrays too deeply; only strings, numbers, "
                    "booleans and null are accepted as values",
                    row=number,
                )
            except ValueError:
                return InputFormatError(f"line {number} is not valid JSON", row=number)
            if not isinstance(value, dict):
                return InputFormatError(f"line {number} is not a JSON object", row=number)
            for name, item in value.items():
                kind = _json_kind(item)
                if kind in ("object", "array"):
                    return InputFormatError(
                        f"line {number}: field {name!r} is {_KIND_NAMES[kind]}; only strings, "
                        "numbers, booleans and null are accepted",
                        row=number,
                        field=name,
                    )
                if schema is not None and name not in fixed:
                    return InputFormatError(
                        f"line {number}: field {name!r} does not appear in the lines before it; "
                        "every line must have the same fields",
                        row=number,
                        field=name,
                    )
                if kind == "null":
                    continue
                expected = fixed.get(name)
                if expected is not None:
                    if expected == "null":
                        return InputFormatError(
                            f"line {number}: field {name!r} has a value but is null on every "
                            f"line before it in the first {_BLOCK >> 20} MB, which fixes its "
                            "type; give it a value in an early line",
                            row=number,
                            field=name,
                        )
                    if not _fits_fixed(kind, item, expected):
                        what = _KIND_NAMES[kind]
                        if kind == "string" and expected == "timestamp":
                            what = "text that is not a date or time"
                        return InputFormatError(
                            f"line {number}: field {name!r} is {what} but "
                            f"{_KIND_NAMES[expected]} on the lines before it",
                            row=number,
                            field=name,
                        )
                    continue
                first = seen.get(name)
                if first is None:
                    seen[name] = ("number" if kind in ("integer", "fraction") else kind, number)
                elif not _fits(kind, first[0]):
                    return InputFormatError(
                        f"line {number}: field {name!r} is {_KIND_NAMES[kind]} but "
                        f"{_KIND_NAMES[first[0]]} on line {first[1]}",
                        row=number,
                        field=name,
                    )
    return None


# A container opening right after a key, an array opening or a comma: an object or array inside a
# record, once whitespace is removed. Contracts hold only flat records, so any match is an error
# (or text inside a string that looks like one: then each line is parsed to tell).
_NESTED = re.compile(rb"[:\[,][\[{]")
_WHITESPACE = b" \t\r\n"
_SCAN_CHUNK = 8 << 20


def _may_nest(lines: bytes) -> bool:
    """False when no record in these whole lines can hold an object or array.

    A flat record has one opening brace, at the start of its line, and no bracket; counting
    those is a few passes of memchr. Only otherwise is the slower pattern looked for.
    """
    opens = lines.count(b"{")
    starts = lines.count(b"\n{") + lines.startswith(b"{")
    if opens == starts and b"[" not in lines:
        return False
    return _NESTED.search(lines.translate(None, _WHITESPACE)) is not None


def _refuse_nesting(path: Path) -> None:
    """Refuse objects or arrays inside a record before Arrow's JSON parser sees the file.

    Arrow's parser recurses once per level of nesting: a line nested some thousands of levels
    deep overflows the process's stack and kills the server with everything in flight (a
    segmentation fault, not an exception). Records are flat, so the scan looks for any nesting
    at all, over whole lines, in C (about 0.3 s for 150 MB of plain records); only a suspect
    makes it parse the lines, with Python's JSON module, which refuses deep nesting with an
    exception rather than a crash.
    """
    rest = b""
    with open(path, "rb") as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            lines = rest + chunk
            if chunk:
                cut = lines.rfind(b"\n") + 1
                lines, rest = lines[:cut], lines[cut:]
            if lines and _may_nest(lines):
                found = _locate_ndjson_problem(path, 0, None)
                if found is not None:
                    raise found
                return  # the brackets were inside strings: nothing nested
            if not chunk:
                return


class NdjsonReader(InputReader):
    def __init__(self, path: Path, limits: InputLimits) -> None:
        self.path = path
        self.limits = limits
        _refuse_nesting(path)
        try:
            self._reader = pajson.open_json(
                path,
                read_options=pajson.ReadOptions(block_size=_BLOCK),
                parse_options=pajson.ParseOptions(newlines_in_values=False),
            )
        except pa.ArrowInvalid as exc:
            found = _locate_ndjson_problem(path, 0, None)
            raise found or InputFormatError(
                "the body is not newline-delimited JSON objects"
            ) from exc
        schema = self._reader.schema
        if any(pa.types.is_nested(t) or pa.types.is_binary(t) for t in schema.types):
            # An object or array seen first fixes a nested type rather than failing; the
            # first block holds it, so the scan stops there.
            found = _locate_ndjson_problem(path, 0, None)
            if found is not None:
                raise found
        self.column_names = list(schema.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        rows = 0
        try:
            for batch in self._reader:
                if list(batch.schema.names) != self.column_names:
                    raise InputFormatError("objects in the file do not share one set of fields")
                if rows + batch.num_rows > self.limits.max_rows:
                    raise InputFormatError(f"the file has more than {self.limits.max_rows} rows")
                rows += batch.num_rows
                yield _as_strings(batch, self.limits.date_fields)
        except pa.ArrowInvalid as exc:
            found = _locate_ndjson_problem(self.path, rows, self._reader.schema)
            raise found or InputFormatError(
                "the body is not newline-delimited JSON with consistent value types"
            ) from exc


def open_input(path: Path, media_type: str, limits: InputLimits) -> InputReader:
    if media_type == MEDIA_CSV:
        return CsvReader(path, limits)
    if media_type == MEDIA_PARQUET:
        return ParquetReader(path, limits)
    if media_type == MEDIA_NDJSON:
        return NdjsonReader(path, limits)
    raise ValueError(f"unsupported media type {media_type}")
