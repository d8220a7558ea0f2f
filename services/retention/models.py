"""Deletions of data (retention, withdrawal, erasure, rectification) and who runs a job now."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime


class DeletionKind(StrEnum):
    RETENTION = "retention"  # rows past the contract's retention
    WITHDRAWAL = "withdrawal"  # the whole dataset, at its owner's request
    ERASURE = "erasure"  # one person's rows
    RECTIFICATION = "rectification"  # one person's rows, kept only as the partner corrected them


class DeletionState(StrEnum):
    REQUESTED = "requested"  # a withdrawal waiting for its IG lead's confirmation
    DELETING = "deleting"  # the new version is current; the old files are being deleted
    CERTIFIED = "certified"  # every file is gone and the certificate is signed
    CANCELLED = "cancelled"  # a withdrawal request its IG lead refused


class DataDeletion(Base):
    """One deletion, from request to signed certificate.

    The row is written in the same transaction as the version that no longer holds the rows
    (state `deleting`, with the files to delete), so a process that dies while deleting leaves
    a record that the next run completes; the certificate is signed only when every file is
    gone."""

    __tablename__ = "data_deletions"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(100), index=True)
    owner: Mapped[str] = mapped_column(String(100))
    kind: Mapped[str] = mapped_column(String(20))
    state: Mapped[str] = mapped_column(String(20), index=True)
    requested_by: Mapped[str] = mapped_column(String(100))
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    confirmed_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    reason: Mapped[str | None] = mapped_column(String(500), nullable=True)
    case_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    contract_version: Mapped[str | None] = mapped_column(String(40), nullable=True)
    # What was looked for: the retention cutoff, or the person's pseudonymous criteria (never
    # an identifying value).
    criteria: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows_removed: Mapped[int] = mapped_column(BigInteger, default=0)
    from_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    to_version: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Dataset versions whose files are deleted, and the files: [{key, sha256, bytes, rows}].
    versions: Mapped[list[int]] = mapped_column(JSON)
    files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    sharing_files: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    audit_seq_start: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    audit_seq_end: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    certified_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The signed certificate: its canonical body, the signature (base64) and the key's id.
    body: Mapped[str | None] = mapped_column(Text, nullable=True)
    signature: Mapped[str | None] = mapped_column(String(200), nullable=True)
    key_id: Mapped[str | None] = mapped_column(String(64), nullable=True)


class JobLease(Base):
    """A job that only one process may run at a time, across replicas (the retention run).

    Taken by inserting the row; a holder that dies leaves a lease that lapses at `expires_at`
    (the holder extends it while it works)."""

    __tablename__ = "job_leases"

    name: Mapped[str] = mapped_column(String(60), primary_key=True)
    holder: Mapped[str] = mapped_column(String(100))
    acquired_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
