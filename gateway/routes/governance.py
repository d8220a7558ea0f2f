"""Withdrawal, erasure and rectification of a dataset's data, and its deletion certificates."""

from __future__ import annotations

from datetime import date
from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, ConfigDict, Field
from starlette.concurrency import run_in_threadpool

from gateway import schemas
from gateway.deps import Authenticated, Context, PlatformDep
from gateway.responses import FastJSONResponse
from services.retention import service as governance
from services.retention.selectors import PersonQuery

router = APIRouter(prefix="/v1/datasets", tags=["governance"])


class Deletion(schemas._Open):
    """A deletion: its state (requested, deleting, certified, cancelled) and, once certified,
    the signed certificate (`certificate` and `signature`; verify it offline with
    `together deletions verify`)."""

    id: str
    kind: str = Field(description="retention, withdrawal, erasure or rectification")
    state: str
    dataset: str
    rows_removed: int
    certificate: dict[str, Any] | None = None
    signature: str | None = None


class DeletionList(schemas._Open):
    dataset: str
    deletions: list[Deletion]


class WithdrawalIn(BaseModel):
    model_config = ConfigDict(extra="forbid")
    reason: str | None = Field(default=None, max_length=500)


class WithdrawalDecision(BaseModel):
    model_config = ConfigDict(extra="forbid")
    confirm: bool = Field(description="true deletes every version; false refuses the request")


class ErasureIn(BaseModel):
    """One person, by the identifying values the partner holds: identifiers of the dataset
    (e.g. `{"suspect_nominal_ref": "NOM123"}`) and/or surname, forename and date of birth
    together. Matched through the keyed pseudonyms the rows are stored with."""

    model_config = ConfigDict(extra="forbid")
    identifiers: dict[str, str] = Field(default_factory=dict, max_length=10)
    surname: str | None = Field(default=None, max_length=100)
    forename: str | None = Field(default=None, max_length=100)
    dob: date | None = None
    reason: str = Field(min_length=1, max_length=500)
    case_reference: str = Field(min_length=1, max_length=100)
    rectification: bool = Field(
        default=False,
        description="keep the person's rows of `corrected_upload` (the corrected values the "
        "partner pushed first) and remove the others",
    )
    corrected_upload: str | None = Field(default=None, max_length=36)


@router.delete(
    "/{dataset}",
    status_code=202,
    response_model=Deletion,
    responses=schemas.problems(403, 409),
)
async def withdraw_dataset(
    dataset: str,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
    body: WithdrawalIn | None = None,
) -> FastJSONResponse:
    """The owner's partner system asks to withdraw the dataset. Nothing is deleted until an
    IG lead of the owner confirms at `.../withdrawals/{id}/decision`."""
    found = await run_in_threadpool(
        governance.request_withdrawal,
        platform.governance,
        principal,
        ctx,
        dataset,
        body.reason if body else None,
    )
    return FastJSONResponse(found, status_code=202)


@router.post(
    "/{dataset}/withdrawals/{deletion_id}/decision",
    response_model=Deletion,
    responses=schemas.problems(403, 404, 409),
)
async def decide_withdrawal(
    dataset: str,
    deletion_id: str,
    body: WithdrawalDecision,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> FastJSONResponse:
    """An IG lead of the owner confirms (every version and file deleted, certificate issued;
    products that need the dataset answer 409 SOURCE_WITHDRAWN) or refuses the withdrawal."""
    found = await run_in_threadpool(
        governance.decide_withdrawal,
        platform.governance,
        principal,
        ctx,
        dataset,
        deletion_id,
        confirm=body.confirm,
    )
    return FastJSONResponse(found)


@router.post(
    "/{dataset}/erasures",
    status_code=201,
    response_model=Deletion,
    responses=schemas.problems(400, 403, 409),
)
async def erase_person(
    dataset: str,
    body: ErasureIn,
    principal: Authenticated,
    ctx: Context,
    platform: PlatformDep,
) -> FastJSONResponse:
    """An IG lead of the owner erases (or rectifies) one person's rows: a new version without
    them, every older file that held them deleted, and a signed certificate. No match is
    still certified, as a search that found nothing."""
    request = governance.ErasureRequest(
        person=PersonQuery(
            identifiers=body.identifiers,
            surname=body.surname,
            forename=body.forename,
            dob=body.dob,
        ),
        reason=body.reason,
        case_reference=body.case_reference,
        rectification=body.rectification,
        corrected_upload=body.corrected_upload,
    )
    found = await run_in_threadpool(
        governance.erase, platform.governance, principal, ctx, dataset, request
    )
    return FastJSONResponse(found, status_code=201)


@router.get(
    "/{dataset}/deletions",
    response_model=DeletionList,
    responses=schemas.problems(403),
)
async def list_deletions(
    dataset: str, principal: Authenticated, ctx: Context, platform: PlatformDep
) -> FastJSONResponse:
    """Every deletion of the dataset, newest first, with its signed certificate: for the
    owner's partner systems and IG leads."""
    found = await run_in_threadpool(
        governance.list_deletions, platform.governance, principal, ctx, dataset
    )
    return FastJSONResponse({"dataset": dataset, "deletions": found})
