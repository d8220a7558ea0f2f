"""Writes audit events into the append-only, hash-chained table.

Each event's canonical form is RFC 8785-style JSON (sorted keys, no insignificant whitespace,
UTF-8), and its hash is SHA-256 over the previous event's hash and that canonical form. Events
are written inside the caller's transaction, so an event and the state change it describes
commit together or not at all.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any

from sqlalchemy import select, text
from sqlalchemy.orm import Session

from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AuditEvent
from services.kit.clock import utcnow
from services.kit.ids import new_id

GENESIS_HASH = "0" * 64
# Any fixed 64-bit number: all writers of the chain on PostgreSQL serialise on this lock.
_CHAIN_LOCK_ID = 0x746F676574686572


@dataclass
class RequestContext:
    """Who is asking, from where. Built by the gateway, carried into every service call."""

    request_id: str | None = None
    client_address: str | None = None
    actor: str | None = None
    actor_org: str | None = None
    actor_roles: list[str] = field(default_factory=list)


@dataclass
class AuditRecord:
    action: AuditAction
    outcome: Outcome
    reason: str | None = None
    resource_type: str | None = None
    resource: str | None = None
    resource_org: str | None = None
    level: int | None = None
    purpose: str | None = None
    case_reference: str | None = None
    parameters: dict[str, Any] = field(default_factory=dict)
    rows: int | None = None
    matched_rule: str | None = None
    policy_version: str | None = None
    details: dict[str, Any] = field(default_factory=dict)


def canonical_json(document: dict[str, Any]) -> str:
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + canonical).encode("utf-8")).hexdigest()


def _last_hash(session: Session) -> str:
    bind = session.get_bind()
    if bind.dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(:k)"), {"k": _CHAIN_LOCK_ID})
    last = session.execute(
        select(AuditEvent.hash).order_by(AuditEvent.seq.desc()).limit(1)
    ).scalar_one_or_none()
    return last or GENESIS_HASH


def record(session: Session, ctx: RequestContext, rec: AuditRecord) -> AuditEvent:
    if not isinstance(rec.action, AuditAction):
        raise ValueError(f"audit action {rec.action!r} is not in the catalogue")
    occurred_at = utcnow()
    document: dict[str, Any] = {
        "event_id": new_id(),
        "occurred_at": occurred_at.isoformat(timespec="microseconds"),
        "action": rec.action.value,
        "outcome": rec.outcome.value,
        "reason": rec.reason,
        "actor": ctx.actor,
        "actor_org": ctx.actor_org,
        "actor_roles": sorted(ctx.actor_roles),
        "resource_type": rec.resource_type,
        "resource": rec.resource,
        "resource_org": rec.resource_org,
        "level": rec.level,
        "purpose": rec.purpose,
        "case_reference": rec.case_reference,
        "parameters": rec.parameters,
        "rows": rec.rows,
        "matched_rule": rec.matched_rule,
        "policy_version": rec.policy_version,
        "request_id": ctx.request_id,
        "client_address": ctx.client_address,
        "details": rec.details,
    }
    canonical = canonical_json(document)
    prev = _last_hash(session)
    event = AuditEvent(
        event_id=document["event_id"],
        occurred_at=occurred_at,
        action=rec.action.value,
        outcome=rec.outcome.value,
        reason=rec.reason,
        actor=ctx.actor,
        actor_org=ctx.actor_org,
        actor_roles=document["actor_roles"],
        resource_type=rec.resource_type,
        resource=rec.resource,
        resource_org=rec.resource_org,
        level=rec.level,
        purpose=rec.purpose,
        case_reference=rec.case_reference,
        parameters=rec.parameters,
        rows=rec.rows,
        matched_rule=rec.matched_rule,
        policy_version=rec.policy_version,
        request_id=ctx.request_id,
        client_address=ctx.client_address,
        details=rec.details,
        prev_hash=prev,
        hash=chain_hash(prev, canonical),
        canonical=canonical,
    )
    session.add(event)
    session.flush()
    return event


@dataclass
class ChainCheck:
    ok: bool
    checked: int
    first_bad_seq: int | None = None
    reason: str | None = None


def verify_chain(session: Session) -> ChainCheck:
    """Recompute the chain from the stored canonical forms (the offline verifier comes later)."""
    prev = GENESIS_HASH
    count = 0
    for seq, prev_hash, digest, canonical in session.execute(
        select(
            AuditEvent.seq, AuditEvent.prev_hash, AuditEvent.hash, AuditEvent.canonical
        ).order_by(AuditEvent.seq)
    ):
        count += 1
        if prev_hash != prev:
            return ChainCheck(False, count, seq, "previous hash does not match")
        if chain_hash(prev, canonical) != digest:
            return ChainCheck(False, count, seq, "event hash does not match its content")
        prev = digest
    return ChainCheck(True, count)


def record_committed(factory: Any, ctx: RequestContext, rec: AuditRecord) -> None:
    """Record an event in a transaction of its own (a denial: the request's work is discarded)."""
    session: Session = factory()
    try:
        record(session, ctx, rec)
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()
