"""Contract versions and their sign-offs."""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime


class VersionState(StrEnum):
    DRAFT = "draft"
    APPROVED = "approved"
    ACTIVE = "active"
    RETIRED = "retired"


class ContractVersion(Base):
    """One version of one contract: the YAML exactly as loaded, and where it is in its life."""

    __tablename__ = "contract_versions"
    __table_args__ = (
        UniqueConstraint("dataset_id", "version"),
        UniqueConstraint("dataset_id", "content_sha256"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    dataset_id: Mapped[str] = mapped_column(String(100), index=True)
    version: Mapped[str] = mapped_column(String(40))
    owner: Mapped[str] = mapped_column(String(100))
    content_sha256: Mapped[str] = mapped_column(String(64))
    yaml_text: Mapped[str] = mapped_column(Text)
    state: Mapped[str] = mapped_column(String(20), index=True)
    # Against the version active when this one was loaded: {"against", "kind", "changes"}.
    classification: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # A major change: the dataset's current version checked against this one.
    validation: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    loaded_by: Mapped[str] = mapped_column(String(100))
    loaded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    approved_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    activated_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    activated_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    retired_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ContractSignoff(Base):
    """One of the two sign-offs a draft needs: the owner's IG lead's, and the VRU's.

    The two unique constraints hold the rules under concurrency: one sign-off per capacity,
    and no principal in both capacities."""

    __tablename__ = "contract_signoffs"
    __table_args__ = (
        UniqueConstraint("version_id", "capacity"),
        UniqueConstraint("version_id", "signed_by"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    version_id: Mapped[str] = mapped_column(
        String(36), ForeignKey("contract_versions.id"), index=True
    )
    capacity: Mapped[str] = mapped_column(String(10))  # "owner" or "vru"
    organisation: Mapped[str] = mapped_column(String(100))
    signed_by: Mapped[str] = mapped_column(String(100))
    content_sha256: Mapped[str] = mapped_column(String(64))
    signed_at: Mapped[datetime] = mapped_column(UTCDateTime())
