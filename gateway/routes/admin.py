"""Principals and their roles, for administrators; grant requests, for IG leads. Every change
is audited. Roles that need a second person (Level 3, ig_lead, admin) are only requested here
and take effect when an IG lead of the client's organisation approves them."""

from __future__ import annotations

from datetime import UTC
from typing import Annotated, Any

from fastapi import APIRouter, Query
from pydantic import AwareDatetime, BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.admin import grants as grant_requests
from services.admin import principals
from services.audit.service import RequestContext
from services.identity.schemas import Principal, RoleGrant
from services.platform import Platform

router = APIRouter(prefix="/v1/admin", tags=["admin"])


class GrantIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    role: str = Field(max_length=50)
    areas: list[str] = Field(default_factory=list, max_length=20)
    expires_at: AwareDatetime | None = Field(
        default=None,
        description="when the grant ends (ISO 8601 with an offset); required for "
        "l3_practitioner, at most 366 days ahead",
    )


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
        grant
        for g in roles
        for grant in principals.grants_for(
            [g.role], g.areas, g.expires_at.astimezone(UTC) if g.expires_at else None
        )
    ]


@router.get("/clients", response_model=schemas.ClientList, responses=schemas.problems(403))
async def list_clients(
    principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    clients = await run_in_threadpool(principals.review_clients, platform.admin, principal, ctx)
    return FastJSONResponse({"clients": clients})


@router.post(
    "/clients",
    status_code=201,
    response_model=schemas.ClientCreated,
    responses=schemas.problems(403, 404),
)
async def create_client(
    body: ClientIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Create a client. The secret is in this response only. Roles that need a second person
    are not granted yet: `pending` names the request an IG lead approves."""

    def run() -> dict[str, Any]:
        principals.require_admin(platform.admin, principal, ctx)
        return grant_requests.create_client_requesting(
            platform.admin,
            ctx,
            name=body.name,
            organisation=body.organisation,
            grants=_grants(body.roles),
        )

    return FastJSONResponse(await run_in_threadpool(run), status_code=201)


@router.put(
    "/clients/{client_id}/roles",
    response_model=schemas.ClientRoles,
    responses={
        **schemas.problems(403, 404),
        202: {
            "model": schemas.ClientRoles,
            "description": "Roles needing an IG lead's approval were requested (`pending`)",
        },
    },
)
async def set_roles(
    client_id: str, body: RolesIn, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Replace a client's roles (and their areas); in force from the client's next request.

    Added roles that need a second person (l3_practitioner, ig_lead, admin) are requested
    instead: 202, with the pending request; the other changes apply at once.
    """

    def run() -> dict[str, Any]:
        principals.require_admin(platform.admin, principal, ctx)
        return grant_requests.request_roles(platform.admin, ctx, client_id, _grants(body.roles))

    changed = await run_in_threadpool(run)
    return FastJSONResponse(changed, status_code=202 if changed["pending"] else 200)


@router.post(
    "/clients/{client_id}/disable",
    response_model=schemas.ClientDisabled,
    responses=schemas.problems(403, 404),
)
async def disable_client(
    client_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    def run() -> dict[str, Any]:
        principals.require_admin(platform.admin, principal, ctx)
        principals.disable_client(platform.admin, ctx, client_id)
        return {"client_id": client_id, "disabled": True}

    return FastJSONResponse(await run_in_threadpool(run))


@router.get(
    "/grant-requests", response_model=schemas.GrantRequestList, responses=schemas.problems(403)
)
async def list_grant_requests(
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    state: Annotated[
        str | None, Query(description="pending, approved or refused (default: all)")
    ] = None,
) -> FastJSONResponse:
    """Grant requests: all of them for administrators, their organisation's for IG leads."""
    rows = await run_in_threadpool(
        grant_requests.list_requests, platform.admin, principal, ctx, state=state
    )
    return FastJSONResponse({"requests": rows})


@router.get(
    "/grants/expiring", response_model=schemas.ExpiringGrantList, responses=schemas.problems(403)
)
async def list_expiring_grants(
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    days: Annotated[int, Query(ge=1, le=3660, description="the window, in days")] = 30,
) -> FastJSONResponse:
    """Time-bound role grants ending within `days`: every organisation's for administrators,
    their own for IG leads."""
    rows = await run_in_threadpool(
        grant_requests.list_expiring, platform.admin, principal, ctx, days=days
    )
    return FastJSONResponse({"days": days, "grants": rows})


async def _decide(
    request_id: str, approve: bool, principal: Principal, ctx: RequestContext, platform: Platform
) -> FastJSONResponse:
    def run() -> dict[str, Any]:
        decision = grant_requests.check_approver(platform.admin, principal, ctx, request_id)
        return grant_requests.decide(
            platform.admin, ctx, request_id, approve=approve, decision=decision
        )

    return FastJSONResponse(await run_in_threadpool(run))


@router.post(
    "/grant-requests/{request_id}/approve",
    response_model=schemas.GrantRequest,
    responses=schemas.problems(403, 409),
)
async def approve_grant(
    request_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Approve a pending grant: an IG lead of the client's organisation, who neither asked for
    it nor receives it. The client's roles change now, with the audit event."""
    return await _decide(request_id, True, principal, ctx, platform)


@router.post(
    "/grant-requests/{request_id}/refuse",
    response_model=schemas.GrantRequest,
    responses=schemas.problems(403, 409),
)
async def refuse_grant(
    request_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Refuse a pending grant (the same people as approve); the client's roles stay as they are."""
    return await _decide(request_id, False, principal, ctx, platform)
