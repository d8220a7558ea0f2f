"""The audit log's signed checkpoints and public keys, published so partners keep copies."""

from __future__ import annotations

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.audit import checkpoints

router = APIRouter(prefix="/v1/audit", tags=["audit"])


@router.get("/checkpoints", response_model=schemas.Checkpoints)
async def list_checkpoints(
    ctx: Context,
    platform: PlatformDep,
    after: int | None = Query(None, ge=-1, description="Only checkpoints after this seq"),
    limit: int = Query(1000, ge=1, le=10000, description="At most this many"),
) -> FastJSONResponse:
    """Signed checkpoints (tree size, Merkle root, chain head, time, key id) in order, and
    the public keys that verify them. Any authenticated principal may read them."""
    published = await run_in_threadpool(
        checkpoints.read_published,
        platform.sessions,
        ctx,
        platform.audit_signer,
        after=after,
        limit=limit,
    )
    return FastJSONResponse(published)


@router.get("/checkpoints/consistency", response_model=schemas.ConsistencyProof)
async def consistency_proof(
    ctx: Context,
    platform: PlatformDep,
    from_size: int = Query(..., ge=1, description="The smaller tree size (a checkpoint's)"),
    to_size: int = Query(..., ge=1, description="The larger tree size (a later checkpoint's)"),
) -> FastJSONResponse:
    """The RFC 6962 consistency proof between two tree sizes (hex nodes): what a witness or a
    partner checks before trusting a later checkpoint. Any authenticated principal may read it."""
    proof = await run_in_threadpool(
        checkpoints.read_consistency, platform.sessions, ctx, from_size, to_size
    )
    return FastJSONResponse(proof)
