"""Writes audit events into the append-only table.

Each event's canonical form is RFC 8785 JSON (services/audit/canonical.py). Events are written
inside the caller's unit of work (`services.kit.uow.audited`), so an event and the state change
it describes commit together or not at all, and without any global lock. The sealer chains
committed events afterwards (services/audit/chain.py, sealer.py) and signs checkpoints over
them (checkpoints.py).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any, Protocol

from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from services.audit.canonical import canonical_json
from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AuditEvent, AuditSubject
from services.kit import metrics
from services.kit.clock import utcnow
from services.kit.ids import new_id
from services.kit.uow import audit_guard, audited

log = logging.getLogger(__name__)


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


def _in_catalogue(rec: AuditRecord) -> None:
    if not isinstance(rec.action, AuditAction):
        raise ValueError(f"audit action {rec.action!r} is not in the catalogue")


def _row(ctx: RequestContext, rec: AuditRecord) -> tuple[dict[str, Any], list[str]]:
    """The event's table row (its canonical form included) and its subjects."""
    _in_catalogue(rec)
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
    metrics.AUDIT_EVENTS.inc(len(seqs))
    subjects = [
        {"event_seq": seq, "person_id": person}
        for seq, (_, people) in zip(seqs, built, strict=True)
        for person in people
    ]
    if subjects:
        session.execute(insert(AuditSubject), subjects)
    return [RecordedEvent(seq, row["event_id"]) for seq, (row, _) in zip(seqs, built, strict=True)]


ReadGate = Callable[[AuditRecord], None]
_read_gates: dict[int, tuple[object, ReadGate]] = {}
_read_gates_lock = threading.Lock()


def set_read_gate(engine: object, gate: ReadGate | None) -> None:
    """Install (or, with None, remove) the check every event written on `engine` passes
    first; a server process installs the sealer watch (services/audit/freshness.py), which
    refuses served Level 2 and 3 reads while the sealer is stalled. It raises to refuse."""
    with _read_gates_lock:
        if gate is None:
            _read_gates.pop(id(engine), None)
        else:
            _read_gates[id(engine)] = (engine, gate)


def check_gate(engine: object, rec: AuditRecord) -> None:
    """Run the gate installed for `engine`, if any (see `set_read_gate`)."""
    entry = _read_gates.get(id(engine))
    if entry is not None and entry[0] is engine:
        entry[1](rec)


def event(ctx: RequestContext, rec: AuditRecord) -> Callable[[Session], RecordedEvent]:
    """The write of one event, for `services.kit.uow.audited`: `uow.audit(event(ctx, rec))`.

    An action outside the catalogue is a mistake in the caller, refused here, in the work,
    rather than reported later as the audit being unavailable."""
    _in_catalogue(rec)

    def write(session: Session) -> RecordedEvent:
        check_gate(session.get_bind(), rec)
        return record(session, ctx, rec)

    return write


def record(session: Session, ctx: RequestContext, rec: AuditRecord) -> RecordedEvent:
    """Write one event in the caller's transaction (committed, or not, with the caller's work)."""
    (event,) = record_many(session, [(ctx, rec)])
    return event


def record_committed(
    sessions: sessionmaker[Session], ctx: RequestContext, rec: AuditRecord
) -> None:
    """Record an event in a unit of work of its own (a denial, a refusal: the event is the only
    thing committed). `AuditUnavailable` if it cannot be."""
    with audited(sessions, "the audited request") as uow:
        uow.audit(event(ctx, rec))


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
    that fails is retried one event at a time, so a bad event fails only its own request. The
    batch's commit is the audit itself, so a failure reaches its callers as `AuditUnavailable`
    (mapped in `audit_guard`, like every other audit write).
    """

    def __init__(self, sessions: sessionmaker[Session], timeout_seconds: float = 30.0) -> None:
        self._sessions = sessions
        self._timeout = timeout_seconds
        self._cond = threading.Condition()
        self._queue: list[_Pending] = []
        self._thread: threading.Thread | None = None

    def record(self, ctx: RequestContext, rec: AuditRecord) -> None:
        """Record one event and return once it is committed; `AuditUnavailable` if it could
        not be."""
        item = self._enqueue(ctx, rec)
        with audit_guard("the grouped audit event"):
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
        _in_catalogue(rec)
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
                with audit_guard("the grouped audit events"):
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
            engine = self._sessions.kw["bind"]
            try:
                with engine.connect().execution_options(isolation_level="AUTOCOMMIT") as conn:
                    conn.execute(_INSERT_EVENTS, [_row(i.ctx, i.rec)[0] for i in batch])
                metrics.AUDIT_EVENTS.inc(len(batch))
                return
            except Exception:
                if len(batch) == 1:
                    raise
        else:
            items = [(item.ctx, item.rec) for item in batch]
            try:
                with audited(self._sessions, "the grouped audit events") as uow:
                    uow.audit(lambda session: record_many(session, items))
                return
            except Exception:
                if len(batch) == 1:
                    raise
        for item in batch:
            try:
                record_committed(self._sessions, item.ctx, item.rec)
            except Exception as exc:
                item.error = exc


_committers: dict[int, tuple[sessionmaker[Session], GroupCommitter]] = {}
_committers_lock = threading.Lock()


def _committer(sessions: sessionmaker[Session]) -> GroupCommitter:
    with _committers_lock:
        entry = _committers.get(id(sessions))
        if entry is None or entry[0] is not sessions:
            entry = (sessions, GroupCommitter(sessions))
            _committers[id(sessions)] = entry
    return entry[1]


def record_grouped(sessions: sessionmaker[Session], ctx: RequestContext, rec: AuditRecord) -> None:
    """Record an event through the process's group committer for this session factory;
    `AuditUnavailable` if it cannot be committed (or the read gate refuses it)."""
    with audit_guard("the grouped audit event"):
        check_gate(sessions.kw.get("bind"), rec)
    _committer(sessions).record(ctx, rec)


def submit_grouped(
    sessions: sessionmaker[Session], ctx: RequestContext, rec: AuditRecord
) -> Future[None]:
    """Queue an event on the group committer; the future completes once it is committed, or
    fails with `AuditUnavailable` (raised at once when the read gate refuses it)."""
    with audit_guard("the grouped audit event"):
        check_gate(sessions.kw.get("bind"), rec)
    return _committer(sessions).submit(ctx, rec)


class _Decided(Protocol):
    """An access decision: the rule that matched and the version of the policy files."""

    @property
    def rule(self) -> str: ...

    @property
    def policy_version(self) -> str: ...


def record_denial(
    sessions: sessionmaker[Session],
    ctx: RequestContext,
    decision: _Decided | None,
    *,
    reason: str,
    resource_type: str,
    resource: str | None = None,
    resource_org: str | None = None,
    level: int | None = None,
    parameters: dict[str, Any] | None = None,
    details: dict[str, Any] | None = None,
) -> None:
    """An access denial, committed on its own before the refusal is returned (`decision`:
    the policy's, or None for a refusal the installation itself made)."""
    record_committed(
        sessions,
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
            matched_rule=decision.rule if decision is not None else None,
            policy_version=decision.policy_version if decision is not None else None,
            details=details or {},
        ),
    )
