"""Security catalogue T8-T16 (authorization and tiers): the real app over the TestClient, real
tokens from the token endpoint, the real database (SQLite, or PostgreSQL when
TOGETHER_TEST_DATABASE_URL is set) and the real policy files."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.routing import APIRoute
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.audit.models import AuditEvent
from services.platform import Platform
from tests.fixtures.app import ClientCredentials, MakeClient, TokenFor
from tests.fixtures.audit_events import refuse_audit_inserts
from tests.fixtures.cli import run_cli
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.products.test_level3 import AS_OF, PURPOSE, load_level3_data

# Level 3 is granted only until a date, at most 366 days ahead.
LEVEL3_UNTIL = (datetime.now(UTC) + timedelta(days=180)).replace(microsecond=0).isoformat()

VRU = "vru"
POLICE = "hampshire-constabulary"
COUNCIL = "portsmouth-cc"
ALL_AREAS = ["all"]


@pytest.fixture(scope="session")
def level3_data(snapshots: Snapshots) -> Snapshot[None]:
    return snapshots.take("products-level3", load_level3_data)


# The tests that ask for `people` start from a copy of the Level 3 data set; the others empty.
initial_state = starting_from("level3_data", when="people")


@pytest.fixture
def people(level3_data: Snapshot[None], loading: Loading) -> None:
    level3_data.value_in(loading)


def _authorization_bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _authorization_events(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.execute(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            ).scalars()
        )


def _authorization_secret_token(api: TestClient, client_id: str, secret: str) -> str:
    response = api.post(
        "/oauth/token",
        data={"grant_type": "client_credentials", "client_id": client_id, "client_secret": secret},
    )
    assert response.status_code == 200, response.text
    token: str = response.json()["access_token"]
    return token


def _authorization_routes(routes: list[Any]) -> list[APIRoute]:
    """The app's API routes, as it serves them (routers included in routers, flattened)."""
    found: list[APIRoute] = []
    for route in routes:
        if isinstance(route, APIRoute):
            found.append(route)
        elif hasattr(route, "original_router"):
            found.extend(_authorization_routes(route.original_router.routes))
    return found


def _authorization_can_read_level3(api: TestClient, token: str) -> bool:
    explained = api.get(
        "/v1/access/explain",
        params={"product": "repeat-suspects"},
        headers=_authorization_bearer(token),
    )
    assert explained.status_code == 200, explained.text
    allowed: bool = explained.json()["allowed"]
    return allowed


# ---------------------------------------------------------------------------------------------
# T11: admin functions; a second person for Level 3, ig_lead and admin grants


def test_T11_one_admin_cannot_give_itself_level3(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """Attacker finding 4: create a second admin, grant it l3_practitioner everywhere, read
    named people. Every step that would give a privileged role is only a pending request."""
    admin = _authorization_bearer(token_for(make_client(org=VRU, roles=("admin",))))
    # A second admin: created with what takes effect at once, the admin role only requested.
    created = api.post(
        "/v1/admin/clients",
        json={
            "name": "accomplice",
            "organisation": VRU,
            "roles": [{"role": "l1_reader"}, {"role": "admin"}],
        },
        headers=admin,
    )
    assert created.status_code == 201, created.text
    body = created.json()
    assert body["roles"] == [{"role": "l1_reader", "area": None}]
    assert body["pending"]["state"] == "pending"
    assert body["pending"]["roles"] == [{"role": "admin", "area": None}]
    accomplice = _authorization_secret_token(api, body["client_id"], body["client_secret"])
    assert (
        api.get("/v1/admin/clients", headers=_authorization_bearer(accomplice)).status_code == 403
    )
    # Level 3 in every area, for a client the admin controls: requested, not granted.
    changed = api.put(
        f"/v1/admin/clients/{body['client_id']}/roles",
        json={
            "roles": [{"role": "l3_practitioner", "areas": ALL_AREAS, "expires_at": LEVEL3_UNTIL}]
        },
        headers=admin,
    )
    assert changed.status_code == 202, changed.text
    assert changed.json()["roles"] == [{"role": "l1_reader", "area": None}]
    request_id = changed.json()["pending"]["request_id"]
    assert not _authorization_can_read_level3(api, accomplice)
    read = api.get(
        "/v1/products/repeat-suspects",
        headers=_authorization_bearer(accomplice)
        | {"X-Purpose": "safeguarding", "X-Case-Reference": "CASE-1"},
    )
    assert read.status_code == 403
    # Only one with a role needing a second person could be one: the admin cannot approve.
    approved = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=admin)
    assert approved.status_code == 403
    assert approved.headers["content-type"].startswith("application/problem+json")
    # Nor can it make an IG lead to approve for it: ig_lead needs a second person too.
    lead = api.post(
        "/v1/admin/clients",
        json={"name": "lead", "organisation": VRU, "roles": [{"role": "ig_lead"}]},
        headers=admin,
    )
    assert lead.status_code == 400
    assert "IG lead" in lead.json()["detail"]
    assert not _authorization_can_read_level3(api, accomplice)
    with platform.sessions() as session:
        from services.authz.models import GrantRequest

        states = {r.id: r.state for r in session.execute(select(GrantRequest)).scalars()}
    assert states and set(states.values()) == {"pending"}


def test_T11_an_ig_lead_of_the_clients_organisation_approves(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = _authorization_bearer(token_for(make_client(org=VRU, roles=("admin",))))
    practitioner = make_client(org=COUNCIL, roles=("l1_reader",))
    practitioner_token = token_for(practitioner)
    changed = api.put(
        f"/v1/admin/clients/{practitioner.client_id}/roles",
        json={
            "roles": [
                {"role": "l3_practitioner", "areas": ["Portsmouth"], "expires_at": LEVEL3_UNTIL}
            ]
        },
        headers=admin,
    )
    assert changed.status_code == 202, changed.text
    request_id = changed.json()["pending"]["request_id"]
    # The removal of l1_reader would leave no role in force: it waits for the approval too.
    assert changed.json()["pending"]["removals"] == [{"role": "l1_reader", "area": None}]
    # An IG lead of another organisation: the request is as good as missing (T8).
    other_lead = _authorization_bearer(token_for(make_client(org=POLICE, roles=("ig_lead",))))
    elsewhere = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=other_lead)
    missing = api.post("/v1/admin/grant-requests/no-such-request/approve", headers=other_lead)
    assert elsewhere.status_code == missing.status_code == 404
    assert set(elsewhere.json()) == set(missing.json())
    assert elsewhere.json()["detail"] == missing.json()["detail"]
    # The grantee's organisation's IG lead sees it pending, and approves.
    lead = _authorization_bearer(token_for(make_client(org=COUNCIL, roles=("ig_lead",))))
    listed = api.get("/v1/admin/grant-requests", params={"state": "pending"}, headers=lead)
    assert [r["request_id"] for r in listed.json()["requests"]] == [request_id]
    assert api.get("/v1/admin/grant-requests", headers=other_lead).json()["requests"] == []
    assert not _authorization_can_read_level3(api, practitioner_token)
    approved = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=lead)
    assert approved.status_code == 200, approved.text
    assert approved.json()["state"] == "approved"
    assert approved.json()["roles"] == [
        {"role": "l3_practitioner", "area": "Portsmouth", "expires_at": LEVEL3_UNTIL}
    ]
    # In force on the client's next request, with the same token.
    assert _authorization_can_read_level3(api, practitioner_token)
    # Decided once: a second approval is refused.
    again = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=lead)
    assert again.status_code == 409
    # The request and the approval are audited, with who asked and who approved.
    requested = [e.details for e in _authorization_events(platform, "grant.requested")]
    approvals = [e.details for e in _authorization_events(platform, "grant.approved")]
    assert len(requested) == 1 and len(approvals) == 1
    assert requested[0]["request_id"] == approvals[0]["request_id"] == request_id
    assert approvals[0]["after"] == [
        {"role": "l3_practitioner", "area": "Portsmouth", "expires_at": LEVEL3_UNTIL}
    ]
    assert approvals[0]["before"] == [{"role": "l1_reader", "area": None}]
    approval_event = _authorization_events(platform, "grant.approved")[-1]
    assert approval_event.actor_org == COUNCIL and approval_event.policy_version


def test_T11_no_one_approves_their_own_request_or_their_own_grant(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    # One client holding both roles (made by the installation) asks, then tries to approve.
    both = make_client(org=VRU, roles=("admin", "ig_lead"))
    both_headers = _authorization_bearer(token_for(both))
    grantee = make_client(org=VRU, roles=("l1_reader",))
    asked = api.put(
        f"/v1/admin/clients/{grantee.client_id}/roles",
        json={
            "roles": [
                {"role": "l1_reader"},
                {"role": "l3_practitioner", "areas": ALL_AREAS, "expires_at": LEVEL3_UNTIL},
            ]
        },
        headers=both_headers,
    )
    assert asked.status_code == 202, asked.text
    request_id = asked.json()["pending"]["request_id"]
    denied = len(_authorization_events(platform, "access.denied"))
    own = api.post(f"/v1/admin/grant-requests/{request_id}/approve", headers=both_headers)
    assert own.status_code == 403
    assert "someone other than its requester" in own.json()["detail"]
    # An IG lead receiving the grant cannot approve it either.
    lead = make_client(org=VRU, roles=("ig_lead",))
    for_lead = api.put(
        f"/v1/admin/clients/{lead.client_id}/roles",
        json={"roles": [{"role": "ig_lead"}, {"role": "admin"}]},
        headers=both_headers,
    )
    assert for_lead.status_code == 202, for_lead.text
    self_grant = api.post(
        f"/v1/admin/grant-requests/{for_lead.json()['pending']['request_id']}/approve",
        headers=_authorization_bearer(token_for(lead)),
    )
    assert self_grant.status_code == 403
    refusals = _authorization_events(platform, "access.denied")[denied:]
    assert [e.reason for e in refusals] == ["a grant needs a second person"] * 2
    # The grantee still holds only what it held.
    assert not _authorization_can_read_level3(api, token_for(grantee))


def test_T11_consumer_and_partner_tokens_on_admin_endpoints_are_refused(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """Every administrative route of the app (found in its route inventory) refuses callers
    without an administrative role, with 403 and an audited denial; nothing changes."""
    target = make_client(org=POLICE, roles=("partner_system",))
    routes = [
        (method, route.path)
        for route in _authorization_routes(api.app.routes)  # type: ignore[attr-defined]
        if route.path.startswith("/v1/admin/")
        for method in sorted(route.methods)
    ]
    assert len(routes) >= 6
    bodies: dict[str, Any] = {
        "/v1/admin/clients": {"name": "x", "organisation": VRU, "roles": [{"role": "l1_reader"}]},
        "/v1/admin/clients/{client_id}/roles": {"roles": [{"role": "admin"}]},
    }
    for role in ("partner_system", "l1_reader", "l1_analyst", "l2_reader", "l3_practitioner"):
        areas = ("Portsmouth",) if role in ("l2_reader", "l3_practitioner") else ()
        headers = _authorization_bearer(token_for(make_client(org=VRU, roles=(role,), areas=areas)))
        for method, path in routes:
            url = path.replace("{client_id}", target.client_id).replace("{request_id}", "x")
            denied = len(_authorization_events(platform, "access.denied"))
            response = api.request(method, url, json=bodies.get(path), headers=headers)
            assert response.status_code == 403, (role, method, path, response.text)
            assert response.headers["content-type"].startswith("application/problem+json")
            assert len(_authorization_events(platform, "access.denied")) == denied + 1
    with platform.sessions() as session:
        from services.identity.models import Client

        target_row = session.execute(
            select(Client).where(Client.client_id == target.client_id)
        ).scalar_one()
        assert not target_row.disabled
        assert [r.role for r in target_row.roles] == ["partner_system"]


def test_T11_the_installation_approves_from_the_command_line(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """The operator at the server's shell is the installation itself (it could write the
    database directly): `together grants approve` is its second-person step, audited."""
    admin = _authorization_bearer(token_for(make_client(org=VRU, roles=("admin",))))
    grantee: ClientCredentials = make_client(org=VRU, roles=("l1_reader",))
    asked = api.put(
        f"/v1/admin/clients/{grantee.client_id}/roles",
        json={
            "roles": [
                {"role": "l1_reader"},
                {"role": "l3_practitioner", "areas": ["Havant"], "expires_at": LEVEL3_UNTIL},
            ]
        },
        headers=admin,
    )
    request_id = asked.json()["pending"]["request_id"]
    listed = run_cli(platform.settings, "grants", "list", "--state", "pending")
    assert listed.returncode == 0, listed.stderr
    assert request_id in listed.stdout
    approved = run_cli(platform.settings, "grants", "approve", request_id)
    assert approved.returncode == 0, approved.stderr
    assert _authorization_can_read_level3(api, token_for(grantee))
    again = run_cli(platform.settings, "grants", "approve", request_id)
    assert again.returncode == 2 and "already approved" in again.stderr
    last = _authorization_events(platform, "grant.approved")[-1]
    assert last.details["change"] == "approved" and last.actor == "cli:grants-approve"


# ---------------------------------------------------------------------------------------------
# T10: Level 3 justification; T16: bulk-extraction limits; T25: failed reads use no quota


def _authorization_level3(
    api: TestClient, token: str, headers: dict[str, str] | None = None
) -> Any:
    return api.get(
        "/v1/products/repeat-suspects",
        params={"as_of": AS_OF.isoformat()},
        headers=_authorization_bearer(token) | (headers or {}),
    )


def test_T10_level3_without_purpose_or_case_returns_nothing(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor, people: None
) -> None:
    token = token_for(make_client(org=VRU, roles=("l3_practitioner",), areas=("Portsmouth",)))
    reads = len(_authorization_events(platform, "product.read"))
    for headers in ({}, {"X-Purpose": PURPOSE["X-Purpose"]}, {"X-Case-Reference": "C-1"}):
        refused = _authorization_level3(api, token, headers)
        assert refused.status_code == 403
        assert "rows" not in refused.text and "forename" not in refused.text
    assert len(_authorization_events(platform, "product.read")) == reads
    answered = _authorization_level3(api, token, PURPOSE)
    assert answered.status_code == 200
    events = _authorization_events(platform, "product.read")[reads:]
    assert len(events) == 1
    event = events[0]
    assert event.actor and event.actor_org == VRU and event.actor_roles == ["l3_practitioner"]
    assert event.occurred_at.utcoffset() is not None and event.occurred_at.utcoffset().seconds == 0
    assert event.purpose == PURPOSE["X-Purpose"]
    assert event.case_reference == PURPOSE["X-Case-Reference"]
    assert event.policy_version and event.policy_version.startswith("sha256:")
    assert event.rows == len(answered.json()["rows"])


def test_T16_hourly_limit_is_429_with_retry_after(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor, people: None
) -> None:
    platform.products.level3_hourly_quota = 3
    token = token_for(make_client(org=VRU, roles=("l3_practitioner",), areas=("Portsmouth",)))
    for _ in range(3):
        assert _authorization_level3(api, token, PURPOSE).status_code == 200
    refused = _authorization_level3(api, token, PURPOSE)
    assert refused.status_code == 429
    assert refused.json()["code"] == "QUOTA_EXCEEDED"
    assert 0 < int(refused.headers["Retry-After"]) <= 3600
    assert "rows" not in refused.json()
    event = _authorization_events(platform, "quota.exceeded")[-1]
    assert event.details["period"] == "hourly" and event.details["quota"] == 3
    assert event.reason == "hourly quota of 3 Level 3 reads reached"
    # Per principal: another practitioner still reads.
    other = token_for(make_client(org=VRU, roles=("l3_practitioner",), areas=("Portsmouth",)))
    assert _authorization_level3(api, other, PURPOSE).status_code == 200


def test_T16_failed_reads_do_not_use_the_quota(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor, people: None
) -> None:
    """Refused (bad parameters) and unaudited (audit insert blocked by a database trigger: a
    real fault of the audit store) Level 3 reads give their count back (T25)."""

    platform.products.level3_hourly_quota = 2
    token = token_for(make_client(org=VRU, roles=("l3_practitioner",), areas=("Portsmouth",)))
    for _ in range(4):
        bad = api.get(
            "/v1/products/repeat-suspects",
            params={"as_of": "not-a-date"},
            headers=_authorization_bearer(token) | PURPOSE,
        )
        assert bad.status_code == 400
    lift = refuse_audit_inserts(platform.engine, "product.read")
    for _ in range(3):
        failed = _authorization_level3(api, token, PURPOSE)
        assert failed.status_code == 503 and "rows" not in failed.text
    lift()
    # Nothing was answered, so the whole hourly quota of 2 is still there.
    assert _authorization_level3(api, token, PURPOSE).status_code == 200
    assert _authorization_level3(api, token, PURPOSE).status_code == 200
    assert _authorization_level3(api, token, PURPOSE).status_code == 429


# ---------------------------------------------------------------------------------------------
# T14: a revoked grant is denied on the next request; the change is an audited event


def test_T14_revoking_a_grant_denies_the_next_request_and_is_audited(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = _authorization_bearer(token_for(make_client(org=VRU, roles=("admin",))))
    practitioner = make_client(org=VRU, roles=("l3_practitioner", "l1_reader"), areas=("Havant",))
    token = token_for(practitioner)
    assert _authorization_can_read_level3(api, token)
    revoked = api.put(
        f"/v1/admin/clients/{practitioner.client_id}/roles",
        json={"roles": [{"role": "l1_reader"}]},
        headers=admin,
    )
    assert revoked.status_code == 200, revoked.text
    # Revocation needs no second person and holds from the very next request.
    assert not _authorization_can_read_level3(api, token)
    event = _authorization_events(platform, "client.roles_changed")[-1]
    assert event.details["change"] == "applied"
    assert {"role": "l3_practitioner", "area": "Havant"} in event.details["before"]
    assert event.details["after"] == [{"role": "l1_reader", "area": None}]


# ---------------------------------------------------------------------------------------------
# Rule (b): every rejected request writes one event with a reason code


def test_T9_unknown_product_is_a_refusal_audited(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    headers = _authorization_bearer(token_for(make_client(org=VRU, roles=("l1_reader",))))
    before = len(_authorization_events(platform, "product.refused"))
    response = api.get("/v1/products/no-such-product", params={"level": "3"}, headers=headers)
    assert response.status_code == 404
    events = _authorization_events(platform, "product.refused")[before:]
    assert len(events) == 1 and events[0].reason == "not_found"
    assert events[0].resource == "no-such-product"


# ---------------------------------------------------------------------------------------------
# T8: BOLA sweep over the app's route inventory

# Path parameters that name a partnership-wide catalogue entry (public to every authenticated
# caller, refused by tier rather than hidden) or are out of this sweep, and why. Any other
# parameter of any route must have an owned-object case below, or the sweep fails: a new route
# with a new kind of id is never silently left out.
_AUTHORIZATION_NOT_OWNED = {
    "dataset": "dataset ids are the published contract catalogue (GET /v1/contracts)",
    "product_id": "product ids are the published catalogue; tiers are T9's",
    "share": "Delta Sharing names are a catalogue, filtered by tier (tests/sharing)",
    "schema": "Delta Sharing names are a catalogue, filtered by tier (tests/sharing)",
    "table": "Delta Sharing names are a catalogue, filtered by tier (tests/sharing)",
    "token": "a signed, recipient-bound file capability (tests/sharing)",
    "client_id": "administrators manage every organisation's clients by design (scope any)",
    "person_id": "the IG pages (cookie sessions) are the authentication and audit helpers'",
    "deletion_id": "a deletion is addressed under its dataset, and only the dataset's owner may "
    "act on it: anyone else is refused (403) before the id is looked up, alike for any id "
    "(tests/retention/test_governance.py)",
}


def test_T8_another_organisations_object_is_answered_as_missing(
    api: TestClient, platform: Platform, make_client: MakeClient, token_for: TokenFor
) -> None:
    """For every route with an object id owned by an organisation: organisation A's caller
    with organisation B's id gets what a missing id gets (status, body members, detail)."""
    import uuid

    from tests.ingestion.helpers import police_rows, to_csv

    # Organisation B's objects: an upload, its audit event, an alert anchored on it, a grant.
    police = make_client(org=POLICE)
    uploaded = api.post(
        "/v1/datasets/police.occurrences/uploads",
        params={"mode": "replace"},
        content=to_csv(police_rows(20)),
        headers=_authorization_bearer(token_for(police))
        | {"Content-Type": "text/csv", "Idempotency-Key": str(uuid.uuid4())},
    )
    assert uploaded.status_code == 201, uploaded.text
    event_id = next(
        e.event_id
        for e in _authorization_events(platform, "dataset.ingested")
        if e.actor_org == POLICE
    )
    admin = _authorization_bearer(token_for(make_client(org=VRU, roles=("admin",))))
    grantee = make_client(org=POLICE, roles=("l1_reader",))
    asked = api.put(
        f"/v1/admin/clients/{grantee.client_id}/roles",
        json={"roles": [{"role": "l1_reader"}, {"role": "admin"}]},
        headers=admin,
    )
    owned = {
        # parameter -> (organisation A's caller's roles, B's id)
        "upload_id": (("partner_system",), uploaded.json()["upload_id"]),
        "event_id": (("ig_lead",), event_id),
        "alert_id": (("ig_lead",), f"denials.{event_id}"),
        "request_id": (("ig_lead",), asked.json()["pending"]["request_id"]),
    }
    swept = 0
    for route in _authorization_routes(api.app.routes):  # type: ignore[attr-defined]
        if route.path.startswith("/ig/"):
            continue
        params = [p for p in route.param_convertors]
        for param in params:
            assert param in owned or param in _AUTHORIZATION_NOT_OWNED, (
                f"{route.path}: no BOLA case for {{{param}}}: add one, or say why it is not owned"
            )
        ids = [p for p in params if p in owned]
        if not ids:
            continue
        (param,) = ids
        roles, theirs = owned[param]
        caller = _authorization_bearer(token_for(make_client(org=COUNCIL, roles=roles)))
        body = {"comment": "seen"} if route.path.endswith("/review") else None
        for method in sorted(route.methods):
            answers = [
                api.request(
                    method, route.path.replace(f"{{{param}}}", value), json=body, headers=caller
                )
                for value in (theirs, f"{theirs[:-4]}0000", str(uuid.uuid4()))
            ]
            statuses = {a.status_code for a in answers}
            assert statuses == {404}, (route.path, method, [a.text for a in answers])
            shapes = {tuple(sorted(a.json())) for a in answers}
            details = {a.json()["detail"] for a in answers}
            assert len(shapes) == 1 and len(details) == 1, (route.path, details)
            swept += 1
    assert swept >= 4
