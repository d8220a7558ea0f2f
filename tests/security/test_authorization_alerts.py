"""The alert rules the hardening added (`privileged_grant`, `level3_burst`, `lockout`), read the
way an IG lead reads them: `GET /v1/audit/alerts` over the real app, real tokens from the token
endpoint, the real database (SQLite, or PostgreSQL when TOGETHER_TEST_DATABASE_URL is set)."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from gateway.app import create_app
from services.kit.settings import Settings
from services.platform import Platform, build_platform
from tests.fixtures.app import MakeClient, TokenFor, client_maker, token_issuer
from tests.fixtures.snapshots import Loading, Snapshot, Snapshots, starting_from
from tests.products.test_level3 import AS_OF, PURPOSE, load_level3_data

# Level 3 is granted only until a date, at most 366 days ahead.
LEVEL3_UNTIL = (datetime.now(UTC) + timedelta(days=180)).replace(microsecond=0).isoformat()

_ALERTS_VRU = "vru"
_ALERTS_POLICE = "hampshire-constabulary"
_ALERTS_COUNCIL = "portsmouth-cc"


@pytest.fixture(scope="session")
def level3_data(snapshots: Snapshots) -> Snapshot[None]:
    return snapshots.take("products-level3", load_level3_data)


# The tests that ask for `people` start from a copy of the Level 3 data set; the others empty.
initial_state = starting_from("level3_data", when="people")


@pytest.fixture
def people(level3_data: Snapshot[None], loading: Loading) -> None:
    level3_data.value_in(loading)


def _alerts_bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _alerts_of(api: TestClient, token: str, rule: str) -> list[dict[str, Any]]:
    """The alerts of one rule an IG lead (or administrator) is shown, newest first."""
    response = api.get("/v1/audit/alerts", params={"rule": rule}, headers=_alerts_bearer(token))
    assert response.status_code == 200, response.text
    found: list[dict[str, Any]] = response.json()["alerts"]
    return found


def _alerts_level3(api: TestClient, token: str) -> Any:
    return api.get(
        "/v1/products/repeat-suspects",
        params={"as_of": AS_OF.isoformat()},
        headers=_alerts_bearer(token) | PURPOSE,
    )


def _alerts_approved_practitioner(
    api: TestClient, admin: str, lead: str, organisation: str
) -> tuple[str, str]:
    """A client created through the API and given Level 3 the only way there is (requested by
    an administrator, approved by an IG lead): its client id and a token."""
    created = api.post(
        "/v1/admin/clients",
        json={
            "name": "practitioner",
            "organisation": organisation,
            "roles": [
                {"role": "l1_reader"},
                {"role": "l3_practitioner", "areas": ["Portsmouth"], "expires_at": LEVEL3_UNTIL},
            ],
        },
        headers=_alerts_bearer(admin),
    )
    assert created.status_code == 201, created.text
    body = created.json()
    request_id = body["pending"]["request_id"]
    approved = api.post(
        f"/v1/admin/grant-requests/{request_id}/approve", headers=_alerts_bearer(lead)
    )
    assert approved.status_code == 200, approved.text
    token = api.post(
        "/oauth/token",
        data={
            "grant_type": "client_credentials",
            "client_id": body["client_id"],
            "client_secret": body["client_secret"],
        },
    ).json()["access_token"]
    return body["client_id"], token


# ---------------------------------------------------------------------------------------------
# T11: every request and approval of a role that needs a second person is put before an IG lead


def test_T11_a_privileged_grant_requested_and_approved_is_an_alert_for_the_ig_leads(
    api: TestClient, make_client: MakeClient, token_for: TokenFor
) -> None:
    admin = token_for(make_client(org=_ALERTS_VRU, roles=("admin",)))
    council_lead = token_for(make_client(org=_ALERTS_COUNCIL, roles=("ig_lead",)))
    vru_lead = token_for(make_client(org=_ALERTS_VRU, roles=("ig_lead",)))
    police_lead = token_for(make_client(org=_ALERTS_POLICE, roles=("ig_lead",)))
    grantee = make_client(org=_ALERTS_COUNCIL, roles=("l1_reader",))
    # A change that needs no second person is no alert.
    at_once = api.put(
        f"/v1/admin/clients/{grantee.client_id}/roles",
        json={"roles": [{"role": "l2_reader", "areas": ["Portsmouth"]}]},
        headers=_alerts_bearer(admin),
    )
    assert at_once.status_code == 200, at_once.text
    assert _alerts_of(api, council_lead, "privileged_grant") == []
    changed = api.put(
        f"/v1/admin/clients/{grantee.client_id}/roles",
        json={
            "roles": [
                {"role": "l3_practitioner", "areas": ["Portsmouth"], "expires_at": LEVEL3_UNTIL}
            ]
        },
        headers=_alerts_bearer(admin),
    )
    assert changed.status_code == 202, changed.text
    [requested] = _alerts_of(api, council_lead, "privileged_grant")
    assert requested["state"] == "open"
    assert "l3_practitioner in Portsmouth requested" in requested["summary"]
    assert grantee.client_id in requested["summary"]
    request_id = changed.json()["pending"]["request_id"]
    approved = api.post(
        f"/v1/admin/grant-requests/{request_id}/approve", headers=_alerts_bearer(council_lead)
    )
    assert approved.status_code == 200, approved.text
    shown = _alerts_of(api, council_lead, "privileged_grant")
    assert len(shown) == 2 and shown[1]["id"] == requested["id"]
    assert "l3_practitioner in Portsmouth approved" in shown[0]["summary"]
    assert shown[0]["actor_org"] == _ALERTS_COUNCIL
    # The requester's organisation's IG lead sees the request its administrator made; an
    # organisation with no part in it sees nothing.
    assert [a["id"] for a in _alerts_of(api, vru_lead, "privileged_grant")] == [requested["id"]]
    assert _alerts_of(api, police_lead, "privileged_grant") == []


# ---------------------------------------------------------------------------------------------
# T16: bulk extraction of named people


def test_T16_a_burst_of_level3_reads_by_a_new_account_is_an_alert(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
    people: None,
) -> None:
    platform.products.level3_hourly_quota = 1000
    platform.products.level3_daily_quota = 1000
    admin = token_for(make_client(org=_ALERTS_VRU, roles=("admin",)))
    lead = token_for(make_client(org=_ALERTS_VRU, roles=("ig_lead",)))
    police_lead = token_for(make_client(org=_ALERTS_POLICE, roles=("ig_lead",)))
    council_lead = token_for(make_client(org=_ALERTS_COUNCIL, roles=("ig_lead",)))
    reader_id, reader = _alerts_approved_practitioner(api, admin, lead, _ALERTS_VRU)
    steady = token_for(
        make_client(org=_ALERTS_VRU, roles=("l3_practitioner",), areas=("Portsmouth",))
    )
    for _ in range(19):  # one below the threshold (20 within 10 minutes)
        assert _alerts_level3(api, steady).status_code == 200
    assert _alerts_of(api, lead, "level3_burst") == []
    for _ in range(20):
        assert _alerts_level3(api, reader).status_code == 200
    [burst] = _alerts_of(api, lead, "level3_burst")
    assert burst["actor"] == reader_id and burst["actor_org"] == _ALERTS_VRU
    assert len(burst["event_ids"]) == 20
    assert burst["summary"].startswith(f"20 Level 3 reads by {reader_id} ")
    assert "by a new account" in burst["summary"]
    # The IG lead of the data's owner is shown it too; an organisation with no part in it is not.
    assert [a["id"] for a in _alerts_of(api, police_lead, "level3_burst")] == [burst["id"]]
    assert _alerts_of(api, council_lead, "level3_burst") == []
    # The same burst keeps its id and grows: one alert, not one per read.
    assert _alerts_level3(api, reader).status_code == 200
    [again] = _alerts_of(api, lead, "level3_burst")
    assert again["id"] == burst["id"] and len(again["event_ids"]) == 21


def test_T16_a_level3_quota_used_up_is_an_alert(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    token_for: TokenFor,
    people: None,
) -> None:
    platform.products.level3_hourly_quota = 2
    lead = token_for(make_client(org=_ALERTS_VRU, roles=("ig_lead",)))
    reader = make_client(org=_ALERTS_VRU, roles=("l3_practitioner",), areas=("Portsmouth",))
    token = token_for(reader)
    for _ in range(2):
        assert _alerts_level3(api, token).status_code == 200
    assert _alerts_of(api, lead, "level3_burst") == []
    assert _alerts_level3(api, token).status_code == 429
    [alert] = _alerts_of(api, lead, "level3_burst")
    assert alert["actor"] == reader.client_id
    assert alert["summary"].startswith("hourly quota of 2 Level 3 reads reached")
    # Further refusals in the same hour join that alert.
    assert _alerts_level3(api, token).status_code == 429
    [same] = _alerts_of(api, lead, "level3_burst")
    assert same["id"] == alert["id"] and len(same["event_ids"]) == 2
    # The alert can be reviewed like any other.
    reviewed = api.post(
        f"/v1/audit/alerts/{alert['id']}/review",
        json={"comment": "asked the practitioner; a case conference"},
        headers=_alerts_bearer(lead),
    )
    assert reviewed.status_code == 200, reviewed.text
    assert reviewed.json()["state"] == "reviewed"


# ---------------------------------------------------------------------------------------------
# T5: a client locked out of the token endpoint is put before its organisation's IG lead


@pytest.fixture
def _alerts_lockout_app(settings: Settings) -> Iterator[tuple[Platform, TestClient]]:
    strict_settings = settings.model_copy(
        update={
            "token_client_failures_per_minute": 10,
            "token_address_failures_per_minute": 20,
            "token_lockout_failures": 3,
        }
    )
    strict = build_platform(strict_settings)
    try:
        with TestClient(create_app(strict_settings, strict)) as api:
            yield strict, api
    finally:
        strict.close()


def test_T5_a_lockout_is_an_alert_for_the_clients_ig_lead(
    _alerts_lockout_app: tuple[Platform, TestClient],
) -> None:
    strict, api = _alerts_lockout_app
    make = client_maker(strict)
    issue = token_issuer(api)
    lead = issue(make(org=_ALERTS_VRU, roles=("ig_lead",)))
    police_lead = issue(make(org=_ALERTS_POLICE, roles=("ig_lead",)))
    victim = make(org=_ALERTS_VRU, roles=("l1_reader",))
    wrong = {"grant_type": "client_credentials", "client_id": victim.client_id}
    for attempt in range(2):
        refused = api.post("/oauth/token", data=wrong | {"client_secret": f"guess-{attempt}"})
        assert refused.status_code == 401
    assert _alerts_of(api, lead, "lockout") == []
    api.post("/oauth/token", data=wrong | {"client_secret": "guess-2"})
    [alert] = _alerts_of(api, lead, "lockout")
    assert alert["actor"] is None and alert["actor_org"] == _ALERTS_VRU
    assert alert["summary"].startswith(f"client {victim.client_id} locked out after 3 failed")
    assert _alerts_of(api, police_lead, "lockout") == []
    # A guessed client id that does not exist raises no alert an IG lead could see.
    for attempt in range(3):
        api.post(
            "/oauth/token",
            data={
                "grant_type": "client_credentials",
                "client_id": "tgc_nobody",
                "client_secret": f"x{attempt}",
            },
        )
    assert len(_alerts_of(api, lead, "lockout")) == 1
