from __future__ import annotations

from datetime import datetime

from sqlalchemy import Boolean, ForeignKey, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column, relationship

from services.kit.db import Base, UTCDateTime


class Client(Base):
    """A principal that authenticates with client credentials (partner system, service, reader)."""

    __tablename__ = "clients"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    client_id: Mapped[str] = mapped_column(String(64), unique=True)
    name: Mapped[str] = mapped_column(String(200))
    organisation: Mapped[str] = mapped_column(String(100), index=True)
    secret_hash: Mapped[str] = mapped_column(String(200))
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # A client that authenticates with signed assertions (RFC 7523 `private_key_jwt`) has its
    # public JWK here, and `secret_hash` holds NO_SECRET: no secret can ever match it.
    public_jwk: Mapped[str | None] = mapped_column(Text(), nullable=True)

    roles: Mapped[list[ClientRole]] = relationship(
        back_populates="client", cascade="all, delete-orphan", lazy="selectin"
    )


class ClientRole(Base):
    """A role held by a principal, optionally limited to one CSP area (NULL = no area limit)
    and optionally until a time."""

    __tablename__ = "client_roles"
    __table_args__ = (UniqueConstraint("client_pk", "role", "area"),)

    id: Mapped[int] = mapped_column(primary_key=True, autoincrement=True)
    client_pk: Mapped[str] = mapped_column(ForeignKey("clients.id", ondelete="CASCADE"))
    role: Mapped[str] = mapped_column(String(50))
    area: Mapped[str | None] = mapped_column(String(100), nullable=True)
    # A time-bound grant ends here (UTC); NULL = no end. Indexed for the expiring-grants list.
    expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True, index=True)

    client: Mapped[Client] = relationship(back_populates="roles")


class User(Base):
    """A person who signs in to the review pages (services/identity/accounts.py)."""

    __tablename__ = "users"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), unique=True)
    organisation: Mapped[str] = mapped_column(String(100), index=True)
    role: Mapped[str] = mapped_column(String(50))
    password_hash: Mapped[str | None] = mapped_column(String(200), nullable=True)
    disabled: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    disabled_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ClientAssertionJti(Base):
    """The `jti` of every client assertion accepted, kept until the assertion expires, so that
    a captured assertion cannot be replayed (RFC 7523 s.3, item 7)."""

    __tablename__ = "client_assertion_jtis"

    client_id: Mapped[str] = mapped_column(String(64), primary_key=True)
    jti: Mapped[str] = mapped_column(String(200), primary_key=True)
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)


class AuthCounter(Base):
    """Failed or refused authentication attempts, counted per key in fixed windows.

    In the database rather than in a process, so that limits and lockouts hold across every
    replica: scope `client_failure` and `address_failure` feed the token endpoint's limits and
    lockout, scope `rejection` the aggregation of refused bearer tokens (only the first of a
    window is an audit event; `summarised` is set once the window's count is in a summary event).
    """

    __tablename__ = "auth_counters"

    scope: Mapped[str] = mapped_column(String(20), primary_key=True)
    key: Mapped[str] = mapped_column(String(200), primary_key=True)
    window_start: Mapped[datetime] = mapped_column(UTCDateTime(), primary_key=True)
    count: Mapped[int] = mapped_column(Integer)
    summarised: Mapped[bool] = mapped_column(Boolean, default=False)


class WebSession(Base):
    """A signed-in session of the review pages: the cookie carries its id, and a session is
    only as good as its row (signing out or disabling the account revokes it at once)."""

    __tablename__ = "web_sessions"

    # SHA-256 of the id in the cookie: the table alone cannot be replayed as cookies.
    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    username: Mapped[str] = mapped_column(String(100), index=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
