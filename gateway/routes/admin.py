"""Principals and their roles, for administrators. Every change is audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway import principals
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.platform import Platform
from gateway.responses import FastJSONResponse
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Resource
from services.authz.vocabulary import Action, ResourceType
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
    return [grant for g in roles for grant in principals.grants_for([g.role], g.areas)]


def _require_admin(platform: Platform, principal: Principal, ctx: RequestContext) -> None:
    decision = platform.policy.decide(
        principal, Action.CLIENT_MANAGE, Resource(ResourceType.PRINCIPALS, "*", None)
    )
    if not decision.allowed:
        audit_service.record_denial(
            platform.sessions,
            ctx,
            decision,
            reason="not an administrator",
            resource_type="principals",
        )
        raise Forbidden("administrators only")


@router.get("/clients")
async def list_clients(
    principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> list[dict[str, Any]]:
        _require_admin(platform, principal, ctx)
        clients = principals.list_clients(platform)
        audit_service.record_committed(
            platform.sessions,
            ctx,
            AuditRecord(
                action=AuditAction.CLIENTS_LISTED,
                outcome=Outcome.SUCCESS,
                resource_type="principals",
                rows=len(clients),
            ),
        )
        return clients

    return FastJSONResponse({"clients": await run_in_threadpool(run)})


@router.post("/clients", status_code=201)
async def create_client(
    body: ClientIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Create a client. The secret is in this response only."""

    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
        created = principals.create_client(
            platform,
            ctx,
            name=body.name,
            organisation=body.organisation,
            grants=_grants(body.roles),
        )
        return {
            "client_id": created.client_id,
            "client_secret": created.client_secret,
            "organisation": body.organisation,
            "roles": principals.grants_json(created.principal),
        }

    return FastJSONResponse(await run_in_threadpool(run), status_code=201)


@router.put("/clients/{client_id}/roles")
async def set_roles(
    client_id: str, body: RolesIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Replace a client's roles (and their areas). Takes effect on the client's next request."""

    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
        after = principals.set_roles(platform, ctx, client_id, _grants(body.roles))
        return {"client_id": client_id, "roles": principals.grants_json(after)}

    return FastJSONResponse(await run_in_threadpool(run))


@router.post("/clients/{client_id}/disable")
async def disable_client(
    client_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> dict[str, Any]:
        _require_admin(platform, principal, ctx)
        principals.disable_client(platform, ctx, client_id)
        return {"client_id": client_id, "disabled": True}

    return FastJSONResponse(await run_in_threadpool(run))
