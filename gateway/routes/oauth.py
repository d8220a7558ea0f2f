from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from gateway.deps import PlatformDep, request_context
from gateway.responses import FastJSONResponse
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord
from services.identity import oauth

router = APIRouter()


@router.post("/oauth/token", tags=["identity"])
async def token(request: Request, platform: PlatformDep) -> FastJSONResponse:
    """OAuth 2.0 client credentials: form body or HTTP Basic; returns a signed JWT."""
    body = b""
    async for chunk in request.stream():
        body += chunk
        if len(body) > oauth.MAX_FORM_BYTES:
            break
    ctx = request_context(request)

    def issue() -> oauth.TokenResponse:
        with platform.sessions() as session:
            result = oauth.client_credentials(
                session,
                platform.tokens,
                content_type=request.headers.get("content-type", ""),
                body=body,
                authorization=request.headers.get("authorization"),
            )
            if result.principal is not None:
                ctx.actor = result.principal.client_id
                ctx.actor_org = result.principal.organisation
                ctx.actor_roles = result.principal.roles
                audit_service.record(
                    session,
                    ctx,
                    AuditRecord(action=AuditAction.TOKEN_ISSUED, outcome=Outcome.SUCCESS),
                )
                session.commit()
            else:
                session.rollback()
                audit_service.record_committed(
                    platform.sessions,
                    ctx,
                    AuditRecord(
                        action=AuditAction.TOKEN_REFUSED,
                        outcome=Outcome.DENIED,
                        reason=result.reason,
                        # The id a caller claims is recorded as claimed, never as the actor.
                        details={"claimed_client_id": (result.client_id or "")[:64]},
                    ),
                )
            return result

    result = await run_in_threadpool(issue)
    return FastJSONResponse(result.body, status_code=result.status, headers=result.headers)
