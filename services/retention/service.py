"""Data governance use cases: retention runs, withdrawal, erasure and rectification, and the
deletion certificates they produce (the engine is services/retention/rewrite.py).

Who may do what is the policy's (policies/policy.csv): a partner system asks to withdraw its
own organisation's dataset and an IG lead of that organisation confirms or refuses it; that IG
lead erases or rectifies one person's rows, with a reason and a case reference; both read the
dataset's certificates. A retention run is the platform's own: every server runs it on a
schedule, one replica at a time (a lease), and an operator can run it, or preview it with
`--dry-run`, from the command line.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from typing import Any

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Decision, PolicyEngine, Resource
from services.authz.vocabulary import Action, ResourceType
from services.contracts.model import Contract
from services.contracts.protection import Protector
from services.identity.schemas import Principal
from services.kit.clock import utcnow
from services.kit.errors import BadRequest, Forbidden, NotFound, TogetherError
from services.kit.ids import new_id
from services.kit.uow import audited
from services.retention import certificates, lease, rewrite, selectors
from services.retention.models import DataDeletion, DeletionKind, DeletionState
from services.retention.rewrite import DeletionDeps, DeletionRequest
from services.storage import repository
from services.storage.models import Dataset

log = logging.getLogger(__name__)

RETENTION_LEASE = "retention"
# Long enough for any run; the holder extends it after each dataset.
RETENTION_LEASE_SECONDS = 3600.0
SYSTEM_CONTEXT = RequestContext(actor="system:retention", actor_org="vru", actor_roles=[])


class WithdrawalState(TogetherError):
    code = "WITHDRAWAL_STATE"
    status = 409
    title = "This withdrawal is not in a state that allows this"


@dataclass
class GovernanceDeps:
    sessions: sessionmaker[Session]
    policy: PolicyEngine
    deletion: DeletionDeps
    protector: Protector
    # The shipped contracts (owners), the active version of a dataset's contract, and the one
    # its retention follows (the active one, else the one retired last).
    contracts: dict[str, Contract]
    active_contract: Callable[[str], Contract]
    retention_contract: Callable[[str], Contract]


# Retention


@dataclass(frozen=True)
class RetentionOutcome:
    dataset: str
    rows_removed: int
    certificate: str | None
    detail: dict[str, Any]

    def as_json(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "rows_removed": self.rows_removed,
            "certificate": self.certificate,
        } | self.detail


def _held_datasets(sessions: sessionmaker[Session]) -> list[str]:
    with sessions() as session:
        return list(
            session.execute(
                select(Dataset.id).where(Dataset.current_version.is_not(None)).order_by(Dataset.id)
            ).scalars()
        )


def run_retention(
    deps: GovernanceDeps,
    *,
    dry_run: bool = False,
    today: date | None = None,
    ctx: RequestContext | None = None,
) -> list[RetentionOutcome] | None:
    """Remove every row past its contract's retention, dataset by dataset, each with its
    certificate; None when another process is running it now. A dry run says what would go."""
    ctx = ctx or SYSTEM_CONTEXT
    day = today or utcnow().date()
    with lease.held(deps.sessions, RETENTION_LEASE, RETENTION_LEASE_SECONDS) as held:
        if held is None:
            return None
        if not dry_run:
            rewrite.complete_pending(deps.deletion, ctx, None)
        outcomes: list[RetentionOutcome] = []
        for dataset_id in _held_datasets(deps.sessions):
            outcome = _retain(deps, ctx, dataset_id, day, dry_run)
            if outcome is not None:
                outcomes.append(outcome)
            held.extend()
        return outcomes


def _retain(
    deps: GovernanceDeps, ctx: RequestContext, dataset_id: str, day: date, dry_run: bool
) -> RetentionOutcome | None:
    try:
        contract = deps.retention_contract(dataset_id)
    except TogetherError as exc:
        # A dataset whose contract has no active version keeps its rows until it has one;
        # the run says so rather than guess which retention applies.
        return RetentionOutcome(dataset_id, 0, None, {"skipped": exc.detail})
    selector = selectors.retention(contract, day)
    if selector is None:
        return None
    request = DeletionRequest(
        kind=DeletionKind.RETENTION,
        dataset_id=dataset_id,
        owner=contract.owner,
        requested_by=ctx.actor or "system:retention",
        selector=selector,
        contract_version=contract.version,
        reason=f"retention {contract.retention} from {contract.retention_from}",
    )
    if dry_run:
        found = rewrite.plan(deps.deletion, request)
        detail = found.as_json() | {"cutoff": selector.criteria["cutoff"], "dry_run": True}
        with audited(deps.sessions, "a retention dry run") as uow:
            uow.audit(
                audit_service.event(
                    ctx,
                    AuditRecord(
                        action=AuditAction.RETENTION_CHECKED,
                        outcome=Outcome.SUCCESS,
                        resource_type="dataset",
                        resource=dataset_id,
                        resource_org=contract.owner,
                        rows=found.rows_removed,
                        details=detail,
                    ),
                )
            )
        return RetentionOutcome(dataset_id, found.rows_removed, None, detail)
    deletion_id = rewrite.execute(deps.deletion, ctx, request)
    if deletion_id is None:
        return RetentionOutcome(dataset_id, 0, None, {"cutoff": selector.criteria["cutoff"]})
    with deps.sessions() as session:
        row = session.get(DataDeletion, deletion_id)
        assert row is not None
        return RetentionOutcome(
            dataset_id,
            row.rows_removed,
            deletion_id,
            {"cutoff": selector.criteria["cutoff"], "files_deleted": len(row.files)},
        )


# Authorisation


def _owner(deps: GovernanceDeps, dataset_id: str) -> str:
    contract = deps.contracts.get(dataset_id)
    if contract is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return contract.owner


def _authorise(
    deps: GovernanceDeps,
    principal: Principal,
    ctx: RequestContext,
    action: Action,
    dataset_id: str,
) -> tuple[str, Decision]:
    """The dataset's owner and the policy's decision; a refusal is audited, then raised."""
    owner = deps.contracts[dataset_id].owner if dataset_id in deps.contracts else None
    decision = deps.policy.decide(
        principal, action, Resource(ResourceType.DATASET, dataset_id, owner or "")
    )
    if not decision.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            decision,
            reason=f"{action.value} is not permitted on this dataset",
            resource_type="dataset",
            resource=dataset_id[:100],
            resource_org=owner,
            details={"action": action.value},
        )
        raise Forbidden(f"{action.value} on {dataset_id} is not permitted for this client")
    if owner is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    return owner, decision


def _certificate_json(row: DataDeletion) -> dict[str, Any]:
    """A deletion as listed: its state, and its signed certificate once it has one."""
    found: dict[str, Any] = {
        "id": row.id,
        "kind": row.kind,
        "state": row.state,
        "dataset": row.dataset_id,
        "requested_by": row.requested_by,
        "requested_at": row.requested_at.isoformat(timespec="seconds"),
        "rows_removed": row.rows_removed,
    }
    if row.body is not None and row.signature is not None:
        found |= certificates.published(row.body, row.signature)
    return found


def _deletion(session: Session, dataset_id: str, deletion_id: str) -> DataDeletion:
    row = session.get(DataDeletion, deletion_id)
    if row is None or row.dataset_id != dataset_id:
        raise NotFound(f"no deletion {deletion_id!r} of {dataset_id}")
    return row


def _finished(deps: GovernanceDeps, dataset_id: str, deletion_id: str) -> dict[str, Any]:
    with deps.sessions() as session:
        return _certificate_json(_deletion(session, dataset_id, deletion_id))


# Withdrawal


def request_withdrawal(
    deps: GovernanceDeps,
    principal: Principal,
    ctx: RequestContext,
    dataset_id: str,
    reason: str | None,
) -> dict[str, Any]:
    """The owner's partner system asks to withdraw its dataset; nothing is deleted until an
    IG lead of the owner confirms. One open request per dataset (asking again returns it)."""
    owner, decision = _authorise(deps, principal, ctx, Action.DATASET_WITHDRAW, dataset_id)
    with audited(deps.sessions, "a withdrawal request") as uow:
        session = uow.session
        dataset = repository.get_dataset(session, dataset_id, for_update=True)
        if dataset is None or dataset.current_version is None:
            raise WithdrawalState(f"{dataset_id} holds no data to withdraw")
        open_request = session.execute(
            select(DataDeletion).where(
                DataDeletion.dataset_id == dataset_id,
                DataDeletion.kind == DeletionKind.WITHDRAWAL.value,
                DataDeletion.state == DeletionState.REQUESTED.value,
            )
        ).scalar_one_or_none()
        if open_request is not None:
            return _certificate_json(open_request)
        row = DataDeletion(
            id=new_id(),
            dataset_id=dataset_id,
            owner=owner,
            kind=DeletionKind.WITHDRAWAL.value,
            state=DeletionState.REQUESTED.value,
            requested_by=ctx.actor or principal.client_id,
            requested_at=utcnow(),
            reason=(reason or "")[:500] or None,
            criteria={},
            rows_removed=0,
            versions=[],
            files=[],
            sharing_files=[],
        )
        session.add(row)
        session.flush()
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DATASET_WITHDRAWAL_REQUESTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="dataset",
                    resource=dataset_id,
                    resource_org=owner,
                    reason=row.reason,
                    matched_rule=decision.rule,
                    policy_version=decision.policy_version,
                    details={"deletion": row.id},
                ),
            )
        )
        return _certificate_json(row)


def decide_withdrawal(
    deps: GovernanceDeps,
    principal: Principal,
    ctx: RequestContext,
    dataset_id: str,
    deletion_id: str,
    *,
    confirm: bool,
) -> dict[str, Any]:
    """An IG lead of the owner confirms a withdrawal (every version and file goes, and a
    certificate is issued) or refuses it."""
    owner, decision = _authorise(deps, principal, ctx, Action.DELETION_CONFIRM, dataset_id)
    actor = ctx.actor or principal.client_id
    with deps.sessions() as session:
        row = _deletion(session, dataset_id, deletion_id)
        if row.kind != DeletionKind.WITHDRAWAL.value:
            raise NotFound(f"no withdrawal {deletion_id!r} of {dataset_id}")
        state, requested_by, reason = row.state, row.requested_by, row.reason
    if state == DeletionState.DELETING.value and confirm:
        # Confirmed before, and the process died while deleting: finish it.
        rewrite.complete(deps.deletion, ctx, deletion_id)
        return _finished(deps, dataset_id, deletion_id)
    if state != DeletionState.REQUESTED.value:
        raise WithdrawalState(f"withdrawal {deletion_id} is {state}")
    if requested_by == actor:
        raise Forbidden("a withdrawal is confirmed by someone other than who asked for it")
    if not confirm:
        with audited(deps.sessions, "refusing a withdrawal") as uow:
            found = _deletion(uow.session, dataset_id, deletion_id)
            if found.state != DeletionState.REQUESTED.value:
                raise WithdrawalState(f"withdrawal {deletion_id} is {found.state}")
            found.state = DeletionState.CANCELLED.value
            found.confirmed_by = actor
            uow.audit(
                audit_service.event(
                    ctx,
                    AuditRecord(
                        action=AuditAction.DATASET_WITHDRAWAL_REFUSED,
                        outcome=Outcome.SUCCESS,
                        resource_type="dataset",
                        resource=dataset_id,
                        resource_org=owner,
                        matched_rule=decision.rule,
                        policy_version=decision.policy_version,
                        details={"deletion": deletion_id},
                    ),
                )
            )
        return _finished(deps, dataset_id, deletion_id)
    contract = deps.contracts[dataset_id]
    rewrite.execute(
        deps.deletion,
        ctx,
        DeletionRequest(
            kind=DeletionKind.WITHDRAWAL,
            dataset_id=dataset_id,
            owner=owner,
            requested_by=requested_by,
            selector=None,
            contract_version=contract.version,
            reason=reason,
            confirmed_by=actor,
            deletion_id=deletion_id,
        ),
    )
    return _finished(deps, dataset_id, deletion_id)


# Erasure and rectification


@dataclass(frozen=True)
class ErasureRequest:
    person: selectors.PersonQuery
    reason: str
    case_reference: str
    rectification: bool = False
    # A rectification keeps the rows of this upload: the corrected ones the partner pushed.
    corrected_upload: str | None = None


def erase(
    deps: GovernanceDeps,
    principal: Principal,
    ctx: RequestContext,
    dataset_id: str,
    request: ErasureRequest,
) -> dict[str, Any]:
    """Remove one person's rows from the dataset's current version and every older file that
    holds them, and certify it; a search that finds nobody is certified too (0 rows)."""
    owner, _decision = _authorise(deps, principal, ctx, Action.PERSON_ERASE, dataset_id)
    if not request.reason.strip() or not request.case_reference.strip():
        raise BadRequest("an erasure or rectification needs a reason and a case reference")
    if request.rectification and not request.corrected_upload:
        raise BadRequest(
            "a rectification names the upload that holds the corrected rows "
            "(`corrected_upload`): push them first, then rectify"
        )
    contract = deps.active_contract(dataset_id)
    selector = selectors.person(contract, request.person, deps.protector, strict=True)
    if selector is None:
        raise BadRequest(f"nothing given identifies a person in {dataset_id}")
    if request.corrected_upload:
        _check_upload(deps, dataset_id, request.corrected_upload)
    kind = DeletionKind.RECTIFICATION if request.rectification else DeletionKind.ERASURE
    deletion_id = rewrite.execute(
        deps.deletion,
        ctx,
        DeletionRequest(
            kind=kind,
            dataset_id=dataset_id,
            owner=owner,
            requested_by=ctx.actor or principal.client_id,
            selector=selector,
            contract_version=contract.version,
            reason=request.reason[:500],
            case_reference=request.case_reference[:100],
            keep_upload=request.corrected_upload,
        ),
    )
    assert deletion_id is not None
    return _finished(deps, dataset_id, deletion_id)


def _check_upload(deps: GovernanceDeps, dataset_id: str, upload_id: str) -> None:
    from services.storage.models import DatasetVersion

    with deps.sessions() as session:
        found = session.execute(
            select(DatasetVersion.id).where(
                DatasetVersion.dataset_id == dataset_id,
                DatasetVersion.upload_id == upload_id,
                DatasetVersion.purged_at.is_(None),
            )
        ).first()
    if found is None:
        raise BadRequest(f"upload {upload_id!r} made no version of {dataset_id} that is held")


# Certificates


def _deletions_of(session: Session, dataset_id: str) -> list[DataDeletion]:
    return list(
        session.execute(
            select(DataDeletion)
            .where(DataDeletion.dataset_id == dataset_id)
            .order_by(DataDeletion.requested_at.desc(), DataDeletion.id)
        ).scalars()
    )


def list_deletions(
    deps: GovernanceDeps, principal: Principal, ctx: RequestContext, dataset_id: str
) -> list[dict[str, Any]]:
    """Every deletion of the dataset, newest first, each with its signed certificate."""
    owner, decision = _authorise(deps, principal, ctx, Action.DELETIONS_READ, dataset_id)
    with audited(deps.sessions, "listing deletion certificates") as uow:
        rows = _deletions_of(uow.session, dataset_id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DELETIONS_LISTED,
                    outcome=Outcome.SUCCESS,
                    resource_type="dataset",
                    resource=dataset_id,
                    resource_org=owner,
                    rows=len(rows),
                    matched_rule=decision.rule,
                    policy_version=decision.policy_version,
                ),
            )
        )
        return [_certificate_json(row) for row in rows]


def certificates_of(deps: GovernanceDeps, dataset_id: str) -> list[dict[str, Any]]:
    """Every deletion of the dataset, for the operator at the server's shell."""
    with deps.sessions() as session:
        return [_certificate_json(row) for row in _deletions_of(session, dataset_id)]
