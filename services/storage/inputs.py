"""Readers for uploaded files: CSV, Parquet and NDJSON, streamed in batches of string columns.

Every reader hands the validator the same thing: record batches whose columns are all strings
(empty means null), so one set of checks covers every format. Nothing here holds a whole file.
Error messages never quote the file's content: it may hold names.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from dataclasses import dataclass
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
    def __init__(self, message: str, row: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row


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


class NdjsonReader(InputReader):
    def __init__(self, path: Path, limits: InputLimits) -> None:
        self.path = path
        self.limits = limits
        try:
            self._reader = pajson.open_json(
                path,
                read_options=pajson.ReadOptions(block_size=_BLOCK),
                parse_options=pajson.ParseOptions(newlines_in_values=False),
            )
        except pa.ArrowInvalid as exc:
            raise InputFormatError("the body is not newline-delimited JSON objects") from exc
        self.column_names = list(self._reader.schema.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        rows = 0
        try:
            for batch in self._reader:
                rows += batch.num_rows
                if rows > self.limits.max_rows:
                    raise InputFormatError(f"the file has more than {self.limits.max_rows} rows")
                if list(batch.schema.names) != self.column_names:
                    raise InputFormatError("objects in the file do not share one set of fields")
                yield _as_strings(batch, self.limits.date_fields)
        except pa.ArrowInvalid as exc:
            raise InputFormatError(
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
