"""Readers for uploaded files: CSV, Parquet and NDJSON, streamed in batches of string columns.

Every reader hands the validator the same thing: record batches whose columns are all strings
(empty means null), so one set of checks covers every format. Nothing here holds a whole file.
Error messages never quote the file's content: it may hold names.

Bytes are checked before a native parser sees them (a body may be built to crash one): the
first bytes must be of the declared format (a Parquet file sent as CSV, a gzip body without its
Content-Encoding, a ZIP workbook are named as such); text must decode in its encoding (UTF-8
unless the partner declares another for CSV) with no line longer than ``MAX_LINE_CHARS`` and
every quote closed; a Parquet file's footer must be of a sane size and its schema flat, with no
extension types.
"""

from __future__ import annotations

import base64
import codecs
import csv
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import BinaryIO, Protocol

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

MEDIA_CSV = "text/csv"
MEDIA_PARQUET = "application/vnd.apache.parquet"
MEDIA_NDJSON = "application/x-ndjson"
SUPPORTED_MEDIA = (MEDIA_CSV, MEDIA_PARQUET, MEDIA_NDJSON)
_BLOCK = 8 << 20
_PARQUET_MAGIC = b"PAR1"

# The longest line a text body may have, in characters: a record of the widest contract is a
# few kilobytes; a line of megabytes is a broken export or an attack on the parser's memory.
MAX_LINE_CHARS = 1 << 20
# Parquet: a footer (the file's metadata) beyond this, or more columns than this, is refused
# before it is parsed; no contract has a tenth as many fields.
MAX_PARQUET_FOOTER_BYTES = 16 << 20
MAX_PARQUET_COLUMNS = 1000
_TEXT_CHUNK = 8 << 20

# Encodings a partner may declare in the Content-Type of a CSV body (``charset=``), by label,
# as Python codecs. Labels follow the WHATWG Encoding Standard, which reads "iso-8859-1",
# "latin1" and "us-ascii" as windows-1252 (what such files really are). NDJSON is UTF-8 only
# (RFC 8259); a Parquet file carries its own encoding (UTF-8) and takes no charset.
CHARSETS: dict[str, str] = {
    "utf-8": "utf-8",
    "utf8": "utf-8",
    "windows-1252": "cp1252",
    "cp1252": "cp1252",
    "iso-8859-1": "cp1252",
    "latin1": "cp1252",
    "us-ascii": "cp1252",
    "ascii": "cp1252",
    "utf-16": "utf-16",
}
_BOMS = (
    (codecs.BOM_UTF32_LE, "UTF-32"),
    (codecs.BOM_UTF32_BE, "UTF-32"),
    (codecs.BOM_UTF16_LE, "UTF-16"),
    (codecs.BOM_UTF16_BE, "UTF-16"),
)


class Body(Protocol):
    """A body to read: each `open` gives a fresh seekable binary file of `size` bytes (a file
    on disk, or a staged body decrypted as it is read), so a reader may pass over it twice."""

    @property
    def size(self) -> int: ...

    def open(self) -> BinaryIO | io.BufferedReader: ...


@dataclass(frozen=True)
class FileBody:
    """A plain file of the server's own (the demo loader's generated data, tests)."""

    path: Path

    @property
    def size(self) -> int:
        return self.path.stat().st_size

    def open(self) -> BinaryIO:
        return open(self.path, "rb")


class InputFormatError(Exception):
    def __init__(self, message: str, row: int | None = None, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.row = row
        self.field = field


class UnsupportedCharset(ValueError):
    """A declared ``charset`` the platform does not read for this media type (a 415)."""


def parse_content_type(header: str) -> tuple[str, str | None]:
    """The media type and the codec of a declared charset (None: UTF-8, the default).

    ``text/csv; charset=windows-1252`` -> ("text/csv", "cp1252"). Raises
    ``UnsupportedCharset`` for a charset this media type cannot have.
    """
    media_type, _, rest = header.partition(";")
    media_type = media_type.strip().lower()
    codec: str | None = None
    for parameter in rest.split(";"):
        name, _, value = parameter.partition("=")
        if name.strip().lower() != "charset":
            continue
        label = value.strip().strip('"').strip().lower()
        codec = CHARSETS.get(label)
        if codec is None:
            raise UnsupportedCharset(
                f"charset {label[:40]!r} is not accepted; send UTF-8, or for CSV declare one of "
                "windows-1252, iso-8859-1 or utf-16"
            )
        if codec != "utf-8" and media_type != MEDIA_CSV:
            raise UnsupportedCharset(
                f"{media_type or 'this body'} is read as UTF-8 only; charset {label!r} is "
                "accepted for text/csv"
            )
    return media_type, None if codec == "utf-8" else codec


@dataclass
class InputLimits:
    max_rows: int
    max_decompressed_bytes: int
    date_fields: frozenset[str] = frozenset()


class InputReader:
    """Batches of string columns. A reader that holds the body open closes it when its batches
    end (or fail), and on `close`, for a reader whose batches are never asked for."""

    column_names: list[str]
    _handle: BinaryIO | io.BufferedReader | None = None

    def batches(self) -> Iterator[pa.RecordBatch]:
        raise NotImplementedError

    def close(self) -> None:
        if self._handle is not None:
            self._handle.close()
            self._handle = None

    def __enter__(self) -> InputReader:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()


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


# What the first bytes say


def _head(body: Body, size: int = 8) -> bytes:
    with body.open() as handle:
        return handle.read(size)


def _foreign_body(head: bytes) -> str | None:
    """What a body is when it is none of the text formats, in words a partner can act on."""
    if head.startswith(_PARQUET_MAGIC):
        return (
            "the body is a Parquet file; send it with Content-Type: application/vnd.apache.parquet"
        )
    if head.startswith(b"\x1f\x8b"):
        return (
            "the body is gzip-compressed; send it with Content-Encoding: gzip (one layer: a gzip "
            "inside a gzip is not read)"
        )
    if head.startswith(b"PK\x03\x04"):
        return "the body is a ZIP archive (an Excel workbook is one); export the sheet as CSV"
    return None


def _refuse_foreign_text(body: Body, media_type: str, charset: str | None) -> None:
    """A text body must start like text of its declared type and encoding."""
    head = _head(body)
    found = _foreign_body(head)
    if found is not None:
        raise InputFormatError(found, row=None)
    if charset is None:
        for bom, name in _BOMS:
            if head.startswith(bom):
                hint = ""
                if name == "UTF-16":
                    hint = (
                        ", or declare charset=utf-16 in the Content-Type"
                        if media_type == MEDIA_CSV
                        else " (NDJSON is UTF-8 only)"
                    )
                raise InputFormatError(
                    f"the body is {name} text (it starts with the byte-order mark "
                    f"{bom.hex(' ').upper()}); send UTF-8{hint}"
                )
    if media_type == MEDIA_CSV and head.lstrip(codecs.BOM_UTF8).lstrip()[:1] == b"{":
        raise InputFormatError(
            "the body looks like NDJSON (it starts with '{'); send it with Content-Type: "
            "application/x-ndjson, or send CSV with a header row"
        )


# Text scanning: encoding, line length, quotes


def _likely_encoding(byte: int) -> str:
    """A hint for a byte that is not UTF-8: what it would be in Windows-1252."""
    try:
        char = bytes([byte]).decode("cp1252")
    except UnicodeDecodeError:
        return ""
    if char.isprintable() and not char.isspace():
        return f" (in Windows-1252, the usual encoding of such exports, it is {char!r})"
    return ""


def _locate_undecodable(body: Body, codec: str) -> InputFormatError:
    """The first line that does not decode, with the byte's offset in the file."""
    offset = 0
    with body.open() as handle:
        for number, line in enumerate(handle, start=1):
            try:
                line.decode(codec)
            except UnicodeDecodeError as exc:
                byte = line[exc.start]
                at = offset + exc.start
                if codec == "utf-8":
                    return InputFormatError(
                        f"line {number}: byte {at} (0x{byte:02X}) is not UTF-8"
                        f"{_likely_encoding(byte)}; save the file as UTF-8, or declare its "
                        "encoding in the Content-Type, e.g. text/csv; charset=windows-1252",
                        row=number,
                    )
                return InputFormatError(
                    f"line {number}: byte {at} (0x{byte:02X}) is not {codec} text, the charset "
                    "declared in the Content-Type",
                    row=number,
                )
            offset += len(line)
    return InputFormatError(f"the body is not {codec} text")


def _may_hold_long_line(text: str) -> bool:
    """Whether ``text`` may hold a line longer than ``MAX_LINE_CHARS`` (False is certain).

    Such a line covers a whole aligned window of half that length with no line break; looking
    at those windows costs a few searches per chunk instead of a pass over every line.
    """
    window = MAX_LINE_CHARS // 2
    return any(
        text.find("\n", start, start + window) < 0
        for start in range(0, len(text) - window + 1, window)
    )


@dataclass
class TextScan:
    """What one pass over a text body found."""

    lines: int
    multiline_values: bool  # a quoted value holds a line break


def scan_text(body: Body | Path, codec: str = "utf-8", *, quotes: bool = True) -> TextScan:
    """Check a text body in one streaming pass; raise ``InputFormatError`` naming the line.

    Every byte must decode in ``codec`` (a NUL is refused too: text has none), no line may be
    longer than ``MAX_LINE_CHARS``, and (``quotes``, for CSV) every quoted value must be closed.
    Memory is one chunk and the current line's length; about 0.5 s for 100 MB.
    """
    decoder = codecs.getincrementaldecoder(codec)("strict")
    lines = 0  # line breaks seen
    current = 0  # characters of the line in progress
    odd = False  # inside a quoted value
    opened = 0  # the line where that value opened
    multiline = False
    body = _as_body(body)
    with body.open() as handle:
        while True:
            chunk = handle.read(_TEXT_CHUNK)
            try:
                text = decoder.decode(chunk, final=not chunk)
            except UnicodeDecodeError:
                raise _locate_undecodable(body, codec) from None
            if "\x00" in text:
                before = text[: text.index("\x00")]
                number = lines + before.count("\n") + 1
                raise InputFormatError(
                    f"line {number} holds a NUL byte: the body is binary, not text", row=number
                )
            breaks = text.count("\n")
            first = text.find("\n")
            head = current + (len(text) if first < 0 else first)
            if head > MAX_LINE_CHARS or _may_hold_long_line(text):
                parts = text.split("\n")
                lengths = [current + len(parts[0]), *(len(part) for part in parts[1:])]
                over = [i for i, n in enumerate(lengths) if n > MAX_LINE_CHARS]
                if over:
                    number = lines + over[0] + 1
                    raise InputFormatError(
                        f"line {number} is longer than {MAX_LINE_CHARS} characters", row=number
                    )
            if quotes and '"' in text:
                for index, part in enumerate(text.split("\n")):
                    if part.count('"') % 2:
                        odd = not odd
                        if odd:
                            opened = lines + index + 1
                    if odd and index < breaks:
                        multiline = True
            elif odd and breaks:
                multiline = True
            lines += breaks
            current = len(text) - text.rfind("\n") - 1 if breaks else current + len(text)
            if not chunk:
                break
    if odd:
        raise InputFormatError(
            f"a quoted value opened on line {opened} is never closed", row=opened
        )
    return TextScan(lines=lines, multiline_values=multiline)


class CsvReader(InputReader):
    def __init__(self, body: Body, limits: InputLimits, charset: str | None = None) -> None:
        self.body = body
        self.limits = limits
        self.codec = charset or "utf-8"
        _refuse_foreign_text(body, MEDIA_CSV, charset)
        scan = scan_text(body, self.codec)
        self._multiline = scan.multiline_values
        # The header is the first record (a quoted name may even hold a line break); a UTF-8
        # byte-order mark before it is dropped, as Excel's "CSV UTF-8" writes one.
        encoding = "utf-8-sig" if self.codec == "utf-8" else self.codec
        with io.TextIOWrapper(
            body.open(), newline="", encoding=encoding, errors="strict"
        ) as handle:
            header = next(csv.reader(handle), None)
        if not header or not any(name.strip() for name in header):
            raise InputFormatError("the file is empty: a header row is required")
        self.column_names = header
        self._bad_row: int | None = None

    def _on_invalid(self, row: pacsv.InvalidRow) -> str:
        # The row's text is deliberately not kept: it may contain a name.
        self._bad_row = (row.number - 1) if row.number is not None else None
        return "error"

    def batches(self) -> Iterator[pa.RecordBatch]:
        names = self.column_names
        read_options = pacsv.ReadOptions(
            block_size=_BLOCK,
            column_names=names,
            skip_rows=1,
            use_threads=True,
            encoding=self.codec.replace("-", ""),
        )
        convert = pacsv.ConvertOptions(
            column_types={name: pa.string() for name in names},
            strings_can_be_null=True,
            quoted_strings_can_be_null=True,
        )
        # Line breaks inside quoted values slow Arrow's parallel parsing: allowed only where
        # the scan found one.
        parse = pacsv.ParseOptions(
            newlines_in_values=self._multiline, invalid_row_handler=self._on_invalid
        )
        rows = 0
        handle = self._handle = self.body.open()
        try:
            reader = pacsv.open_csv(
                handle, read_options=read_options, convert_options=convert, parse_options=parse
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
        finally:
            self.close()


def _parquet_footer_problem(body: Body) -> str | None:
    """Why a Parquet file's footer cannot be trusted to a parser, or None.

    The footer (the Thrift-encoded metadata) is what a malformed or hostile file uses to make a
    reader allocate or recurse without bound; its length is checked against the file and a
    bound before any of it is parsed.
    """
    size = body.size
    if size < 12:
        return "the body is too short to be a Parquet file"
    with body.open() as handle:
        handle.seek(size - 8)
        tail = handle.read(8)
    if tail[4:] != _PARQUET_MAGIC:
        return "the Parquet file is truncated: it does not end with its footer"
    length = int.from_bytes(tail[:4], "little")
    if length == 0 or length > size - 12:
        return "the Parquet file's footer length is impossible for its size"
    if length > MAX_PARQUET_FOOTER_BYTES:
        return f"the Parquet file's metadata is larger than {MAX_PARQUET_FOOTER_BYTES >> 20} MB"
    return None


_EXTENSION_NAME = b"ARROW:extension:name"


def _schema_problem(file: pq.ParquetFile) -> str | None:
    """Why a Parquet schema is not a flat table of scalar values, or None.

    Contracts hold scalar fields only. An Arrow extension type (``arrow.py_extension_type``
    carried a pickle that older Arrow versions would run when reading) is refused by name,
    whether or not this Arrow knows it, and the stored Arrow schema is never unpickled here.
    """
    metadata = file.metadata
    if metadata.num_columns > MAX_PARQUET_COLUMNS:
        return f"the Parquet file has more than {MAX_PARQUET_COLUMNS} columns"
    stored = (file.metadata.metadata or {}).get(b"ARROW:schema")
    if stored is not None:
        try:
            flat = base64.b64decode(stored, validate=False)
        except ValueError:
            flat = stored
        if _EXTENSION_NAME in flat or _EXTENSION_NAME in stored:
            return "the Parquet file declares an Arrow extension type; only plain values are read"
    for field in file.schema_arrow:
        if field.metadata and _EXTENSION_NAME in field.metadata:
            return f"column {field.name[:100]!r} has an extension type; only plain values are read"
        kind = field.type
        if isinstance(kind, pa.ExtensionType) or pa.types.is_nested(kind):
            return f"column {field.name[:100]!r} has a nested type; only scalar values are read"
        if (
            pa.types.is_binary(kind)
            or pa.types.is_large_binary(kind)
            or pa.types.is_fixed_size_binary(kind)
        ):
            return f"column {field.name[:100]!r} holds bytes; text columns must be UTF-8 strings"
    return None


class ParquetReader(InputReader):
    def __init__(self, body: Body, limits: InputLimits) -> None:
        self.limits = limits
        head = _head(body)
        if not head.startswith(_PARQUET_MAGIC):
            found = _foreign_body(head)
            if found is None and head.lstrip()[:1] == b"{":
                found = "the body is not a Parquet file: it looks like NDJSON"
            elif found is None:
                found = "the body is not a Parquet file (it does not start with PAR1): CSV text?"
            raise InputFormatError(found)
        problem = _parquet_footer_problem(body)
        if problem is not None:
            raise InputFormatError(problem)
        self._handle = body.open()
        try:
            self._file = pq.ParquetFile(
                self._handle,
                thrift_string_size_limit=MAX_PARQUET_FOOTER_BYTES,
                thrift_container_size_limit=1_000_000,
            )
            metadata = self._file.metadata
            problem = _schema_problem(self._file)
        except (pa.ArrowException, OSError, ValueError) as exc:
            self.close()
            raise InputFormatError("the Parquet file's metadata cannot be read") from exc
        try:
            if problem is not None:
                raise InputFormatError(problem)
            if metadata.num_rows > limits.max_rows:
                raise InputFormatError(f"the file has more than {limits.max_rows} rows")
            uncompressed = sum(
                metadata.row_group(i).total_byte_size for i in range(metadata.num_row_groups)
            )
            if uncompressed > limits.max_decompressed_bytes:
                raise InputFormatError("the Parquet file decompresses beyond the size limit")
        except InputFormatError:
            self.close()
            raise
        self.column_names = list(self._file.schema_arrow.names)

    def batches(self) -> Iterator[pa.RecordBatch]:
        rows = 0
        try:
            for batch in self._file.iter_batches(batch_size=128 * 1024):
                rows += batch.num_rows
                if rows > self.limits.max_rows:
                    raise InputFormatError(f"the file has more than {self.limits.max_rows} rows")
                # Arrow's Parquet reader trusts the file: invalid UTF-8 in a string column, or
                # offsets out of range, would reach the validator's kernels. Checked in full.
                try:
                    batch.validate(full=True)
                except pa.ArrowInvalid as exc:
                    raise InputFormatError(
                        f"the Parquet file holds invalid data in rows {rows - batch.num_rows + 1} "
                        f"to {rows} (e.g. text that is not UTF-8)",
                        row=rows - batch.num_rows + 1,
                    ) from exc
                yield _as_strings(batch, self.limits.date_fields)
        except (pa.ArrowException, OSError) as exc:
            raise InputFormatError("the Parquet file is corrupt or unreadable") from exc
        finally:
            self.close()


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
    body: Body, skip_objects: int, schema: pa.Schema | None
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
    with body.open() as handle:
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


def _refuse_nesting(body: Body) -> None:
    """Refuse objects or arrays inside a record before Arrow's JSON parser sees the file.

    Arrow's parser recurses once per level of nesting: a line nested some thousands of levels
    deep overflows the process's stack and kills the server with everything in flight (a
    segmentation fault, not an exception). Records are flat, so the scan looks for any nesting
    at all, over whole lines, in C (about 0.3 s for 150 MB of plain records); only a suspect
    makes it parse the lines, with Python's JSON module, which refuses deep nesting with an
    exception rather than a crash.
    """
    rest = b""
    with body.open() as handle:
        while True:
            chunk = handle.read(_SCAN_CHUNK)
            lines = rest + chunk
            if chunk:
                cut = lines.rfind(b"\n") + 1
                lines, rest = lines[:cut], lines[cut:]
            if lines and _may_nest(lines):
                found = _locate_ndjson_problem(body, 0, None)
                if found is not None:
                    raise found
                return  # the brackets were inside strings: nothing nested
            if not chunk:
                return


class NdjsonReader(InputReader):
    def __init__(self, body: Body, limits: InputLimits) -> None:
        self.body = body
        self.limits = limits
        _refuse_foreign_text(body, MEDIA_NDJSON, None)
        # Bounded lines first: the nesting scan below holds a line at a time.
        scan_text(body, quotes=False)
        _refuse_nesting(body)
        source = self._handle = body.open()
        if _head(body, 3) == codecs.BOM_UTF8:
            source.read(3)  # JSON readers may ignore a byte-order mark (RFC 8259); Arrow cannot
        try:
            self._reader = pajson.open_json(
                source,
                read_options=pajson.ReadOptions(block_size=_BLOCK),
                parse_options=pajson.ParseOptions(newlines_in_values=False),
            )
        except pa.ArrowInvalid as exc:
            self.close()
            found = _locate_ndjson_problem(body, 0, None)
            raise found or InputFormatError(
                "the body is not newline-delimited JSON objects"
            ) from exc
        schema = self._reader.schema
        if any(pa.types.is_nested(t) or pa.types.is_binary(t) for t in schema.types):
            # An object or array seen first fixes a nested type rather than failing; the
            # first block holds it, so the scan stops there.
            found = _locate_ndjson_problem(body, 0, None)
            if found is not None:
                self.close()
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
            found = _locate_ndjson_problem(self.body, rows, self._reader.schema)
            raise found or InputFormatError(
                "the body is not newline-delimited JSON with consistent value types"
            ) from exc
        finally:
            self.close()


def _as_body(body: Body | Path) -> Body:
    return FileBody(body) if isinstance(body, Path) else body


def open_input(
    body: Body | Path, media_type: str, limits: InputLimits, charset: str | None = None
) -> InputReader:
    """The reader of a body (a file's path, or a `Body` such as a staged upload decrypted as it
    is read); ``charset`` is the codec ``parse_content_type`` gave (CSV only)."""
    body = _as_body(body)
    if media_type == MEDIA_CSV:
        return CsvReader(body, limits, charset)
    if charset is not None:
        raise UnsupportedCharset(f"{media_type} is read as UTF-8 only")
    if media_type == MEDIA_PARQUET:
        return ParquetReader(body, limits)
    if media_type == MEDIA_NDJSON:
        return NdjsonReader(body, limits)
    raise ValueError(f"unsupported media type {media_type}")
