from __future__ import annotations

import re
from typing import Annotated

from fastapi import APIRouter, Header, Query, Request
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse, ProblemResponse
from gateway.streaming import declared_length
from services.ingestion import service as ingestion_service
from services.ingestion import uploads
from services.ingestion.service import UploadRequest
from services.kit.errors import BadRequest, TogetherError, UnsupportedMediaType
from services.kit.settings import Settings
from services.storage import staging
from services.storage.inputs import SUPPORTED_MEDIA, UnsupportedCharset, parse_content_type
from services.storage.models import UploadMode

router = APIRouter(tags=["ingestion"])

_KEY_PATTERN = re.compile(r"^[\x21-\x7e]{1,200}$")


@router.post(
    "/v1/datasets/{dataset}/uploads",
    status_code=201,
    response_model=schemas.UploadAccepted,
    responses=schemas.UPLOAD_RESPONSES,
    openapi_extra=schemas.UPLOAD_REQUEST,
)
async def upload(
    dataset: str,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    mode: Annotated[str, Query(description="append or replace")],
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key")] = None,
) -> FastJSONResponse:
    """Push a dataset file (CSV, Parquet or NDJSON, optionally gzip) against its contract."""
    deps = platform.ingestion
    contract = await run_in_threadpool(
        ingestion_service.authorize_upload, deps, principal, ctx, dataset, mode
    )
    media_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if media_type not in SUPPORTED_MEDIA:
            raise UnsupportedMediaType("Content-Type must be one of " + ", ".join(SUPPORTED_MEDIA))
        try:
            _, charset = parse_content_type(request.headers.get("content-type", ""))
        except UnsupportedCharset as exc:
            raise UnsupportedMediaType(str(exc)) from None
        if idempotency_key is None:
            raise BadRequest(
                "the Idempotency-Key header is required on uploads: send a new unique value "
                "(e.g. a UUID) with each new file, and the same value again when retrying it",
                extra={"header": "Idempotency-Key"},
            )
        if not _KEY_PATTERN.match(idempotency_key):
            raise BadRequest("Idempotency-Key must be 1 to 200 printable ASCII characters")
        body = await _receive_staged(request, platform.settings)
    except TogetherError as exc:
        await run_in_threadpool(
            ingestion_service.record_refused_upload,
            deps,
            ctx,
            contract.id,
            contract.owner,
            exc.code.lower(),
            {"mode": mode, "media_type": media_type[:100]},
        )
        raise
    try:
        outcome = await run_in_threadpool(
            ingestion_service.ingest,
            deps,
            principal,
            ctx,
            UploadRequest(
                dataset_id=contract.id,
                mode=UploadMode(mode),
                media_type=media_type,
                body_path=body.path,
                body_sha256=body.sha256,
                size_bytes=body.size_bytes,
                idempotency_key=idempotency_key,
                charset=charset,
                staged=body,
            ),
        )
    finally:
        body.release()
    headers = {"Idempotent-Replayed": "true"} if outcome.replayed else None
    if outcome.status_code >= 400:
        response_body = dict(outcome.body)
        # Replays of responses stored before problems carried a type get one too.
        response_body.setdefault("type", "about:blank")
        response_body["request_id"] = ctx.request_id
        return ProblemResponse(response_body, status_code=outcome.status_code, headers=headers)
    return FastJSONResponse(outcome.body, status_code=outcome.status_code, headers=headers)


@router.get(
    "/v1/uploads/{upload_id}", response_model=schemas.Upload, responses=schemas.problems(404)
)
async def get_upload(
    upload_id: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """An upload's status and validation report, for the client that sent it."""
    result = await run_in_threadpool(
        uploads.upload_status, platform.ingestion, principal, ctx, upload_id
    )
    return FastJSONResponse(result)


async def _receive_staged(request: Request, settings: Settings) -> staging.StagedBody:
    """Stream the body into an encrypted staging file (services/storage/staging.py).

    Staging files no live upload holds (left by a crash) are swept first: a cheap look at one
    folder, so that it cannot fill up between runs of `together storage sweep`.
    """
    encoding = request.headers.get("content-encoding", "identity").strip().lower()
    if encoding not in ("identity", "gzip"):
        raise UnsupportedMediaType("Content-Encoding must be gzip or absent")
    declared_length(request, settings.upload_max_bytes)
    await run_in_threadpool(
        staging.sweep, settings.staging_dir, older_than_seconds=settings.idempotency_lease_seconds
    )
    try:
        writer = staging.StagingWriter(
            settings.staging_dir,
            gzip=encoding == "gzip",
            limit=settings.upload_max_bytes,
            decompressed_limit=settings.upload_max_decompressed_bytes,
        )
    except OSError as exc:
        raise _storage_error(exc) from exc
    try:
        async for chunk in request.stream():
            writer.feed(chunk)
        return writer.finish()
    except OSError as exc:
        writer.abort()
        raise _storage_error(exc) from exc
    except BaseException:
        writer.abort()
        raise


def _storage_error(exc: OSError) -> Exception:
    """A full disk is the server's condition (507), not the client's; other IO errors propagate."""
    if staging.is_storage_full(exc):
        return ingestion_service.StorageFull()
    return exc
