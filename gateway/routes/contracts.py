from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from gateway import schemas
from gateway.deps import Authenticated, PlatformDep
from gateway.responses import FastJSONResponse
from services.contracts.model import Contract
from services.kit.errors import NotFound

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
    return FastJSONResponse({"contracts": [_summary(c) for c in contracts]})


@router.get("/{dataset}", response_model=schemas.ContractDocument, responses=schemas.problems(404))
async def get_contract(
    dataset: str, _principal: Authenticated, platform: PlatformDep
) -> FastJSONResponse:
    contract = platform.contracts.get(dataset)
    if contract is None:
        raise NotFound(f"no contract for dataset {dataset!r}")
    return FastJSONResponse(contract.model_dump(mode="json", exclude_none=True))
