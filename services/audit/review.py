"""Reading the audit trail for review: filters, organisation scope, keyset pages, person history.

Every statement starts from `visible(scope)`, so a query cannot forget whose events it may show.
An information-governance lead sees the events about their organisation's users (`actor_org`),
their organisation's data (`resource_org`, the owners a read recorded in `details.owners`, or
the datasets a product read used, in `details.sources`); an administrator sees everything.
Callers audit each query (see `record_query`) and commit before returning anything.
"""

from __future__ import annotations

import base64
import binascii
import itertools
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from datetime import date, datetime, time, timedelta
from typing import Any, cast
from zoneinfo import ZoneInfo

from sqlalchemy import (
    ColumnElement,
    Select,
    and_,
    bindparam,
    false,
    func,
    or_,
    select,
    text,
    true,
)
from sqlalchemy.orm import Session

from services.audit.catalogue import AuditAction, Outcome
from services.audit.checkpoints import CheckpointSigner, published, verify_signature
from services.audit.export import verify_database
from services.audit.models import AuditChainLink, AuditCheckpoint, AuditEvent, AuditSubject
from services.kit.errors import BadRequest

DEFAULT_LIMIT = 100
MAX_LIMIT = 1000
MAX_EXPORT_LIMIT = 10000

EXPORT_COLUMNS = (
    "occurred_at",
    "event_id",
    "action",
    "outcome",
    "reason",
    "actor",
    "actor_org",
    "actor_roles",
    "resource_type",
    "resource",
    "resource_org",
    "level",
    "purpose",
    "case_reference",
    "rows",
    "subjects",
    "matched_rule",
    "policy_version",
    "request_id",
    "client_address",
    "parameters",
    "details",
)


@dataclass(frozen=True)
class Scope:
    """Whose events a reviewer may see: one organisation's, or (None) every organisation's."""

    organisation: str | None
    # Datasets the organisation owns: product reads that used them are about its data.
    datasets: frozenset[str] = frozenset()

    @property
    def everything(self) -> bool:
        return self.organisation is None


@dataclass
class EventFilters:
    since: datetime | None = None
    until: datetime | None = None
    actor: str | None = None
    organisation: str | None = None
    action: str | None = None
    product: str | None = None
    level: int | None = None
    outcome: str | None = None
    purpose: str | None = None
    case_reference: str | None = None
    person_id: str | None = None

    def as_parameters(self) -> dict[str, Any]:
        """The filters as recorded in the audit event of the query (set values only)."""
        out: dict[str, Any] = {}
        for key, value in asdict(self).items():
            if value is None:
                continue
            out[key] = value.isoformat() if isinstance(value, datetime) else value
        return out


@dataclass
class Page:
    events: list[dict[str, Any]]
    next_cursor: str | None
    filters: EventFilters = field(default_factory=EventFilters)


FILTER_NAMES = frozenset(
    {
        "since",
        "until",
        "actor",
        "organisation",
        "action",
        "product",
        "level",
        "outcome",
        "purpose",
        "case_reference",
        "person_id",
    }
)
_TEXT_FILTERS = ("actor", "organisation", "action", "product", "purpose", "case_reference")


def parse_time(value: str, zone: ZoneInfo, *, end: bool = False) -> datetime:
    """ISO 8601. A date alone is midnight in `zone` (the day after it, for an `until`)."""
    try:
        if len(value) == 10:
            day = date.fromisoformat(value)
            if end:
                day += timedelta(days=1)
            return datetime.combine(day, time(0), tzinfo=zone)
        parsed = datetime.fromisoformat(value)
    except ValueError as exc:
        raise BadRequest(f"{value!r} is not an ISO 8601 date or time") from exc
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=zone)


def parse_filters(params: Mapping[str, str], zone: ZoneInfo) -> EventFilters:
    """Filters from query or form values; empty values are absent, malformed ones are 400."""
    values = {k: v.strip() for k, v in params.items() if k in FILTER_NAMES and v.strip()}
    filters = EventFilters()
    for name in _TEXT_FILTERS:
        if name in values:
            if len(values[name]) > 200:
                raise BadRequest(f"{name} is too long")
            setattr(filters, name, values[name])
    if "since" in values:
        filters.since = parse_time(values["since"], zone)
    if "until" in values:
        filters.until = parse_time(values["until"], zone, end=True)
    if "level" in values:
        if values["level"] not in ("1", "2", "3"):
            raise BadRequest("level is 1, 2 or 3")
        filters.level = int(values["level"])
    if "outcome" in values:
        if values["outcome"] not in {o.value for o in Outcome}:
            raise BadRequest(f"outcome is one of {', '.join(o.value for o in Outcome)}")
        filters.outcome = values["outcome"]
    if "action" in values and values["action"] not in {a.value for a in AuditAction}:
        raise BadRequest(f"unknown action {values['action']!r}")
    if "person_id" in values:
        if len(values["person_id"]) > 64:
            raise BadRequest("person_id is too long")
        filters.person_id = values["person_id"]
    return filters


def parse_limit(value: str | None, maximum: int = MAX_LIMIT) -> int:
    if value is None or value == "":
        return DEFAULT_LIMIT
    if not value.isdigit() or not 1 <= int(value) <= maximum:
        raise BadRequest(f"limit is a whole number from 1 to {maximum}")
    return int(value)


# Cursors: opaque to the caller, but only a position. A forged cursor moves the page, never the
# scope, since the scope is applied to every statement.


def encode_cursor(seq: int) -> str:
    return base64.urlsafe_b64encode(f"v1:{seq}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str | None) -> int | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
    except (binascii.Error, UnicodeDecodeError, ValueError) as exc:
        raise BadRequest("malformed cursor") from exc
    version, _, number = raw.partition(":")
    if version != "v1" or not number.isdigit():
        raise BadRequest("malformed cursor")
    return int(number)


# Visibility


# The JSON paths below are fixed names from this module, never caller input; values are bound.
_JSON_KEYS = frozenset({"owners", "sources"})
# Bound names are unique per use: one statement may test the same key for two organisations.
_BIND_NUMBERS = itertools.count()


def _json_list_has(dialect: str, key: str, value: str) -> ColumnElement[bool]:
    """`details[key]` is a list holding `value`."""
    assert key in _JSON_KEYS
    name = f"jl_{key}_{next(_BIND_NUMBERS)}"
    if dialect == "postgresql":
        clause = text(f"(audit_events.details::jsonb -> '{key}') ? :{name}")
    else:
        clause = text(
            "EXISTS (SELECT 1 FROM json_each(audit_events.details, "  # noqa: S608
            f"'$.{key}') WHERE value = :{name})"
        )
    return cast(ColumnElement[bool], clause.bindparams(bindparam(name, value)))


def _json_keys_any(dialect: str, key: str, values: Iterable[str]) -> ColumnElement[bool]:
    """`details[key]` is an object with at least one of `values` as a key."""
    assert key in _JSON_KEYS
    wanted = sorted(values)
    if not wanted:
        return false()
    name = f"jk_{key}_{next(_BIND_NUMBERS)}"
    if dialect == "postgresql":
        clause = text(
            f"jsonb_typeof(audit_events.details::jsonb -> '{key}') = 'object' "
            f"AND (audit_events.details::jsonb -> '{key}') ?| CAST(:{name} AS text[])"
        ).bindparams(bindparam(name, wanted))
    else:
        clause = text(
            f"json_type(audit_events.details, '$.{key}') = 'object' AND EXISTS "  # noqa: S608
            f"(SELECT 1 FROM json_each(audit_events.details, '$.{key}') WHERE key IN :{name})"
        ).bindparams(bindparam(name, wanted, expanding=True))
    return cast(ColumnElement[bool], clause)


def about_organisation(
    dialect: str, organisation: str, datasets: Iterable[str] = ()
) -> ColumnElement[bool]:
    """Events about an organisation's users or its data."""
    return or_(
        AuditEvent.actor_org == organisation,
        AuditEvent.resource_org == organisation,
        _json_list_has(dialect, "owners", organisation),
        _json_keys_any(dialect, "sources", datasets),
    )


def visible(session: Session, scope: Scope) -> ColumnElement[bool]:
    if scope.organisation is None:
        return true()
    dialect = session.get_bind().dialect.name
    return about_organisation(dialect, scope.organisation, scope.datasets)


def _filtered(
    session: Session, scope: Scope, filters: EventFilters, datasets_of: Mapping[str, frozenset[str]]
) -> Select[Any]:
    dialect = session.get_bind().dialect.name
    conditions: list[ColumnElement[bool]] = [visible(session, scope)]
    if filters.since is not None:
        conditions.append(AuditEvent.occurred_at >= filters.since)
    if filters.until is not None:
        conditions.append(AuditEvent.occurred_at < filters.until)
    if filters.actor is not None:
        conditions.append(AuditEvent.actor == filters.actor)
    if filters.organisation is not None:
        conditions.append(
            about_organisation(
                dialect, filters.organisation, datasets_of.get(filters.organisation, frozenset())
            )
        )
    if filters.action is not None:
        conditions.append(AuditEvent.action == filters.action)
    if filters.product is not None:
        conditions.append(
            and_(AuditEvent.resource_type == "product", AuditEvent.resource == filters.product)
        )
    if filters.level is not None:
        conditions.append(AuditEvent.level == filters.level)
    if filters.outcome is not None:
        conditions.append(AuditEvent.outcome == filters.outcome)
    if filters.purpose is not None:
        conditions.append(AuditEvent.purpose == filters.purpose)
    if filters.case_reference is not None:
        conditions.append(AuditEvent.case_reference == filters.case_reference)
    if filters.person_id is not None:
        conditions.append(
            AuditEvent.seq.in_(
                select(AuditSubject.event_seq).where(AuditSubject.person_id == filters.person_id)
            )
        )
    return select(AuditEvent).where(*conditions)


def _subjects(session: Session, seqs: Sequence[int]) -> dict[int, list[str]]:
    found: dict[int, list[str]] = {}
    if not seqs:
        return found
    rows = session.execute(
        select(AuditSubject.event_seq, AuditSubject.person_id)
        .where(AuditSubject.event_seq.in_(seqs))
        .order_by(AuditSubject.event_seq, AuditSubject.person_id)
    )
    for seq, person in rows:
        found.setdefault(seq, []).append(person)
    return found


def event_document(event: AuditEvent, subjects: list[str]) -> dict[str, Any]:
    return {
        "event_id": event.event_id,
        "occurred_at": event.occurred_at.isoformat(timespec="microseconds"),
        "action": event.action,
        "outcome": event.outcome,
        "reason": event.reason,
        "actor": event.actor,
        "actor_org": event.actor_org,
        "actor_roles": list(event.actor_roles or []),
        "resource_type": event.resource_type,
        "resource": event.resource,
        "resource_org": event.resource_org,
        "level": event.level,
        "purpose": event.purpose,
        "case_reference": event.case_reference,
        "parameters": event.parameters or {},
        "rows": event.rows,
        "subjects": subjects,
        "matched_rule": event.matched_rule,
        "policy_version": event.policy_version,
        "request_id": event.request_id,
        "client_address": event.client_address,
        "details": event.details or {},
    }


def search(
    session: Session,
    scope: Scope,
    filters: EventFilters,
    *,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
    datasets_of: Mapping[str, frozenset[str]] | None = None,
) -> Page:
    """One page of events, newest first; `next_cursor` continues after its last event."""
    after = decode_cursor(cursor)
    statement = _filtered(session, scope, filters, datasets_of or {})
    if after is not None:
        statement = statement.where(AuditEvent.seq < after)
    events: list[AuditEvent] = list(
        session.scalars(statement.order_by(AuditEvent.seq.desc()).limit(limit + 1))
    )
    more = len(events) > limit
    events = events[:limit]
    subjects = _subjects(session, [e.seq for e in events])
    documents = [event_document(e, subjects.get(e.seq, [])) for e in events]
    next_cursor = encode_cursor(events[-1].seq) if more and events else None
    return Page(documents, next_cursor, filters)


def get_event(session: Session, scope: Scope, event_id: str) -> dict[str, Any] | None:
    """One event, or None when it does not exist or is not the reviewer's to see."""
    event = session.scalars(
        select(AuditEvent).where(AuditEvent.event_id == event_id, visible(session, scope))
    ).one_or_none()
    if event is None:
        return None
    return event_document(event, _subjects(session, [event.seq]).get(event.seq, []))


def person_history(
    session: Session,
    scope: Scope,
    person_id: str,
    *,
    cursor: str | None = None,
    limit: int = DEFAULT_LIMIT,
) -> Page:
    """Every visible read that returned this person: who, when, why (subject access support)."""
    return search(session, scope, EventFilters(person_id=person_id), cursor=cursor, limit=limit)


def list_checkpoints(
    session: Session, signer: CheckpointSigner, *, verify_log: bool, limit: int = 50
) -> list[dict[str, Any]]:
    """Signed checkpoints of the log, newest first, each with the result of checking it.

    Each item: `seq`, `tree_size`, `root_hash`, `signed_at`, `verified` (bool) and `detail`.
    Every checkpoint's signature is checked against the published keys. With `verify_log`, the
    whole log is also exported and verified as an IG lead would verify it offline (every event
    against every checkpoint): a checkpoint whose events no longer match is marked failed, with
    the first bad position.
    """
    keys = {key.key_id: key.raw for key in signer.published_keys()}
    rows = list(
        session.execute(
            select(AuditCheckpoint).order_by(AuditCheckpoint.seq.desc()).limit(limit)
        ).scalars()
    )
    failure = None
    if verify_log and rows:
        verification = verify_database(session, signer)
        if not verification.ok:
            failure = verification.failure
    found: list[dict[str, Any]] = []
    for row in rows:
        body = published(row)
        verified = verify_signature(body["body"], row.signature, keys)
        detail = None if verified else "signature does not verify with the published keys"
        if verified and failure is not None:
            bad_leaf = failure.leaf
            if bad_leaf is None or bad_leaf < row.tree_size:
                verified, detail = False, str(failure)
        elif verified and verify_log:
            detail = "events verified"
        found.append(
            {
                "seq": row.seq,
                "tree_size": row.tree_size,
                "root_hash": row.root_hash,
                "signed_at": row.issued_at.isoformat(timespec="seconds"),
                "verified": verified,
                "detail": detail,
            }
        )
    return found


@dataclass(frozen=True)
class Coverage:
    """How much of the log the latest checkpoint covers, so that a verification claims no more.

    A checkpoint commits to the first `covered` events in the order of record; events after it
    are either already sealed into the hash chain (awaiting the next checkpoint) or not sealed
    yet.
    """

    latest_checkpoint: int | None
    covered: int
    sealed_after: int
    unsealed: int

    @property
    def newer(self) -> int:
        return self.sealed_after + self.unsealed


def coverage(session: Session) -> Coverage:
    latest = session.execute(
        select(AuditCheckpoint.seq, AuditCheckpoint.tree_size)
        .order_by(AuditCheckpoint.seq.desc())
        .limit(1)
    ).one_or_none()
    events = int(session.execute(select(func.count()).select_from(AuditEvent)).scalar_one())
    sealed = int(session.execute(select(func.count()).select_from(AuditChainLink)).scalar_one())
    covered = int(latest.tree_size) if latest else 0
    return Coverage(
        latest_checkpoint=int(latest.seq) if latest else None,
        covered=covered,
        sealed_after=max(sealed - covered, 0),
        unsealed=max(events - sealed, 0),
    )


def count_recent(
    session: Session, action: str, resource_type: str, resource: str, since: datetime
) -> int:
    """How many events of one action about one resource happened since a time (lockouts)."""
    return int(
        session.execute(
            select(func.count())
            .select_from(AuditEvent)
            .where(
                AuditEvent.resource == resource,
                AuditEvent.action == action,
                AuditEvent.resource_type == resource_type,
                AuditEvent.occurred_at >= since,
            )
        ).scalar_one()
    )
