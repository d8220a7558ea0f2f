"""T43: retention, erasure and correction reach every product, and the audit tree still verifies.

The data is the Level 3 set of tests/products/test_level3.py (person N101 is a repeat suspect and
a habitual knife carrier in the police data, and is linked to an exclusion and a first-time
entry by name and date of birth), loaded into this test's own database and store.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import date

from fastapi.testclient import TestClient

from services.audit.chain import seal_all, verify_chain
from services.platform import Platform
from services.retention import service as governance
from tests.fixtures.app import ClientCredentials
from tests.fixtures.snapshots import Loading
from tests.products.test_level3 import ALL_AREAS, Env, by_ref, load_level3_data

POLICE = "police.occurrences"
OWNER = "hampshire-constabulary"


def _env(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    loading: Loading,
) -> Env:
    load_level3_data(loading)

    def token(role: str = "l3_practitioner", areas: tuple[str, ...] = (), org: str = "vru") -> str:
        return token_for(make_client(org=org, roles=(role,), areas=areas))

    return Env(api, platform, token)


def test_T43_an_erasure_reaches_level1_and_level3_products_and_the_audit_still_verifies(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    loading: Loading,
) -> None:
    env = _env(api, platform, make_client, token_for, loading)
    reader = env.token(areas=ALL_AREAS)
    person = by_ref(env.rows("repeat-suspects", reader))["N101"]["person_id"]
    assert env.rows("person-profile", reader, {"person_id": person})
    assert "N101" in by_ref(env.rows("habitual-knife-carriers", reader))
    summary = {r["measure"]: r["value"] for r in env.rows("hkc-summary", env.token("l1_analyst"))}

    lead = env.token("ig_lead", org=OWNER)
    erased = api.post(
        f"/v1/datasets/{POLICE}/erasures",
        json={
            "identifiers": {"suspect_nominal_ref": "N101"},
            "reason": "UK GDPR Art 17",
            "case_reference": "ERA-1",
        },
        headers={"Authorization": f"Bearer {lead}"},
    )
    assert erased.status_code == 201, erased.text
    assert erased.json()["certificate"]["rows_removed"] >= 3

    # Level 3: the person is in no list and has no profile; Level 1: counted no more.
    assert "N101" not in by_ref(env.rows("repeat-suspects", reader))
    assert "N101" not in by_ref(env.rows("habitual-knife-carriers", reader))
    assert env.rows("person-profile", reader, {"person_id": person}) == []
    after = {r["measure"]: r["value"] for r in env.rows("hkc-summary", env.token("l1_analyst"))}
    assert after["total"] == summary["total"] - 1
    seal_all(platform.sessions)
    with platform.sessions() as session:
        assert verify_chain(session).ok


def test_T43_the_scheduled_retention_removes_expired_rows_from_every_product(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    loading: Loading,
) -> None:
    env = _env(api, platform, make_client, token_for, loading)
    reader = env.token(areas=ALL_AREAS)
    assert env.rows("repeat-suspects", reader)
    # Far enough ahead that every police row is past its six years.
    outcomes = governance.run_retention(platform.governance, today=date(2040, 1, 1))
    assert outcomes is not None
    police = next(o for o in outcomes if o.dataset == POLICE)
    assert police.rows_removed > 0 and police.certificate is not None
    assert env.rows("repeat-suspects", reader) == []
    assert env.rows("habitual-knife-carriers", reader) == []
