from __future__ import annotations

from fastapi import APIRouter
from starlette.concurrency import run_in_threadpool

from gateway.deps import PlatformDep
from gateway.responses import FastJSONResponse

router = APIRouter()


@router.get("/healthz", include_in_schema=False)
async def healthz() -> FastJSONResponse:
    return FastJSONResponse({"status": "ok"})


@router.get("/readyz", include_in_schema=False)
async def readyz(platform: PlatformDep) -> FastJSONResponse:
    await run_in_threadpool(platform.ready)
    return FastJSONResponse({"status": "ready"})
