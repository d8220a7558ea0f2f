"""Reviewing the audit trail: one audited implementation for the API and the IG pages.

Each use case decides access with the policy (which also decides how widely: an IG lead's own
organisation, or every organisation), runs the scoped query, and records and commits its own
audit event before anything is returned. If that event cannot be committed the reviewer gets
503 and nothing else.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import timedelta
from functools import lru_cache
from typing import Any, TypeVar
from zoneinfo import ZoneInfo

from sqlalchemy.orm import Session

from gateway.platform import Platform
from services.audit import alerts as alert_service
from services.audit import review
from services.audit import service as audit_service
from services.audit.alerts import Alert, AlertRules
from services.audit.catalogue import AuditAction, Outcome
from services.audit.review import Page, Scope
from services.audit.service import AuditRecord, RequestContext
from services.authz.service import AuditReviewAccess, audit_review_access
from services.contracts.model import Contract
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.errors import (
    AuditUnavailable,
    BadRequest,
    Forbidden,
    NotFound,
    TogetherError,
)

log = logging.getLogger(__name__)
T = TypeVar("T")
DEFAULT_ALERT_DAYS = 30
FORMATS = ("json", "csv", "ndjson")


def zone(platform: Platform) -> ZoneInfo:
    return ZoneInfo(platform.settings.audit_timezone)


def alert_rules(platform: Platform) -> AlertRules:
    s = platform.settings
    return AlertRules(
        timezone=zone(platform),
        office_start_hour=s.audit_office_start_hour,
        office_end_hour=s.audit_office_end_hour,
        volume_factor=s.audit_volume_factor,
        volume_minimum=s.audit_volume_minimum,
        volume_history_days=s.audit_volume_history_days,
        denials_threshold=s.audit_denials_threshold,
        denials_window=timedelta(seconds=s.audit_denials_window_seconds),
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
    platform: Platform, principal: Principal, ctx: RequestContext
) -> tuple[Scope, AuditReviewAccess]:
    """The reviewer's scope; a caller without `audit:review` is refused, and that is audited."""
    access = audit_review_access(platform.policy, principal)
    if not access.allowed:
        audit_service.record_denial(
            platform.sessions,
            ctx,
            access,
            reason="not an audit reviewer",
            resource_type="audit",
            resource_org=principal.organisation,
        )
        raise Forbidden("reviewing the audit trail is for IG leads and administrators")
    datasets: frozenset[str] = frozenset()
    if access.organisation is not None:
        datasets = datasets_by_owner(platform.contracts).get(access.organisation, frozenset())
    return Scope(access.organisation, datasets), access


def _audited(
    platform: Platform,
    ctx: RequestContext,
    access: AuditReviewAccess,
    work: Callable[[Session], T],
    describe: Callable[[T], AuditRecord],
) -> T:
    """Run a query and commit its audit event in the same transaction, before returning it."""
    with platform.sessions() as session:
        result = work(session)
        rec = describe(result)
        rec.matched_rule = access.rule
        rec.policy_version = access.policy_version
        try:
            audit_service.record(session, ctx, rec)
            session.commit()
        except Exception as exc:
            session.rollback()
            log.error("audit write failed; the review query is refused", exc_info=exc)
            raise AuditUnavailable() from exc
    return result


def _refused(
    platform: Platform,
    ctx: RequestContext,
    access: AuditReviewAccess,
    action: AuditAction,
    exc: TogetherError,
    parameters: Mapping[str, Any],
) -> None:
    audit_service.record_committed(
        platform.sessions,
        ctx,
        AuditRecord(
            action=action,
            outcome=Outcome.REJECTED,
            reason=exc.code.lower(),
            resource_type="audit",
            parameters={k: str(v)[:200] for k, v in parameters.items()},
            matched_rule=access.rule,
            policy_version=access.policy_version,
        ),
    )


def search_events(
    platform: Platform,
    principal: Principal,
    ctx: RequestContext,
    params: Mapping[str, str],
    *,
    fmt: str = "json",
) -> Page:
    scope, access = authorise(platform, principal, ctx)
    try:
        filters = review.parse_filters(params, zone(platform))
        limit = review.parse_limit(
            params.get("limit"), review.MAX_LIMIT if fmt == "json" else review.MAX_EXPORT_LIMIT
        )
        review.decode_cursor(params.get("cursor"))
    except TogetherError as exc:
        _refused(platform, ctx, access, AuditAction.AUDIT_QUERIED, exc, params)
        raise
    owners = datasets_by_owner(platform.contracts)

    def work(session: Session) -> Page:
        return review.search(
            session, scope, filters, cursor=params.get("cursor"), limit=limit, datasets_of=owners
        )

    def describe(page: Page) -> AuditRecord:
        return AuditRecord(
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

    return _audited(platform, ctx, access, work, describe)


def event_detail(
    platform: Platform, principal: Principal, ctx: RequestContext, event_id: str
) -> dict[str, Any]:
    scope, access = authorise(platform, principal, ctx)

    def work(session: Session) -> dict[str, Any] | None:
        return review.get_event(session, scope, event_id[:36])

    def describe(found: dict[str, Any] | None) -> AuditRecord:
        return AuditRecord(
            action=AuditAction.AUDIT_QUERIED,
            outcome=Outcome.SUCCESS if found else Outcome.REJECTED,
            reason=None if found else "not_found",
            resource_type="audit_event",
            resource=event_id[:200],
            resource_org=scope.organisation,
            rows=1 if found else 0,
        )

    found = _audited(platform, ctx, access, work, describe)
    if found is None:
        # The same answer whether it does not exist or belongs to another organisation.
        raise NotFound("no such event")
    return found


def person_history(
    platform: Platform,
    principal: Principal,
    ctx: RequestContext,
    person_id: str,
    params: Mapping[str, str],
    *,
    fmt: str = "json",
) -> Page:
    scope, access = authorise(platform, principal, ctx)
    try:
        if not person_id or len(person_id) > 64:
            raise NotFound("no such person")
        limit = review.parse_limit(
            params.get("limit"), review.MAX_LIMIT if fmt == "json" else review.MAX_EXPORT_LIMIT
        )
        review.decode_cursor(params.get("cursor"))
    except TogetherError as exc:
        _refused(platform, ctx, access, AuditAction.AUDIT_PERSON_HISTORY, exc, params)
        raise

    def work(session: Session) -> Page:
        return review.person_history(
            session, scope, person_id, cursor=params.get("cursor"), limit=limit
        )

    def describe(page: Page) -> AuditRecord:
        # The person is a parameter here, not a subject: no data about them is returned.
        return AuditRecord(
            action=AuditAction.AUDIT_PERSON_HISTORY,
            outcome=Outcome.SUCCESS,
            resource_type="person",
            resource=person_id,
            resource_org=scope.organisation,
            parameters={"format": fmt, "limit": limit},
            rows=len(page.events),
        )

    return _audited(platform, ctx, access, work, describe)


def list_alerts(
    platform: Platform, principal: Principal, ctx: RequestContext, params: Mapping[str, str]
) -> list[Alert]:
    scope, access = authorise(platform, principal, ctx)
    tz = zone(platform)
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
        _refused(platform, ctx, access, AuditAction.AUDIT_ALERTS_VIEWED, exc, params)
        raise
    rules = alert_rules(platform)

    def work(session: Session) -> list[Alert]:
        return alert_service.compute(
            session, scope, rules, since=since, until=until, rule=rule, state=state
        )

    def describe(found: list[Alert]) -> AuditRecord:
        parameters: dict[str, Any] = {"since": since.isoformat(), "until": until.isoformat()}
        if rule:
            parameters["rule"] = rule
        if state:
            parameters["state"] = state
        return AuditRecord(
            action=AuditAction.AUDIT_ALERTS_VIEWED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_alert",
            resource_org=scope.organisation,
            parameters=parameters,
            rows=len(found),
        )

    return _audited(platform, ctx, access, work, describe)


def review_alert(
    platform: Platform, principal: Principal, ctx: RequestContext, alert_id: str, comment: str
) -> Alert:
    """Mark an alert reviewed: the review row and its audit event commit together."""
    scope, access = authorise(platform, principal, ctx)
    rules = alert_rules(platform)
    with platform.sessions() as session:
        alert = alert_service.review(
            session,
            ctx,
            scope,
            rules,
            alert_id[:80],
            comment=comment,
            matched_rule=access.rule,
            policy_version=access.policy_version,
        )
        session.commit()
    return alert


def checkpoints(
    platform: Platform, principal: Principal, ctx: RequestContext, *, verify_log: bool = False
) -> list[dict[str, Any]]:
    scope, access = authorise(platform, principal, ctx)

    def describe(found: list[dict[str, Any]]) -> AuditRecord:
        return AuditRecord(
            action=AuditAction.AUDIT_QUERIED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_checkpoints",
            resource_org=scope.organisation,
            rows=len(found),
            parameters={"verify": verify_log},
            details={"all_verified": all(c["verified"] for c in found)},
        )

    def work(session: Session) -> list[dict[str, Any]]:
        return review.list_checkpoints(session, platform.audit_signer, verify_log=verify_log)

    return _audited(platform, ctx, access, work, describe)
