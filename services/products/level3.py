"""What Level 3 adds to a product read: a stated purpose, a daily quota, and the review of lists.

Every Level 3 request names a purpose the partnership's configuration lists (`X-Purpose`) and a
case reference (`X-Case-Reference`); without either, or with an unknown purpose, it is refused
(and the refusal audited) before anything is computed. Each principal may make a limited number
of Level 3 reads a day (Europe/London) and an hour (a clock hour, UTC), counted atomically in
the database so that concurrent requests cannot overrun them; the refusal beyond either is
audited too (security-tests T16). A read that fails after its count was taken (nothing
computed, the audit trail unavailable) gives the count back: only answered reads use the quota.

Habitual knife carriers are graded by the partnership (RAG and lead agency). Each grading is a
new append-only row with the previous values, written with its audit event in one transaction.
"""

from __future__ import annotations

import logging
import re
from dataclasses import dataclass
from datetime import date, datetime, timedelta
from typing import Any

import pyarrow as pa
from sqlalchemy import insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import PolicyEngine, Resource
from services.authz.service import ProductAccess
from services.authz.vocabulary import Action, ResourceType
from services.identity.schemas import Principal
from services.kit.clock import LONDON, london_today, utcnow
from services.kit.errors import BadRequest, Forbidden, NotFound, QuotaExceeded
from services.kit.partnership import ORGANISATIONS
from services.kit.uow import UnitOfWork, audited, transaction
from services.products.definition import ProductDefinition
from services.products.models import HkcAssessment, Level3HourlyUsage, Level3QuotaUsage
from services.products.people import ASSESSMENTS_SCHEMA

PURPOSE_HEADER = "X-Purpose"
CASE_REFERENCE_HEADER = "X-Case-Reference"
DEFAULT_DAILY_QUOTA = 200
DEFAULT_HOURLY_QUOTA = 50
RAG_VALUES = ("red", "amber", "green")
HKC_PRODUCT = "habitual-knife-carriers"

# A case reference names a case in the reader's own system: letters, digits and a little
# punctuation, so that nothing else (a name typed by mistake, markup) reaches the audit trail.
_CASE_REFERENCE_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9/._:#-]{1,63}$")
_PURPOSE_RE = re.compile(r"^[a-z][a-z0-9-]{0,59}$")


@dataclass(frozen=True)
class Justification:
    """Why a Level 3 read is made: the purpose and the case it serves."""

    purpose: str | None
    case_reference: str | None

    def recordable(self) -> tuple[str | None, str | None]:
        """The values as they may be written to the audit trail (malformed ones are not)."""
        purpose = self.purpose if self.purpose and _PURPOSE_RE.match(self.purpose) else None
        case = self.case_reference
        case = case if case and _CASE_REFERENCE_RE.match(case) else None
        return purpose, case


def allowed_purposes(definition: ProductDefinition) -> list[str]:
    level3 = definition.partnership.level3
    return list(level3.purposes) if level3 is not None else []


def daily_quota(definition: ProductDefinition) -> int:
    level3 = definition.partnership.level3
    if level3 is not None and level3.daily_quota is not None:
        return level3.daily_quota
    return DEFAULT_DAILY_QUOTA


def hourly_quota(definition: ProductDefinition) -> int:
    level3 = definition.partnership.level3
    if level3 is not None and level3.hourly_quota is not None:
        return level3.hourly_quota
    return DEFAULT_HOURLY_QUOTA


log = logging.getLogger(__name__)


@dataclass(frozen=True)
class QuotaTaken:
    """One read counted against a principal's day and hour, to give back if it fails."""

    client_id: str
    day: date
    hour: datetime


def check_justification(definition: ProductDefinition, why: Justification) -> str | None:
    """None when the request may go on; otherwise the reason it is refused."""
    purposes = allowed_purposes(definition)
    if not why.purpose:
        return f"a Level 3 request states its purpose in {PURPOSE_HEADER}"
    if why.purpose not in purposes:
        return f"{PURPOSE_HEADER} must be one of: {', '.join(purposes) or '(none configured)'}"
    if not why.case_reference:
        return f"a Level 3 request names its case in {CASE_REFERENCE_HEADER}"
    if not _CASE_REFERENCE_RE.match(why.case_reference):
        return (
            f"{CASE_REFERENCE_HEADER} must be 2 to 64 letters, digits or / . _ : # - "
            "(a case reference, never a name)"
        )
    return None


def refuse_unjustified(
    sessions: sessionmaker[Session],
    ctx: RequestContext,
    definition: ProductDefinition,
    access: ProductAccess,
    why: Justification,
    parameters: dict[str, Any],
) -> None:
    """Raise Forbidden (after auditing it) unless the request states a valid purpose and case."""
    reason = check_justification(definition, why)
    if reason is None:
        return
    purpose, case = why.recordable()
    with audited(sessions, "the Level 3 refusal") as uow:
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.ACCESS_DENIED,
                    outcome=Outcome.DENIED,
                    reason="purpose or case reference missing or not allowed",
                    resource_type="product",
                    resource=definition.id,
                    level=definition.level,
                    purpose=purpose,
                    case_reference=case,
                    parameters=parameters,
                    matched_rule=access.rule,
                    policy_version=access.policy_version,
                    # No version was read; the datasets show whose data was asked for, so the
                    # owners' IG leads see the refusal.
                    details={"sources": {dataset: None for dataset in definition.sources}},
                ),
            )
        )
    raise Forbidden(reason)


def take_quota(
    sessions: sessionmaker[Session],
    ctx: RequestContext,
    principal: Principal,
    definition: ProductDefinition,
    why: Justification,
    limit: int,
    hourly_limit: int | None = None,
) -> QuotaTaken:
    """Count one Level 3 read against today's and this hour's quota, or refuse it (audited)
    with 429 and the seconds until the exhausted quota resets."""
    hourly_limit = hourly_limit if hourly_limit is not None else DEFAULT_HOURLY_QUOTA
    day = london_today()
    now = utcnow()
    hour = now.replace(minute=0, second=0, microsecond=0)
    daily_taken = hourly_taken = False
    # The count is bookkeeping with no event of its own: the read it allows is audited when it
    # is made, and the count must be committed before that, so that concurrent reads see it.
    with transaction(sessions) as session:
        dialect = session.get_bind().dialect.name
        make_insert = pg_insert if dialect == "postgresql" else sqlite_insert
        session.execute(
            make_insert(Level3QuotaUsage)
            .values(client_id=principal.client_id, day=day, used=0)
            .on_conflict_do_nothing()
        )
        session.execute(
            make_insert(Level3HourlyUsage)
            .values(client_id=principal.client_id, hour=hour, used=0)
            .on_conflict_do_nothing()
        )
        daily = session.execute(
            update(Level3QuotaUsage)
            .where(
                Level3QuotaUsage.client_id == principal.client_id,
                Level3QuotaUsage.day == day,
                Level3QuotaUsage.used < limit,
            )
            .values(used=Level3QuotaUsage.used + 1)
        )
        daily_taken = getattr(daily, "rowcount", 0) == 1
        if daily_taken:
            hourly = session.execute(
                update(Level3HourlyUsage)
                .where(
                    Level3HourlyUsage.client_id == principal.client_id,
                    Level3HourlyUsage.hour == hour,
                    Level3HourlyUsage.used < hourly_limit,
                )
                .values(used=Level3HourlyUsage.used + 1)
            )
            hourly_taken = getattr(hourly, "rowcount", 0) == 1
        if not (daily_taken and hourly_taken):
            # Neither count moves unless both can.
            session.rollback()
    if daily_taken and hourly_taken:
        return QuotaTaken(principal.client_id, day, hour)
    if not daily_taken:
        period, quota = "daily", limit
        midnight = datetime.combine(day + timedelta(days=1), datetime.min.time(), LONDON)
        retry_after = max(1, int((midnight - utcnow()).total_seconds()))
        message = f"you have made {limit} Level 3 reads today; the quota resets at midnight"
    else:
        period, quota = "hourly", hourly_limit
        retry_after = max(1, int((hour + timedelta(hours=1) - utcnow()).total_seconds()))
        message = (
            f"you have made {hourly_limit} Level 3 reads this hour; "
            f"the hourly quota resets in {retry_after} seconds"
        )
    purpose, case = why.recordable()
    with audited(sessions, "the quota refusal") as uow:
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.QUOTA_EXCEEDED,
                    outcome=Outcome.DENIED,
                    reason=f"{period} quota of {quota} Level 3 reads reached",
                    resource_type="product",
                    resource=definition.id,
                    level=3,
                    purpose=purpose,
                    case_reference=case,
                    details={
                        "quota": quota,
                        "period": period,
                        "day": day.isoformat(),
                        "hour": hour.isoformat(),
                        "daily_quota": limit,
                        "hourly_quota": hourly_limit,
                    },
                ),
            )
        )
    raise QuotaExceeded(message, extra={"retry_after": retry_after})


def give_back(sessions: sessionmaker[Session], taken: QuotaTaken) -> None:
    """Return a count taken for a read that was never answered (refused, failed, or not
    audited). Best effort: if the database is gone, the count stays used, which errs on the
    side of fewer Level 3 reads."""
    try:
        with transaction(sessions) as session:
            session.execute(
                update(Level3QuotaUsage)
                .where(
                    Level3QuotaUsage.client_id == taken.client_id,
                    Level3QuotaUsage.day == taken.day,
                    Level3QuotaUsage.used > 0,
                )
                .values(used=Level3QuotaUsage.used - 1)
            )
            session.execute(
                update(Level3HourlyUsage)
                .where(
                    Level3HourlyUsage.client_id == taken.client_id,
                    Level3HourlyUsage.hour == taken.hour,
                    Level3HourlyUsage.used > 0,
                )
                .values(used=Level3HourlyUsage.used - 1)
            )
    except Exception:
        log.warning("a Level 3 quota count could not be given back", exc_info=True)


def latest_assessments(sessions: sessionmaker[Session]) -> pa.Table:
    """The latest grading of every person graded, for the habitual knife carrier list."""
    with sessions() as session:
        rows = session.execute(
            select(
                HkcAssessment.person_id,
                HkcAssessment.rag,
                HkcAssessment.lead_agency,
                HkcAssessment.graded_at,
                HkcAssessment.graded_by_org,
            ).order_by(HkcAssessment.person_id, HkcAssessment.id)
        ).all()
    latest: dict[str, Any] = {}
    for row in rows:
        latest[row.person_id] = row
    values = list(latest.values())
    return pa.table(
        [
            pa.array([r.person_id for r in values], pa.string()),
            pa.array([r.rag for r in values], pa.string()),
            pa.array([r.lead_agency for r in values], pa.string()),
            pa.array([r.graded_at for r in values], pa.timestamp("us", tz="UTC")),
            pa.array([r.graded_by_org for r in values], pa.string()),
        ],
        schema=ASSESSMENTS_SCHEMA,
    )


def may_assess(policy: PolicyEngine, principal: Principal) -> tuple[bool, str, str]:
    decision = policy.decide(
        principal, Action.ASSESSMENT_WRITE, Resource(ResourceType.LEVEL3, HKC_PRODUCT, None)
    )
    return decision.allowed, decision.rule, decision.policy_version


def person_of(body: Any) -> tuple[str, dict[str, Any]]:
    """The `person_id` a grading names, and the rest of its body."""
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object with person_id, rag and lead_agency")
    rest = dict(body)
    person_id = rest.pop("person_id", None)
    if not isinstance(person_id, str) or not 1 <= len(person_id) <= 64:
        raise BadRequest("person_id must be the person's id from a Level 3 list")
    return person_id, rest


def parse_assessment(body: Any) -> tuple[str, str, date]:
    """``rag``, ``lead_agency`` and the ``as_of`` of the list graded (default today)."""
    if not isinstance(body, dict):
        raise BadRequest("the body is a JSON object with rag and lead_agency (and as_of)")
    unknown = sorted(set(body) - {"rag", "lead_agency", "as_of"})
    if unknown:
        raise BadRequest(f"unknown field {unknown[0][:40]!r}; the body has rag, lead_agency, as_of")
    rag, lead = body.get("rag"), body.get("lead_agency")
    if rag not in RAG_VALUES:
        raise BadRequest(f"rag must be one of: {', '.join(RAG_VALUES)}")
    if not isinstance(lead, str) or lead not in ORGANISATIONS:
        raise BadRequest("lead_agency must be a partner organisation id (see the README)")
    today = london_today()
    as_of = body.get("as_of", today.isoformat())
    try:
        day = date.fromisoformat(as_of) if isinstance(as_of, str) and len(as_of) == 10 else None
    except ValueError:
        day = None
    if day is None or day > today:
        raise BadRequest("as_of must be a date written YYYY-MM-DD, not in the future")
    return rag, lead, day


def record_assessment(
    uow: UnitOfWork,
    ctx: RequestContext,
    principal: Principal,
    person_id: str,
    rag: str,
    lead_agency: str,
    purpose: str,
    case_reference: str,
    rule: str,
    policy_version: str,
) -> dict[str, Any]:
    """Append a grading with the previous values; its event commits with it."""
    session = uow.session
    previous = session.execute(
        select(HkcAssessment)
        .where(HkcAssessment.person_id == person_id)
        .order_by(HkcAssessment.id.desc())
        .limit(1)
    ).scalar_one_or_none()
    now = utcnow()
    values = {
        "person_id": person_id,
        "rag": rag,
        "lead_agency": lead_agency,
        "previous_rag": previous.rag if previous else None,
        "previous_lead_agency": previous.lead_agency if previous else None,
        "graded_by": principal.client_id,
        "graded_by_org": principal.organisation,
        "graded_at": now,
        "purpose": purpose,
        "case_reference": case_reference,
    }
    session.execute(insert(HkcAssessment).values(**values))
    uow.audit(
        audit_service.event(
            ctx,
            AuditRecord(
                action=AuditAction.ASSESSMENT_RECORDED,
                outcome=Outcome.SUCCESS,
                resource_type="product",
                resource=HKC_PRODUCT,
                level=3,
                purpose=purpose,
                case_reference=case_reference,
                matched_rule=rule,
                policy_version=policy_version,
                details={
                    "rag": rag,
                    "lead_agency": lead_agency,
                    "previous_rag": values["previous_rag"],
                    "previous_lead_agency": values["previous_lead_agency"],
                },
                subjects=[person_id],
            ),
        )
    )
    return {
        "person_id": person_id,
        "rag": rag,
        "lead_agency": lead_agency,
        "previous": (
            {"rag": previous.rag, "lead_agency": previous.lead_agency} if previous else None
        ),
        "graded_by": principal.client_id,
        "graded_by_org": principal.organisation,
        "graded_at": now.isoformat(timespec="seconds").replace("+00:00", "Z"),
    }


def require_found(found: bool) -> None:
    if not found:
        # The same answer whether the person does not exist, is not on the list, or is outside
        # the reader's areas: nothing is learnt about people one may not see.
        raise NotFound("no such person on the habitual knife carrier list in your areas")
