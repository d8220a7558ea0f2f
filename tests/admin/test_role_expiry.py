"""Time-bound roles: the real app over the TestClient, real tokens from the token endpoint, the
real database (SQLite, or PostgreSQL when TOGETHER_TEST_DATABASE_URL is set), the real policy
files and the real command line."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime, timedelta
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy import select

from services.admin import principals
from services.audit.models import AuditEvent
from services.identity.models import Client, ClientRole
from services.identity.schemas import RoleGrant
from services.platform import Platform
from tests.fixtures.app import MakeClient, TokenFor, cli_context
from tests.fixtures.cli import run_cli

VRU = "vru"
POLICE = "hampshire-constabulary"
COUNCIL = "portsmouth-cc"


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _events(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).scalars()
        )


def _stored_expiry(platform: Platform, client_id: str, role: str) -> datetime | None:
    with platform.sessions() as session:
        expiry: datetime | None = session.execute(
            select(ClientRole.expires_at)
            .join(Client, Client.id == ClientRole.client_pk)
            .where(Client.client_id == client_id, ClientRole.role == role)
        ).scalar_one()
    return expiry


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def test_a_token_already_issued_stops_working_for_an_expired_role(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = make_client(org=VRU, roles=("admin",))
    token = token_for(admin)
    # The read is allowed, and the principal is now cached, before the expiry is set.
    assert api.get("/v1/admin/clients", headers=_bearer(token)).status_code == 200
    ends = datetime.now(UTC) + timedelta(seconds=2)
    principals.set_roles(
        platform.admin,
        cli_context(),
        admin.client_id,
        [RoleGrant("admin", None, ends), RoleGrant("l1_reader")],
    )
    assert api.get("/v1/admin/clients", headers=_bearer(token)).status_code == 200
    # Cached again before the expiry: the cache must not carry the role past it.
    assert api.get("/v1/admin/clients", headers=_bearer(token)).status_code == 200
    time.sleep(max(0.0, (ends - datetime.now(UTC)).total_seconds()) + 0.3)
    after = api.get("/v1/admin/clients", headers=_bearer(token))
    assert after.status_code == 403, after.text
    # The role without an end still works with the same token.
    explained = api.get(
        "/v1/access/explain", params={"product": "repeat-suspects"}, headers=_bearer(token)
    )
    assert explained.status_code == 200
    assert explained.json()["roles"] == ["l1_reader"]


def test_an_expiry_in_the_past_or_without_an_offset_is_refused(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = _bearer(token_for(make_client(org=VRU, roles=("admin",))))
    target = make_client(org=COUNCIL, roles=("l1_reader",))
    past = api.put(
        f"/v1/admin/clients/{target.client_id}/roles",
        json={
            "roles": [
                {"role": "l1_reader", "expires_at": _iso(datetime.now(UTC) - timedelta(hours=1))}
            ]
        },
        headers=admin,
    )
    assert past.status_code == 400, past.text
    assert "not in the future" in past.json()["detail"]
    naive = api.put(
        f"/v1/admin/clients/{target.client_id}/roles",
        json={"roles": [{"role": "l1_reader", "expires_at": "2099-01-01T00:00:00"}]},
        headers=admin,
    )
    assert naive.status_code == 400, naive.text
    assert "expires_at" in naive.text and "timezone" in naive.text
    assert _stored_expiry(platform, target.client_id, "l1_reader") is None


def test_level3_needs_an_expiry_within_a_year_approved_recorded_and_audited(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = _bearer(token_for(make_client(org=VRU, roles=("admin",))))
    practitioner = make_client(org=COUNCIL, roles=("l1_reader",))
    url = f"/v1/admin/clients/{practitioner.client_id}/roles"

    def level3(expires_at: str | None) -> dict[str, Any]:
        grant: dict[str, Any] = {"role": "l3_practitioner", "areas": ["Portsmouth"]}
        if expires_at is not None:
            grant["expires_at"] = expires_at
        return {"roles": [{"role": "l1_reader"}, grant]}

    for expires_at in (None, _iso(datetime.now(UTC) + timedelta(days=400))):
        refused = api.put(url, json=level3(expires_at), headers=admin)
        assert refused.status_code == 400, refused.text
        assert refused.json()["code"] == "GRANT_EXPIRY_REQUIRED"
        assert "366 days" in refused.json()["detail"]
    assert _events(platform, "grant.requested") == []
    ends = (datetime.now(UTC) + timedelta(days=90)).replace(microsecond=0)
    requested = api.put(url, json=level3(_iso(ends)), headers=admin)
    assert requested.status_code == 202, requested.text
    wanted = [{"role": "l3_practitioner", "area": "Portsmouth", "expires_at": _iso(ends)}]
    assert requested.json()["pending"]["roles"] == wanted
    request_id = requested.json()["pending"]["request_id"]
    lead = _bearer(token_for(make_client(org=COUNCIL, roles=("ig_lead",))))
    approved = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=lead)
    assert approved.status_code == 200, approved.text
    assert {"role": "l3_practitioner", "area": "Portsmouth", "expires_at": _iso(ends)} in (
        approved.json()["roles"]
    )
    assert _stored_expiry(platform, practitioner.client_id, "l3_practitioner") == ends
    # The expiry is what was asked for and what was approved, in both audit events.
    [asked] = _events(platform, "grant.requested")
    [decided] = _events(platform, "grant.approved")
    assert asked.details is not None and decided.details is not None
    assert asked.details["requested"] == wanted == decided.details["requested"]
    assert wanted[0] in decided.details["after"]


def test_expiring_grants_are_listed_for_admins_and_their_own_organisations_ig_leads(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    soon = datetime.now(UTC) + timedelta(days=10)
    later = datetime.now(UTC) + timedelta(days=200)
    council = make_client(org=COUNCIL, roles=("l1_reader",), name="council reader")
    police = make_client(org=POLICE, roles=("l1_reader",), name="police reader")
    for client, ends in ((council, soon), (police, soon)):
        principals.set_roles(
            platform.admin,
            cli_context(),
            client.client_id,
            [RoleGrant("l1_reader", None, ends), RoleGrant("l2_reader", "Portsmouth", later)],
        )
    admin = _bearer(token_for(make_client(org=VRU, roles=("admin",))))
    listed = api.get("/v1/admin/grants/expiring", headers=admin)
    assert listed.status_code == 200, listed.text
    rows = [
        r
        for r in listed.json()["grants"]
        if r["client_id"] in (council.client_id, police.client_id)
    ]
    assert {(r["organisation"], r["role"]) for r in rows} == {
        (COUNCIL, "l1_reader"),
        (POLICE, "l1_reader"),
    }
    assert all(r["days_left"] in (9, 10) and r["name"].endswith("reader") for r in rows)
    wider = api.get("/v1/admin/grants/expiring", params={"days": 365}, headers=admin).json()
    assert ("l2_reader", "Portsmouth") in {(r["role"], r["area"]) for r in wider["grants"]}
    lead = _bearer(token_for(make_client(org=COUNCIL, roles=("ig_lead",))))
    own = api.get("/v1/admin/grants/expiring", headers=lead)
    assert own.status_code == 200
    assert {r["organisation"] for r in own.json()["grants"]} == {COUNCIL}
    reader = _bearer(token_for(council))
    assert api.get("/v1/admin/grants/expiring", headers=reader).status_code == 403
    assert (
        api.get("/v1/admin/grants/expiring", params={"days": 0}, headers=admin).status_code == 400
    )
    events = _events(platform, "grant.expiring_listed")
    assert [e.resource_org for e in events] == [None, None, COUNCIL]
    assert [e.rows for e in events][2] == 1


def test_the_command_line_sets_and_lists_expiries(settings: Any, platform: Platform) -> None:
    created = run_cli(
        settings,
        "clients", "create", "temporary", "--org", COUNCIL, "--role", "l1_reader",
        "--expires", (datetime.now(UTC) + timedelta(days=5)).date().isoformat(),
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    client_id = json.loads(created.stdout)["client_id"]
    [role] = json.loads(created.stdout)["roles"]
    assert role["expires_at"].endswith("T00:00:00+00:00")
    past = run_cli(
        settings, "clients", "roles", client_id, "--role", "l1_reader", "--expires", "2020-01-01"
    )
    assert past.returncode == 2 and "not in the future" in past.stderr
    naive = run_cli(
        settings, "clients", "roles", client_id, "--role", "l1_reader",
        "--expires", "2099-01-01T10:00",
    )  # fmt: skip
    assert naive.returncode == 2 and "offset" in naive.stderr
    expiring = run_cli(settings, "grants", "expiring", "--days", "30")
    assert expiring.returncode == 0, expiring.stderr
    [row] = [r for r in json.loads(expiring.stdout) if r["client_id"] == client_id]
    assert row["role"] == "l1_reader" and row["days_left"] in (5, 6)
