"""Truth tables for the policy files: each role against each resource, and the matched rule.

The tables are keyed by the vocabulary itself: a role or an action added to
``services/authz/vocabulary.py`` fails here until the policy says what it may do and this file
says what it should.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import product
from pathlib import Path

import pytest

from services.authz.enforcer import DEFAULT_DENY_RULE, PolicyEngine, Resource
from services.authz.service import product_access
from services.authz.vocabulary import Action, ResourceType, Role
from services.identity.schemas import Principal, RoleGrant

REPOSITORY = Path(__file__).resolve().parents[2]
POLICIES = REPOSITORY / "policies"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(POLICIES)


def who(role: str, org: str = "vru", areas: tuple[str, ...] = ()) -> Principal:
    grants = tuple(RoleGrant(role, a) for a in (areas or (None,)))
    return Principal(client_id=f"c-{role}", name=role, organisation=org, grants=grants)


@dataclass(frozen=True)
class Grant:
    """What one policy line allows: a kind of resource, how widely, and which ids."""

    rtype: ResourceType
    scope: str = "any"
    rid: str = "*"

    def allows(self, rtype: ResourceType, rid: str, own_org: bool) -> bool:
        return (
            rtype is self.rtype
            and self.rid in ("*", rid)
            and (self.scope == "any" or (self.scope == "own_org" and own_org))
        )

    def line(self, role: Role, action: Action) -> str:
        return f"{role.value}, {self.rtype.value}, {self.rid}, {action.value}, {self.scope}, allow"


NOTHING: tuple[Grant, ...] = ()

# Every role against every action: what the policy grants (NOTHING: denied on every resource).
# A pair missing here is a failure, not a silent denial.
TRUTH_TABLE: dict[Role, dict[Action, tuple[Grant, ...]]] = {
    Role.PARTNER_SYSTEM: {
        Action.DATASET_UPLOAD: (Grant(ResourceType.DATASET, "own_org"),),
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: NOTHING,
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: (Grant(ResourceType.DATASET, "own_org"),),
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: (Grant(ResourceType.DATASET, "own_org"),),
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.L1_READER: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: (Grant(ResourceType.LEVEL1),),
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.L1_ANALYST: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: (Grant(ResourceType.LEVEL1),),
        Action.PRODUCT_READ_UNSUPPRESSED: (Grant(ResourceType.LEVEL1),),
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.L2_READER: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: (Grant(ResourceType.LEVEL2),),
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.L3_PRACTITIONER: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: (Grant(ResourceType.LEVEL3),),
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: (Grant(ResourceType.LEVEL3, rid="habitual-knife-carriers"),),
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.IG_LEAD: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: NOTHING,
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: (Grant(ResourceType.AUDIT, "own_org"),),
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: (Grant(ResourceType.GRANTS, "own_org"),),
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: (Grant(ResourceType.CONTRACTS, "own_org"),),
        Action.CONTRACT_ACTIVATE: (Grant(ResourceType.CONTRACTS, "own_org"),),
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: (Grant(ResourceType.DATASET, "own_org"),),
        Action.PERSON_ERASE: (Grant(ResourceType.DATASET, "own_org"),),
        Action.DELETIONS_READ: (Grant(ResourceType.DATASET, "own_org"),),
        Action.SUBJECT_ACCESS: (Grant(ResourceType.PEOPLE, "own_org"),),
    },
    Role.OPERATOR: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: NOTHING,
        Action.PRODUCT_READ: NOTHING,
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: NOTHING,
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: (Grant(ResourceType.METRICS),),
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
    Role.ADMIN: {
        Action.DATASET_UPLOAD: NOTHING,
        Action.CLIENT_MANAGE: (Grant(ResourceType.PRINCIPALS),),
        Action.PRODUCT_READ: NOTHING,
        Action.PRODUCT_READ_UNSUPPRESSED: NOTHING,
        Action.AUDIT_REVIEW: (Grant(ResourceType.AUDIT),),
        Action.ASSESSMENT_WRITE: NOTHING,
        Action.GRANT_APPROVE: NOTHING,
        Action.METRICS_READ: NOTHING,
        Action.CONTRACT_SIGNOFF: NOTHING,
        Action.CONTRACT_ACTIVATE: NOTHING,
        Action.DATASET_WITHDRAW: NOTHING,
        Action.DELETION_CONFIRM: NOTHING,
        Action.PERSON_ERASE: NOTHING,
        Action.DELETIONS_READ: NOTHING,
        Action.SUBJECT_ACCESS: NOTHING,
    },
}


def expectation(role: Role, action: Action) -> tuple[Grant, ...]:
    assert role in TRUTH_TABLE, f"role {role.value!r} has no row in the truth table"
    row = TRUTH_TABLE[role]
    assert action in row, f"role {role.value!r} has no expectation for {action.value!r}"
    return row[action]


def test_the_truth_table_covers_exactly_the_vocabulary() -> None:
    assert set(TRUTH_TABLE) == set(Role)
    for role, row in TRUTH_TABLE.items():
        assert set(row) == set(Action), role


@pytest.mark.parametrize(("role", "action"), list(product(Role, Action)))
def test_every_role_and_action(engine: PolicyEngine, role: Role, action: Action) -> None:
    grants = expectation(role, action)
    specific_ids = {grant.rid for grant in grants if grant.rid != "*"}
    caller = "hiwfrs"
    for rtype, rid, owner in product(
        ResourceType, ("some-resource", *specific_ids), (caller, "hampshire-constabulary")
    ):
        decision = engine.decide(who(role.value, caller), action, Resource(rtype, rid, owner))
        matching = [g for g in grants if g.allows(rtype, rid, owner == caller)]
        case = (role.value, action.value, rtype.value, rid, owner)
        assert decision.allowed is bool(matching), case
        if matching:
            assert decision.rule == matching[0].line(role, action), case
        else:
            assert decision.rule == DEFAULT_DENY_RULE, case


def test_the_policy_holds_exactly_the_table(engine: PolicyEngine) -> None:
    # A line nobody expects (a grant the code never asks for, or a role the table forgot) is as
    # much a mistake as a missing one.
    expected = sorted(
        grant.line(role, action)
        for role, row in TRUTH_TABLE.items()
        for action, grants in row.items()
        for grant in grants
    )
    assert sorted(", ".join(line) for line in engine.policy_lines()) == expected


def test_every_word_of_the_vocabulary_is_granted_somewhere(engine: PolicyEngine) -> None:
    lines = engine.policy_lines()
    granted_roles = {line[0] for line in lines if line[5] == "allow"}
    used_types = {line[1] for line in lines}
    used_actions = {line[3] for line in lines}
    assert granted_roles == {role.value for role in Role}, "a role with no policy line"
    assert used_types == {rtype.value for rtype in ResourceType}, "a resource type with no line"
    assert used_actions == {action.value for action in Action}, "an action with no policy line"


def test_every_action_is_evaluated_by_the_code() -> None:
    # A policy line for an action the code never asks about grants nothing, yet reads to a
    # reviewer as a permission: every action in the vocabulary is decided somewhere.
    sources = "\n".join(
        path.read_text()
        for folder in ("services", "gateway")
        for path in (REPOSITORY / folder).rglob("*.py")
        if path.name != "vocabulary.py"
    )
    for action in Action:
        assert re.search(rf"\bAction\.{action.name}\b", sources), action


# role -> (Level 1 read, Level 1 unsuppressed, Level 2 read, Level 3 read)
PRODUCT_TABLE = {
    Role.PARTNER_SYSTEM: (False, False, False, False),
    Role.L1_READER: (True, False, False, False),
    Role.L1_ANALYST: (True, True, False, False),
    Role.L2_READER: (False, False, True, False),
    Role.L3_PRACTITIONER: (False, False, False, True),
    Role.IG_LEAD: (False, False, False, False),
    Role.ADMIN: (False, False, False, False),
    Role.OPERATOR: (False, False, False, False),
}


@pytest.mark.parametrize("role", list(Role))
def test_product_tiers(engine: PolicyEngine, role: Role) -> None:
    assert role in PRODUCT_TABLE, f"role {role.value!r} has no product row"
    l1, l1_raw, l2, l3 = PRODUCT_TABLE[role]
    principal = who(role.value)
    cases = [
        (ResourceType.LEVEL1, Action.PRODUCT_READ, l1),
        (ResourceType.LEVEL1, Action.PRODUCT_READ_UNSUPPRESSED, l1_raw),
        (ResourceType.LEVEL2, Action.PRODUCT_READ, l2),
        (ResourceType.LEVEL3, Action.PRODUCT_READ, l3),
    ]
    for rtype, action, expected in cases:
        decision = engine.decide(principal, action, Resource(rtype, "some-product", None))
        assert decision.allowed is expected, (role, rtype, action)
        if expected:
            assert decision.rule == f"{role.value}, {rtype.value}, *, {action.value}, any, allow"
        else:
            assert decision.rule == DEFAULT_DENY_RULE
        assert decision.policy_version.startswith("sha256:")


@pytest.mark.parametrize(
    ("role", "caller_org", "owner", "expected"),
    [
        (Role.PARTNER_SYSTEM, "hampshire-constabulary", "hampshire-constabulary", True),
        (Role.PARTNER_SYSTEM, "hiwfrs", "hampshire-constabulary", False),
        (Role.L1_ANALYST, "hampshire-constabulary", "hampshire-constabulary", False),
        (Role.ADMIN, "hampshire-constabulary", "hampshire-constabulary", False),
    ],
)
def test_upload_truth_table(
    engine: PolicyEngine, role: Role, caller_org: str, owner: str, expected: bool
) -> None:
    decision = engine.decide(
        who(role.value, caller_org),
        Action.DATASET_UPLOAD,
        Resource(ResourceType.DATASET, "police.occurrences", owner),
    )
    assert decision.allowed is expected
    if expected:
        assert decision.rule == "partner_system, dataset, *, dataset:upload, own_org, allow"


@pytest.mark.parametrize(
    ("role", "caller_org", "owner", "expected"),
    [
        (Role.IG_LEAD, "hiwfrs", "hiwfrs", True),
        (Role.IG_LEAD, "hiwfrs", "hampshire-constabulary", False),
        (Role.ADMIN, "vru", "hampshire-constabulary", True),
        (Role.L1_ANALYST, "vru", "vru", False),
    ],
)
def test_audit_review_truth_table(
    engine: PolicyEngine, role: Role, caller_org: str, owner: str, expected: bool
) -> None:
    decision = engine.decide(
        who(role.value, caller_org), Action.AUDIT_REVIEW, Resource(ResourceType.AUDIT, "*", owner)
    )
    assert decision.allowed is expected


def test_areas_for_level2(engine: PolicyEngine) -> None:
    reader = who(Role.L2_READER.value, "southampton-cc", ("Southampton", "Eastleigh"))
    access = product_access(engine, reader, "hotspots", 2)
    assert access.allowed and access.areas == frozenset({"Southampton", "Eastleigh"})
    assert not access.unsuppressed
    analyst = who(Role.L1_ANALYST.value)
    access = product_access(engine, analyst, "sv-counts", 1)
    assert access.allowed and access.unsuppressed and access.areas is None
    assert not product_access(engine, analyst, "hotspots", 2).allowed


def test_several_roles_combine(engine: PolicyEngine) -> None:
    both = Principal(
        "c-both",
        "both",
        "vru",
        (RoleGrant("l1_reader"), RoleGrant("l2_reader", "Havant")),
    )
    assert product_access(engine, both, "sv-counts", 1).allowed
    assert product_access(engine, both, "hotspots", 2).areas == frozenset({"Havant"})


def test_explicit_deny_wins(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text((POLICIES / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text(
        (POLICIES / "policy.csv").read_text()
        + "p, l1_analyst, level1, hkc-summary, product:read, any, deny\n"
    )
    engine = PolicyEngine(tmp_path)
    analyst = Principal("c", "a", "vru", (RoleGrant("l1_analyst"), RoleGrant("l1_reader")))
    denied = engine.decide(
        analyst, Action.PRODUCT_READ, Resource(ResourceType.LEVEL1, "hkc-summary", None)
    )
    assert not denied.allowed
    assert denied.rule.startswith("deny: l1_analyst, level1, hkc-summary")
    allowed = engine.decide(
        analyst, Action.PRODUCT_READ, Resource(ResourceType.LEVEL1, "sv-counts", None)
    )
    assert allowed.allowed


def test_policy_words_must_be_in_the_vocabulary(tmp_path: Path) -> None:
    (tmp_path / "model.conf").write_text((POLICIES / "model.conf").read_text())
    (tmp_path / "policy.csv").write_text("p, l1_reader, level1, *, product:write, any, allow\n")
    with pytest.raises(ValueError, match="vocabulary"):
        PolicyEngine(tmp_path)
