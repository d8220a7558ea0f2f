"""Rule-based flags for information-governance review, and their append-only review record.

Alerts are computed from the audit trail whenever they are asked for; nothing about an alert is
stored except its reviews. An alert's id is its rule and the id of the event that anchors it, so
the same alert keeps its id (and its reviews) from one computation to the next.

Rules:
- `out_of_hours`: a Level 3 read outside office hours (local time, Monday to Friday).
- `outside_areas`: a Level 3 read that returned people outside the reader's areas (the read's
  `details.districts` not within `details.areas`, or `details.rows_outside_areas` above zero).
  Access control should make this impossible, so a flag is a bug or an attack.
- `volume`: a reader's reads on one day above `factor` times the median of their own active days
  in the preceding weeks (and at least `minimum`).
- `denials`: `threshold` or more denials of one actor (or one address, when the caller was not
  authenticated) within a window.
- `new_case`: a Level 3 read whose case reference the reader's organisation never used before.
- `privileged_grant`: a grant of a role that needs a second person (Level 3, ig_lead, admin),
  requested or approved (`grant.requested`, `grant.approved`). Seen by the IG leads of the
  grantee's organisation (the event's `resource_org`) and of the requester's or approver's.
- `level3_burst`: `burst_reads` or more Level 3 reads by one actor within `burst_window`, or any
  `quota.exceeded` (a Level 3 read refused because the quota was used up). A burst by an
  account created less than `new_account_age` before it is said so (security-tests T16).
- `lockout`: a client locked out at the token endpoint (`client.locked_out`), seen by the IG
  leads of the claimed client's organisation.
"""

from __future__ import annotations

import hashlib
import statistics
from collections import defaultdict, deque
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AlertReview, AuditEvent
from services.audit.review import Scope, visible
from services.audit.service import AuditRecord, RequestContext, record
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, NotFound

RULES = (
    "out_of_hours",
    "outside_areas",
    "volume",
    "denials",
    "new_case",
    "privileged_grant",
    "level3_burst",
    "lockout",
)
RULE_TITLES = {
    "out_of_hours": "Level 3 read outside office hours",
    "outside_areas": "Level 3 read of people outside the reader's areas",
    "volume": "Reads far above the reader's own norm",
    "denials": "Repeated denials",
    "new_case": "Level 3 read under a case reference new to the organisation",
    "privileged_grant": "A role that needs a second person was requested or approved",
    "level3_burst": "Many Level 3 reads in a short time, or a Level 3 quota used up",
    "lockout": "A client was locked out of the token endpoint",
}
MAX_LINKED_EVENTS = 500
REVIEW_STATES = ("reviewed",)


@dataclass(frozen=True)
class AlertRules:
    timezone: ZoneInfo
    office_start_hour: int = 8
    office_end_hour: int = 18
    volume_factor: float = 3.0
    volume_minimum: int = 50
    volume_history_days: int = 28
    denials_threshold: int = 5
    denials_window: timedelta = timedelta(minutes=10)
    burst_reads: int = 20
    burst_window: timedelta = timedelta(minutes=10)
    new_account_age: timedelta = timedelta(days=1)


@dataclass
class Review:
    state: str
    comment: str
    reviewer: str
    reviewer_org: str
    reviewed_at: datetime

    def document(self) -> dict[str, Any]:
        return {
            "state": self.state,
            "comment": self.comment,
            "reviewer": self.reviewer,
            "reviewer_org": self.reviewer_org,
            "reviewed_at": self.reviewed_at.isoformat(timespec="seconds"),
        }


@dataclass
class Alert:
    id: str
    rule: str
    occurred_at: datetime
    actor: str | None
    actor_org: str | None
    summary: str
    event_ids: list[str]
    reviews: list[Review] = field(default_factory=list)

    @property
    def title(self) -> str:
        return RULE_TITLES[self.rule]

    @property
    def state(self) -> str:
        return self.reviews[-1].state if self.reviews else "open"

    def document(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "rule": self.rule,
            "title": self.title,
            "occurred_at": self.occurred_at.isoformat(timespec="seconds"),
            "actor": self.actor,
            "actor_org": self.actor_org,
            "summary": self.summary,
            # Each links to its event: GET /v1/audit/events/{event_id}.
            "event_ids": self.event_ids,
            "state": self.state,
            "reviews": [r.document() for r in self.reviews],
        }


def _alert_id(rule: str, event_id: str) -> str:
    return f"{rule}.{event_id}"


def _level3_reads(session: Session, scope: Scope, since: datetime, until: datetime) -> list[Any]:
    return list(
        session.scalars(
            select(AuditEvent)
            .where(
                AuditEvent.action == AuditAction.PRODUCT_READ.value,
                AuditEvent.outcome == Outcome.SUCCESS.value,
                AuditEvent.level == 3,
                AuditEvent.occurred_at >= since,
                AuditEvent.occurred_at < until,
                visible(session, scope),
            )
            .order_by(AuditEvent.seq)
        )
    )


def _outside_office(moment: datetime, rules: AlertRules) -> bool:
    local = moment.astimezone(rules.timezone)
    return (
        local.weekday() >= 5
        or local.hour < rules.office_start_hour
        or local.hour >= rules.office_end_hour
    )


def _outside_areas(details: dict[str, Any]) -> str | None:
    outside = details.get("rows_outside_areas")
    if isinstance(outside, int) and not isinstance(outside, bool) and outside > 0:
        return f"{outside} row(s) outside the reader's areas"
    if outside is True:
        return "rows outside the reader's areas"
    districts = details.get("districts")
    areas = details.get("areas")
    if isinstance(districts, list) and isinstance(areas, list):
        extra = sorted({str(d) for d in districts} - {str(a) for a in areas})
        if extra:
            return (
                "people in "
                + ", ".join(extra)
                + " (reader's areas: "
                + ", ".join(sorted(str(a) for a in areas))
                + ")"
            )
    return None


def _first_case_uses(session: Session, pairs: Iterable[tuple[str, str]]) -> set[int]:
    """The seq of the first Level 3 read of each (organisation, case reference)."""
    wanted = set(pairs)
    if not wanted:
        return set()
    rows = session.execute(
        select(AuditEvent.actor_org, AuditEvent.case_reference, func.min(AuditEvent.seq))
        .where(
            AuditEvent.action == AuditAction.PRODUCT_READ.value,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.level == 3,
            AuditEvent.case_reference.in_(sorted({c for _, c in wanted})),
        )
        .group_by(AuditEvent.actor_org, AuditEvent.case_reference)
    )
    return {seq for org, case, seq in rows if (org, case) in wanted}


def _level3_alerts(
    session: Session, scope: Scope, since: datetime, until: datetime, rules: AlertRules
) -> list[Alert]:
    reads = _level3_reads(session, scope, since, until)
    alerts: list[Alert] = []
    firsts = _first_case_uses(
        session, ((r.actor_org, r.case_reference) for r in reads if r.case_reference)
    )
    for read in reads:
        local = read.occurred_at.astimezone(rules.timezone)
        base = {"actor": read.actor, "actor_org": read.actor_org, "event_ids": [read.event_id]}
        if _outside_office(read.occurred_at, rules):
            alerts.append(
                Alert(
                    _alert_id("out_of_hours", read.event_id),
                    "out_of_hours",
                    read.occurred_at,
                    summary=f"{read.resource} read at {local:%a %d %b %Y %H:%M} local time",
                    **base,
                )
            )
        outside = _outside_areas(read.details or {})
        if outside is not None:
            alerts.append(
                Alert(
                    _alert_id("outside_areas", read.event_id),
                    "outside_areas",
                    read.occurred_at,
                    summary=f"{read.resource}: {outside}",
                    **base,
                )
            )
        if read.seq in firsts:
            alerts.append(
                Alert(
                    _alert_id("new_case", read.event_id),
                    "new_case",
                    read.occurred_at,
                    summary=f"first use of case reference {read.case_reference!r} "
                    f"by {read.actor_org}",
                    **base,
                )
            )
    return alerts


def _volume_alerts(
    session: Session, scope: Scope, since: datetime, until: datetime, rules: AlertRules
) -> list[Alert]:
    history_start = since - timedelta(days=rules.volume_history_days + 1)
    rows = session.execute(
        select(AuditEvent.actor, AuditEvent.actor_org, AuditEvent.occurred_at, AuditEvent.event_id)
        .where(
            AuditEvent.action == AuditAction.PRODUCT_READ.value,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.actor.is_not(None),
            AuditEvent.occurred_at >= history_start,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    ).yield_per(10000)
    per_day: dict[str, dict[date, list[tuple[datetime, str]]]] = defaultdict(
        lambda: defaultdict(list)
    )
    orgs: dict[str, str | None] = {}
    for actor, actor_org, occurred_at, event_id in rows:
        assert actor is not None
        per_day[actor][occurred_at.astimezone(rules.timezone).date()].append(
            (occurred_at, event_id)
        )
        orgs[actor] = actor_org
    alerts: list[Alert] = []
    for actor, days in per_day.items():
        for day, events in sorted(days.items()):
            first_at = events[0][0]
            if first_at < since or len(events) < rules.volume_minimum:
                continue
            history = [
                len(days[d])
                for d in days
                if day - timedelta(days=rules.volume_history_days) <= d < day
            ]
            if len(history) < 3:
                continue  # no norm yet to compare with
            norm = statistics.median(history)
            if len(events) <= rules.volume_factor * norm:
                continue
            alerts.append(
                Alert(
                    _alert_id("volume", events[0][1]),
                    "volume",
                    first_at,
                    actor,
                    orgs[actor],
                    summary=f"{len(events)} reads on {day.isoformat()}; the reader's median is "
                    f"{norm:g} over {len(history)} active day(s)",
                    event_ids=[e for _, e in events[:MAX_LINKED_EVENTS]],
                )
            )
    return alerts


def _denial_alerts(
    session: Session, scope: Scope, since: datetime, until: datetime, rules: AlertRules
) -> list[Alert]:
    rows = session.execute(
        select(
            AuditEvent.actor,
            AuditEvent.actor_org,
            AuditEvent.client_address,
            AuditEvent.occurred_at,
            AuditEvent.event_id,
        )
        .where(
            AuditEvent.outcome == Outcome.DENIED.value,
            AuditEvent.occurred_at >= since,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    )
    by_key: dict[str, list[tuple[str | None, str | None, datetime, str]]] = defaultdict(list)
    for actor, actor_org, address, occurred_at, event_id in rows:
        key = actor if actor is not None else f"address {address or 'unknown'}"
        by_key[key].append((actor, actor_org, occurred_at, event_id))
    alerts: list[Alert] = []
    for key, events in by_key.items():
        window: deque[tuple[str | None, str | None, datetime, str]] = deque()
        burst: list[tuple[str | None, str | None, datetime, str]] | None = None
        for item in events:
            if burst is not None and item[2] - burst[-1][2] <= rules.denials_window:
                burst.append(item)
                continue
            if burst is not None:
                alerts.append(_denial_alert(key, burst))
                burst = None
                window.clear()
            window.append(item)
            while item[2] - window[0][2] > rules.denials_window:
                window.popleft()
            if len(window) >= rules.denials_threshold:
                burst = list(window)
                window.clear()
        if burst is not None:
            alerts.append(_denial_alert(key, burst))
    return alerts


def _span_words(span: timedelta) -> str:
    """A burst's span as a reviewer reads it: "within 0 s" would read as no time at all."""
    seconds = span.total_seconds()
    if seconds < 0.1:
        return "in under a second"
    if seconds < 10:
        return f"within {seconds:.1f} s".replace(".0 s", " s")
    whole = round(seconds)
    if whole < 60:
        return f"within {whole} s"
    minutes, rest = divmod(whole, 60)
    return f"within {minutes} min {rest} s" if rest else f"within {minutes} min"


def _denial_alert(key: str, burst: list[tuple[str | None, str | None, datetime, str]]) -> Alert:
    actor, actor_org, first_at, first_id = burst[0]
    span = burst[-1][2] - first_at
    return Alert(
        _alert_id("denials", first_id),
        "denials",
        first_at,
        actor,
        actor_org,
        summary=f"{len(burst)} denials of {key} {_span_words(span)}",
        event_ids=[e[3] for e in burst[:MAX_LINKED_EVENTS]],
    )


def _grant_words(documents: Any) -> str:
    if not isinstance(documents, list) or not documents:
        return "roles"
    words = []
    for d in documents:
        if isinstance(d, dict):
            area = d.get("area")
            words.append(f"{d.get('role')} in {area}" if area else str(d.get("role")))
    return ", ".join(words) or "roles"


def _grant_alerts(session: Session, scope: Scope, since: datetime, until: datetime) -> list[Alert]:
    """Every request and every approval of a role that needs a second person: the only way
    one administrator could come to read Level 3, so each is put before an IG lead."""
    alerts: list[Alert] = []
    for event in session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action.in_(
                (AuditAction.GRANT_REQUESTED.value, AuditAction.GRANT_APPROVED.value)
            ),
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.occurred_at >= since,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    ):
        details = event.details or {}
        step = "requested" if event.action == AuditAction.GRANT_REQUESTED.value else "approved"
        alerts.append(
            Alert(
                _alert_id("privileged_grant", event.event_id),
                "privileged_grant",
                event.occurred_at,
                event.actor,
                event.actor_org,
                summary=f"{_grant_words(details.get('requested'))} {step} for client "
                f"{event.resource} of {event.resource_org} by {event.actor or 'unknown'}"
                + (f" (requested by {details['requested_by']})" if step == "approved" else ""),
                event_ids=[event.event_id],
            )
        )
    return alerts


def _bursts(times: list[datetime], threshold: int, window: timedelta) -> list[tuple[int, int]]:
    """Index ranges [start, end) of the bursts in sorted moments: `threshold` of them within
    `window` open a burst, which goes on while each next one follows within `window`."""
    threshold = max(threshold, 1)
    found: list[tuple[int, int]] = []
    start = index = 0
    while index < len(times):
        while times[index] - times[start] > window:
            start += 1
        if index - start + 1 < threshold:
            index += 1
            continue
        end = index + 1
        while end < len(times) and times[end] - times[end - 1] <= window:
            end += 1
        found.append((start, end))
        start = index = end
    return found


def _age_words(age: timedelta) -> str:
    minutes = int(age.total_seconds() // 60)
    return f"{minutes // 60} h {minutes % 60} min" if minutes >= 60 else f"{minutes} min"


def _created_at(session: Session, client_ids: Iterable[str]) -> dict[str, datetime]:
    """When each client was created, from its `client.created` event."""
    wanted = sorted(set(client_ids))
    if not wanted:
        return {}
    rows = session.execute(
        select(AuditEvent.resource, func.min(AuditEvent.occurred_at))
        .where(
            AuditEvent.action == AuditAction.CLIENT_CREATED.value,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.resource.in_(wanted),
        )
        .group_by(AuditEvent.resource)
    )
    return {resource: at for resource, at in rows if resource is not None}


def _burst_alerts(
    session: Session, scope: Scope, since: datetime, until: datetime, rules: AlertRules
) -> list[Alert]:
    """Bulk extraction of named people (security-tests T16): a burst of one actor's Level 3
    reads, or a Level 3 read refused because the quota was used up (one alert per actor and
    quota period)."""
    rows = session.execute(
        select(AuditEvent.actor, AuditEvent.actor_org, AuditEvent.occurred_at, AuditEvent.event_id)
        .where(
            AuditEvent.action == AuditAction.PRODUCT_READ.value,
            AuditEvent.outcome == Outcome.SUCCESS.value,
            AuditEvent.level == 3,
            AuditEvent.actor.is_not(None),
            AuditEvent.occurred_at >= since,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    )
    by_actor: dict[str, list[tuple[str | None, datetime, str]]] = defaultdict(list)
    for actor, actor_org, occurred_at, event_id in rows:
        assert actor is not None
        by_actor[actor].append((actor_org, occurred_at, event_id))
    bursts: list[tuple[str, list[tuple[str | None, datetime, str]]]] = []
    for actor, reads in by_actor.items():
        times = [r[1] for r in reads]
        for start, end in _bursts(times, rules.burst_reads, rules.burst_window):
            bursts.append((actor, reads[start:end]))
    created = _created_at(session, (actor for actor, _ in bursts))
    alerts: list[Alert] = []
    for actor, burst in bursts:
        first_at = burst[0][1]
        summary = f"{len(burst)} Level 3 reads by {actor} {_span_words(burst[-1][1] - first_at)}"
        born = created.get(actor)
        if born is not None and timedelta(0) <= first_at - born < rules.new_account_age:
            summary += f", by a new account (created {_age_words(first_at - born)} before)"
        alerts.append(
            Alert(
                _alert_id("level3_burst", burst[0][2]),
                "level3_burst",
                first_at,
                actor,
                burst[0][0],
                summary=summary,
                event_ids=[e[2] for e in burst[:MAX_LINKED_EVENTS]],
            )
        )
    refused: dict[tuple[Any, ...], list[AuditEvent]] = defaultdict(list)
    for event in session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action == AuditAction.QUOTA_EXCEEDED.value,
            AuditEvent.occurred_at >= since,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    ):
        details = event.details or {}
        period = details.get("period")
        moment = details.get("hour") if period == "hourly" else details.get("day")
        refused[(event.actor, event.actor_org, period, moment)].append(event)
    for (actor, actor_org, _, _), events in refused.items():
        first = events[0]
        alerts.append(
            Alert(
                _alert_id("level3_burst", first.event_id),
                "level3_burst",
                first.occurred_at,
                actor,
                actor_org,
                summary=f"{first.reason or 'Level 3 quota reached'}: {len(events)} read(s) of "
                f"{first.resource} refused",
                event_ids=[e.event_id for e in events[:MAX_LINKED_EVENTS]],
            )
        )
    return alerts


def _lockout_alerts(
    session: Session, scope: Scope, since: datetime, until: datetime
) -> list[Alert]:
    """A client locked out of the token endpoint: someone guessed its credentials, or its own
    configuration is broken; either way its organisation's IG lead should know."""
    alerts: list[Alert] = []
    for event in session.scalars(
        select(AuditEvent)
        .where(
            AuditEvent.action == AuditAction.CLIENT_LOCKED_OUT.value,
            AuditEvent.occurred_at >= since,
            AuditEvent.occurred_at < until,
            visible(session, scope),
        )
        .order_by(AuditEvent.seq)
    ):
        lockout = (event.details or {}).get("lockout") or {}
        alerts.append(
            Alert(
                _alert_id("lockout", event.event_id),
                "lockout",
                event.occurred_at,
                None,
                event.resource_org,
                summary=f"client {event.resource} locked out after {lockout.get('failures')} "
                f"failed authentications, for {lockout.get('seconds')} s "
                f"(last from {event.client_address or 'an unknown address'})",
                event_ids=[event.event_id],
            )
        )
    return alerts


def _reviews(session: Session, alert_ids: list[str]) -> dict[str, list[Review]]:
    found: dict[str, list[Review]] = defaultdict(list)
    if not alert_ids:
        return found
    for row in session.scalars(
        select(AlertReview).where(AlertReview.alert_id.in_(alert_ids)).order_by(AlertReview.id)
    ):
        found[row.alert_id].append(
            Review(row.state, row.comment, row.reviewer, row.reviewer_org, row.reviewed_at)
        )
    return found


def compute(
    session: Session,
    scope: Scope,
    rules: AlertRules,
    *,
    since: datetime,
    until: datetime,
    rule: str | None = None,
    state: str | None = None,
) -> list[Alert]:
    """The alerts raised by the events of [since, until) the scope may see, newest first."""
    if rule is not None and rule not in RULES:
        raise BadRequest(f"rule is one of {', '.join(RULES)}")
    if state is not None and state not in ("open", *REVIEW_STATES):
        raise BadRequest("state is open or reviewed")
    alerts: list[Alert] = []
    if rule in (None, "out_of_hours", "outside_areas", "new_case"):
        alerts += _level3_alerts(session, scope, since, until, rules)
    if rule in (None, "volume"):
        alerts += _volume_alerts(session, scope, since, until, rules)
    if rule in (None, "denials"):
        alerts += _denial_alerts(session, scope, since, until, rules)
    if rule in (None, "privileged_grant"):
        alerts += _grant_alerts(session, scope, since, until)
    if rule in (None, "level3_burst"):
        alerts += _burst_alerts(session, scope, since, until, rules)
    if rule in (None, "lockout"):
        alerts += _lockout_alerts(session, scope, since, until)
    if rule is not None:
        alerts = [a for a in alerts if a.rule == rule]
    reviews = _reviews(session, [a.id for a in alerts])
    for alert in alerts:
        alert.reviews = reviews.get(alert.id, [])
    if state is not None:
        alerts = [a for a in alerts if a.state == state]
    alerts.sort(key=lambda a: (a.occurred_at, a.id), reverse=True)
    return alerts


def find(session: Session, scope: Scope, rules: AlertRules, alert_id: str) -> Alert:
    """One alert the scope may see, recomputed around its anchoring event; 404 otherwise."""
    rule, _, event_id = alert_id.partition(".")
    if rule not in RULES or not event_id:
        raise NotFound("no such alert")
    anchor = session.scalars(
        select(AuditEvent).where(AuditEvent.event_id == event_id, visible(session, scope))
    ).one_or_none()
    if anchor is None:
        raise NotFound("no such alert")
    since = anchor.occurred_at - timedelta(seconds=1)
    until = anchor.occurred_at + timedelta(days=2)
    for alert in compute(session, scope, rules, since=since, until=until, rule=rule):
        if alert.id == alert_id:
            return alert
    raise NotFound("no such alert")


def review(
    session: Session,
    ctx: RequestContext,
    scope: Scope,
    rules: AlertRules,
    alert_id: str,
    *,
    comment: str,
    matched_rule: str,
    policy_version: str,
) -> Alert:
    """Mark an alert reviewed, with a comment: a review row and its audit event, one transaction.

    The audit event carries a digest of the comment rather than the comment (free text may name
    someone; audit never does), so the stored comment can be checked against the log.
    """
    comment = comment.strip()
    if not comment:
        raise BadRequest("a review needs a comment")
    if len(comment) > 2000:
        raise BadRequest("a comment has at most 2000 characters")
    alert = find(session, scope, rules, alert_id)
    event = record(
        session,
        ctx,
        AuditRecord(
            action=AuditAction.AUDIT_ALERT_REVIEWED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_alert",
            resource=alert.id,
            resource_org=scope.organisation,
            parameters={"state": "reviewed"},
            matched_rule=matched_rule,
            policy_version=policy_version,
            details={
                "rule": alert.rule,
                "event_ids": alert.event_ids[:20],
                "comment_sha256": hashlib.sha256(comment.encode("utf-8")).hexdigest(),
            },
        ),
    )
    now = utcnow()
    session.add(
        AlertReview(
            alert_id=alert.id,
            rule=alert.rule,
            state="reviewed",
            comment=comment,
            reviewer=ctx.actor or "unknown",
            reviewer_org=ctx.actor_org or "unknown",
            reviewed_at=now,
            event_seq=event.seq,
        )
    )
    session.flush()
    alert.reviews.append(
        Review("reviewed", comment, ctx.actor or "unknown", ctx.actor_org or "unknown", now)
    )
    return alert
