"""Administering the accounts people sign in to the review pages with: each change commits with
its audit event in one unit of work."""

from __future__ import annotations

from typing import Any

from services.admin.deps import AdminDeps
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity import accounts
from services.identity.accounts import Person
from services.kit.uow import audited


def create_user(
    deps: AdminDeps,
    ctx: RequestContext,
    *,
    username: str,
    organisation: str,
    role: str,
    password: str | None,
) -> Person:
    with audited(deps.sessions, "creating an account") as uow:
        person = accounts.create_user(
            uow.session, username=username, organisation=organisation, role=role, password=password
        )
        uow.audit(
            audit_service.event(
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
        )
    return person


def list_users(
    deps: AdminDeps, ctx: RequestContext, organisation: str | None = None
) -> list[dict[str, Any]]:
    with audited(deps.sessions, "the account listing") as uow:
        rows = accounts.list_users(uow.session, organisation)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.USERS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="user",
                    resource_org=organisation,
                    rows=len(rows),
                ),
            )
        )
    return rows


def disable_user(deps: AdminDeps, ctx: RequestContext, username: str) -> None:
    with audited(deps.sessions, "disabling an account") as uow:
        person = accounts.disable_user(uow.session, username)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.USER_DISABLED,
                    outcome=Outcome.SUCCESS,
                    resource_type="user",
                    resource=username,
                    resource_org=person.organisation,
                ),
            )
        )
