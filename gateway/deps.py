"""Dependencies shared by the routes. Authentication is declared once, as `Authenticated`."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Request
from starlette.concurrency import run_in_threadpool

from services.admin import sign_in as sign_in_service
from services.audit.catalogue import AuditAction
from services.audit.service import RequestContext
from services.identity import service as identity_service
from services.identity.schemas import Principal
from services.identity.tokens import TokenInvalid
from services.kit import logs
from services.kit.errors import NotAuthenticated
from services.platform import Platform
from services.sharing import service as sharing_service


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


async def _platform(request: Request) -> Platform:
    # A coroutine: FastAPI runs a plain function dependency on a worker thread.
    return get_platform(request)


PlatformDep = Annotated[Platform, Depends(_platform)]


def request_context(request: Request) -> RequestContext:
    return RequestContext(
        request_id=getattr(request.state, "request_id", None),
        client_address=request.client.host if request.client else None,
    )


# Under this prefix a profile's token (scoped to Delta Sharing) is accepted as well.
SHARING_PREFIX = "/delta-sharing/"


def _authenticate(
    platform: Platform, authorization: str | None, ctx: RequestContext, sharing: bool = False
) -> Principal:
    reason: str | None = None
    principal: Principal | None = None
    if not authorization:
        reason = "missing_token"
    else:
        scheme, _, token = authorization.partition(" ")
        if scheme.lower() != "bearer" or not token.strip():
            reason = "not_a_bearer_token"
        else:
            try:
                if sharing:
                    claims = sharing_service.verify_bearer(platform.sharing, token.strip())
                else:
                    claims = platform.tokens.verify(token.strip())
            except TokenInvalid as exc:
                reason = exc.reason
            else:
                principal = _principal(platform, claims.client_id, ctx)
                if principal is None:
                    reason = "client_unknown_or_disabled"
                elif principal.organisation != claims.organisation:
                    principal, reason = None, "organisation_changed"
    if principal is None:
        # No claim of a refused token is trusted, so none is recorded as the actor.
        # One event each for the first refusals of a kind from an address in a window, then
        # counted and summarised: a flood of bad tokens cannot fill the audit trail.
        sign_in_service.note_rejection(
            platform.admin,
            ctx,
            AuditAction.AUTHENTICATION_FAILED,
            reason or "refused",
            {},
            platform.settings.auth_rejection_window_seconds,
        )
        raise NotAuthenticated("a valid bearer token is required")
    ctx.actor = principal.client_id
    ctx.actor_org = principal.organisation
    ctx.actor_roles = principal.roles
    return principal


def _principal(platform: Platform, client_id: str, ctx: RequestContext) -> Principal | None:
    """The client as the registry has it now (cached while no principal has changed).

    The epochs read here serve the whole request (the product's source versions too).
    """

    def load() -> Principal | None:
        return identity_service.lookup_active_principal(platform.sessions, client_id)

    ctx.cache_epochs = platform.epochs.read()
    return platform.principal_cache.get(client_id, ctx.cache_epochs.principals, load)


def _authenticate_known(
    platform: Platform, authorization: str | None, ctx: RequestContext
) -> Principal | None:
    """The caller, when everything needed is already in memory: a token verified before (its
    time window checked again), fresh cache epochs from the watcher, and the client cached at
    those epochs. None otherwise: the caller then takes the full path, which also audits any
    refusal. Runs on the event loop, so it must never wait for anything."""
    epochs = platform.epochs.recent()
    if epochs is None or not authorization:
        return None
    scheme, _, token = authorization.partition(" ")
    if scheme.lower() != "bearer":
        return None
    try:
        claims = platform.tokens.known(token.strip())
    except TokenInvalid:
        return None
    if claims is None:
        return None
    held, principal = platform.principal_cache.peek(claims.client_id, epochs.principals)
    if not held or principal is None or principal.organisation != claims.organisation:
        return None
    ctx.cache_epochs = epochs
    ctx.actor = principal.client_id
    ctx.actor_org = principal.organisation
    ctx.actor_roles = principal.roles
    return principal


async def authenticated(request: Request) -> Principal:
    platform = get_platform(request)
    ctx = request_context(request)
    authorization = request.headers.get("authorization")
    sharing = request.url.path.startswith(SHARING_PREFIX)
    principal = None if sharing else _authenticate_known(platform, authorization, ctx)
    if principal is None:
        principal = await run_in_threadpool(_authenticate, platform, authorization, ctx, sharing)
    request.state.principal = principal
    request.state.ctx = ctx
    logs.principal_var.set(principal.client_id)
    return principal


Authenticated = Annotated[Principal, Depends(authenticated)]


async def context(request: Request, _principal: Authenticated) -> RequestContext:
    """The caller's context; depends on authentication so it can never be built without it."""
    ctx: RequestContext = request.state.ctx
    return ctx


Context = Annotated[RequestContext, Depends(context)]
