from __future__ import annotations

from datetime import date, datetime

from sqlalchemy import BigInteger, Date, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime


class HkcAssessment(Base):
    """One partnership grading of a habitual knife carrier. Append-only: the latest counts."""

    __tablename__ = "hkc_assessments"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    person_id: Mapped[str] = mapped_column(String(64), index=True)
    rag: Mapped[str] = mapped_column(String(10))
    lead_agency: Mapped[str] = mapped_column(String(100))
    previous_rag: Mapped[str | None] = mapped_column(String(10), nullable=True)
    previous_lead_agency: Mapped[str | None] = mapped_column(String(100), nullable=True)
    graded_by: Mapped[str] = mapped_column(String(100))
    graded_by_org: Mapped[str] = mapped_column(String(100))
    graded_at: Mapped[datetime] = mapped_column(UTCDateTime())
    purpose: Mapped[str] = mapped_column(String(60))
    case_reference: Mapped[str] = mapped_column(String(100))


class Level3QuotaUsage(Base):
    """Level 3 reads per principal per day (Europe/London)."""

    __tablename__ = "l3_quota_usage"

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    day: Mapped[date] = mapped_column(Date, primary_key=True)
    used: Mapped[int] = mapped_column(Integer)


class Level3HourlyUsage(Base):
    """Level 3 reads per principal per clock hour (UTC): the hourly limit beside the daily one."""

    __tablename__ = "l3_quota_hourly"

    client_id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hour: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    used: Mapped[int] = mapped_column(Integer)
