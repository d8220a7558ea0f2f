"""Writes audit events into the append-only, hash-chained table.

Each event's canonical form is RFC 8785 JSON (services/audit/canonical.py). Events are written
inside the caller's transaction, so an event and the state change it describes commit together
or not at all, and without any global lock. The sealer then chains
committed events: each link is SHA-256 over the previous link's hash and the event's canonical
form (see `AuditChainLink`), and the same leaves form an RFC 6962 Merkle tree whose roots are
signed in checkpoints (services/audit/checkpoints.py, merkle.py).
"""

from __future__ import annotations

import hashlib
import logging
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Protocol

from sqlalchemy import Connection, func, insert, select, text
from sqlalchemy.orm import Session

from services.audit.canonical import canonical_json
from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AuditChainLink, AuditEvent, AuditSubject
from services.kit.clock import utcnow
from services.kit.ids import new_id

log = logging.getLogger(__name__)

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


@dataclass
class RequestContext:
    """Who is asking, from where. Built by the gateway, carried into every service call."""

    request_id: str | None = None
    client_address: str | None = None
    actor: str | None = None
    actor_org: str | None = None
    actor_roles: list[str] = field(default_factory=list)
    # The cache epochs the gateway read once for this request (services/kit/epochs.Epochs);
    # not part of any audit record.
    cache_epochs: Any = None


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
    # Pseudonymous person ids the read returned (never names): "who looked at me".
    subjects: list[str] = field(default_factory=list)


def chain_hash(prev_hash: str, canonical: str) -> str:
    return hashlib.sha256((prev_hash + "\n" + canonical).encode("utf-8")).hexdigest()


def _row(ctx: RequestContext, rec: AuditRecord) -> tuple[dict[str, Any], list[str]]:
    """The event's table row (its canonical form included) and its subjects."""
    if not isinstance(rec.action, AuditAction):
        raise ValueError(f"audit action {rec.action!r} is not in the catalogue")
    occurred_at = utcnow()
    subjects = sorted(set(rec.subjects))
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
        "subjects": subjects,
    }
    row = {name: value for name, value in document.items() if name != "subjects"}
    row["occurred_at"] = occurred_at
    row["canonical"] = canonical_json(document)
    return row, subjects


_LINK_FIELDS = ("leaf_index", "event_seq", "prev_hash", "hash", "sealed_at")
_INSERT_EVENTS = insert(AuditEvent).returning(AuditEvent.seq, sort_by_parameter_order=True)


@dataclass(frozen=True)
class RecordedEvent:
    seq: int
    event_id: str


def record_many(
    session: Session, items: list[tuple[RequestContext, AuditRecord]]
) -> list[RecordedEvent]:
    """Insert several events in one statement (and their subjects in another)."""
    built = [_row(ctx, rec) for ctx, rec in items]
    seqs = list(session.execute(_INSERT_EVENTS, [row for row, _ in built]).scalars())
    subjects = [
        {"event_seq": seq, "person_id": person}
        for seq, (_, people) in zip(seqs, built, strict=True)
        for person in people
    ]
    if subjects:
        session.execute(insert(AuditSubject), subjects)
    return [RecordedEvent(seq, row["event_id"]) for seq, (row, _) in zip(seqs, built, strict=True)]


def event(ctx: RequestContext, rec: AuditRecord) -> Callable[[Session], RecordedEvent]:
    """The write of one event, for `services.kit.uow.audited`: `uow.audit(event(ctx, rec))`."""
    return lambda session: record(session, ctx, rec)


def record(session: Session, ctx: RequestContext, rec: AuditRecord) -> RecordedEvent:
    """Write one event in the caller's transaction (committed, or not, with the caller's work)."""
    (event,) = record_many(session, [(ctx, rec)])
    return event


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


def seal_all(factory: Any, *, window: int | None = None, limit: int = SEAL_BATCH) -> int:
    """Seal until nothing is pending (a command, a test, the end of a benchmark); with
    ``window``, nothing pending within it (see ``seal``). A pass that seals fewer than its
    limit found everything there was, so no further pass is made for nothing."""
    total = 0
    while True:
        session: Session = factory()
        try:
            sealed = seal(session, limit=limit, window=window)
            session.commit()
        finally:
            session.close()
        total += sealed
        if sealed < limit:
            return total


class Sealer:
    """Seals the chain every few seconds on a daemon thread of each server process, and signs
    a checkpoint whenever the last one is `checkpoint_interval_seconds` old."""

    def __init__(
        self,
        factory: Any,
        interval_seconds: float,
        signer: Any = None,
        checkpoint_interval_seconds: float = 3600.0,
    ) -> None:
        self._factory = factory
        self._interval = interval_seconds
        self._signer = signer
        self._checkpoint_interval = checkpoint_interval_seconds
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="audit-sealer", daemon=True)
        self._last_full = 0.0

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=10)

    def _run(self) -> None:
        while not self._stop.wait(self._interval):
            try:
                full = time.monotonic() - self._last_full >= SEAL_FULL_PASS_SECONDS
                seal_all(self._factory, window=None if full else SEAL_WINDOW)
                if full:
                    self._last_full = time.monotonic()
                if self._signer is not None:
                    self._checkpoint()
            except Exception:
                # The next round retries; events are safe in the table meanwhile.
                log.exception("sealing the audit chain failed")

    def _checkpoint(self) -> None:
        from services.audit import checkpoints

        session: Session = self._factory()
        try:
            checkpoints.write_checkpoint(
                session, self._signer, interval_seconds=self._checkpoint_interval
            )
            session.commit()
        finally:
            session.close()


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


class _Pending:
    __slots__ = ("ctx", "done", "error", "future", "rec")

    def __init__(self, ctx: RequestContext, rec: AuditRecord) -> None:
        self.ctx = ctx
        self.rec = rec
        self.done = threading.Event()
        self.error: BaseException | None = None
        self.future: Future[None] | None = None


class GroupCommitter:
    """Commits the events of concurrent requests together: one transaction (one WAL flush)
    for every event that arrived while the previous commit was running.

    Each caller still waits for its own event's commit before it returns, so "audited before
    data" holds exactly as with a transaction per event; only the flushes are shared. A batch
    that fails is retried one event at a time, so a bad event fails only its own request.
    """

    def __init__(self, factory: Any, timeout_seconds: float = 30.0) -> None:
        self._factory = factory
        self._timeout = timeout_seconds
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._thread: threading.Thread | None = None

    def record(self, ctx: RequestContext, rec: AuditRecord) -> None:
        """Record one event and return once it is committed; raise if it could not be."""
        item = self._enqueue(ctx, rec)
        if not item.done.wait(self._timeout):
            raise TimeoutError("the audit event was not committed in time")
        if item.error is not None:
            raise item.error

    def submit(self, ctx: RequestContext, rec: AuditRecord) -> Future[None]:
        """Queue one event; the future completes when it is committed (or fails with why not).

        For callers that must not block a thread while they wait (the event loop)."""
        future: Future[None] = Future()
        self._enqueue(ctx, rec, future)
        return future

    def _enqueue(
        self, ctx: RequestContext, rec: AuditRecord, future: Future[None] | None = None
    ) -> _Pending:
        if not isinstance(rec.action, AuditAction):
            raise ValueError(f"audit action {rec.action!r} is not in the catalogue")
        item = _Pending(ctx, rec)
        item.future = future
        with self._cond:
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(
                    target=self._run, name="audit-group-commit", daemon=True
                )
                self._thread.start()
            self._queue.append(item)
            self._cond.notify()
        return item

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._queue:
                    self._cond.wait()
                batch, self._queue = self._queue, []
            try:
                self._commit(batch)
            except BaseException as exc:  # never leave a caller waiting
                for item in batch:
                    item.error = item.error or exc
            finally:
                for item in batch:
                    item.done.set()
                    if item.future is not None:
                        if item.error is not None:
                            item.future.set_exception(item.error)
                        else:
                            item.future.set_result(None)

    def _commit(self, batch: list[_Pending]) -> None:
        if not any(item.rec.subjects for item in batch):
            # One multi-row INSERT is atomic on its own: in autocommit it is also the commit,
            # one round trip instead of three (begin, insert, commit).
            engine = self._factory.kw["bind"]
            try:
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(_INSERT_EVENTS, [_row(i.ctx, i.rec)[0] for i in batch])
                return
            except Exception:
                if len(batch) == 1:
                    raise
            for item in batch:
                try:
                    record_committed(self._factory, item.ctx, item.rec)
                except Exception as exc:
                    item.error = exc
            return
        session: Session = self._factory()
        try:
            record_many(session, [(item.ctx, item.rec) for item in batch])
            session.commit()
            return
        except Exception:
            session.rollback()
            if len(batch) == 1:
                raise
        finally:
            session.close()
        for item in batch:
            try:
                record_committed(self._factory, item.ctx, item.rec)
            except Exception as exc:
                item.error = exc


_committers: dict[int, tuple[Any, GroupCommitter]] = {}
_committers_lock = threading.Lock()


def _committer(factory: Any) -> GroupCommitter:
    with _committers_lock:
        entry = _committers.get(id(factory))
        if entry is None or entry[0] is not factory:
            entry = (factory, GroupCommitter(factory))
            _committers[id(factory)] = entry
    return entry[1]


def record_grouped(factory: Any, ctx: RequestContext, rec: AuditRecord) -> None:
    """Record an event through the process's group committer for this session factory."""
    _committer(factory).record(ctx, rec)


def submit_grouped(factory: Any, ctx: RequestContext, rec: AuditRecord) -> Future[None]:
    """Queue an event on the group committer; the future completes once it is committed."""
    return _committer(factory).submit(ctx, rec)


class _Decided(Protocol):
    """An access decision: the rule that matched and the version of the policy files."""

    @property
    def rule(self) -> str: ...

    @property
    def policy_version(self) -> str: ...


def record_denial(
    factory: Any,
    ctx: RequestContext,
    decision: _Decided,
    *,
    reason: str,
    resource_type: str,
    resource: str | None = None,
    resource_org: str | None = None,
    level: int | None = None,
    parameters: dict[str, Any] | None = None,
) -> None:
    """An access denial, committed on its own before the refusal is returned."""
    record_committed(
        factory,
        ctx,
        AuditRecord(
            action=AuditAction.ACCESS_DENIED,
            outcome=Outcome.DENIED,
            reason=reason,
            resource_type=resource_type,
            resource=resource,
            resource_org=resource_org,
            level=level,
            parameters=parameters or {},
            matched_rule=decision.rule,
            policy_version=decision.policy_version,
        ),
    )
