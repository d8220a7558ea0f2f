"""The hash chain over committed audit events: linking them in order, and checking the links.

Events are written without any global lock (services/audit/service.py); the chain is made
afterwards, by whichever sealer holds the chain lock. Each link is SHA-256 over the previous
link's hash and the event's canonical form (see `AuditChainLink`); the same leaves form the
RFC 6962 Merkle tree whose roots are signed in checkpoints (checkpoints.py, merkle.py).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.orm import Session, sessionmaker

from services.audit.models import AuditChainLink, AuditEvent
from services.kit.clock import utcnow
from services.kit.uow import transaction

GENESIS_HASH = "0" * 64
# The sealer thread looks only at the last SEAL_WINDOW seqs, and at the whole log every
# SEAL_FULL_PASS_SECONDS (see `seal`).
SEAL_WINDOW = 5_000
# Events chained per transaction of the sealer.
SEAL_BATCH = 5_000
SEAL_FULL_PASS_SECONDS = 300.0
# The sealers of all processes on PostgreSQL share one advisory lock per schema (advisory
# locks are database-wide; two platforms in two schemas of one database must not share it).
CHAIN_LOCK_ID = 0x746F6765  # any fixed 32-bit number ("toge")
CHAIN_LOCK_SQL = "SELECT pg_try_advisory_xact_lock(:k, hashtext(current_schema()))"

_LINK_FIELDS = ("leaf_index", "event_seq", "prev_hash", "hash", "sealed_at")


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + canonical).encode("utf-8")).hexdigest()


def seal(session: Session, *, limit: int = SEAL_BATCH, window: int | None = None) -> int:
    """Append chain links for committed events not yet sealed; returns how many were sealed.

    Only one sealer works at a time (PostgreSQL: a transaction-level advisory lock, skipped
    rather than waited for; SQLite: the write lock every transaction takes). The caller
    commits.

    With ``window``, only events whose seq is above the highest sealed seq minus ``window``
    are looked at: an index range instead of the whole log (an idle full pass over 300,000
    events took 160 ms of PostgreSQL time). An event that commits so late that it falls below
    the window is sealed by the next full pass (``window=None``), which the sealer thread makes
    every few minutes: late, but never skipped; leaf order is the order of record.
    """
    bind = session.get_bind()
    connection = session.connection()
    if bind.dialect.name == "postgresql":
        locked = connection.execute(text(CHAIN_LOCK_SQL), {"k": CHAIN_LOCK_ID}).scalar_one()
        if not locked:
            return 0
    last = connection.execute(
        select(AuditChainLink.leaf_index, AuditChainLink.hash)
        .order_by(AuditChainLink.leaf_index.desc())
        .limit(1)
    ).one_or_none()
    leaf, prev = (last.leaf_index + 1, last.hash) if last is not None else (0, GENESIS_HASH)
    pending: list[Any]
    if window is None:
        pending = list(
            connection.execute(
                select(AuditEvent.seq, AuditEvent.canonical)
                .outerjoin(AuditChainLink, AuditChainLink.event_seq == AuditEvent.seq)
                .where(AuditChainLink.event_seq.is_(None))
                .order_by(AuditEvent.seq)
                .limit(limit)
            ).all()
        )
    else:
        pending = _pending_near_the_top(connection, window, limit)
    if not pending:
        return 0
    now = utcnow()
    links: list[tuple[int, int, str, str, datetime]] = []
    for seq, canonical in pending:
        digest = chain_hash(prev, canonical)
        links.append((leaf, seq, prev, digest, now))
        prev, leaf = digest, leaf + 1
    if bind.dialect.name == "postgresql":
        # COPY: one stream instead of a statement per link (a third of the sealer's time).
        driver = connection.connection.driver_connection
        assert driver is not None
        with (
            driver.cursor() as cursor,
            cursor.copy(f"COPY audit_chain ({', '.join(_LINK_FIELDS)}) FROM STDIN") as copy,
        ):
            for link in links:
                copy.write_row(link)
    else:
        connection.execute(
            insert(AuditChainLink), [dict(zip(_LINK_FIELDS, link, strict=True)) for link in links]
        )
    return len(links)


def _pending_near_the_top(connection: Connection, window: int, limit: int) -> list[Any]:
    """Unsealed events above the highest sealed seq, and any that committed late within
    ``window`` seqs below it, in seq order.

    The events above the top are one index range holding only new rows. A late commit below
    the top is looked for only when the window holds more events than links (two index-range
    counts, no rows sent): every link names one distinct event, so equal counts mean nothing
    in the window is waiting. Under steady load a pass therefore reads only what it seals.
    """
    top = connection.execute(select(func.max(AuditChainLink.event_seq))).scalar_one()
    if top is None:
        return list(
            connection.execute(
                select(AuditEvent.seq, AuditEvent.canonical).order_by(AuditEvent.seq).limit(limit)
            ).all()
        )
    floor = top - window
    events_in_window = (
        select(func.count())
        .select_from(AuditEvent)
        .where(AuditEvent.seq > floor, AuditEvent.seq <= top)
        .scalar_subquery()
    )
    links_in_window = (
        select(func.count())
        .select_from(AuditChainLink)
        .where(AuditChainLink.event_seq > floor, AuditChainLink.event_seq <= top)
        .scalar_subquery()
    )
    events, links = connection.execute(select(events_in_window, links_in_window)).one()
    late: list[int] = []
    if events != links:
        # Rare: compare the two index ranges here, whatever the planner's statistics say.
        present = connection.execute(
            select(AuditEvent.seq).where(AuditEvent.seq > floor, AuditEvent.seq <= top)
        ).scalars()
        sealed = set(
            connection.execute(
                select(AuditChainLink.event_seq).where(
                    AuditChainLink.event_seq > floor, AuditChainLink.event_seq <= top
                )
            ).scalars()
        )
        late = sorted(seq for seq in present if seq not in sealed)[:limit]
    rows = (
        list(
            connection.execute(
                select(AuditEvent.seq, AuditEvent.canonical)
                .where(AuditEvent.seq.in_(late))
                .order_by(AuditEvent.seq)
            ).all()
        )
        if late
        else []
    )
    if len(rows) < limit:
        rows.extend(
            connection.execute(
                select(AuditEvent.seq, AuditEvent.canonical)
                .where(AuditEvent.seq > top)
                .order_by(AuditEvent.seq)
                .limit(limit - len(rows))
            ).all()
        )
    return rows


def seal_all(
    sessions: sessionmaker[Session], *, window: int | None = None, limit: int = SEAL_BATCH
) -> int:
    """Seal until nothing is pending (a command, a test, the end of a benchmark); with
    ``window``, nothing pending within it (see ``seal``). A pass that seals fewer than its
    limit found everything there was, so no further pass is made for nothing."""
    total = 0
    while True:
        # Links describe events already committed and audited: bookkeeping, no event of its own.
        with transaction(sessions) as session:
            sealed = seal(session, limit=limit, window=window)
        total += sealed
        if sealed < limit:
            return total


@dataclass
class ChainCheck:
    ok: bool
    checked: int
    unsealed: int = 0
    first_bad_leaf: int | None = None
    reason: str | None = None


def verify_chain(session: Session) -> ChainCheck:
    """Recompute the chain from the stored canonical forms (the offline verifier comes later)."""
    prev = GENESIS_HASH
    count = 0
    for leaf, link_prev, digest, canonical in session.execute(
        select(
            AuditChainLink.leaf_index,
            AuditChainLink.prev_hash,
            AuditChainLink.hash,
            AuditEvent.canonical,
        )
        .join(AuditEvent, AuditEvent.seq == AuditChainLink.event_seq)
        .order_by(AuditChainLink.leaf_index)
    ):
        if leaf != count:
            return ChainCheck(False, count, first_bad_leaf=count, reason="a link is missing")
        count += 1
        if link_prev != prev:
            return ChainCheck(False, count, first_bad_leaf=leaf, reason="previous hash differs")
        if chain_hash(prev, canonical) != digest:
            return ChainCheck(False, count, first_bad_leaf=leaf, reason="event content changed")
        prev = digest
    unsealed = session.execute(
        select(func.count())
        .select_from(AuditEvent)
        .outerjoin(AuditChainLink, AuditChainLink.event_seq == AuditEvent.seq)
        .where(AuditChainLink.event_seq.is_(None))
    ).scalar_one()
    return ChainCheck(True, count, unsealed=unsealed)
