"""Principals and their roles, for administrators. Every change is audited."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.admin import principals
from services.identity.schemas import RoleGrant

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


@router.get("/clients")
async def list_clients(
    principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    clients = await run_in_threadpool(principals.review_clients, platform.admin, principal, ctx)
    return FastJSONResponse({"clients": clients})


@router.post("/clients", status_code=201)
async def create_client(
    body: ClientIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Create a client. The secret is in this response only."""

    def run() -> dict[str, Any]:
        principals.require_admin(platform.admin, principal, ctx)
        created = principals.create_client(
            platform.admin,
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
        principals.require_admin(platform.admin, principal, ctx)
        after = principals.set_roles(platform.admin, ctx, client_id, _grants(body.roles))
        return {"client_id": client_id, "roles": principals.grants_json(after)}

    return FastJSONResponse(await run_in_threadpool(run))


@router.post("/clients/{client_id}/disable")
async def disable_client(
    client_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> dict[str, Any]:
        principals.require_admin(platform.admin, principal, ctx)
        principals.disable_client(platform.admin, ctx, client_id)
        return {"client_id": client_id, "disabled": True}

    return FastJSONResponse(await run_in_threadpool(run))
