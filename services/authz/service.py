"""Access decisions in the platform's terms: what a principal may do with a resource."""

from __future__ import annotations

from dataclasses import dataclass

from services.authz.enforcer import PolicyEngine, Resource
from services.authz.vocabulary import LEVEL_RESOURCE, Action, ResourceType
from services.identity.schemas import Principal


@dataclass(frozen=True)
class ProductAccess:
    allowed: bool
    rule: str
    policy_version: str
    unsuppressed: bool
    # None: not limited to areas (Level 1). Otherwise the CSP areas whose rows may be returned.
    areas: frozenset[str] | None


def product_access(
    policy: PolicyEngine, principal: Principal, product_id: str, level: int
) -> ProductAccess:
    resource = Resource(LEVEL_RESOURCE[level], product_id, None)
    decision = policy.decide(principal, Action.PRODUCT_READ, resource)
    if not decision.allowed:
        return ProductAccess(False, decision.rule, decision.policy_version, False, None)
    unsuppressed = policy.decide(principal, Action.PRODUCT_READ_UNSUPPRESSED, resource).allowed
    # Level 1 is partnership-wide. Levels 2 and 3 return rows only for the areas that the
    # allowing roles were granted; a grant without areas therefore returns nothing there.
    areas = None if level == 1 else _areas(principal, decision.roles)
    return ProductAccess(True, decision.rule, decision.policy_version, unsuppressed, areas)


def _areas(principal: Principal, roles: tuple[str, ...]) -> frozenset[str]:
    found: set[str] = set()
    for grant in principal.live_grants:
        if grant.role in roles and grant.area is not None:
            found.add(grant.area)
    return frozenset(found)


# Reviewing the audit trail. The policy decides both whether and how widely: a rule with scope
# `any` (administrators) reviews every organisation, `own_org` (IG leads) their own.
EVERY_ORGANISATION = "(every organisation)"


@dataclass(frozen=True)
class AuditReviewAccess:
    allowed: bool
    rule: str
    policy_version: str
    # None: every organisation. Otherwise the one organisation whose events may be reviewed.
    organisation: str | None


def audit_review_access(policy: PolicyEngine, principal: Principal) -> AuditReviewAccess:
    everything = policy.decide(
        principal, Action.AUDIT_REVIEW, Resource(ResourceType.AUDIT, "*", EVERY_ORGANISATION)
    )
    if everything.allowed:
        return AuditReviewAccess(True, everything.rule, everything.policy_version, None)
    own = policy.decide(
        principal, Action.AUDIT_REVIEW, Resource(ResourceType.AUDIT, "*", principal.organisation)
    )
    return AuditReviewAccess(own.allowed, own.rule, own.policy_version, principal.organisation)
