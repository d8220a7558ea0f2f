"""Administering principals, audited: one implementation for the CLI, the admin API and the demo.

Each change and its audit event commit in one transaction.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from gateway.platform import Platform
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.vocabulary import AREA_SCOPED_ROLES, ROLES
from services.identity import service as identity_service
from services.identity.schemas import Principal, RoleGrant
from services.identity.service import CreatedClient


def grants_json(principal: Principal) -> list[dict[str, Any]]:
    return [{"role": g.role, "area": g.area} for g in principal.grants]


def grants_for(roles: Iterable[str], areas: Iterable[str]) -> list[RoleGrant]:
    """Every role limited to every area given (`all` = every CSP area; none = no limit)."""
    expanded = identity_service.expand_areas(areas)
    return [RoleGrant(role, area) for role in roles for area in expanded]


def create_client(
    platform: Platform,
    ctx: RequestContext,
    *,
    name: str,
    organisation: str,
    grants: list[RoleGrant],
) -> CreatedClient:
    with platform.sessions() as session:
        created = identity_service.create_client(
            session,
            name=name,
            organisation=organisation,
            grants=grants,
            known_roles=ROLES,
            area_scoped_roles=AREA_SCOPED_ROLES,
        )
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.CLIENT_CREATED,
                outcome=Outcome.SUCCESS,
                resource_type="client",
                resource=created.client_id,
                resource_org=organisation,
                details={"roles": grants_json(created.principal)},
            ),
        )
        session.commit()
    return created


def set_roles(
    platform: Platform, ctx: RequestContext, client_id: str, grants: list[RoleGrant]
) -> Principal:
    with platform.sessions() as session:
        before, after = identity_service.set_grants(
            session, client_id, grants, ROLES, AREA_SCOPED_ROLES
        )
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.CLIENT_ROLES_CHANGED,
                outcome=Outcome.SUCCESS,
                resource_type="client",
                resource=client_id,
                resource_org=after.organisation,
                details={"before": grants_json(before), "after": grants_json(after)},
            ),
        )
        session.commit()
    return after


def disable_client(platform: Platform, ctx: RequestContext, client_id: str) -> Principal:
    with platform.sessions() as session:
        disabled = identity_service.disable_client(session, client_id)
        audit_service.record(
            session,
            ctx,
            AuditRecord(
                action=AuditAction.CLIENT_DISABLED,
                outcome=Outcome.SUCCESS,
                resource_type="client",
                resource=client_id,
                resource_org=disabled.organisation,
            ),
        )
        session.commit()
    return disabled


def list_clients(platform: Platform, organisation: str | None = None) -> list[dict[str, Any]]:
    """Clients and their roles, never their secrets."""
    with platform.sessions() as session:
        return [
            {
                "client_id": c.client_id,
                "name": c.name,
                "organisation": c.organisation,
                "disabled": c.disabled,
                "roles": [{"role": r.role, "area": r.area} for r in c.roles],
                "created_at": c.created_at.isoformat(),
            }
            for c in identity_service.list_clients(session, organisation)
        ]
