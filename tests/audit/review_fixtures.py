"""Making audit events for review tests: as a given principal, at a given time."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from datetime import datetime
from typing import Any

import pytest

from gateway.platform import Platform
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext

POLICE = "hampshire-constabulary"
COUNCIL = "portsmouth-cc"


@contextmanager
def clock_at(monkeypatch: pytest.MonkeyPatch, moment: datetime) -> Iterator[None]:
    """Events recorded inside happen at `moment` (the audit service's clock)."""
    with monkeypatch.context() as patch:
        patch.setattr(audit_service, "utcnow", lambda: moment)
        yield


def make_event(
    platform: Platform,
    *,
    actor: str | None,
    org: str | None,
    action: AuditAction = AuditAction.PRODUCT_READ,
    outcome: Outcome = Outcome.SUCCESS,
    roles: tuple[str, ...] = ("l1_reader",),
    address: str = "192.0.2.1",
    **fields: Any,
) -> str:
    ctx = RequestContext(
        request_id="req-" + (actor or "anon"),
        client_address=address,
        actor=actor,
        actor_org=org,
        actor_roles=list(roles),
    )
    with platform.sessions() as session:
        event = audit_service.record(
            session, ctx, AuditRecord(action=action, outcome=outcome, **fields)
        )
        session.commit()
        return event.event_id


def level3_read(
    platform: Platform,
    *,
    actor: str,
    org: str,
    subjects: list[str],
    case_reference: str = "CASE-1",
    purpose: str = "safeguarding",
    details: dict[str, Any] | None = None,
    resource_org: str | None = None,
) -> str:
    return make_event(
        platform,
        actor=actor,
        org=org,
        roles=("l3_practitioner",),
        resource_type="product",
        resource="repeat-suspects",
        resource_org=resource_org,
        level=3,
        purpose=purpose,
        case_reference=case_reference,
        subjects=subjects,
        rows=len(subjects),
        details=details if details is not None else {},
    )
