"""Materialised versions of published tables and their Parquet files."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    ForeignKey,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime

# As the migration created them: SQLite's INTEGER is 64-bit already.
_BIG = BigInteger().with_variant(Integer, "sqlite")


class SharingTableVersion(Base):
    """One materialisation of a published table for one variant; never changed once written.

    A variant is what the product's result depends on besides its parameters and sources: the
    suppression and the CSP areas of the readers it is for. Version numbers count per table
    across variants, so every recipient sees its table's version only ever grow. The
    fingerprint (parameters, source versions, variant, threshold) finds the version that is
    current for a recipient: a new upload, a new month or new areas make a new fingerprint.
    """

    __tablename__ = "sharing_table_versions"
    __table_args__ = (
        UniqueConstraint("table_key", "version"),
        UniqueConstraint("table_key", "fingerprint"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    table_key: Mapped[str] = mapped_column(String(310), index=True)
    version: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(64))
    product: Mapped[str] = mapped_column(String(100))
    suppressed: Mapped[bool] = mapped_column(Boolean)
    # None: every area (Level 1); otherwise the CSP areas the rows are limited to.
    areas: Mapped[list[str] | None] = mapped_column(JSON, nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    sources: Mapped[dict[str, int]] = mapped_column(JSON)
    row_count: Mapped[int] = mapped_column(_BIG)
    # The table's schema in the protocol's form (Spark SQL JSON), read from the file written.
    schema_string: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())


class SharingFile(Base):
    """A Parquet file of a table version. Its id is random: it says nothing about the data."""

    __tablename__ = "sharing_files"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    version_pk: Mapped[str] = mapped_column(ForeignKey("sharing_table_versions.id"), index=True)
    # Relative to the sharing folder of the data folder; a server-generated name.
    path: Mapped[str] = mapped_column(String(300))
    row_count: Mapped[int] = mapped_column(_BIG)
    size_bytes: Mapped[int] = mapped_column(_BIG)
    sha256: Mapped[str] = mapped_column(String(64))
