"""The closed vocabulary of roles and actions used by the policy files and the code."""

from __future__ import annotations

from enum import StrEnum


class Role(StrEnum):
    PARTNER_SYSTEM = "partner_system"
    L1_READER = "l1_reader"
    L1_ANALYST = "l1_analyst"
    L2_READER = "l2_reader"
    L3_PRACTITIONER = "l3_practitioner"
    IG_LEAD = "ig_lead"
    ADMIN = "admin"
    # A monitoring system (Prometheus): reads the operational figures at /metrics, nothing else.
    OPERATOR = "operator"


class Action(StrEnum):
    DATASET_UPLOAD = "dataset:upload"
    CLIENT_MANAGE = "client:manage"
    PRODUCT_READ = "product:read"
    PRODUCT_READ_UNSUPPRESSED = "product:read_unsuppressed"
    AUDIT_REVIEW = "audit:review"
    ASSESSMENT_WRITE = "assessment:write"
    # Approving a pending grant of a role that needs a second person (SECOND_PERSON_ROLES).
    GRANT_APPROVE = "grant:approve"
    METRICS_READ = "metrics:read"
    # Signing off a contract draft for an organisation (the owner's, or the VRU's), and the
    # owner activating an approved version (services/lifecycle).
    CONTRACT_SIGNOFF = "contract:signoff"
    CONTRACT_ACTIVATE = "contract:activate"
    # Data governance (services/retention): a partner system asks to withdraw its dataset and
    # its IG lead confirms (or refuses); the IG lead erases or rectifies one person's rows; both
    # read the dataset's deletion certificates; an IG lead answers a subject access request.
    DATASET_WITHDRAW = "dataset:withdraw"
    DELETION_CONFIRM = "deletion:confirm"
    PERSON_ERASE = "person:erase"
    DELETIONS_READ = "deletions:read"
    SUBJECT_ACCESS = "subject:access"


class ResourceType(StrEnum):
    DATASET = "dataset"
    PRINCIPALS = "principals"
    LEVEL1 = "level1"
    LEVEL2 = "level2"
    LEVEL3 = "level3"
    AUDIT = "audit"
    # A pending grant request; its owner is the organisation of the client it would change.
    GRANTS = "grants"
    # The process's operational figures (counts and timings; no personal data).
    METRICS = "metrics"
    # A contract version; its owner is the organisation a sign-off is given for (the dataset's
    # owner or the VRU), and for activation the dataset's owner.
    CONTRACTS = "contracts"
    # The people a subject access request asks about; owned by the requester's organisation
    # (an IG lead answers for the data their organisation is responsible for).
    PEOPLE = "people"


ROLES: tuple[str, ...] = tuple(role.value for role in Role)

# Roles whose grants are limited to CSP areas: a grant of one of these must name its areas.
AREA_SCOPED_ROLES: frozenset[str] = frozenset({Role.L2_READER.value, Role.L3_PRACTITIONER.value})

# Roles an administrator may only request: the grant takes effect when an IG lead of the
# grantee's organisation, who is neither the requester nor the grantee, approves it. Level 3
# names people; admin could grant anything; ig_lead approves grants (security-tests T11).
SECOND_PERSON_ROLES: frozenset[str] = frozenset(
    {Role.L3_PRACTITIONER.value, Role.ADMIN.value, Role.IG_LEAD.value}
)

LEVEL_RESOURCE: dict[int, ResourceType] = {
    1: ResourceType.LEVEL1,
    2: ResourceType.LEVEL2,
    3: ResourceType.LEVEL3,
}
