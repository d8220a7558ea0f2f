"""GET /v1/audit/events, /events/{id}, /people/{id}: scope, filters, pages, formats, audit."""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Callable
from datetime import UTC, datetime

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select

from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AuditEvent
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import (
    COUNCIL,
    POLICE,
    clock_at,
    level3_read,
    make_event,
    refuse_audit_inserts,
)

Tokens = Callable[[ClientCredentials], str]


@pytest.fixture
def reviewers(make_client: Callable[..., ClientCredentials], token_for: Tokens) -> dict[str, str]:
    return {
        "police": token_for(make_client(org=POLICE, roles=("ig_lead",), name="police ig")),
        "council": token_for(make_client(org=COUNCIL, roles=("ig_lead",), name="council ig")),
        "admin": token_for(make_client(org="vru", roles=("admin",), name="admin")),
    }


def _get(api: TestClient, token: str, path: str, **params: object) -> dict[str, object]:
    response = api.get(path, params=params, headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _person(api: TestClient, token: str, person_id: str) -> dict[str, object]:
    """A person's history: the id in the body (T45), never in the URL."""
    response = api.post(
        "/v1/audit/people",
        json={"person_id": person_id},
        headers={"Authorization": f"Bearer {token}"},
    )
    assert response.status_code == 200, response.text
    body: dict[str, object] = response.json()
    return body


def _ids(body: dict[str, object]) -> set[str]:
    events = body["events"]
    assert isinstance(events, list)
    return {e["event_id"] for e in events}


@pytest.fixture
def world(platform: Platform) -> dict[str, str]:
    """Events about the police, about the council, and about neither."""
    return {
        "police_user": make_event(
            platform, actor="police-reader", org=POLICE, resource_type="product", resource="x"
        ),
        "police_data": make_event(
            platform,
            actor="vru-analyst",
            org="vru",
            resource_type="product",
            resource="sv-counts",
            level=1,
            details={"sources": {"police.occurrences": 3}},
        ),
        "police_owned_l3": level3_read(
            platform,
            actor="council-practitioner",
            org=COUNCIL,
            subjects=["p-1"],
            details={"owners": [POLICE, "hampshire-cc"]},
        ),
        "police_upload": make_event(
            platform,
            actor="rms",
            org=POLICE,
            action=AuditAction.DATASET_INGESTED,
            resource_type="dataset",
            resource="police.occurrences",
            resource_org=POLICE,
        ),
        "council_user": make_event(
            platform, actor="council-reader", org=COUNCIL, resource_type="product", resource="y"
        ),
        "fire_data": make_event(
            platform,
            actor="vru-analyst",
            org="vru",
            resource_type="product",
            resource="hotspots",
            level=2,
            details={"sources": {"fire.deliberate_fires": 1}},
        ),
    }


def test_T31_an_ig_lead_sees_only_events_about_their_organisation(
    api: TestClient, reviewers: dict[str, str], world: dict[str, str]
) -> None:
    police = _ids(_get(api, reviewers["police"], "/v1/audit/events", action="product.read"))
    assert police == {world["police_user"], world["police_data"], world["police_owned_l3"]}
    police_all = _ids(_get(api, reviewers["police"], "/v1/audit/events", limit=1000))
    assert world["police_upload"] in police_all
    assert world["council_user"] not in police_all and world["fire_data"] not in police_all

    council = _ids(_get(api, reviewers["council"], "/v1/audit/events", action="product.read"))
    assert council == {world["council_user"], world["police_owned_l3"]}

    everything = _ids(_get(api, reviewers["admin"], "/v1/audit/events", limit=1000))
    assert set(world.values()) <= everything

    # Another organisation's event is "not found", exactly like one that does not exist.
    for event_id in (world["council_user"], "00000000-0000-0000-0000-000000000000"):
        response = api.get(
            f"/v1/audit/events/{event_id}",
            headers={"Authorization": f"Bearer {reviewers['police']}"},
        )
        assert response.status_code == 404
        assert response.json()["code"] == "NOT_FOUND"
    detail = _get(api, reviewers["police"], f"/v1/audit/events/{world['police_owned_l3']}")
    assert detail["subjects"] == ["p-1"] and detail["level"] == 3

    # Naming another organisation in the filter narrows, never widens, the scope.
    narrowed = _ids(
        _get(api, reviewers["police"], "/v1/audit/events", organisation=COUNCIL, limit=1000)
    )
    assert narrowed == {world["police_owned_l3"]}


def test_a_reader_without_audit_review_is_refused_and_that_is_audited(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Tokens,
    world: dict[str, str],
) -> None:
    reader = make_client(org=POLICE, roles=("l1_analyst",), name="analyst")
    token = token_for(reader)
    for method, path in (
        ("GET", "/v1/audit/events"),
        ("POST", "/v1/audit/people"),
        ("GET", "/v1/audit/alerts"),
    ):
        response = api.request(
            method,
            path,
            json={"person_id": "p-1"} if method == "POST" else None,
            headers={"Authorization": f"Bearer {token}"},
        )
        assert response.status_code == 403, path
        assert "events" not in response.text
    with platform.sessions() as session:
        denials = session.scalars(
            select(AuditEvent).where(
                AuditEvent.action == "access.denied", AuditEvent.actor == reader.client_id
            )
        ).all()
    assert len(denials) == 3
    assert all(d.resource_type == "audit" and d.outcome == "denied" for d in denials)
    assert denials[0].matched_rule == "default deny: no rule allows this"


def test_filters(
    api: TestClient,
    platform: Platform,
    reviewers: dict[str, str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with clock_at(monkeypatch, datetime(2026, 3, 2, 10, 0, tzinfo=UTC)):
        early = level3_read(
            platform, actor="pc-1", org=POLICE, subjects=["p-a"], case_reference="C-7"
        )
    with clock_at(monkeypatch, datetime(2026, 3, 5, 10, 0, tzinfo=UTC)):
        late = level3_read(
            platform,
            actor="pc-2",
            org=POLICE,
            subjects=["p-a", "p-b"],
            case_reference="C-8",
            purpose="high-intensity-programme",
        )
        denied = make_event(
            platform,
            actor="pc-2",
            org=POLICE,
            action=AuditAction.ACCESS_DENIED,
            outcome=Outcome.DENIED,
            resource_type="product",
            resource="hotspots",
            level=2,
        )
    token = reviewers["police"]

    def ids(**params: object) -> set[str]:
        return _ids(_get(api, token, "/v1/audit/events", **params))

    assert ids(actor="pc-1") == {early}
    assert ids(case_reference="C-8") == {late}
    assert ids(purpose="high-intensity-programme") == {late}
    assert ids(person_id="p-a") == {early, late}
    assert ids(person_id="p-b") == {late}
    assert ids(level=3) == {early, late}
    assert ids(outcome="denied", action="access.denied") == {denied}
    assert ids(product="hotspots") == {denied}
    assert ids(product="repeat-suspects", since="2026-03-04", until="2026-03-05") == {late}
    assert ids(until="2026-03-02T11:00:00+00:00") == {early}
    for bad in ({"level": "4"}, {"since": "yesterday"}, {"outcome": "maybe"}, {"nope": "1"}):
        response = api.get(
            "/v1/audit/events", params=bad, headers={"Authorization": f"Bearer {token}"}
        )
        assert response.status_code == 400, bad
        assert response.headers["content-type"].startswith("application/problem+json")


def test_pages_follow_an_opaque_cursor_without_gaps_or_repeats(
    api: TestClient, platform: Platform, reviewers: dict[str, str]
) -> None:
    made = {
        make_event(platform, actor=f"r{i}", org=POLICE, resource_type="product", resource="x")
        for i in range(23)
    }
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, object] = {"limit": 10, "action": "product.read"}
        if cursor:
            params["cursor"] = cursor
        body = _get(api, reviewers["police"], "/v1/audit/events", **params)
        events = body["events"]
        assert isinstance(events, list)
        seen += [e["event_id"] for e in events]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str) and not cursor.isdigit()
    assert pages == 3
    assert len(seen) == len(set(seen)) == 23 and set(seen) == made
    times = [e for e in seen]
    assert times == sorted(times, key=seen.index)  # newest first, stable
    response = api.get(
        "/v1/audit/events",
        params={"cursor": "not-a-cursor"},
        headers={"Authorization": f"Bearer {reviewers['police']}"},
    )
    assert response.status_code == 400


def test_csv_export_neutralises_formulas_and_ndjson_is_one_event_a_line(
    api: TestClient, platform: Platform, reviewers: dict[str, str]
) -> None:
    payloads = ['=HYPERLINK("http://x","y")', "@SUM(1+1)", "+cmd|' /C calc'!A0", "-2+3", "\tx"]
    for value in payloads:
        level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-z"], case_reference=value)
    headers = {"Authorization": f"Bearer {reviewers['police']}"}
    response = api.get("/v1/audit/events", params={"format": "csv", "level": 3}, headers=headers)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/csv")
    assert 'filename="audit-events.csv"' in response.headers["content-disposition"]
    rows = list(csv.DictReader(io.StringIO(response.text)))
    assert sorted(r["case_reference"] for r in rows) == sorted("'" + v for v in payloads)
    assert all(r["subjects"] == "p-z" for r in rows)
    assert '"=' not in response.text and '"@' not in response.text and '"+' not in response.text

    response = api.get("/v1/audit/events", params={"format": "ndjson", "level": 3}, headers=headers)
    lines = response.text.splitlines()
    assert len(lines) == len(payloads)
    assert {json.loads(line)["case_reference"] for line in lines} == set(payloads)


def test_T31_every_audit_query_is_itself_audited(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Tokens,
    world: dict[str, str],
) -> None:
    lead = make_client(org=POLICE, roles=("ig_lead",), name="lead")
    headers = {"Authorization": f"Bearer {token_for(lead)}"}
    api.get("/v1/audit/events", params={"actor": "police-reader"}, headers=headers)
    api.get("/v1/audit/events", params={"format": "csv"}, headers=headers)
    api.get(f"/v1/audit/events/{world['police_user']}", headers=headers)
    api.post("/v1/audit/people", json={"person_id": "p-1"}, headers=headers)
    api.get("/v1/audit/alerts", headers=headers)
    api.get("/v1/audit/events", params={"level": "9"}, headers=headers)
    with platform.sessions() as session:
        mine = session.scalars(
            select(AuditEvent).where(AuditEvent.actor == lead.client_id).order_by(AuditEvent.seq)
        ).all()
    actions = [(e.action, e.outcome) for e in mine if e.action != "token.issued"]
    assert actions == [
        ("audit.queried", "success"),
        ("audit.queried", "success"),
        ("audit.queried", "success"),
        ("audit.person_history", "success"),
        ("audit.alerts_viewed", "success"),
        ("audit.queried", "rejected"),
    ]
    first = next(e for e in mine if e.action == "audit.queried")
    assert first.parameters["actor"] == "police-reader" and first.rows == 1
    assert first.resource_org == POLICE
    assert first.matched_rule and "ig_lead" in first.matched_rule


def test_a_persons_history_lists_who_read_them_when_and_why(
    api: TestClient, platform: Platform, reviewers: dict[str, str]
) -> None:
    mine = level3_read(
        platform, actor="pc-1", org=POLICE, subjects=["p-42", "p-43"], case_reference="OP-1"
    )
    theirs = level3_read(
        platform, actor="cc-1", org=COUNCIL, subjects=["p-42"], case_reference="CC-9"
    )
    level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-99"])
    police = _person(api, reviewers["police"], "p-42")
    events = police["events"]
    assert isinstance(events, list)
    assert [(e["event_id"], e["actor"], e["case_reference"]) for e in events] == [
        (mine, "pc-1", "OP-1")
    ]
    assert events[0]["purpose"] == "safeguarding" and events[0]["occurred_at"].endswith("+00:00")
    assert _ids(_person(api, reviewers["council"], "p-42")) == {theirs}
    assert _ids(_person(api, reviewers["admin"], "p-42")) == {mine, theirs}
    assert _ids(_person(api, reviewers["admin"], "nobody")) == set()


def test_T25_no_audit_no_answer(
    api: TestClient, platform: Platform, reviewers: dict[str, str], world: dict[str, str]
) -> None:
    """If the audit event of a query cannot be committed, the reviewer gets 503 and no events."""
    refuse_audit_inserts(platform.engine, "audit.queried")
    response = api.get(
        "/v1/audit/events", headers={"Authorization": f"Bearer {reviewers['admin']}"}
    )
    assert response.status_code == 503
    assert response.json()["code"] == "AUDIT_UNAVAILABLE"
    assert world["police_user"] not in response.text


def test_the_owners_ig_lead_sees_refusals_on_products_made_from_its_data(
    api: TestClient,
    platform: Platform,
    reviewers: dict[str, str],
    make_client: Callable[..., ClientCredentials],
    token_for: Tokens,
) -> None:
    # A VRU practitioner asks for a Level 3 list built from police data without saying why.
    practitioner = token_for(
        make_client(org="vru", roles=("l3_practitioner",), areas=("Portsmouth",), name="vru pr")
    )
    for product in ("repeat-suspects", "sv-counts"):
        refused = api.get(
            f"/v1/products/{product}", headers={"Authorization": f"Bearer {practitioner}"}
        )
        assert refused.status_code == 403, refused.text
    denied = {
        e["resource"]: e
        for e in _get(api, reviewers["police"], "/v1/audit/events", action="access.denied")[
            "events"
        ]  # type: ignore[union-attr]
    }
    # The police own the list's only source; the refusal is about their data.
    assert "repeat-suspects" in denied
    assert denied["repeat-suspects"]["details"]["sources"] == {"police.occurrences": None}
    assert denied["repeat-suspects"]["reason"].startswith("purpose or case reference")
    # A refusal by tier, too, names the sources it was refused.
    assert "police.occurrences" in denied["sv-counts"]["details"]["sources"]
    # The council owns none of its sources: the refusal is not theirs to see.
    council = _get(api, reviewers["council"], "/v1/audit/events", action="access.denied")
    assert "repeat-suspects" not in {e["resource"] for e in council["events"]}  # type: ignore[union-attr]
