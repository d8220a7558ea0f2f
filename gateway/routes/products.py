from __future__ import annotations

import orjson
from fastapi import APIRouter, Query, Request
from starlette.concurrency import run_in_threadpool
from starlette.responses import Response

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.kit.errors import BadRequest
from services.products import formats
from services.products import service as product_service
from services.products.level3 import CASE_REFERENCE_HEADER, PURPOSE_HEADER, Justification

router = APIRouter(tags=["products"])

_MEDIA = {
    "csv": "text/csv; charset=utf-8",
    "parquet": "application/vnd.apache.parquet",
    "geojson": "application/geo+json",
}


@router.get("/v1/products", response_model=schemas.ProductList)
async def list_products(principal: Authenticated, platform: PlatformDep) -> FastJSONResponse:
    """The products the caller may read, with their parameters."""
    readable = await run_in_threadpool(product_service.list_readable, platform.products, principal)
    return FastJSONResponse({"products": readable})


@router.get(
    "/v1/products/{product_id}",
    response_model=schemas.ProductDocument,
    responses=schemas.PRODUCT_RESPONSES,
    openapi_extra=schemas.PRODUCT_REQUEST,
)
async def read_product(
    product_id: str,
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> Response:
    """One product; parameters are query parameters, `format=json|csv|parquet|geojson`; a
    person's id goes in the `X-Person-Id` header, never in the URL."""
    pairs = list(request.query_params.multi_items())
    in_url = sorted({name for name, _ in pairs if name in product_service.IDENTIFYING_PARAMETERS})
    if in_url:
        await run_in_threadpool(
            product_service.refuse_identifiers_in_url, platform.products, ctx, product_id, in_url
        )
    for name, header in product_service.IDENTIFYING_PARAMETERS.items():
        value = request.headers.get(header)
        if value is not None:
            pairs.append((name, value))
    fast = product_service.read_if_cached(platform.products, principal, ctx, product_id, pairs)
    if fast is not None:
        # An answer already held: only its audit event is awaited (without a thread).
        read, record = fast
        if record is not None:
            await product_service.audit_held_read(platform.products, ctx, record)
    else:
        read = await run_in_threadpool(
            product_service.read_product,
            platform.products,
            principal,
            ctx,
            product_id,
            pairs,
            _justification(request),
        )
    # The read is audited and committed by now; only from here do bytes leave.
    if read.format == "json":
        return FastJSONResponse(formats.to_json_document(read.result))
    filename = f"{read.result.product}.{read.format}"
    headers = {"Content-Disposition": f'attachment; filename="{filename}"'}
    # The file is rendered, and its SHA-256 audited, before any of it is sent (T48).
    body = await run_in_threadpool(product_service.export, platform.products, ctx, read)
    return Response(body, media_type=_MEDIA[read.format], headers=headers)


@router.put(
    "/v1/products/habitual-knife-carriers/assessments",
    response_model=schemas.Assessment,
    responses=schemas.problems(403, 404, 429),
    openapi_extra=schemas.ASSESSMENT_REQUEST,
)
async def assess_carrier(
    request: Request,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> FastJSONResponse:
    """Grade a habitual knife carrier:
    `{"person_id": ID, "rag": "red|amber|green", "lead_agency": ORG}`.

    The person id is in the body, never in the URL: paths end up in proxy and access logs
    (security-tests T45). Level 3: needs `X-Purpose` and `X-Case-Reference`, like a read.
    Every grading is kept.
    """
    try:
        body = orjson.loads(await request.body())
    except orjson.JSONDecodeError:
        raise BadRequest(
            'the body must be JSON: {"person_id": ..., "rag": ..., "lead_agency": ...}'
        ) from None
    graded = await run_in_threadpool(
        product_service.assess_carrier,
        platform.products,
        principal,
        ctx,
        body,
        _justification(request),
    )
    return FastJSONResponse(graded)


def _justification(request: Request) -> Justification:
    return Justification(
        request.headers.get(PURPOSE_HEADER), request.headers.get(CASE_REFERENCE_HEADER)
    )


@router.get(
    "/v1/access/explain", response_model=schemas.AccessExplanation, responses=schemas.problems(404)
)
async def explain(
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    product: str = Query(description="A product id"),
) -> FastJSONResponse:
    """Whether the caller may read a product, and which rule decided."""
    result = await run_in_threadpool(
        product_service.explain, platform.products, principal, ctx, product
    )
    return FastJSONResponse(result)
