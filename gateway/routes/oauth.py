from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.concurrency import run_in_threadpool

from gateway.deps import PlatformDep, request_context
from gateway.responses import FastJSONResponse
from services.admin import sign_in
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
    result = await run_in_threadpool(
        sign_in.issue_token,
        platform.admin,
        request_context(request),
        content_type=request.headers.get("content-type", ""),
        body=body,
        authorization=request.headers.get("authorization"),
    )
    return FastJSONResponse(result.body, status_code=result.status, headers=result.headers)
