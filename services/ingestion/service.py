"""One upload = one unit of work: authorise, validate, pseudonymise, store, audit.

The request body has already been streamed to a file by the caller (never held in memory).
The file is read in batches; each batch is validated against the contract and, while the upload
is still clean, protected and written to a new Parquet file. Only when the whole file is valid
(including key uniqueness) does one transaction publish the version, record the upload, settle
the Idempotency-Key and write the audit event. Any failure before that commit leaves the
previous version current.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import PolicyEngine, Resource
from services.authz.vocabulary import Action, ResourceType
from services.contracts.model import Contract, Status
from services.contracts.protection import Protector
from services.contracts.validation import ValidationReport
from services.identity.schemas import Principal
from services.ingestion import repository, worker
from services.ingestion.models import IdempotencyRecord, IdempotencyState, Upload
from services.kit import metrics
from services.kit.clock import utcnow
from services.kit.errors import (
    BadRequest,
    ContractViolation,
    Forbidden,
    IdempotencyConflict,
    IdempotencyMismatch,
    NotFound,
    TogetherError,
)
from services.kit.ids import new_id
from services.kit.uow import audited, transaction
from services.storage import service as storage_service
from services.storage.inputs import InputLimits
from services.storage.models import UploadMode
from services.storage.service import Storage
from services.storage.staging import StagedBody, is_storage_full

log = logging.getLogger(__name__)

_MODES = frozenset(UploadMode)
_HEARTBEAT_SECONDS = 2.0


class StorageFull(TogetherError):
    """The data folder is full: the server's condition, retryable once space is freed."""

    code = "INSUFFICIENT_STORAGE"
    status = 507
    title = "The server has no room to store this upload now; retry later"


@dataclass
class IngestionDeps:
    sessions: sessionmaker[Session]
    contracts: dict[str, Contract]
    storage: Storage
    protector: Protector
    policy: PolicyEngine
    limits: InputLimits
    lease_seconds: int
    # The parsing child's address space beyond what it inherits, and how long it may go
    # without reporting progress (services/ingestion/worker.py).
    parse_memory_bytes: int = 4 << 30
    parse_silence_seconds: float = 120.0
    # The active version of a dataset's contract, from its stored text (services/lifecycle,
    # wired by services.platform): an upload validates against it, never against the file on
    # disk, which may be a newer draft. It raises a 409 naming the state when none is active.
    active_contract: Callable[[str], Contract] | None = None


@dataclass
class UploadRequest:
    dataset_id: str
    mode: UploadMode
    media_type: str
    body_path: Path
    body_sha256: str
    size_bytes: int
    idempotency_key: str | None
    # The codec of a charset declared in the Content-Type (services/storage/inputs.py); None: UTF-8.
    charset: str | None = None
    # The encrypted staging file and its key (services/storage/staging.py); None when
    # `body_path` is a plain file of the server's own (the demo loader's generated data).
    staged: StagedBody | None = None


@dataclass
class UploadOutcome:
    status_code: int
    body: dict[str, Any]
    replayed: bool = False


def get_contract(deps: IngestionDeps, dataset_id: str) -> Contract:
    contract = deps.contracts.get(dataset_id)
    if contract is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return contract


def authorize_upload(
    deps: IngestionDeps, principal: Principal, ctx: RequestContext, dataset_id: str, mode: str
) -> Contract:
    """Checked before a byte of the body is read. Every refusal is audited."""
    contract = get_contract(deps, dataset_id)
    decision = deps.policy.decide(
        principal,
        Action.DATASET_UPLOAD,
        Resource(ResourceType.DATASET, contract.id, contract.owner),
    )
    if not decision.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            decision,
            reason="not permitted to upload to this dataset",
            resource_type="dataset",
            resource=contract.id,
            resource_org=contract.owner,
            parameters={"action": Action.DATASET_UPLOAD.value, "mode": mode},
        )
        raise Forbidden("you may not upload to this dataset")
    if mode not in _MODES:
        raise BadRequest("mode must be 'append' or 'replace'")
    if contract.status is not Status.ACTIVE:
        raise BadRequest(f"contract {contract.id} {contract.version} is retired")
    try:
        return active_version(deps, contract)
    except TogetherError:
        record_refused_upload(
            deps, ctx, contract.id, contract.owner, "contract not active", {"mode": mode}
        )
        raise


def active_version(deps: IngestionDeps, contract: Contract) -> Contract:
    """The contract an upload to `contract.id` validates against: its active version."""
    if deps.active_contract is None:
        return contract
    return deps.active_contract(contract.id)


def _fingerprint(req: UploadRequest) -> str:
    """What makes two requests "the same" for an Idempotency-Key: body, dataset and mode."""
    material = f"{req.body_sha256}\n{req.dataset_id}\n{req.mode}\n{req.charset or ''}".encode()
    return hashlib.sha256(material).hexdigest()


def _claim_key(
    deps: IngestionDeps,
    principal: Principal,
    ctx: RequestContext,
    req: UploadRequest,
    upload_id: str,
) -> UploadOutcome | None:
    """Claim the Idempotency-Key, or answer from it. Returns an outcome when the work is done."""
    assert req.idempotency_key is not None
    now = utcnow()
    for _attempt in range(3):
        try:
            settled = _claim_once(deps, principal, req, upload_id, now)
        except IntegrityError:
            continue  # a concurrent request inserted the same key first; look again
        if settled is None:
            return None
        # A settled key never changes again, so the replay's event needs no lock on it.
        with audited(deps.sessions, "the upload replay") as uow:
            uow.audit(
                audit_service.event(
                    ctx,
                    AuditRecord(
                        action=AuditAction.UPLOAD_REPLAYED,
                        outcome=Outcome.SUCCESS,
                        resource_type="upload",
                        resource=settled.upload_id,
                        resource_org=principal.organisation,
                        parameters={"dataset": req.dataset_id},
                    ),
                )
            )
        assert settled.response_status is not None and settled.response_body is not None
        return UploadOutcome(settled.response_status, settled.response_body, True)
    raise IdempotencyConflict()


def _claim_once(
    deps: IngestionDeps, principal: Principal, req: UploadRequest, upload_id: str, now: datetime
) -> IdempotencyRecord | None:
    """Claim the key for this attempt (None), or return it already settled.

    The claim commits on its own, before the body is processed, so that a retry arriving
    meanwhile sees it; the upload's event commits later, with its outcome. The insert is
    flushed here so that a concurrent claim of the same key fails inside the transaction,
    as an `IntegrityError` the caller retries.
    """
    assert req.idempotency_key is not None
    lease = now + timedelta(seconds=deps.lease_seconds)
    with transaction(deps.sessions) as session:
        record = repository.get_idempotency(
            session, principal.client_id, req.idempotency_key, for_update=True
        )
        if record is None:
            session.add(
                IdempotencyRecord(
                    client_id=principal.client_id,
                    key=req.idempotency_key,
                    request_sha256=_fingerprint(req),
                    state=IdempotencyState.IN_FLIGHT,
                    lease_until=lease,
                    upload_id=upload_id,
                    created_at=now,
                )
            )
            session.flush()
            return None
        if record.request_sha256 != _fingerprint(req):
            raise _key_reused(deps, session, record, req)
        if record.state == IdempotencyState.DONE:
            return record
        if record.lease_until > now:
            raise IdempotencyConflict()
        # The previous attempt died without finishing (its lease ran out): take it over.
        record.lease_until = lease
        record.upload_id = upload_id
        return None


def _key_reused(
    deps: IngestionDeps, session: Session, record: IdempotencyRecord, req: UploadRequest
) -> IdempotencyMismatch:
    """Say what differs from the request that first used the key, so the client can tell a
    retry sent with the wrong mode or dataset from a new file sent under an old key.

    Nothing beyond the fingerprint is stored for a claim: with this request's body, the first
    request's dataset and mode are found by trying each (there are few); a different body is
    read back from the upload the key settled on, when it has one.
    """
    first: dict[str, str] | None = None
    for dataset_id in deps.contracts:
        for mode in UploadMode:
            candidate = replace(req, dataset_id=dataset_id, mode=mode)
            if _fingerprint(candidate) == record.request_sha256:
                first = {"content": req.body_sha256, "dataset": dataset_id, "mode": mode}
    if first is None and record.upload_id is not None:
        upload = repository.get_upload_for_client(session, record.upload_id, record.client_id)
        if upload is not None:
            first = {
                "content": upload.content_sha256,
                "dataset": upload.dataset_id,
                "mode": upload.mode,
            }
    this = {"content": req.body_sha256, "dataset": req.dataset_id, "mode": str(req.mode)}
    labels = {"content": "content_sha256", "dataset": "dataset", "mode": "mode"}
    if first is None:
        # Still in flight with another body: only the body can differ in a way not found above.
        return IdempotencyMismatch(
            "this Idempotency-Key was first used with a different body (content_sha256); "
            f"this request has content_sha256={req.body_sha256}. Send a new file with a new key",
            extra={"differs": ["content"]},
        )
    differs = [name for name in ("content", "dataset", "mode") if first[name] != this[name]]
    was = ", ".join(f"{labels[name]}={first[name]}" for name in differs)
    now = ", ".join(f"{labels[name]}={this[name]}" for name in differs)
    return IdempotencyMismatch(
        f"this Idempotency-Key was first used with {was}; this request has {now}. "
        "A retry must repeat the first request exactly; a new upload needs a new key",
        extra={"differs": differs},
    )


def _heartbeat(deps: IngestionDeps, principal: Principal, key: str) -> None:
    """Extend the key's lease while the body is processed, so no retry takes the key over."""
    with transaction(deps.sessions) as session:
        record = repository.get_idempotency(session, principal.client_id, key)
        if record is not None and record.state == IdempotencyState.IN_FLIGHT:
            record.lease_until = utcnow() + timedelta(seconds=deps.lease_seconds)


def ingest(
    deps: IngestionDeps, principal: Principal, ctx: RequestContext, req: UploadRequest
) -> UploadOutcome:
    """Claim the key, parse in a child process (services/ingestion/worker.py), then commit the
    version, the upload, the settled key and the event in one transaction.

    Failures after the claim release it (when the database can still be reached), so that a
    retry with the same key runs again rather than waiting for the lease to lapse.
    """
    contract = active_version(deps, get_contract(deps, req.dataset_id))
    upload_id = new_id()
    if req.idempotency_key is not None:
        replay = _claim_key(deps, principal, ctx, req, upload_id)
        if replay is not None:
            return replay
    started = time.monotonic()
    output_name = new_id()
    try:
        result = _parse_isolated(deps, principal, req, contract, output_name)
    except worker.ParserFailed as exc:
        deps.storage.discard(contract.id, output_name)
        return _finish_unreadable(deps, principal, ctx, req, contract, upload_id, exc.reason)
    except OSError as exc:
        deps.storage.discard(contract.id, output_name)
        _release_key(deps, principal, req, upload_id)
        if not is_storage_full(exc):
            raise
        record_refused_upload(
            deps,
            ctx,
            contract.id,
            contract.owner,
            "insufficient_storage",
            {"mode": req.mode, "media_type": req.media_type[:100]},
        )
        raise StorageFull() from exc
    except BaseException:
        deps.storage.discard(contract.id, output_name)
        _release_key(deps, principal, req, upload_id)
        raise
    if not result.report.ok:
        return _finish_rejected(
            deps, principal, ctx, req, contract, upload_id, result.rows, result.report
        )
    assert result.stored is not None
    try:
        # The object is in the store, verified, before the version's row commits; an
        # unreachable store answers 503 STORAGE_UNAVAILABLE and the key is released below.
        deps.storage.put(result.stored)
        return _finish_accepted(
            deps, principal, ctx, req, contract, upload_id, result.rows, result.stored, started
        )
    except BaseException:
        # Not published: the file is an orphan nobody can see. Remove it now if we can.
        deps.storage.discard(contract.id, output_name)
        _release_key(deps, principal, req, upload_id)
        raise


def _parse_isolated(
    deps: IngestionDeps,
    principal: Principal,
    req: UploadRequest,
    contract: Contract,
    output_name: str,
) -> worker.ParseResult:
    existing: tuple[Path, ...] = ()
    if req.mode == UploadMode.APPEND:
        with deps.sessions() as session:
            current = storage_service.current_version(session, deps.storage, contract.id)
        if current is not None:
            existing = current.files
    job = worker.ParseJob(
        contract=contract,
        protector=deps.protector,
        limits=deps.limits,
        storage=deps.storage,
        media_type=req.media_type,
        charset=req.charset,
        mode=req.mode,
        body_path=req.body_path,
        staged=req.staged,
        existing_files=existing,
        output_name=output_name,
    )
    key = req.idempotency_key

    def beat() -> None:
        if key is not None:
            _heartbeat(deps, principal, key)

    return worker.run_isolated(
        job,
        beat=beat,
        beat_every=_HEARTBEAT_SECONDS,
        memory_budget=deps.parse_memory_bytes,
        silence_seconds=deps.parse_silence_seconds,
    )


def _release_key(
    deps: IngestionDeps, principal: Principal, req: UploadRequest, upload_id: str
) -> None:
    """Give up this attempt's claim, so that a retry runs at once. Best effort: when the
    database is what failed, the claim lapses with its lease instead."""
    if req.idempotency_key is None:
        return
    try:
        with transaction(deps.sessions) as session:
            _drop_claim(session, principal, req, upload_id)
    except Exception:
        log.warning("could not release an Idempotency-Key claim", exc_info=True)


def _settle_key(
    session: Session,
    principal: Principal,
    req: UploadRequest,
    upload_id: str,
    status: int,
    body: dict[str, Any],
) -> None:
    if req.idempotency_key is None:
        return
    record = repository.get_idempotency(
        session, principal.client_id, req.idempotency_key, for_update=True
    )
    if record is None or record.state == IdempotencyState.DONE or record.upload_id != upload_id:
        # Our lease ran out and another attempt took the key over: let that attempt settle it.
        raise IdempotencyConflict()
    record.state = IdempotencyState.DONE
    record.response_status = status
    record.response_body = body


def _upload_row(
    principal: Principal,
    req: UploadRequest,
    contract: Contract,
    upload_id: str,
    now: datetime,
    status: str,
    rows: int,
    version: int | None,
    report: dict[str, Any] | None,
) -> Upload:
    """The record of one finished upload, as its sender will see it at GET /v1/uploads/{id}."""
    return Upload(
        id=upload_id,
        dataset_id=contract.id,
        contract_version=contract.version,
        client_id=principal.client_id,
        organisation=principal.organisation,
        mode=req.mode,
        media_type=req.media_type,
        status=status,
        rows=rows,
        size_bytes=req.size_bytes,
        content_sha256=req.body_sha256,
        version=version,
        report=report,
        created_at=now,
        finished_at=now,
    )


def _finish_accepted(
    deps: IngestionDeps,
    principal: Principal,
    ctx: RequestContext,
    req: UploadRequest,
    contract: Contract,
    upload_id: str,
    rows: int,
    stored_file: storage_service.StoredFile,
    started: float,
) -> UploadOutcome:
    now = utcnow()
    with audited(deps.sessions, "the upload") as uow:
        session = uow.session
        version = storage_service.publish(
            session,
            dataset_id=contract.id,
            contract_version=contract.version,
            mode=req.mode,
            upload_id=upload_id,
            new_file=stored_file,
        )
        body = {
            "upload_id": upload_id,
            "dataset": contract.id,
            "status": "accepted",
            "mode": req.mode,
            "rows": rows,
            "version": version,
            "contract_version": contract.version,
            "content_sha256": req.body_sha256,
            "received_at": now.isoformat(),
        }
        session.add(
            _upload_row(principal, req, contract, upload_id, now, "accepted", rows, version, None)
        )
        _settle_key(session, principal, req, upload_id, 201, body)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DATASET_INGESTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="dataset",
                    resource=contract.id,
                    resource_org=contract.owner,
                    parameters={"mode": req.mode, "media_type": req.media_type},
                    rows=rows,
                    details={
                        "upload_id": upload_id,
                        "contract_version": contract.version,
                        "version": version,
                        "content_sha256": req.body_sha256,
                        "seconds": round(time.monotonic() - started, 3),
                    },
                ),
            )
        )
    log.info("upload accepted", extra={"upload_id": upload_id, "rows": rows})
    metrics.count_upload("accepted", rows)
    return UploadOutcome(201, body)


def _finish_rejected(
    deps: IngestionDeps,
    principal: Principal,
    ctx: RequestContext,
    req: UploadRequest,
    contract: Contract,
    upload_id: str,
    rows: int,
    report: ValidationReport,
) -> UploadOutcome:
    now = utcnow()
    report_doc = report.to_dict()
    error = ContractViolation(
        f"{report.total} violation(s) of contract {contract.id} {contract.version}; "
        "nothing was stored"
    )
    body = {
        "type": "about:blank",
        "status": error.status,
        "code": error.code,
        "title": error.title,
        "detail": error.detail,
        "upload_id": upload_id,
        "dataset": contract.id,
        "contract_version": contract.version,
        "report": report_doc,
    }
    with audited(deps.sessions, "the rejected upload") as uow:
        session = uow.session
        session.add(
            _upload_row(
                principal, req, contract, upload_id, now, "rejected", rows, None, report_doc
            )
        )
        _settle_key(session, principal, req, upload_id, 422, body)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DATASET_REJECTED,
                    outcome=Outcome.REJECTED,
                    reason="contract violation",
                    resource_type="dataset",
                    resource=contract.id,
                    resource_org=contract.owner,
                    parameters={"mode": req.mode, "media_type": req.media_type},
                    rows=rows,
                    details={
                        "upload_id": upload_id,
                        "contract_version": contract.version,
                        "violations": report.total,
                        "totals": dict(report.totals),
                    },
                ),
            )
        )
    metrics.count_upload("refused", rows)
    return UploadOutcome(422, body)


def _drop_claim(session: Session, principal: Principal, req: UploadRequest, upload_id: str) -> None:
    """Delete this attempt's unsettled claim of the key (not one another attempt took over)."""
    if req.idempotency_key is None:
        return
    record = repository.get_idempotency(
        session, principal.client_id, req.idempotency_key, for_update=True
    )
    if (
        record is not None
        and record.state == IdempotencyState.IN_FLIGHT
        and record.upload_id == upload_id
    ):
        session.delete(record)


def _finish_unreadable(
    deps: IngestionDeps,
    principal: Principal,
    ctx: RequestContext,
    req: UploadRequest,
    contract: Contract,
    upload_id: str,
    reason: str,
) -> UploadOutcome:
    """The parser died on the file (or stopped answering): a 422, audited, nothing stored.

    The key is released rather than settled: the failure may not be the file's (memory
    pressure, an operator's kill), so a retry with the same key runs again.
    """
    now = utcnow()
    detail = f"the file could not be read: {reason}; nothing was stored"
    body = {
        "type": "about:blank",
        "status": 422,
        "code": "UNREADABLE_FILE",
        "title": "The file could not be read",
        "detail": detail,
        "upload_id": upload_id,
        "dataset": contract.id,
        "contract_version": contract.version,
    }
    with audited(deps.sessions, "the unreadable upload") as uow:
        session = uow.session
        session.add(
            _upload_row(
                principal,
                req,
                contract,
                upload_id,
                now,
                "rejected",
                0,
                None,
                {"unreadable": detail},
            )
        )
        _drop_claim(session, principal, req, upload_id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DATASET_REJECTED,
                    outcome=Outcome.REJECTED,
                    reason="unreadable file",
                    resource_type="dataset",
                    resource=contract.id,
                    resource_org=contract.owner,
                    parameters={"mode": req.mode, "media_type": req.media_type},
                    details={"upload_id": upload_id, "parser": reason},
                ),
            )
        )
    log.warning("upload parser failed", extra={"upload_id": upload_id, "reason": reason})
    metrics.count_upload("refused", 0)
    return UploadOutcome(422, body)


def record_refused_upload(
    deps: IngestionDeps,
    ctx: RequestContext,
    dataset_id: str,
    owner: str | None,
    reason: str,
    parameters: dict[str, Any],
) -> None:
    """An upload refused before validation (size, media type, bad key): audited all the same."""
    audit_service.record_committed(
        deps.sessions,
        ctx,
        AuditRecord(
            action=AuditAction.DATASET_REJECTED,
            outcome=Outcome.REJECTED,
            reason=reason,
            resource_type="dataset",
            resource=dataset_id,
            resource_org=owner,
            parameters=parameters,
        ),
    )
    metrics.count_upload("refused", 0)
