"""Administering people's accounts, audited: each change and its event commit together."""

from __future__ import annotations

from typing import Any

from gateway.platform import Platform
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity import people


def create_user(
    platform: Platform,
    ctx: RequestContext,
    *,
    username: str,
    organisation: str,
    role: str,
    password: str | None,
) -> people.Person:
    with platform.sessions() as session:
        person = people.create_user(
            session, username=username, organisation=organisation, role=role, password=password
        )
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.USER_CREATED,
                outcome=Outcome.SUCCESS,
                resource_type="user",
                resource=username,
                resource_org=organisation,
                details={"role": role, "sign_in": "local" if password else "oidc"},
            ),
        )
        session.commit()
    return person


def list_users(
    platform: Platform, ctx: RequestContext, organisation: str | None = None
) -> list[dict[str, Any]]:
    with platform.sessions() as session:
        rows = people.list_users(session, organisation)
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.USERS_LISTED,
                outcome=Outcome.SUCCESS,
                resource_type="user",
                resource_org=organisation,
                rows=len(rows),
            ),
        )
        session.commit()
    return rows


def disable_user(platform: Platform, ctx: RequestContext, username: str) -> None:
    with platform.sessions() as session:
        person = people.disable_user(session, username)
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.USER_DISABLED,
                outcome=Outcome.SUCCESS,
                resource_type="user",
                resource=username,
                resource_org=person.organisation,
            ),
        )
        session.commit()
