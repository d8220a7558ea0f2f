"""Each alert rule fires on what it should and stays quiet otherwise; reviews via the API."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from zoneinfo import ZoneInfo

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import select, text
from sqlalchemy.exc import DBAPIError

from services.audit import alerts
from services.audit.alerts import Alert, AlertRules
from services.audit.catalogue import AuditAction, Outcome
from services.audit.models import AlertReview, AuditEvent
from services.audit.review import Scope
from services.platform import Platform
from tests.fixtures.app import ClientCredentials
from tests.fixtures.audit_events import COUNCIL, POLICE, clock_at, level3_read, make_event

LONDON = ZoneInfo("Europe/London")
RULES = AlertRules(timezone=LONDON, volume_minimum=20, denials_threshold=5)
# A Tuesday in March (GMT) and one in July (BST): office hours are local time.
TUESDAY = datetime(2026, 3, 3, tzinfo=UTC)
SUMMER_TUESDAY = datetime(2026, 7, 7, tzinfo=UTC)


def _alerts(platform: Platform, rule: str, org: str | None = POLICE) -> list[Alert]:
    with platform.sessions() as session:
        return alerts.compute(
            session,
            Scope(org),
            RULES,
            since=datetime(2026, 1, 1, tzinfo=UTC),
            until=datetime(2026, 12, 31, tzinfo=UTC),
            rule=rule,
        )


def test_out_of_hours_in_local_time(platform: Platform, monkeypatch: pytest.MonkeyPatch) -> None:
    cases = {
        TUESDAY + timedelta(hours=10): False,  # 10:00 GMT
        TUESDAY + timedelta(hours=7, minutes=59): True,  # 07:59 GMT
        TUESDAY + timedelta(hours=18): True,  # 18:00 GMT
        SUMMER_TUESDAY + timedelta(hours=7, minutes=30): False,  # 08:30 BST
        SUMMER_TUESDAY + timedelta(hours=17, minutes=30): True,  # 18:30 BST
        TUESDAY + timedelta(days=4, hours=11): True,  # Saturday
    }
    made = {}
    for moment, expected in cases.items():
        with clock_at(monkeypatch, moment):
            made[level3_read(platform, actor="pc-1", org=POLICE, subjects=["p"])] = expected
    flagged = {a.event_ids[0] for a in _alerts(platform, "out_of_hours")}
    assert flagged == {event_id for event_id, expected in made.items() if expected}
    # Level 1 reads at night are not Level 3 reads.
    with clock_at(monkeypatch, TUESDAY + timedelta(hours=2)):
        make_event(platform, actor="pc-1", org=POLICE, resource="sv-counts", level=1)
    assert len(_alerts(platform, "out_of_hours")) == len(flagged)


def test_outside_areas(platform: Platform) -> None:
    inside = level3_read(
        platform,
        actor="pc-1",
        org=POLICE,
        subjects=["p"],
        details={"areas": ["Portsmouth", "Havant"], "districts": ["Portsmouth"]},
    )
    outside = level3_read(
        platform,
        actor="pc-1",
        org=POLICE,
        subjects=["p", "q"],
        details={"areas": ["Portsmouth"], "districts": ["Portsmouth", "Winchester"]},
    )
    said = level3_read(
        platform, actor="pc-1", org=POLICE, subjects=["p"], details={"rows_outside_areas": 2}
    )
    level3_read(platform, actor="pc-1", org=POLICE, subjects=["p"], details={})
    found = {a.event_ids[0]: a for a in _alerts(platform, "outside_areas")}
    assert set(found) == {outside, said}
    assert inside not in found
    assert "Winchester" in found[outside].summary


def test_new_case_reference_per_organisation(platform: Platform) -> None:
    first = level3_read(platform, actor="pc-1", org=POLICE, subjects=["p"], case_reference="K-1")
    again = level3_read(platform, actor="pc-2", org=POLICE, subjects=["p"], case_reference="K-1")
    other_org = level3_read(
        platform, actor="cc-1", org=COUNCIL, subjects=["p"], case_reference="K-1"
    )
    flagged = {a.event_ids[0] for a in _alerts(platform, "new_case", None)}
    assert first in flagged and other_org in flagged and again not in flagged


def test_volume_against_the_readers_own_norm(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    def reads(actor: str, day: int, count: int) -> None:
        with clock_at(monkeypatch, TUESDAY + timedelta(days=day, hours=10)):
            for _ in range(count):
                make_event(platform, actor=actor, org=POLICE, resource="sv-counts", level=1)

    for day in range(4):
        reads("steady", day, 10)
        reads("spiky", day, 10)
    reads("steady", 4, 25)  # 2.5x the norm: not flagged
    reads("spiky", 4, 31)  # 3.1x the norm, above the minimum: flagged
    reads("newcomer", 4, 100)  # no norm yet: not flagged
    found = _alerts(platform, "volume")
    assert [(a.actor, len(a.event_ids)) for a in found] == [("spiky", 31)]
    assert "median is 10" in found[0].summary


def test_repeated_denials_within_a_window(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    def deny(actor: str | None, minute: int, address: str = "192.0.2.9") -> None:
        with clock_at(monkeypatch, TUESDAY + timedelta(hours=9, minutes=minute)):
            make_event(
                platform,
                actor=actor,
                org=POLICE if actor else None,
                action=AuditAction.ACCESS_DENIED,
                outcome=Outcome.DENIED,
                address=address,
            )

    for minute in (0, 1, 2, 3, 4, 5):
        deny("prober", minute)
    for minute in (0, 20, 40, 60, 80, 100):  # as many, but spread out
        deny("clumsy", minute)
    for minute in (0, 1, 2, 3, 4):
        deny(None, minute, address="198.51.100.7")
    found = _alerts(platform, "denials", None)
    assert sorted((a.actor or "", len(a.event_ids)) for a in found) == [("", 5), ("prober", 6)]
    # An IG lead sees their own users' bursts, not unauthenticated ones.
    assert [a.actor for a in _alerts(platform, "denials", POLICE)] == ["prober"]


def test_alerts_and_reviews_over_the_api(
    api: TestClient,
    platform: Platform,
    make_client: Callable[..., ClientCredentials],
    token_for: Callable[[ClientCredentials], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    with clock_at(monkeypatch, TUESDAY + timedelta(hours=23)):
        ours = level3_read(platform, actor="pc-1", org=POLICE, subjects=["p"])
        theirs = level3_read(platform, actor="cc-1", org=COUNCIL, subjects=["p"])
    lead = make_client(org=POLICE, roles=("ig_lead",), name="lead")
    headers = {"Authorization": f"Bearer {token_for(lead)}"}
    params = {"since": "2026-03-01", "until": "2026-03-31", "rule": "out_of_hours"}
    listed = api.get("/v1/audit/alerts", params=params, headers=headers).json()["alerts"]
    assert [(a["id"], a["state"], a["event_ids"]) for a in listed] == [
        (f"out_of_hours.{ours}", "open", [ours])
    ]
    response = api.post(
        f"/v1/audit/alerts/out_of_hours.{ours}/review",
        json={"comment": "on call that night"},
        headers=headers,
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["state"] == "reviewed" and body["reviews"][0]["reviewer"] == lead.client_id
    for alert_id in (f"out_of_hours.{theirs}", f"volume.{ours}", "nonsense"):
        response = api.post(
            f"/v1/audit/alerts/{alert_id}/review", json={"comment": "x"}, headers=headers
        )
        assert response.status_code == 404, alert_id
    assert (
        api.post(
            f"/v1/audit/alerts/out_of_hours.{ours}/review", json={"comment": ""}, headers=headers
        ).status_code
        == 400
    )
    reviewed = api.get(
        "/v1/audit/alerts", params={**params, "state": "reviewed"}, headers=headers
    ).json()["alerts"]
    assert [a["reviews"][0]["comment"] for a in reviewed] == ["on call that night"]
    assert (
        api.get("/v1/audit/alerts", params={**params, "state": "open"}, headers=headers).json()[
            "alerts"
        ]
        == []
    )
    with platform.sessions() as session:
        audited = session.scalars(
            select(AuditEvent).where(AuditEvent.action == "audit.alert_reviewed")
        ).all()
    assert [e.resource for e in audited] == [f"out_of_hours.{ours}"]

    # Reviews are append-only: the database refuses to change or remove one.
    for statement in (
        "UPDATE audit_alert_reviews SET comment = 'x'",
        "DELETE FROM audit_alert_reviews",
    ):
        with pytest.raises(DBAPIError), platform.engine.begin() as connection:
            connection.execute(text(statement))
    with platform.sessions() as session:
        assert [r.comment for r in session.scalars(select(AlertReview))] == ["on call that night"]


@pytest.mark.parametrize(
    ("gaps_ms", "wording"),
    [
        ((0, 0, 0, 0, 0), "6 denials of prober in under a second"),
        ((100, 100, 100, 50, 50), "6 denials of prober within 0.4 s"),
        ((1000, 1000, 1000, 1000, 1000), "6 denials of prober within 5 s"),
        ((60000, 30000, 30000, 30000, 15000), "6 denials of prober within 2 min 45 s"),
    ],
)
def test_a_denial_burst_names_its_real_span(
    platform: Platform,
    monkeypatch: pytest.MonkeyPatch,
    gaps_ms: tuple[int, ...],
    wording: str,
) -> None:
    moment = TUESDAY + timedelta(hours=9)
    for gap in (0, *gaps_ms):
        moment += timedelta(milliseconds=gap)
        with clock_at(monkeypatch, moment):
            make_event(
                platform,
                actor="prober",
                org=POLICE,
                action=AuditAction.ACCESS_DENIED,
                outcome=Outcome.DENIED,
            )
    [found] = _alerts(platform, "denials")
    assert found.summary == wording


def test_level3_burst_counts_reads_within_the_window(
    platform: Platform, monkeypatch: pytest.MonkeyPatch
) -> None:
    """20 reads in 10 minutes are a burst; as many one a minute (11 in any 10 minutes) are
    not; a burst by an account older than a day does not say "new account"."""
    start = TUESDAY + timedelta(hours=9)
    with clock_at(monkeypatch, start - timedelta(days=3)):
        make_event(
            platform,
            actor="admin-1",
            org=POLICE,
            action=AuditAction.CLIENT_CREATED,
            resource_type="client",
            resource="pc-fast",
            resource_org=POLICE,
        )
    for n in range(20):
        with clock_at(monkeypatch, start + timedelta(seconds=25 * n)):
            level3_read(platform, actor="pc-fast", org=POLICE, subjects=["p"])
        with clock_at(monkeypatch, start + timedelta(minutes=n)):
            level3_read(platform, actor="pc-steady", org=POLICE, subjects=["p"])
    [burst] = _alerts(platform, "level3_burst")
    assert burst.actor == "pc-fast" and len(burst.event_ids) == 20
    assert burst.summary == "20 Level 3 reads by pc-fast within 7 min 55 s"
    assert _alerts(platform, "level3_burst", COUNCIL) == []
