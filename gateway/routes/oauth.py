from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import PlatformDep, request_context
from gateway.responses import FastJSONResponse
from services.admin import sign_in
from services.identity import oauth
from services.kit.settings import Settings

router = APIRouter()


def token_policy(settings: Settings) -> oauth.TokenPolicy:
    """The token endpoint's limits and accepted client authentication, from the settings."""
    audiences = [settings.issuer]
    if settings.token_endpoint_url:
        audiences.append(settings.token_endpoint_url)
    return oauth.TokenPolicy(
        client_failures_per_minute=settings.token_client_failures_per_minute,
        address_failures_per_minute=settings.token_address_failures_per_minute,
        lockout_failures=settings.token_lockout_failures,
        lockout_seconds=settings.token_lockout_seconds,
        secrets_allowed=settings.client_secrets_allowed,
        assertion_audiences=tuple(audiences),
        leeway_seconds=settings.token_leeway_seconds,
    )


@router.post(
    "/oauth/token",
    tags=["identity"],
    response_model=schemas.OAuthToken,
    responses=schemas.TOKEN_RESPONSES,
    openapi_extra=schemas.TOKEN_REQUEST,
)
async def token(request: Request, platform: PlatformDep) -> FastJSONResponse:
    """OAuth 2.0 client credentials: a signed assertion (private_key_jwt), or a secret in the
    form body or HTTP Basic; returns a signed JWT. 429 with Retry-After when limited."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > oauth.MAX_FORM_BYTES:
            break
    result = await run_in_threadpool(
        sign_in.issue_token,
        platform.admin,
        request_context(request),
        content_type=request.headers.get("content-type", ""),
        body=body,
        authorization=request.headers.get("authorization"),
        policy=token_policy(platform.settings),
        rejection_window_seconds=platform.settings.auth_rejection_window_seconds,
    )
    return FastJSONResponse(result.body, status_code=result.status, headers=result.headers)
