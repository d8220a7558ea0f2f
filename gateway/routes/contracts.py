from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.contracts.model import Contract
from services.kit.errors import NotFound
from services.lifecycle import service as lifecycle

router = APIRouter(prefix="/v1/contracts", tags=["contracts"])


def _summary(contract: Contract) -> dict[str, Any]:
    return {
        "id": contract.id,
        "title": contract.title,
        "owner": contract.owner,
        "version": contract.version,
        "status": contract.status,
        "dpia_reference": contract.dpia_reference,
    }


@router.get("", response_model=schemas.ContractList)
async def list_contracts(_principal: Authenticated, platform: PlatformDep) -> FastJSONResponse:
    contracts = sorted(platform.contracts.values(), key=lambda c: c.id)
    # The file's version may be a draft: the version uploads validate against is the active one.
    active = await run_in_threadpool(lifecycle.active_versions, platform.lifecycle)
    return FastJSONResponse(
        {"contracts": [_summary(c) | {"active_version": active.get(c.id)} for c in contracts]}
    )


@router.get("/{dataset}", response_model=schemas.ContractDocument, responses=schemas.problems(404))
async def get_contract(
    dataset: str, _principal: Authenticated, platform: PlatformDep
) -> FastJSONResponse:
    contract = platform.contracts.get(dataset)
    if contract is None:
        raise NotFound(f"no contract for dataset {dataset!r}")
    return FastJSONResponse(contract.model_dump(mode="json", exclude_none=True))


class ContractVersionOut(schemas._Open):
    """One version of a contract: its state, its change against the version active when it
    was loaded (minor or major, each difference named), the check of a major change against
    the data held, and its sign-offs."""

    version: str
    state: str = Field(description="draft, approved, active or retired")
    content_sha256: str
    classification: str | None = Field(description="minor or major; null for an installed one")
    changes: list[Any]
    signoffs: list[Any]


class ContractVersionList(schemas._Open):
    dataset: str
    versions: list[ContractVersionOut]


class SignoffIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=40, description="the draft's version")
    organisation: str | None = Field(
        default=None,
        max_length=100,
        description="the organisation signed for: the owner's or vru (default: the caller's)",
    )
    content_sha256: str | None = Field(
        default=None,
        max_length=64,
        description="the hash of the draft the signer read; refused (409) if it differs",
    )


@router.get(
    "/{dataset}/versions",
    response_model=ContractVersionList,
    responses=schemas.problems(404),
)
async def contract_versions(
    dataset: str, _principal: Authenticated, platform: PlatformDep
) -> FastJSONResponse:
    """The changelog: every version of the contract, newest first."""
    versions = await run_in_threadpool(lifecycle.changelog, platform.lifecycle, dataset)
    return FastJSONResponse({"dataset": dataset, "versions": versions})


class ActivationIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    version: str = Field(min_length=1, max_length=40, description="the approved version")


@router.post(
    "/{dataset}/signoffs",
    response_model=ContractVersionOut,
    responses=schemas.problems(400, 403, 404, 409),
)
async def sign_off_contract(
    dataset: str,
    body: SignoffIn,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> FastJSONResponse:
    """An IG lead signs off a draft for their organisation (the owner's, or the VRU's); with
    both, the draft is approved. The same principal cannot sign for both; twice is a 409."""
    signed = await run_in_threadpool(
        lifecycle.sign_off,
        platform.lifecycle,
        principal,
        ctx,
        dataset,
        body.version,
        body.organisation or principal.organisation,
        body.content_sha256,
    )
    return FastJSONResponse(signed)


@router.post(
    "/{dataset}/activations",
    response_model=ContractVersionOut,
    responses=schemas.problems(400, 403, 404, 409),
)
async def activate_contract(
    dataset: str,
    body: ActivationIn,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> FastJSONResponse:
    """The owner's IG lead makes an approved version active; the active one is retired."""
    active = await run_in_threadpool(
        lifecycle.activate, platform.lifecycle, principal, ctx, dataset, body.version
    )
    return FastJSONResponse(active)
