from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from services.kit.db import Base, UTCDateTime


class AuditEvent(Base):
    """Append-only. Database triggers refuse UPDATE and DELETE (see the migrations)."""

    __tablename__ = "audit_events"

    seq: Mapped[int] = mapped_column(BigInteger().with_variant(Integer, "sqlite"), primary_key=True)
    event_id: Mapped[str] = mapped_column(String(36), unique=True)
    occurred_at: Mapped[datetime] = mapped_column(UTCDateTime(), index=True)
    action: Mapped[str] = mapped_column(String(60), index=True)
    outcome: Mapped[str] = mapped_column(String(20))
    reason: Mapped[str | None] = mapped_column(String(200), nullable=True)
    actor: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    actor_org: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    actor_roles: Mapped[list[str]] = mapped_column(JSON)
    resource_type: Mapped[str | None] = mapped_column(String(40), nullable=True)
    resource: Mapped[str | None] = mapped_column(String(200), nullable=True, index=True)
    resource_org: Mapped[str | None] = mapped_column(String(100), nullable=True, index=True)
    level: Mapped[int | None] = mapped_column(Integer, nullable=True)
    purpose: Mapped[str | None] = mapped_column(String(60), nullable=True)
    case_reference: Mapped[str | None] = mapped_column(String(100), nullable=True)
    parameters: Mapped[dict[str, Any]] = mapped_column(JSON)
    rows: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    matched_rule: Mapped[str | None] = mapped_column(String(300), nullable=True)
    policy_version: Mapped[str | None] = mapped_column(String(80), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    client_address: Mapped[str | None] = mapped_column(String(64), nullable=True)
    details: Mapped[dict[str, Any]] = mapped_column(JSON)
    # The event's canonical JSON: what the chain hashes, and what an export carries.
    canonical: Mapped[str] = mapped_column(Text)


class AuditChainLink(Base):
    """The hash chain over the events, in the order the sealer saw them commit. Append-only.

    Events are inserted without any global lock (a read must not wait for other reads); the
    sealer then appends one link per committed event: leaf `n` holds the SHA-256 of link `n-1`
    and the event's canonical form. Leaf order, not `seq`, is the order of record: a
    transaction that commits late is sealed late, but never skipped.
    """

    __tablename__ = "audit_chain"

    leaf_index: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    event_seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("audit_events.seq"), unique=True
    )
    prev_hash: Mapped[str] = mapped_column(String(64))
    hash: Mapped[str] = mapped_column(String(64))
    sealed_at: Mapped[datetime] = mapped_column(UTCDateTime())


class AuditSubject(Base):
    """A pseudonymous person an audited read returned (Level 3). Append-only, like its event."""

    __tablename__ = "audit_subjects"

    event_seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"),
        ForeignKey("audit_events.seq"),
        primary_key=True,
    )
    person_id: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class AuditCheckpoint(Base):
    """A signed statement of the log's state: tree size, Merkle root, chain head, time.

    `body` holds the exact canonical JSON that was signed (Ed25519, `signature`, base64);
    the other columns repeat its fields for queries. `frontier` is the compact range of the
    tree at `tree_size` (unsigned: a cache that lets the next checkpoint and a partial export
    continue the tree without rereading every event; a wrong value cannot pass verification,
    because the verifier recomputes roots from the events). Append-only.
    """

    __tablename__ = "audit_checkpoints"

    seq: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=False
    )
    tree_size: Mapped[int] = mapped_column(BigInteger, index=True)
    root_hash: Mapped[str] = mapped_column(String(64))
    chain_hash: Mapped[str] = mapped_column(String(64))
    issued_at: Mapped[datetime] = mapped_column(UTCDateTime())
    key_id: Mapped[str] = mapped_column(String(32))
    body: Mapped[str] = mapped_column(Text)
    signature: Mapped[str] = mapped_column(String(100))
    frontier: Mapped[list[str]] = mapped_column(JSON)


class AlertReview(Base):
    """A reviewer's verdict on an alert. Append-only (triggers); the latest review is its state."""

    __tablename__ = "audit_alert_reviews"

    id: Mapped[int] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), primary_key=True, autoincrement=True
    )
    alert_id: Mapped[str] = mapped_column(String(80), index=True)
    rule: Mapped[str] = mapped_column(String(40))
    state: Mapped[str] = mapped_column(String(20))
    comment: Mapped[str] = mapped_column(Text)
    reviewer: Mapped[str] = mapped_column(String(100))
    reviewer_org: Mapped[str] = mapped_column(String(100))
    reviewed_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The audit event that recorded this review.
    event_seq: Mapped[int | None] = mapped_column(
        BigInteger().with_variant(Integer, "sqlite"), ForeignKey("audit_events.seq"), nullable=True
    )
