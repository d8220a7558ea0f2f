"""Truth tables for the policy files: each role against each resource, and the matched rule."""

from __future__ import annotations

from pathlib import Path

import pytest

from services.authz.enforcer import DEFAULT_DENY_RULE, PolicyEngine, Resource
from services.authz.service import product_access
from services.authz.vocabulary import Action, ResourceType, Role
from services.identity.schemas import Principal, RoleGrant

POLICIES = Path(__file__).resolve().parents[2] / "policies"


@pytest.fixture(scope="module")
def engine() -> PolicyEngine:
    return PolicyEngine(POLICIES)


def who(role: str, org: str = "vru", areas: tuple[str, ...] = ()) -> Principal:
    grants = tuple(RoleGrant(role, a) for a in (areas or (None,)))
    return Principal(client_id=f"c-{role}", name=role, organisation=org, grants=grants)


# role -> (Level 1 read, Level 1 unsuppressed, Level 2 read, Level 3 read)
PRODUCT_TABLE = {
    Role.PARTNER_SYSTEM: (False, False, False, False),
    Role.L1_READER: (True, False, False, False),
    Role.L1_ANALYST: (True, True, False, False),
    Role.L2_READER: (False, False, True, False),
    Role.L3_PRACTITIONER: (False, False, False, True),
    Role.IG_LEAD: (False, False, False, False),
    Role.ADMIN: (False, False, False, False),
}


@pytest.mark.parametrize("role", list(PRODUCT_TABLE))
def test_product_tiers(engine: PolicyEngine, role: Role) -> None:
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
