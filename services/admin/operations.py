"""The operator's tasks on the audit log and the dataset store, run from the command line.

Sealing and signing are bookkeeping over events already committed (no event of their own); an
export is itself audited before a byte of the log is written out.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import IO

from services.admin.deps import AdminDeps
from services.audit import chain, checkpoints
from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.chain import ChainCheck
from services.audit.export import ExportSummary, Verification, verify_database, write_export
from services.audit.models import AuditCheckpoint
from services.audit.service import AuditRecord, RequestContext
from services.kit.clock import utcnow
from services.kit.uow import transaction


@dataclass(frozen=True)
class SealReport:
    sealed: int
    chain: ChainCheck
    # None when another process held the chain lock and signed instead.
    checkpoint: AuditCheckpoint | None
    log: Verification


def _seal_and_sign(deps: AdminDeps) -> tuple[int, AuditCheckpoint | None]:
    sealed = chain.seal_all(deps.sessions)
    with transaction(deps.sessions) as session:
        checkpoint = checkpoints.write_checkpoint(session, deps.audit_signer)
    return sealed, checkpoint


def seal_log(deps: AdminDeps) -> SealReport:
    """Chain every committed event not yet sealed, sign a checkpoint, and verify the whole log."""
    sealed, checkpoint = _seal_and_sign(deps)
    with deps.sessions() as session:
        check = chain.verify_chain(session)
        verification = verify_database(session, deps.audit_signer)
    return SealReport(sealed, check, checkpoint, verification)


def export_log(
    deps: AdminDeps, ctx: RequestContext, out: IO[bytes], *, since: datetime | None
) -> ExportSummary:
    """The log as NDJSON with the checkpoints covering it; sealed and signed first, so that
    everything exported is covered."""
    audit_service.record_committed(
        deps.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.AUDIT_EXPORTED,
            outcome=Outcome.SUCCESS,
            resource_type="audit_log",
            parameters={"since": since.isoformat() if since else None},
        ),
    )
    _seal_and_sign(deps)
    with deps.sessions() as session:
        return write_export(
            session, out, deps.audit_signer.published_keys(), since=since, exported_at=utcnow()
        )


def sweep_storage(deps: AdminDeps, *, older_than_seconds: int) -> list[str]:
    """Remove dataset files no version references (left by a crash), once old enough."""
    with deps.sessions() as session:
        return deps.storage.sweep_orphans(session, older_than_seconds=older_than_seconds)
