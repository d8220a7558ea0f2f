"""Data encryption key operations on the key file, each audited (security-tests T42)."""

from __future__ import annotations

from pathlib import Path

from services.admin.deps import AdminDeps
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.kit.keys import retire_encryption_key, rotate_encryption_key
from services.kit.uow import audited


def _record(action: AuditAction, key_id: int) -> AuditRecord:
    return AuditRecord(
        action=action,
        outcome=Outcome.SUCCESS,
        resource_type="data_key",
        resource=str(key_id),
        details={"key_id": key_id},
    )


def rotate(deps: AdminDeps, ctx: RequestContext, key_file: Path) -> int:
    """Adds a data encryption key and makes it current. The file is replaced inside the unit of
    work: if that fails nothing is recorded; if the event's commit fails, the operator sees the
    error and `together keys list` shows the key (a key file is not a database row)."""
    with audited(deps.sessions, "rotating the data key") as uow:
        new_id = rotate_encryption_key(key_file)
        uow.audit(audit_service.event(ctx, _record(AuditAction.DATA_KEY_ROTATED, new_id)))
    return new_id


def retire(deps: AdminDeps, ctx: RequestContext, key_file: Path, key_id: int) -> None:
    """Removes a data encryption key (the caller has checked that no stored file uses it)."""
    with audited(deps.sessions, "retiring a data key") as uow:
        retire_encryption_key(key_file, key_id)
        uow.audit(audit_service.event(ctx, _record(AuditAction.DATA_KEY_RETIRED, key_id)))
