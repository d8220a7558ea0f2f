"""Administering principals (API clients and their roles): one implementation for the admin
API, the command line and the demo.

Each change commits with its audit event in one unit of work. The command line runs as the
operator at the shell, already trusted: the installation itself, whose role changes take
effect at once. An API caller is first checked by `require_admin`, and its grants of roles
that need a second person go through `services.admin.grants` instead (an IG lead approves).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from services.admin.deps import AdminDeps
from services.admin.grants import grant_document
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Resource
from services.authz.vocabulary import AREA_SCOPED_ROLES, ROLES, Action, ResourceType
from services.identity import service as identity_service
from services.identity.models import Client
from services.identity.schemas import Principal, RoleGrant
from services.identity.service import CreatedClient
from services.kit.errors import BadRequest, Forbidden
from services.kit.uow import audited


def grants_json(principal: Principal) -> list[dict[str, Any]]:
    return [grant_document(g.role, g.area, g.expires_at) for g in principal.grants]


def grants_for(
    roles: Iterable[str], areas: Iterable[str], expires_at: datetime | None = None
) -> list[RoleGrant]:
    """Every role limited to every area given (`all` = every CSP area; none = no limit),
    each until `expires_at` when given."""
    expanded = identity_service.expand_areas(areas)
    return [RoleGrant(role, area, expires_at) for role in roles for area in expanded]


def parse_expiry(text: str | None) -> datetime | None:
    """An expiry given on the command line: an ISO 8601 time with an offset, or a date alone,
    which means the end of that day (UTC): `--expires 2027-06-30` grants through 30 June."""
    if text is None:
        return None
    try:
        if len(text) == 10:
            return datetime.combine(date.fromisoformat(text), time(), UTC) + timedelta(days=1)
        moment = datetime.fromisoformat(text)
    except ValueError as exc:
        raise BadRequest(f"expiry {text!r} is not an ISO 8601 date or time") from exc
    if moment.tzinfo is None:
        raise BadRequest(f"expiry {text!r} needs an offset (Z or +01:00, for example)")
    return moment.astimezone(UTC)


def require_admin(deps: AdminDeps, principal: Principal, ctx: RequestContext) -> None:
    """Refuse (403) an API caller who may not manage principals; the refusal is audited first."""
    decision = deps.policy.decide(
        principal, Action.CLIENT_MANAGE, Resource(ResourceType.PRINCIPALS, "*", None)
    )
    if not decision.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            decision,
            reason="not an administrator",
            resource_type="principals",
        )
        raise Forbidden("administrators only")


def create_client(
    deps: AdminDeps,
    ctx: RequestContext,
    *,
    name: str,
    organisation: str,
    grants: list[RoleGrant],
) -> CreatedClient:
    identity_service.check_expiries(grants)
    with audited(deps.sessions, "creating a client") as uow:
        created = identity_service.create_client(
            uow.session,
            name=name,
            organisation=organisation,
            grants=grants,
            known_roles=ROLES,
            area_scoped_roles=AREA_SCOPED_ROLES,
        )
        uow.audit(
            audit_service.event(
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
        )
    return created


def set_roles(
    deps: AdminDeps, ctx: RequestContext, client_id: str, grants: list[RoleGrant]
) -> Principal:
    identity_service.check_expiries(grants)
    with audited(deps.sessions, "changing a client's roles") as uow:
        before, after = identity_service.set_grants(
            uow.session, client_id, grants, ROLES, AREA_SCOPED_ROLES
        )
        uow.audit(
            audit_service.event(
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
        )
    return after


def disable_client(deps: AdminDeps, ctx: RequestContext, client_id: str) -> Principal:
    with audited(deps.sessions, "disabling a client") as uow:
        disabled = identity_service.disable_client(uow.session, client_id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENT_DISABLED,
                    outcome=Outcome.SUCCESS,
                    resource_type="client",
                    resource=client_id,
                    resource_org=disabled.organisation,
                ),
            )
        )
    return disabled


def _client_json(client: Client) -> dict[str, Any]:
    """A client and its roles, never its secret."""
    return {
        "client_id": client.client_id,
        "name": client.name,
        "organisation": client.organisation,
        "disabled": client.disabled,
        "roles": [grant_document(r.role, r.area, r.expires_at) for r in client.roles],
        "created_at": client.created_at.isoformat(),
    }


def list_clients(deps: AdminDeps, organisation: str | None = None) -> list[dict[str, Any]]:
    """Clients for the operator at the shell (who could read the database anyway)."""
    with deps.sessions() as session:
        return [_client_json(c) for c in identity_service.list_clients(session, organisation)]


def review_clients(
    deps: AdminDeps, principal: Principal, ctx: RequestContext
) -> list[dict[str, Any]]:
    """Clients for an administrator through the API: the listing is audited before it leaves."""
    require_admin(deps, principal, ctx)
    with audited(deps.sessions, "the client listing") as uow:
        clients = [_client_json(c) for c in identity_service.list_clients(uow.session, None)]
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.CLIENTS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="principals",
                    rows=len(clients),
                ),
            )
        )
    return clients
