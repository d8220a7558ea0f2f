"""What a partner can see of its datasets: its own uploads, and a dataset's current version."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.ingestion import uploads as upload_listing
from services.products import datasets as dataset_service

router = APIRouter(tags=["ingestion"])


@router.get("/v1/uploads", response_model=schemas.UploadPage, responses=schemas.problems(404))
async def list_uploads(
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    dataset: Annotated[str | None, Query(description="Only this dataset's uploads")] = None,
    before: Annotated[
        str | None, Query(description="The `next_before` of the previous page")
    ] = None,
    limit: Annotated[int | None, Query(description="Uploads per page, 1 to 200 (50)")] = None,
) -> FastJSONResponse:
    """The caller's own uploads, newest first, each as `GET /v1/uploads/{id}` shows it."""
    result = await run_in_threadpool(
        upload_listing.list_uploads,
        platform.ingestion,
        principal,
        ctx,
        dataset=dataset,
        before=before,
        limit=limit,
    )
    return FastJSONResponse(result)


@router.get(
    "/v1/datasets/{dataset}", response_model=schemas.Dataset, responses=schemas.problems(403, 404)
)
async def get_dataset(
    dataset: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """A dataset's contract and current version: for its owner's systems, reviewers, readers."""
    result = await run_in_threadpool(
        dataset_service.describe_dataset, platform.products, principal, ctx, dataset
    )
    return FastJSONResponse(result)
