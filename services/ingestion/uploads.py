"""A partner system's own uploads, newest first: what it sent, and what became of each.

Like one upload's status, the list is scoped to the client that sent them, whatever its roles:
an organisation-wide grant would be wider than what a client needs to check its own pushes.
"""

from __future__ import annotations

from typing import Any

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.identity.schemas import Principal
from services.ingestion import repository
from services.ingestion.models import Upload
from services.ingestion.service import IngestionDeps
from services.kit.errors import BadRequest, NotFound
from services.kit.uow import audited

DEFAULT_PAGE = 50
MAX_PAGE = 200


def describe(upload: Upload) -> dict[str, Any]:
    """An upload as ``GET /v1/uploads/{id}`` shows it."""
    return {
        "upload_id": upload.id,
        "dataset": upload.dataset_id,
        "status": upload.status,
        "mode": upload.mode,
        "media_type": upload.media_type,
        "rows": upload.rows,
        "size_bytes": upload.size_bytes,
        "content_sha256": upload.content_sha256,
        "contract_version": upload.contract_version,
        "version": upload.version,
        "received_at": upload.created_at.isoformat(),
        "report": upload.report,
    }


def upload_status(
    deps: IngestionDeps, principal: Principal, ctx: RequestContext, upload_id: str
) -> dict[str, Any]:
    """One of the caller's uploads; 404 for an upload of another client, as for none at all."""
    with audited(deps.sessions, "the upload status") as uow:
        upload = repository.get_upload_for_client(uow.session, upload_id, principal.client_id)
        if upload is None:
            raise NotFound("no such upload")
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.UPLOAD_VIEWED,
                    outcome=Outcome.SUCCESS,
                    resource_type="upload",
                    resource=upload.id,
                    resource_org=upload.organisation,
                    parameters={"dataset": upload.dataset_id},
                ),
            )
        )
    return describe(upload)


def list_uploads(
    deps: IngestionDeps,
    principal: Principal,
    ctx: RequestContext,
    *,
    dataset: str | None = None,
    before: str | None = None,
    limit: int | None = None,
) -> dict[str, Any]:
    """One page of the caller's uploads; ``next_before`` continues the list (None: the end).

    ``before`` is the id of the last upload of the previous page: a page does not shift when
    new uploads arrive meanwhile, as an offset would.
    """
    size = DEFAULT_PAGE if limit is None else limit
    if not 1 <= size <= MAX_PAGE:
        raise BadRequest(f"limit must be 1 to {MAX_PAGE}")
    with audited(deps.sessions, "the upload list") as uow:
        after = None
        if before is not None:
            after = repository.get_upload_for_client(uow.session, before, principal.client_id)
            if after is None:
                raise BadRequest("before must be the id of one of your uploads")
        # One more than asked: whether another page follows, without counting them all.
        found = repository.uploads_for_client(
            uow.session, principal.client_id, dataset_id=dataset, before=after, limit=size + 1
        )
        page = found[:size]
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.UPLOADS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="upload",
                    resource_org=principal.organisation,
                    parameters={"dataset": dataset, "before": before, "limit": size},
                    rows=len(page),
                ),
            )
        )
        body = {
            "uploads": [describe(upload) for upload in page],
            "next_before": page[-1].id if len(found) > size else None,
        }
    return body
