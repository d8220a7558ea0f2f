from __future__ import annotations

from datetime import datetime
from enum import StrEnum

from sqlalchemy import BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime


class UploadMode(StrEnum):
    """How an upload's rows become the new version (stored in `DatasetVersion.mode` as is)."""

    APPEND = "append"  # the previous version's files and the new one
    REPLACE = "replace"  # the new file only


class Dataset(Base):
    """One row per dataset that has ever been published; points at its current version."""

    __tablename__ = "datasets"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    current_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when its owner withdrew it (every version deleted); cleared by a new upload.
    withdrawn_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class DatasetVersion(Base):
    """An immutable version: the set of Parquet files a reader sees, never changed once written."""

    __tablename__ = "dataset_versions"
    __table_args__ = (UniqueConstraint("dataset_id", "version"),)

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(ForeignKey("datasets.id"), index=True)
    version: Mapped[int] = mapped_column(Integer)
    contract_version: Mapped[str] = mapped_column(String(40))
    mode: Mapped[str] = mapped_column(String(10))
    row_count: Mapped[int] = mapped_column(BigInteger)
    upload_id: Mapped[str] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Set when a deletion (services/retention) removed one of its files: the version can no
    # longer be read, and its rows say which deletion certificate took it.
    purged_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    purged_by: Mapped[str | None] = mapped_column(String(36), nullable=True)


class VersionFile(Base):
    __tablename__ = "version_files"
    __table_args__ = (UniqueConstraint("version_pk", "path"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    version_pk: Mapped[str] = mapped_column(ForeignKey("dataset_versions.id"), index=True)
    # Relative to the storage root; an opaque server-generated name, never a client's.
    path: Mapped[str] = mapped_column(String(300))
    row_count: Mapped[int] = mapped_column(BigInteger)
    size_bytes: Mapped[int] = mapped_column(BigInteger)
    sha256: Mapped[str] = mapped_column(String(64))
