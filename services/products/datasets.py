"""A dataset as its owner, its reviewers and its products' readers see it: the contract it is
held to and the version that is current.

Who may see a dataset is decided by the policy's existing grants, none of them new:

- whoever may push to it (``dataset:upload``: the owner's partner systems), to check that what
  they sent became the current version;
- whoever may review the owner's audit trail (``audit:review``: the owner's IG leads, and
  administrators, who review every organisation), since that trail already records every
  version with its row count;
- whoever may read a product computed from it (``product:read``), whose answers already name
  the version in ``sources``: they learn how fresh it is.

Anyone else gets the same 404 as for a dataset that does not exist, and the refusal is audited.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from services.audit import service as audit_service
from services.audit.catalogue import AuditAction, Outcome
from services.audit.service import AuditRecord, RequestContext
from services.authz.enforcer import Resource
from services.authz.service import audit_review_access, product_access
from services.authz.vocabulary import Action, ResourceType
from services.contracts.model import Contract
from services.identity.schemas import Principal
from services.kit.errors import NotFound
from services.kit.uow import audited
from services.products.service import ProductDeps
from services.storage import service as storage_service


@dataclass(frozen=True)
class DatasetAccess:
    allowed: bool
    rule: str
    policy_version: str
    # Why the caller may see the dataset: "uploader", "reviewer" or "reader" (None: may not).
    basis: str | None


def dataset_access(deps: ProductDeps, principal: Principal, contract: Contract) -> DatasetAccess:
    """Whether ``principal`` may see ``contract``'s dataset, and the policy rule that says so."""
    upload = deps.policy.decide(
        principal,
        Action.DATASET_UPLOAD,
        Resource(ResourceType.DATASET, contract.id, contract.owner),
    )
    if upload.allowed:
        return DatasetAccess(True, upload.rule, upload.policy_version, "uploader")
    review = audit_review_access(deps.policy, principal)
    if review.allowed and review.organisation in (None, contract.owner):
        return DatasetAccess(True, review.rule, review.policy_version, "reviewer")
    for definition in sorted(deps.catalogue.values(), key=lambda d: (d.level, d.id)):
        if contract.id not in definition.sources:
            continue
        access = product_access(deps.policy, principal, definition.id, definition.level)
        if access.allowed:
            return DatasetAccess(True, access.rule, access.policy_version, "reader")
    return DatasetAccess(False, upload.rule, upload.policy_version, None)


def describe_dataset(
    deps: ProductDeps, principal: Principal, ctx: RequestContext, dataset_id: str
) -> dict[str, Any]:
    """The dataset's contract and current version; 404 when unknown or not the caller's to see."""
    contract = deps.contracts.get(dataset_id)
    if contract is None:
        raise NotFound(f"no dataset {dataset_id!r}")
    access = dataset_access(deps, principal, contract)
    if not access.allowed:
        audit_service.record_denial(
            deps.sessions,
            ctx,
            access,
            reason="may not see this dataset",
            resource_type="dataset",
            resource=contract.id,
            resource_org=contract.owner,
        )
        # As for a dataset that does not exist: a refusal must not say that it does.
        raise NotFound(f"no dataset {dataset_id!r}")
    with audited(deps.sessions, "the dataset view") as uow:
        current = storage_service.version_record(uow.session, contract.id)
        uow.audit(
            audit_service.event(
                ctx,
                AuditRecord(
                    action=AuditAction.DATASET_VIEWED,
                    outcome=Outcome.SUCCESS,
                    resource_type="dataset",
                    resource=contract.id,
                    resource_org=contract.owner,
                    matched_rule=access.rule,
                    policy_version=access.policy_version,
                    details={"basis": access.basis},
                ),
            )
        )
    return {
        "dataset": contract.id,
        "owner": contract.owner,
        "contract": {
            "id": contract.id,
            "version": contract.version,
            "status": contract.status.value,
        },
        # None until the first upload is accepted.
        "current_version": None
        if current is None
        else {
            "version": current.version,
            "contract_version": current.contract_version,
            "mode": current.mode,
            "rows": current.row_count,
            "created_at": current.created_at,
            "upload_id": current.upload_id,
        },
    }
