from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session

from services.ingestion.models import IdempotencyRecord, Upload


def get_idempotency(
    session: Session, client_id: str, key: str, *, for_update: bool = False
) -> IdempotencyRecord | None:
    statement = select(IdempotencyRecord).where(
        IdempotencyRecord.client_id == client_id, IdempotencyRecord.key == key
    )
    if for_update:
        statement = statement.with_for_update()
    return session.execute(statement).scalar_one_or_none()


def get_upload_for_client(session: Session, upload_id: str, client_id: str) -> Upload | None:
    # Scoped to the caller: another client's upload is indistinguishable from a missing one.
    return session.execute(
        select(Upload).where(Upload.id == upload_id, Upload.client_id == client_id)
    ).scalar_one_or_none()


def uploads_for_client(
    session: Session,
    client_id: str,
    *,
    dataset_id: str | None,
    before: Upload | None,
    limit: int,
) -> list[Upload]:
    """A client's own uploads, newest first, from just after ``before`` (a keyset page)."""
    statement = select(Upload).where(Upload.client_id == client_id)
    if dataset_id is not None:
        statement = statement.where(Upload.dataset_id == dataset_id)
    if before is not None:
        # (created_at, id) orders uploads made in the same microsecond too.
        statement = statement.where(
            (Upload.created_at < before.created_at)
            | ((Upload.created_at == before.created_at) & (Upload.id < before.id))
        )
    statement = statement.order_by(Upload.created_at.desc(), Upload.id.desc()).limit(limit)
    return list(session.execute(statement).scalars())
