"""Grant requests: a role that needs a second person waits here until an IG lead approves it."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, String
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime

PENDING = "pending"
APPROVED = "approved"
REFUSED = "refused"


class GrantRequest(Base):
    """Roles an administrator asked for a client (services/authz/vocabulary.SECOND_PERSON_ROLES).

    The client's roles (identity's `client_roles`) change only when the request is approved, in
    the approval's own transaction; until then the request grants nothing.
    """

    __tablename__ = "grant_requests"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), index=True)
    # The grantee's organisation: whose IG lead approves.
    organisation: Mapped[str] = mapped_column(String(100), index=True)
    # [{"role": ..., "area": ...}]: the grants to add when approved.
    grants: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    # Grants the same change removed, kept until approval because removing them at once would
    # have left the client with no role at all.
    removals: Mapped[list[dict[str, Any]]] = mapped_column(JSON)
    requested_by: Mapped[str] = mapped_column(String(100))
    requested_by_org: Mapped[str | None] = mapped_column(String(100), nullable=True)
    requested_at: Mapped[datetime] = mapped_column(UTCDateTime())
    state: Mapped[str] = mapped_column(String(20), index=True)
    decided_by: Mapped[str | None] = mapped_column(String(100), nullable=True)
    decided_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
