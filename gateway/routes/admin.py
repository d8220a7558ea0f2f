"""Principals and their roles, for administrators. Every change is audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.deps import Authenticated, Context, PlatformDep
from gateway.platform import Platform
from gateway.responses import FastJSONResponse
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Resource
from services.authz.vocabulary import AREA_SCOPED_ROLES, ROLES, Action, ResourceType
from services.identity import service as identity_service
from services.identity.schemas import Principal, RoleGrant
from services.kit.errors import Forbidden

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=50)
    areas: list[str] = Field(default_factory=list, max_length=20)


class ClientIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    name: str = Field(min_length=1, max_length=200)
    organisation: str = Field(max_length=100)
    roles: list[GrantIn] = Field(min_length=1, max_length=20)


class RolesIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    roles: list[GrantIn] = Field(min_length=1, max_length=20)


def _grants(roles: list[GrantIn]) -> list[RoleGrant]:
    return [
        RoleGrant(g.role, area) for g in roles for area in identity_service.expand_areas(g.areas)
    ]


def _require_admin(platform: Platform, principal: Principal, ctx: RequestContext) -> None:
    decision = platform.policy.decide(
        principal, Action.CLIENT_MANAGE, Resource(ResourceType.PRINCIPALS, "*", None)
    )
    if not decision.allowed:
        audit_service.record_committed(
            platform.sessions,
            ctx,
            AuditRecord(
                action=AuditAction.ACCESS_DENIED,
                outcome=Outcome.DENIED,
                reason="not an administrator",
                resource_type="principals",
                matched_rule=decision.rule,
                policy_version=decision.policy_version,
            ),
        )
        raise Forbidden("administrators only")


def _grants_out(principal: Principal) -> list[dict[str, Any]]:
    return [{"role": g.role, "area": g.area} for g in principal.grants]


@router.get("/clients")
async def list_clients(
    principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> list[dict[str, Any]]:
        _require_admin(platform, principal, ctx)
        with platform.sessions() as session:
            return [
                {
                    "client_id": c.client_id,
                    "name": c.name,
                    "organisation": c.organisation,
                    "disabled": c.disabled,
                    "roles": [{"role": r.role, "area": r.area} for r in c.roles],
                }
                for c in identity_service.list_clients(session)
            ]

    return FastJSONResponse({"clients": await run_in_threadpool(run)})


@router.post("/clients", status_code=201)
async def create_client(
    body: ClientIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Create a client. The secret is in this response only."""

    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
        with platform.sessions() as session:
            created = identity_service.create_client(
                session,
                name=body.name,
                organisation=body.organisation,
                grants=_grants(body.roles),
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
                    resource_org=body.organisation,
                    details={"roles": _grants_out(created.principal)},
                ),
            )
            session.commit()
        return {
            "client_id": created.client_id,
            "client_secret": created.client_secret,
            "organisation": body.organisation,
            "roles": _grants_out(created.principal),
        }

    return FastJSONResponse(await run_in_threadpool(run), status_code=201)


@router.put("/clients/{client_id}/roles")
async def set_roles(
    client_id: str, body: RolesIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Replace a client's roles (and their areas). Takes effect on the client's next request."""

    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
        with platform.sessions() as session:
            before, after = identity_service.set_grants(
                session, client_id, _grants(body.roles), ROLES, AREA_SCOPED_ROLES
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
                    details={"before": _grants_out(before), "after": _grants_out(after)},
                ),
            )
            session.commit()
        return {"client_id": client_id, "roles": _grants_out(after)}

    return FastJSONResponse(await run_in_threadpool(run))


@router.post("/clients/{client_id}/disable")
async def disable_client(
    client_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
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
        return {"client_id": client_id, "disabled": True}

    return FastJSONResponse(await run_in_threadpool(run))
