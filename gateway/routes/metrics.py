"""The operational figures in the Prometheus text format, for a client holding `operator`.

A scrape is not audited: it reads counts and timings of the process (no record, no person, no
dataset content), and a scraper calling every few seconds would bury the audit trail in events
that say nothing. A refused scrape is audited like every other denial.
"""

from __future__ import annotations

from fastapi import APIRouter, Response
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from services.audit import service as audit_service
from services.authz.enforcer import Resource
from services.authz.vocabulary import Action, ResourceType
from services.kit import metrics
from services.kit.errors import Forbidden

router = APIRouter(tags=["operations"])


@router.get(
    "/metrics",
    response_class=Response,
    responses={
        200: {
            "content": {metrics.CONTENT_TYPE: {"schema": {"type": "string"}}},
            "description": "The figures",
        },
        **schemas.problems(403),
    },
)
async def read_metrics(principal: Authenticated, ctx: Context, platform: PlatformDep) -> Response:
    decision = platform.policy.decide(
        principal, Action.METRICS_READ, Resource(ResourceType.METRICS, "*", None)
    )
    if not decision.allowed:
        await run_in_threadpool(
            audit_service.record_denial,
            platform.sessions,
            ctx,
            decision,
            reason="not an operator",
            resource_type=ResourceType.METRICS.value,
        )
        raise Forbidden("operators only")
    body = await run_in_threadpool(metrics.render)
    return Response(body, media_type=metrics.CONTENT_TYPE)
