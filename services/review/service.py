"""Reviewing the audit trail: the information-governance use cases, one implementation for the
API and the IG pages.

Each use case decides access with the policy (which also decides how widely: an IG lead's own
organisation, or every organisation), runs the scoped query, and commits its own audit event
before anything is returned. If that event cannot be committed the reviewer gets 503 and
nothing else. A request refused before any work (bad parameters) is audited as rejected.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import timedelta
from functools import lru_cache
from typing import Any
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session, sessionmaker

from services.audit import alerts as alert_service
from services.audit import review
from services.audit import service as audit_service
from services.audit.alerts import Alert, AlertRules
from services.audit.catalogue import AuditAction, Outcome
from services.audit.checkpoints import CheckpointSigner
from services.audit.review import Coverage, Page, Scope
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import PolicyEngine
from services.authz.service import AuditReviewAccess, audit_review_access
from services.contracts.model import Contract
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, Forbidden, NotFound, TogetherError
from services.kit.settings import Settings
from services.kit.uow import audited
from services.review import repository
from services.review.repository import ActorName

DEFAULT_ALERT_DAYS = 30
FORMATS = ("json", "csv", "ndjson")


@dataclass(frozen=True)
class ReviewDeps:
    sessions: sessionmaker[Session]
    policy: PolicyEngine
    contracts: Mapping[str, Contract]
    # The reviewers' time zone and the alert thresholds come from here.
    settings: Settings
    audit_signer: CheckpointSigner


def zone(deps: ReviewDeps) -> ZoneInfo:
    return ZoneInfo(deps.settings.audit_timezone)


def alert_rules(deps: ReviewDeps) -> AlertRules:
    s = deps.settings
    return AlertRules(
        timezone=zone(deps),
        office_start_hour=s.audit_office_start_hour,
        office_end_hour=s.audit_office_end_hour,
        volume_factor=s.audit_volume_factor,
        volume_minimum=s.audit_volume_minimum,
        volume_history_days=s.audit_volume_history_days,
        denials_threshold=s.audit_denials_threshold,
        denials_window=timedelta(seconds=s.audit_denials_window_seconds),
        burst_reads=s.audit_level3_burst_reads,
        burst_window=timedelta(seconds=s.audit_level3_burst_window_seconds),
    )


@lru_cache(maxsize=8)
def _datasets_by_owner(contracts: tuple[tuple[str, str], ...]) -> dict[str, frozenset[str]]:
    found: dict[str, set[str]] = {}
    for dataset, owner in contracts:
        found.setdefault(owner, set()).add(dataset)
    return {owner: frozenset(ids) for owner, ids in found.items()}


def datasets_by_owner(contracts: Mapping[str, Contract]) -> dict[str, frozenset[str]]:
    return _datasets_by_owner(tuple(sorted((k, c.owner) for k, c in contracts.items())))


def authorise(
    deps: ReviewDeps, principal: Principal, ctx: RequestContext
) -> tuple[Scope, AuditReviewAccess]:
    """The reviewer's scope; a caller without `audit:review` is refused, and that is audited."""
    access = audit_review_access(deps.policy, principal)
    if not access.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            access,
            reason="not an audit reviewer",
            resource_type="audit",
            resource_org=principal.organisation,
        )
        raise Forbidden("reviewing the audit trail is for IG leads and administrators")
    datasets: frozenset[str] = frozenset()
    if access.organisation is not None:
        datasets = datasets_by_owner(deps.contracts).get(access.organisation, frozenset())
    return Scope(access.organisation, datasets), access


def _granted(access: AuditReviewAccess, rec: AuditRecord) -> AuditRecord:
    """The record with the rule that granted the review, for the reviewers of the reviewers."""
    rec.matched_rule = access.rule
    rec.policy_version = access.policy_version
    return rec


def _refused(
    deps: ReviewDeps,
    ctx: RequestContext,
    access: AuditReviewAccess,
    action: AuditAction,
    exc: TogetherError,
    parameters: Mapping[str, Any],
) -> None:
    audit_service.record_committed(
        deps.sessions,
        ctx,
        _granted(
            access,
            AuditRecord(
                action=action,
                outcome=Outcome.REJECTED,
                reason=exc.code.lower(),
                resource_type="audit",
                parameters={k: str(v)[:200] for k, v in parameters.items()},
            ),
        ),
    )


def _limit(params: Mapping[str, str], fmt: str) -> int:
    return review.parse_limit(
        params.get("limit"), review.MAX_LIMIT if fmt == "json" else review.MAX_EXPORT_LIMIT
    )


def search_events(
    deps: ReviewDeps,
    principal: Principal,
    ctx: RequestContext,
    params: Mapping[str, str],
    *,
    fmt: str = "json",
) -> Page:
    scope, access = authorise(deps, principal, ctx)
    try:
        filters = review.parse_filters(params, zone(deps))
        limit = _limit(params, fmt)
        review.decode_cursor(params.get("cursor"))
    except TogetherError as exc:
        _refused(deps, ctx, access, AuditAction.AUDIT_QUERIED, exc, params)
        raise
    owners = datasets_by_owner(deps.contracts)
    with audited(deps.sessions, "the audit search") as uow:
        page = review.search(
            uow.session,
            scope,
            filters,
            cursor=params.get("cursor"),
            limit=limit,
            datasets_of=owners,
        )
        record = AuditRecord(
            action=AuditAction.AUDIT_QUERIED,
            outcome=Outcome.SUCCESS,
            resource_type="audit",
            resource_org=scope.organisation,
            parameters={
                **filters.as_parameters(),
                "format": fmt,
                "limit": limit,
                "page": "next" if params.get("cursor") else "first",
            },
            rows=len(page.events),
        )
        uow.audit(audit_service.event(ctx, _granted(access, record)))
    return page


def event_detail(
    deps: ReviewDeps, principal: Principal, ctx: RequestContext, event_id: str
) -> dict[str, Any]:
    scope, access = authorise(deps, principal, ctx)
    with audited(deps.sessions, "the audit event read") as uow:
        found = review.get_event(uow.session, scope, event_id[:36])
        record = AuditRecord(
            action=AuditAction.AUDIT_QUERIED,
            outcome=Outcome.SUCCESS if found else Outcome.REJECTED,
            reason=None if found else "not_found",
            resource_type="audit_event",
            resource=event_id[:200],
            resource_org=scope.organisation,
            rows=1 if found else 0,
        )
        uow.audit(audit_service.event(ctx, _granted(access, record)))
    if found is None:
        # The same answer whether it does not exist or belongs to another organisation.
        raise NotFound("no such event")
    return found


def person_history(
    deps: ReviewDeps,
    principal: Principal,
    ctx: RequestContext,
    person_id: str,
    params: Mapping[str, str],
    *,
    fmt: str = "json",
) -> Page:
    scope, access = authorise(deps, principal, ctx)
    try:
        if not person_id or len(person_id) > 64:
            raise NotFound("no such person")
        limit = _limit(params, fmt)
        review.decode_cursor(params.get("cursor"))
    except TogetherError as exc:
        _refused(deps, ctx, access, AuditAction.AUDIT_PERSON_HISTORY, exc, params)
        raise
    with audited(deps.sessions, "the person history") as uow:
        page = review.person_history(
            uow.session, scope, person_id, cursor=params.get("cursor"), limit=limit
        )
        # The person is a parameter here, not a subject: no data about them is returned.
        record = AuditRecord(
            action=AuditAction.AUDIT_PERSON_HISTORY,
            outcome=Outcome.SUCCESS,
            resource_type="person",
            resource=person_id,
            resource_org=scope.organisation,
            parameters={"format": fmt, "limit": limit},
            rows=len(page.events),
        )
        uow.audit(audit_service.event(ctx, _granted(access, record)))
    return page


def list_alerts(
    deps: ReviewDeps, principal: Principal, ctx: RequestContext, params: Mapping[str, str]
) -> list[Alert]:
    scope, access = authorise(deps, principal, ctx)
    tz = zone(deps)
    try:
        since = (
            review.parse_time(params["since"], tz)
            if params.get("since")
            else utcnow() - timedelta(days=DEFAULT_ALERT_DAYS)
        )
        until = (
            review.parse_time(params["until"], tz, end=True)
            if params.get("until")
            else utcnow() + timedelta(seconds=1)
        )
        rule = params.get("rule") or None
        state = params.get("state") or None
        if rule is not None and rule not in alert_service.RULES:
            raise BadRequest(f"rule is one of {', '.join(alert_service.RULES)}")
        if state is not None and state not in ("open", "reviewed"):
            raise BadRequest("state is open or reviewed")
    except TogetherError as exc:
        _refused(deps, ctx, access, AuditAction.AUDIT_ALERTS_VIEWED, exc, params)
        raise
    rules = alert_rules(deps)
    with audited(deps.sessions, "the alert listing") as uow:
        found = alert_service.compute(
            uow.session, scope, rules, since=since, until=until, rule=rule, state=state
        )
        parameters: dict[str, Any] = {"since": since.isoformat(), "until": until.isoformat()}
        if rule:
            parameters["rule"] = rule
        if state:
            parameters["state"] = state
        record = AuditRecord(
            action=AuditAction.AUDIT_ALERTS_VIEWED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_alert",
            resource_org=scope.organisation,
            parameters=parameters,
            rows=len(found),
        )
        uow.audit(audit_service.event(ctx, _granted(access, record)))
    return found


def review_alert(
    deps: ReviewDeps, principal: Principal, ctx: RequestContext, alert_id: str, comment: str
) -> Alert:
    """Mark an alert reviewed: the review row and its audit event commit together."""
    scope, access = authorise(deps, principal, ctx)
    rules = alert_rules(deps)
    reviewed: list[Alert] = []

    def write(session: Session) -> None:
        reviewed.append(
            alert_service.review(
                session,
                ctx,
                scope,
                rules,
                alert_id[:80],
                comment=comment,
                matched_rule=access.rule,
                policy_version=access.policy_version,
            )
        )

    with audited(deps.sessions, "the alert review") as uow:
        # The review row names the sequence number of its event, so the two are written
        # together, as this use case's audit step (a refused comment or an unknown alert
        # still fails as itself).
        uow.audit(write)
    return reviewed[0]


def actor_names(deps: ReviewDeps, actors: Iterable[str | None]) -> dict[str, ActorName]:
    """The registry's names for the actors a page shows, so that a reviewer reads who, not an id.

    Only the pages use this: the API and its exports keep the ids the events hold. The names
    are not audited on their own; the page's use case has already recorded what it showed.
    """
    wanted = {actor for actor in actors if actor}
    if not wanted:
        return {}
    with deps.sessions() as session:
        return repository.actor_names(session, wanted)


def checkpoints(
    deps: ReviewDeps, principal: Principal, ctx: RequestContext, *, verify_log: bool = False
) -> tuple[list[dict[str, Any]], Coverage]:
    """The checkpoints, each checked, and how much of the log the latest one covers."""
    scope, access = authorise(deps, principal, ctx)
    with audited(deps.sessions, "the checkpoint review") as uow:
        # Counted before the checks, so that the claim is never wider than what was checked.
        covered = review.coverage(uow.session)
        found = review.list_checkpoints(uow.session, deps.audit_signer, verify_log=verify_log)
        record = AuditRecord(
            action=AuditAction.AUDIT_QUERIED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_checkpoints",
            resource_org=scope.organisation,
            rows=len(found),
            parameters={"verify": verify_log},
            details={
                "all_verified": all(c["verified"] for c in found),
                "covered": covered.covered,
            },
        )
        uow.audit(audit_service.event(ctx, _granted(access, record)))
    return found, covered
