"""Parquet held in memory: the product exports and the published tables' files.

Every Parquet read and write of the platform is in this package, so that the file format's
settings (zstd, as for the dataset versions) and its library stay in one place.
"""

from __future__ import annotations

import io

import pyarrow as pa
import pyarrow.parquet as pq


def to_bytes(table: pa.Table) -> bytes:
    """A table as the bytes of one Parquet file (zstd)."""
    sink = io.BytesIO()
    pq.write_table(table, sink, compression="zstd")
    return sink.getvalue()


def schema_of(body: bytes) -> pa.Schema:
    """The schema of a Parquet file given as bytes, read from its footer only."""
    return pq.read_schema(io.BytesIO(body))
