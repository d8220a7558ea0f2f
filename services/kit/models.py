"""The tables of the kit itself."""

from __future__ import annotations

from sqlalchemy import BigInteger, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base


class CacheEpoch(Base):
    """A counter bumped by database triggers on every change it guards (services/kit/epochs.py)."""

    __tablename__ = "cache_epochs"

    name: Mapped[str] = mapped_column(String(40), primary_key=True)
    value: Mapped[int] = mapped_column(BigInteger)
