"""The IG pages: sign-in, session, CSRF, organisation scope, alerts review, headers."""

from __future__ import annotations

import json
import re
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event as sqlalchemy_event
from sqlalchemy import func, select

from gateway.web import session as web_session
from services.admin import accounts as people_admin
from services.audit.models import AlertReview, AuditCheckpoint, AuditEvent
from services.kit.settings import Environment, Settings
from services.platform import Platform
from tests.fixtures.app import MakeClient, cli_context
from tests.fixtures.audit_events import COUNCIL, POLICE, clock_at, level3_read

PASSWORD = "correct horse battery"


def _user(platform: Platform, name: str, org: str, role: str = "ig_lead") -> None:
    people_admin.create_user(
        platform.admin, cli_context(), username=name, organisation=org, role=role, password=PASSWORD
    )


def _csrf(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found, html
    return found.group(1)


def _sign_in(api: TestClient, name: str, password: str = PASSWORD) -> int:
    form = api.get("/ig/sign-in")
    response = api.post(
        "/ig/sign-in",
        data={"username": name, "password": password, "csrf": _csrf(form.text)},
        follow_redirects=False,
    )
    return response.status_code


def _events_of(platform: Platform, action: str) -> list[AuditEvent]:
    with platform.sessions() as session:
        return list(
            session.scalars(
                select(AuditEvent).where(AuditEvent.action == action).order_by(AuditEvent.seq)
            )
        )


def test_pages_need_a_session_and_not_a_bearer_token(api: TestClient, police_token: str) -> None:
    for path in (
        "/ig/",
        "/ig/events",
        "/ig/alerts",
        "/ig/people/p-1",
        "/ig/checkpoints",
        "/ig/grants/expiring",
    ):
        response = api.get(path, follow_redirects=False)
        assert response.status_code == 303, path
        assert response.headers["location"] == "/ig/sign-in"
        with_token = api.get(
            path, headers={"Authorization": f"Bearer {police_token}"}, follow_redirects=False
        )
        assert with_token.status_code == 303, path
    page = api.get("/ig/sign-in")
    assert page.status_code == 200 and "<form" in page.text
    policy = page.headers["content-security-policy"]
    assert "default-src 'none'" in policy and "script" not in policy
    assert "frame-ancestors 'none'" in policy
    assert page.headers["x-frame-options"] == "DENY"
    assert "<script" not in page.text
    css = api.get("/ig/static/style.css")
    assert css.status_code == 200 and css.headers["content-type"].startswith("text/css")
    # The API is untouched by the pages' cookie: it still wants a bearer token.
    assert api.get("/v1/audit/events").status_code == 401


def test_sign_in_session_cookie_and_sign_out(api: TestClient, platform: Platform) -> None:
    _user(platform, "alice", POLICE)
    assert _sign_in(api, "alice") == 303
    cookie = next(h for k, h in api.get("/ig/events").headers.multi_items() if k == "set-cookie")
    assert "HttpOnly" in cookie and "SameSite=Lax" in cookie and "Path=/ig/" in cookie
    page = api.get("/ig/events")
    assert page.status_code == 200 and "alice (ig_lead, hampshire-constabulary)" in page.text
    signed = _events_of(platform, "ig.signed_in")
    assert [(e.actor, e.actor_org, e.outcome) for e in signed] == [
        ("user:alice", POLICE, "success")
    ]
    response = api.post("/ig/sign-out", data={"csrf": _csrf(page.text)}, follow_redirects=False)
    assert response.status_code == 303
    assert api.get("/ig/events", follow_redirects=False).status_code == 303
    assert [e.actor for e in _events_of(platform, "ig.signed_out")] == ["user:alice"]


def test_secure_cookie_outside_development(key_file: object, tmp_path: object) -> None:
    production = Settings(env=Environment.production, data_dir=tmp_path)  # type: ignore[arg-type]
    assert "Secure" in web_session.set_cookie_header(production, "v").split("; ")
    test = Settings(env=Environment.test, data_dir=tmp_path)  # type: ignore[arg-type]
    assert "Secure" not in web_session.set_cookie_header(test, "v").split("; ")


def test_a_tampered_or_idle_session_is_no_session(settings: Settings) -> None:
    key = b"k" * 32
    value = web_session.encode(key, {"user": "alice", "started": 1000, "seen": 1000})
    assert web_session.decode(key, value, settings, 1010)["user"] == "alice"
    body, _, signature = value.partition(".")
    forged = web_session.encode(b"x" * 32, {"user": "admin", "started": 1000, "seen": 1000})
    assert web_session.decode(key, forged, settings, 1010) == {}
    assert web_session.decode(key, body + "." + signature[:-2] + "AA", settings, 1010) == {}
    idle = 1000 + settings.ig_session_idle_seconds + 1
    assert web_session.decode(key, value, settings, idle) == {}


def test_bad_password_is_refused_audited_and_locks_out(api: TestClient, platform: Platform) -> None:
    _user(platform, "bob", POLICE)
    assert _sign_in(api, "bob", "wrong password!") == 401
    assert _sign_in(api, "nobody", "wrong password!") == 401
    failed = _events_of(platform, "ig.sign_in_failed")
    assert [(e.resource, e.reason, e.actor) for e in failed] == [
        ("bob", "bad_credentials", None),
        ("nobody", "bad_credentials", None),
    ]
    assert all("wrong password" not in e.canonical for e in failed)
    for _ in range(platform.settings.ig_lockout_attempts - 1):
        assert _sign_in(api, "bob", "wrong password!") == 401
    # Locked out: even the right password is refused until the window passes.
    assert _sign_in(api, "bob") == 401
    assert _events_of(platform, "ig.sign_in_failed")[-1].reason == "locked_out"
    assert _events_of(platform, "ig.signed_in") == []


def test_a_form_without_the_csrf_token_is_refused_and_audited(
    api: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user(platform, "carol", POLICE)
    with clock_at(monkeypatch, datetime(2026, 3, 7, 23, 0, tzinfo=UTC)):
        read = level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-1"])
    response = api.post(
        "/ig/sign-in", data={"username": "carol", "password": PASSWORD}, follow_redirects=False
    )
    assert response.status_code == 403
    assert _sign_in(api, "carol") == 303
    alert_id = f"out_of_hours.{read}"
    for token in ("", "forged"):
        response = api.post(
            f"/ig/alerts/{alert_id}/review", data={"comment": "looked", "csrf": token}
        )
        assert response.status_code == 403
    refused = _events_of(platform, "ig.request_refused")
    assert len(refused) == 3 and all(e.reason == "csrf_token_invalid" for e in refused)
    assert refused[-1].actor == "user:carol"
    with platform.sessions() as session:
        assert session.scalars(select(AlertReview)).all() == []


def test_ig_lead_pages_show_only_their_organisation(
    api: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user(platform, "dave", POLICE)
    with clock_at(monkeypatch, datetime(2026, 3, 7, 23, 0, tzinfo=UTC)):
        ours = level3_read(
            platform, actor="pc-1", org=POLICE, subjects=["p-7"], case_reference="OURS-1"
        )
        theirs = level3_read(
            platform, actor="cc-1", org=COUNCIL, subjects=["p-7"], case_reference="THEIRS-1"
        )
    assert _sign_in(api, "dave") == 303
    events = api.get("/ig/events", params={"level": "3"}).text
    assert ours in events and "OURS-1" in events
    assert theirs not in events and "THEIRS-1" not in events
    person = api.get("/ig/people/p-7").text
    assert "OURS-1" in person and "THEIRS-1" not in person
    assert api.get(f"/ig/events/{theirs}").status_code == 404
    detail = api.get(f"/ig/events/{ours}")
    assert detail.status_code == 200 and "p-7" in detail.text
    alerts = api.get("/ig/alerts", params={"since": "2026-03-01"}).text
    assert f"out_of_hours.{ours}" in alerts and theirs not in alerts
    response = api.post(
        f"/ig/alerts/out_of_hours.{theirs}/review",
        data={"comment": "not mine", "csrf": _csrf(alerts)},
    )
    assert response.status_code == 404


def test_expiring_grants_page_lists_the_leads_organisation_only_and_is_audited(
    api: TestClient, platform: Platform, make_client: MakeClient
) -> None:
    from services.admin import principals
    from services.identity.schemas import RoleGrant

    soon = datetime.now(UTC) + timedelta(days=12)
    for org, name in ((POLICE, "police analyst"), (COUNCIL, "council analyst")):
        client = make_client(org=org, roles=("l1_reader",), name=name)
        principals.set_roles(
            platform.admin, cli_context(), client.client_id, [RoleGrant("l1_analyst", None, soon)]
        )
    _user(platform, "erin", POLICE)
    assert _sign_in(api, "erin") == 303
    page = api.get("/ig/grants/expiring")
    assert page.status_code == 200
    assert 'href="/ig/grants/expiring"' in page.text
    assert "police analyst" in page.text and "l1_analyst" in page.text
    assert "council analyst" not in page.text
    [listed] = _events_of(platform, "grant.expiring_listed")
    assert listed.resource_org == POLICE and listed.rows == 1


def test_marking_an_alert_reviewed_is_stored_and_audited(
    api: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user(platform, "erin", POLICE)
    with clock_at(monkeypatch, datetime(2026, 3, 7, 23, 0, tzinfo=UTC)):
        read = level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-1"])
    assert _sign_in(api, "erin") == 303
    alerts = api.get("/ig/alerts", params={"since": "2026-03-01"})
    alert_id = f"out_of_hours.{read}"
    assert alert_id in alerts.text
    comment = '<script>alert("x")</script> spoke to the officer'
    response = api.post(
        f"/ig/alerts/{alert_id}/review",
        data={"comment": comment, "csrf": _csrf(alerts.text)},
        follow_redirects=True,
    )
    assert response.status_code == 200
    assert "&lt;script&gt;" in response.text and "<script>" not in response.text
    with platform.sessions() as session:
        reviews = session.scalars(select(AlertReview)).all()
    assert [(r.alert_id, r.reviewer, r.reviewer_org, r.comment) for r in reviews] == [
        (alert_id, "user:erin", POLICE, comment)
    ]
    audited = _events_of(platform, "audit.alert_reviewed")
    assert len(audited) == 1 and audited[0].seq == reviews[0].event_seq
    assert audited[0].resource == alert_id and comment not in audited[0].canonical
    open_alerts = api.get("/ig/alerts", params={"since": "2026-03-01"}).text
    assert alert_id not in open_alerts


def _checkpoint(platform: Platform) -> None:
    from services.audit import chain as audit_chain
    from services.audit import checkpoints

    audit_chain.seal_all(platform.sessions)
    with platform.sessions() as session:
        checkpoints.write_checkpoint(session, platform.audit_signer)
        session.commit()


def test_checkpoints_page_verifies_signatures_and_the_log(
    api: TestClient, platform: Platform
) -> None:
    _user(platform, "cora", POLICE)
    assert _sign_in(api, "cora") == 303
    _checkpoint(platform)
    _checkpoint(platform)
    page = api.get("/ig/checkpoints")
    assert page.status_code == 200
    assert page.text.count(">verified<") == 2 and "FAILED" not in page.text
    checked = api.get("/ig/checkpoints", params={"verify": "1"})
    assert "verify against the latest checkpoint (#1)." in checked.text
    assert "events verified" in checked.text
    viewed = _events_of(platform, "audit.queried")[-1]
    assert viewed.resource_type == "audit_checkpoints" and viewed.parameters == {"verify": True}
    if platform.engine.dialect.name != "sqlite":
        return
    # Tamper with an event behind the platform's back (SQLite: drop the trigger first).
    with platform.engine.begin() as conn:
        conn.exec_driver_sql("DROP TRIGGER audit_events_no_update")
        conn.exec_driver_sql(
            "UPDATE audit_events SET canonical = replace(canonical, 'cora', 'dora') "
            "WHERE seq = (SELECT min(seq) FROM audit_events WHERE canonical LIKE '%cora%')"
        )
    tampered = api.get("/ig/checkpoints", params={"verify": "1"})
    assert "The log does NOT verify" in tampered.text and "FAILED" in tampered.text


def test_checkpoints_page_says_which_events_a_checkpoint_covers(
    api: TestClient, platform: Platform
) -> None:
    from services.audit import chain as audit_chain

    _user(platform, "cleo", POLICE)
    assert _sign_in(api, "cleo") == 303
    _checkpoint(platform)
    with platform.sessions() as session:
        covered = session.scalars(select(AuditCheckpoint.tree_size)).one()
    # Two events sealed into the chain after the checkpoint, one not sealed yet.
    level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-1"])
    level3_read(platform, actor="pc-2", org=POLICE, subjects=["p-2"])
    audit_chain.seal_all(platform.sessions)
    level3_read(platform, actor="pc-3", org=POLICE, subjects=["p-3"])
    with platform.sessions() as session:
        total = session.scalar(select(func.count()).select_from(AuditEvent))
    assert total is not None
    newer = total - covered
    checked = api.get("/ig/checkpoints", params={"verify": "1"}).text
    assert "The whole log verifies" not in checked
    assert f"Events 1 to {covered} verify against the latest checkpoint (#0)." in checked, checked
    assert (
        f"{newer} newer events are not covered by a checkpoint yet: "
        f"{newer - 1} sealed into the hash chain, 1 awaiting the sealer." in checked
    )


def test_pages_name_the_actors_in_one_query_per_page(
    api: TestClient,
    platform: Platform,
    make_client: MakeClient,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    _user(platform, "nina", POLICE)
    readers = [
        make_client(org=POLICE, name=f"Custody suite terminal {n}", roles=("l1_reader",))
        for n in range(3)
    ]
    with clock_at(monkeypatch, datetime(2026, 3, 7, 23, 0, tzinfo=UTC)):
        reads = [
            level3_read(platform, actor=r.client_id, org=POLICE, subjects=["p-5"]) for r in readers
        ]
    assert _sign_in(api, "nina") == 303
    statements: list[str] = []

    def seen(_conn: object, _cursor: object, statement: str, *_args: object) -> None:
        statements.append(statement)

    sqlalchemy_event.listen(platform.engine, "before_cursor_execute", seen)
    try:
        pages = {
            "events": api.get("/ig/events").text,
            "person": api.get("/ig/people/p-5").text,
            "alerts": api.get("/ig/alerts", params={"since": "2026-03-01"}).text,
        }
        lookups = sum(1 for s in statements if re.search(r"\bFROM clients\b", s))
        pages["event"] = api.get(f"/ig/events/{reads[0]}").text
    finally:
        sqlalchemy_event.remove(platform.engine, "before_cursor_execute", seen)
    # One look-up per page, however many actors it shows.
    assert lookups == 3, statements
    for name, html in pages.items():
        assert "Custody suite terminal 0" in html, name
        assert readers[0].client_id in html, name
    for html in (pages["events"], pages["person"], pages["alerts"]):
        assert all(f"Custody suite terminal {n}" in html for n in range(3))
    # The signed-in lead, as a review account, is named by the account too.
    assert "nina" in api.get("/ig/events", params={"action": "ig.signed_in"}).text


def test_date_fields_show_a_faint_format_hint_not_a_value(
    api: TestClient, platform: Platform
) -> None:
    _user(platform, "hana", POLICE)
    assert _sign_in(api, "hana") == 303
    for path in ("/ig/events", "/ig/alerts"):
        html = api.get(path).text
        placeholders = re.findall(r'placeholder="([^"]*)"', html)
        assert placeholders, path
        # A placeholder reads as a format, never as a date or a period that might be set.
        assert not any(re.search(r"\d", p) for p in placeholders), placeholders
        assert 'placeholder="YYYY-MM-DD"' in html, path
    assert "empty: the last 30 days" in api.get("/ig/alerts").text
    css = api.get("/ig/static/style.css").text
    assert "::placeholder" in css


def test_export_links_work_with_the_session_and_are_audited_like_the_api(
    api: TestClient, platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    _user(platform, "ivy", POLICE)
    with clock_at(monkeypatch, datetime(2026, 3, 7, 23, 0, tzinfo=UTC)):
        ours = level3_read(platform, actor="pc-1", org=POLICE, subjects=["p-7"])
        theirs = level3_read(platform, actor="cc-1", org=COUNCIL, subjects=["p-7"])
    # Without a session: to the sign-in page, as every other page.
    anonymous = api.get("/ig/events/export", params={"format": "csv"}, follow_redirects=False)
    assert anonymous.status_code == 303
    assert _sign_in(api, "ivy") == 303
    page = api.get("/ig/events", params={"level": "3"}).text
    links = re.findall(r'href="(/ig/events/export\?[^"]+)"', page)
    assert len(links) == 2, page
    csv_link = next(link for link in links if "format=csv" in link).replace("&amp;", "&")
    ndjson_link = next(link for link in links if "format=ndjson" in link).replace("&amp;", "&")
    assert "level=3" in csv_link
    exported = api.get(csv_link)
    assert exported.status_code == 200, exported.text
    assert exported.headers["content-type"].startswith("text/csv")
    assert "attachment" in exported.headers["content-disposition"]
    assert exported.text.startswith("occurred_at,event_id,action")
    assert ours in exported.text and theirs not in exported.text
    lines = api.get(ndjson_link).text.splitlines()
    assert [json.loads(line)["event_id"] for line in lines] == [ours]
    # Audited exactly as the API's export: a search, with the format and the filters.
    queried = _events_of(platform, "audit.queried")[-2:]
    assert [e.parameters["format"] for e in queried] == ["csv", "ndjson"]
    assert all(e.parameters["level"] == 3 and e.actor == "user:ivy" for e in queried)
    assert all(e.rows == 1 and e.resource_org == POLICE for e in queried)
    assert api.get("/ig/events/export", params={"format": "xml"}).status_code == 400
